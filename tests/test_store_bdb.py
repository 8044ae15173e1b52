"""The Berkeley DB relay table on real files: key forms, locking, batching, mtime, errors.

Raw file contents are read and written with ``berkeleydb`` directly (as makemap or an
administrator's script would), never through the store under test.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from berkeleydb import db
from helpers import wait_until

from popwatch.errors import AddressError, StoreError
from popwatch.store import StoreOptions, open_store
from popwatch.store.bdb import BdbStore

POSTFIX = StoreOptions(key_format="postfix")


def raw_items(path: Path) -> dict[bytes, bytes]:
    h = db.DB()
    h.open(str(path), dbtype=db.DB_HASH, flags=db.DB_RDONLY)
    try:
        cursor = h.cursor()
        out = {}
        rec = cursor.first()
        while rec is not None:
            out[bytes(rec[0])] = bytes(rec[1])
            rec = cursor.next()
        cursor.close()
        return out
    finally:
        h.close()


def write_raw(path: Path, items: dict[bytes, bytes]) -> None:
    h = db.DB()
    h.open(str(path), dbtype=db.DB_HASH, flags=db.DB_CREATE, mode=0o644)
    for k, v in items.items():
        h.put(k, v)
    h.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "relayers.db"


def test_put_get_delete_items(path: Path) -> None:
    store = open_store(path)
    assert store.get("192.0.2.10") is None
    store.put("192.0.2.10", 1000)
    store.put("2001:DB8::5", 2000)
    store.put("::ffff:198.51.100.7", 3000)
    assert store.get("192.0.2.10") == 1000
    assert store.get("2001:db8::5") == 2000
    assert store.get("198.51.100.7") == 3000
    assert store.get("::FFFF:198.51.100.7") == 3000
    assert sorted(store.items()) == [
        ("192.0.2.10", 1000),
        ("198.51.100.7", 3000),
        ("2001:db8::5", 2000),
    ]
    store.put("192.0.2.10", 1500)  # replace
    assert store.get("192.0.2.10") == 1500
    assert store.delete("192.0.2.10") is True
    assert store.delete("192.0.2.10") is False
    assert store.get("192.0.2.10") is None
    assert raw_items(path) == {b"198.51.100.7": b"3000", b"2001:db8::5": b"2000"}


def test_file_is_a_valid_hash_database(path: Path) -> None:
    store = open_store(path)
    with store.batch() as view:
        for i in range(300):
            view.put(f"203.0.113.{i}" if i < 256 else f"2001:db8::{i:x}", i)
    if shutil.which("db_verify") is None:
        pytest.skip("db_verify (db-util) not installed")
    out = subprocess.run(["db_verify", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("bad", ["10.1", "10.0.0.0/8", "999.1.1.1", "", " 192.0.2.1", "x"])
def test_bad_addresses_raise_address_error(path: Path, bad: str) -> None:
    store = open_store(path)
    ops: list[Callable[[], object]] = [
        lambda: store.get(bad),
        lambda: store.put(bad, 1),
        lambda: store.delete(bad),
    ]
    for op in ops:
        with pytest.raises(AddressError):
            op()
    assert raw_items(path) == {}


@pytest.mark.parametrize("stamp", [-1, 1.5, True, "12"])
def test_bad_stamp_is_a_programming_error(path: Path, stamp: object) -> None:
    store = open_store(path)
    with pytest.raises(ValueError):
        store.put("192.0.2.1", stamp)  # type: ignore[arg-type]
    assert raw_items(path) == {}


# -- creating and opening ----------------------------------------------------------------


def test_missing_file_without_create_is_an_error(path: Path) -> None:
    with pytest.raises(StoreError, match=rf"^{path}: cannot open: no such file"):
        open_store(path, create=False)
    assert not path.exists()


def test_create_makes_an_empty_table(path: Path) -> None:
    open_store(path)
    assert path.stat().st_size > 0
    assert raw_items(path) == {}


def test_zero_length_file_is_a_new_table(path: Path) -> None:
    path.write_bytes(b"")
    reader = open_store(path, create=False)
    assert list(reader.items()) == []  # readable before anyone initialized it
    store = open_store(path, POSTFIX)
    store.put("192.0.2.1", 5)
    assert raw_items(path) == {b"192.0.2.1\0": b"5\0"}


@pytest.mark.parametrize(
    "content",
    [b"garbage" * 500, b"x", b"\0" * 4096, b"SQLite format 3\0" + b"\0" * 4000],
)
def test_corrupt_file_is_a_store_error_and_left_alone(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    for create in (True, False):
        with pytest.raises(StoreError) as info:
            open_store(path, create=create)
        assert str(info.value).startswith(f"{path}: cannot open: ")
        assert "\n" not in str(info.value)
    assert path.read_bytes() == content


def test_btree_file_is_not_a_hash_table(path: Path) -> None:
    h = db.DB()
    h.open(str(path), dbtype=db.DB_BTREE, flags=db.DB_CREATE)
    h.put(b"192.0.2.1", b"1")
    h.close()
    with pytest.raises(StoreError, match="not a Berkeley DB hash file"):
        open_store(path, create=False)


def test_file_corrupted_after_open_is_a_store_error(path: Path) -> None:
    store = open_store(path)
    store.put("192.0.2.1", 1)
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="not a Berkeley DB hash file"):
        store.get("192.0.2.1")
    with pytest.raises(StoreError):
        store.put("192.0.2.2", 2)


def test_parent_not_a_directory(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(StoreError, match=r"plain/relayers.db: cannot open: not a directory"):
        open_store(plain / "relayers.db")


def test_directory_not_writable(tmp_path: Path) -> None:
    """Root ignores directory permissions: run without the capabilities that let it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = ro / "relayers.db"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from popwatch.store import open_store\n"
        "from popwatch.errors import StoreError\n"
        "try:\n"
        f"    open_store(Path({str(target)!r}))\n"
        "except StoreError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux)")
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 3, out.stderr
    assert out.stdout.strip() == f"{target}: cannot open: permission denied"
    assert not target.exists()


# -- key forms -----------------------------------------------------------------------------


def test_new_file_sendmail_form_has_no_nul(path: Path) -> None:
    open_store(path).put("192.0.2.1", 7)
    assert raw_items(path) == {b"192.0.2.1": b"7"}


def test_new_file_postfix_form_has_nul_in_key_and_value(path: Path) -> None:
    open_store(path, POSTFIX).put("192.0.2.1", 7)
    assert raw_items(path) == {b"192.0.2.1\0": b"7\0"}


def test_existing_nul_file_stays_nul_keyed(path: Path) -> None:
    write_raw(path, {b"198.51.100.1\0": b"11\0"})
    store = open_store(path, StoreOptions(key_format="sendmail"))
    assert store.get("198.51.100.1") == 11
    store.put("192.0.2.1", 7)
    assert raw_items(path) == {b"198.51.100.1\0": b"11\0", b"192.0.2.1\0": b"7\0"}


def test_existing_plain_file_stays_plain(path: Path) -> None:
    write_raw(path, {b"198.51.100.1": b"11"})
    store = open_store(path, POSTFIX)
    store.put("192.0.2.1", 7)
    assert raw_items(path) == {b"198.51.100.1": b"11", b"192.0.2.1": b"7"}


def test_mixed_file_is_read_and_healed_key_by_key(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_raw(path, {b"192.0.2.1": b"1", b"192.0.2.2\0": b"2\0"})
    store = open_store(path)
    assert store.get("192.0.2.1") == 1
    assert store.get("192.0.2.2") == 2
    assert sorted(store.items()) == [("192.0.2.1", 1), ("192.0.2.2", 2)]
    first = next(iter(raw_items(path)))
    nul = first.endswith(b"\0")
    store.put("192.0.2.1", 10)
    store.put("192.0.2.2", 20)
    keys = set(raw_items(path))
    assert all(k.endswith(b"\0") == nul for k in keys), keys  # one form only now
    assert sorted(store.items()) == [("192.0.2.1", 10), ("192.0.2.2", 20)]
    assert store.delete("192.0.2.1") and store.get("192.0.2.1") is None


def test_delete_removes_either_form(path: Path) -> None:
    write_raw(path, {b"192.0.2.1\0": b"1\0", b"192.0.2.2": b"2"})
    store = open_store(path)
    assert store.delete("192.0.2.1") and store.delete("192.0.2.2")
    assert raw_items(path) == {}


def test_prefixes_popauth_and_ipv6(path: Path) -> None:
    opts = StoreOptions(key_prefix="POP:", ipv6_prefix="IPv6:")
    store = open_store(path, opts)
    store.put("192.0.2.1", 1)
    store.put("2001:DB8::5", 2)
    assert raw_items(path) == {b"pop:192.0.2.1": b"1", b"pop:ipv6:2001:db8::5": b"2"}
    assert sorted(store.items()) == [("192.0.2.1", 1), ("2001:db8::5", 2)]
    assert store.map_key("2001:db8::5") == "pop:ipv6:2001:db8::5"
    assert store.get("2001:db8::5") == 2
    assert store.delete("2001:db8::5")


def test_ipv6_prefix_only_for_ipv6(path: Path) -> None:
    store = open_store(path, StoreOptions(ipv6_prefix="IPv6:"))
    store.put("192.0.2.1", 1)
    store.put("2001:db8::5", 2)
    assert set(raw_items(path)) == {b"192.0.2.1", b"ipv6:2001:db8::5"}


# -- entries that are not ours ---------------------------------------------------------------


def test_malformed_entries_skipped_with_one_warning_each(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_raw(
        path,
        {
            b"192.0.2.1": b"100",
            b"10.1": b"200",  # makemap by hand: Postfix would match a /16
            b"10.0.0.0/8": b"1",
            b"2001:DB8::5": b"1",  # not canonical: smtpd never looks this up
            b"192.0.2.2": b"soon",
            b"192.0.2.3": b"",
            b"\xff\xfe": b"1",
        },
    )
    store = open_store(path)
    with caplog.at_level(logging.WARNING, logger="popwatch.store"):
        assert list(store.items()) == [("192.0.2.1", 100)]
        assert list(store.items()) == [("192.0.2.1", 100)]
    messages = [r.getMessage() for r in caplog.records if r.name == "popwatch.store"]
    assert len(messages) == 6, messages  # once per bad key, not once per call
    assert any('entry "10.1": not a full IPv4 address' in m for m in messages)
    assert any('entry "2001:DB8::5": not in canonical form' in m for m in messages)
    assert any('"192.0.2.2": value "soon" is not Unix seconds' in m for m in messages)
    assert all(m.startswith(str(path)) and m.endswith("skipped") for m in messages)


def test_key_without_our_prefix_is_not_ours(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_raw(path, {b"pop:192.0.2.1": b"1", b"192.0.2.2": b"2", b"POP:192.0.2.3": b"3"})
    store = open_store(path, StoreOptions(key_prefix="POP:"))
    with caplog.at_level(logging.WARNING, logger="popwatch.store"):
        assert list(store.items()) == [("192.0.2.1", 1)]
    assert 'entry "192.0.2.2": no "pop:" prefix' in caplog.text
    assert 'entry "POP:192.0.2.3": no "pop:" prefix' in caplog.text  # the MTA folds its lookup


def test_clear_removes_everything_including_malformed(path: Path) -> None:
    write_raw(path, {b"10.1": b"1", b"192.0.2.1": b"2"})
    store = open_store(path)
    assert store.clear() == 2
    assert raw_items(path) == {}


# -- batching, in place, mtime -------------------------------------------------------------


def _mtime_s(path: Path) -> int:
    return path.stat().st_mtime_ns // 1_000_000_000


def test_batch_is_one_flush(path: Path) -> None:
    store = BdbStore(path)
    before = store.flushes
    with store.batch() as view:
        for i in range(100):
            view.put(f"198.51.100.{i}", 1000 + i)
        assert view.get("198.51.100.5") == 1005
        assert len(list(view.items())) == 100
        view.delete("198.51.100.0")
    assert store.flushes == before + 1
    assert len(list(store.items())) == 99
    store.put("192.0.2.1", 1)  # a single put outside a batch is a batch of one
    assert store.flushes == before + 2


def test_batch_without_changes_does_not_touch_the_file(path: Path) -> None:
    store = BdbStore(path)
    store.put("192.0.2.1", 1)
    stat = path.stat()
    flushes = store.flushes
    with store.batch() as view:
        assert view.get("192.0.2.1") == 1
        assert view.delete("192.0.2.99") is False
    assert store.flushes == flushes
    assert path.stat().st_mtime_ns == stat.st_mtime_ns


def test_updates_in_place_same_inode(path: Path) -> None:
    store = open_store(path)
    inode = path.stat().st_ino
    for i in range(50):
        store.put(f"192.0.2.{i}", i)
    store.clear()
    assert path.stat().st_ino == inode


def test_mtime_moves_to_a_later_whole_second_every_flush(path: Path) -> None:
    store = open_store(path)
    seen = []
    for i in range(4):  # far faster than one per second
        store.put("192.0.2.1", i)
        seen.append(_mtime_s(path))
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


def test_exception_in_batch_keeps_earlier_changes_synced(path: Path) -> None:
    store = open_store(path)
    with pytest.raises(RuntimeError), store.batch() as view:
        view.put("192.0.2.1", 1)
        raise RuntimeError("caller bug")
    assert raw_items(path) == {b"192.0.2.1": b"1"}


def test_use_after_close(path: Path) -> None:
    store = open_store(path)
    store.close()
    with pytest.raises(StoreError, match="after close"):
        store.get("192.0.2.1")


# -- locking -------------------------------------------------------------------------------

HOLDER = """
import fcntl, sys
f = open(sys.argv[1], "rb")
fcntl.flock(f, fcntl.LOCK_SH if sys.argv[2] == "sh" else fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def hold_lock(path: Path) -> Iterator[object]:
    """Start a process that holds a lock on ``path`` until told to let go."""
    procs: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def release(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.write("\n")
    p.stdin.flush()
    p.wait(timeout=10)


def test_writer_waits_for_a_shared_lock_then_succeeds(path: Path, hold_lock: object) -> None:
    open_store(path)
    holder = hold_lock("sh")  # type: ignore[operator]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        threading.Event().wait(seconds)

    store = BdbStore(path, StoreOptions(lock_timeout=30), sleep=sleep)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.put("192.0.2.1", 42)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    t = threading.Thread(target=write)
    t.start()
    wait_until(lambda: len(waits) >= 3, message="the writer to poll the held lock")
    assert raw_items(path) == {}  # readers may still read while we wait
    release(holder)
    t.join(timeout=30)
    assert not t.is_alive() and not errors
    assert store.get("192.0.2.1") == 42


def test_lock_held_too_long_is_a_store_error(path: Path, hold_lock: object) -> None:
    open_store(path)
    hold_lock("sh")  # type: ignore[operator]
    store = open_store(path, StoreOptions(lock_timeout=0.2))
    with pytest.raises(StoreError) as info:
        store.put("192.0.2.1", 1)
    assert str(info.value) == f"{path}: cannot lock: held by another process for 0.2 s"
    assert store.get("192.0.2.1") is None  # shared with the holder: reading still works


def test_reader_waits_for_an_exclusive_lock(path: Path, hold_lock: object) -> None:
    open_store(path).put("192.0.2.1", 1)
    store = open_store(path, StoreOptions(lock_timeout=0.1), create=False)
    hold_lock("ex")  # type: ignore[operator]
    with pytest.raises(StoreError, match=r"cannot lock: held by another process for 0\.1 s"):
        store.get("192.0.2.1")
    with pytest.raises(StoreError, match="cannot lock"):
        list(store.items())


def test_we_hold_an_exclusive_flock_while_writing(path: Path) -> None:
    store = open_store(path)
    seen: list[bool] = []
    with store.batch() as view:
        view.put("192.0.2.1", 1)
        with open(path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)
    assert seen == [True]
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the batch


def test_file_replaced_while_waiting_for_the_lock(path: Path, hold_lock: object) -> None:
    """An admin's `postmap` into a temp file plus `mv` replaces the inode: the waiting writer
    must write into the new file, not into the old one that nobody reads any more."""
    open_store(path).put("192.0.2.1", 1)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        threading.Event().wait(seconds)

    store = BdbStore(path, StoreOptions(lock_timeout=30), create=False, sleep=sleep)
    holder = hold_lock("ex")  # type: ignore[operator]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.put("192.0.2.2", 2)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    waits.clear()
    t = threading.Thread(target=write)
    t.start()
    wait_until(lambda: len(waits) >= 2, message="the writer to wait for the lock")
    fresh = path.with_name("fresh.db")
    write_raw(fresh, {b"198.51.100.1": b"9"})
    fresh.rename(path)
    release(holder)
    t.join(timeout=30)
    assert not t.is_alive() and not errors
    assert raw_items(path) == {b"198.51.100.1": b"9", b"192.0.2.2": b"2"}


# -- a batch that fails half-way (disk full, file size limit) ---------------------------------

# A real write failure without root or mounts: RLIMIT_FSIZE makes every write past the
# limit fail with EFBIG, exactly like ENOSPC on a full disk.  ``hook`` names a subclass of
# BdbStore that changes the limit at the moment the store puts the file back (to make a
# fault transient or permanent at a chosen point); the fault itself is always a real one.
FSIZE_BATCH = """
import logging, resource, signal, sys
from pathlib import Path
from popwatch.errors import StoreError
from popwatch.store.bdb import BdbStore

logging.basicConfig(level=logging.WARNING, format="log: %(message)s")
path, count, hook = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
UNLIMITED = resource.getrlimit(resource.RLIMIT_FSIZE)


def limit(size):
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, UNLIMITED[1]))


class Store(BdbStore):
    def _put_back(self, fd, image, err):
        if hook == "space-returns":
            limit(UNLIMITED[0])  # space comes back once the failed batch is undone
        if hook == "restore-fails":
            limit(0)
        super()._put_back(fd, image, err)


store = Store(path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
limit(path.stat().st_size)  # the file may not grow
done = 0
try:
    with store.batch() as view:
        for n in range(count):
            view.put(f"10.{n >> 8 & 255}.{n & 255}.1", 1795323696)
            done += 1
    print("ok")
except StoreError as err:
    print(f"after {done}:", err)
limit(UNLIMITED[0])
if hook == "restore-fails":
    print("items:", len(list(store.items())))  # the next access puts the file back
"""


def fsize_batch(path: Path, count: int, hook: str = "") -> str:
    out = subprocess.run(
        [sys.executable, "-c", FSIZE_BATCH, str(path), str(count), hook],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def db_verify(path: Path) -> bool:
    if shutil.which("db_verify") is None:  # pragma: no cover - db-util is a test dependency
        pytest.skip("db_verify (db-util) is not installed")
    return subprocess.run(["db_verify", "-q", str(path)], check=False).returncode == 0


@pytest.fixture
def small_table(path: Path) -> dict[bytes, bytes]:
    store = open_store(path)
    with store.batch() as view:
        for n in range(20):
            view.put(f"192.0.2.{n}", 1000 + n)
    return raw_items(path)


@pytest.mark.parametrize(
    ("count", "where"),
    [(600, "flush"), (40_000, "batch")],  # fits the page cache / spills while putting
)
def test_failed_batch_leaves_the_table_as_it_was(
    path: Path, small_table: dict[bytes, bytes], count: int, where: str
) -> None:
    inode, size = path.stat().st_ino, path.stat().st_size
    out = fsize_batch(path, count)
    failed_at = count if where == "flush" else None
    assert "file too large (table left as it was before this batch)" in out, out
    assert str(path) in out
    done = int(out.split("after ", 1)[1].split(":", 1)[0])
    assert done == failed_at if failed_at is not None else done < count, out
    # Not damaged, not half-written, same file (sendmail keeps its open file).
    assert db_verify(path)
    assert raw_items(path) == small_table
    assert path.stat().st_ino == inode and path.stat().st_size == size
    # And the next batch, with space back, writes everything.
    store = open_store(path)
    with store.batch() as view:
        for n in range(count):
            view.put(f"10.{n >> 8 & 255}.{n & 255}.1", 1795323696)
    assert len(raw_items(path)) == len(small_table) + len({n & 0xFFFF for n in range(count)})
    assert db_verify(path)


def test_flush_that_fails_is_made_again_on_the_restored_file(
    path: Path, small_table: dict[bytes, bytes]
) -> None:
    out = fsize_batch(path, 600, hook="space-returns")
    assert out.startswith("ok"), out
    assert "written after all" in out
    items = raw_items(path)
    assert len(items) == 620 and items[b"10.2.87.1"] == b"1795323696"
    assert db_verify(path)


def test_file_that_cannot_be_put_back_at_once_is_put_back_at_the_next_access(
    path: Path, small_table: dict[bytes, bytes]
) -> None:
    out = fsize_batch(path, 600, hook="restore-fails")
    assert "cannot be put back yet: file too large" in out, out
    assert "items: 20" in out and "put back as it was before a failed write" in out, out
    assert raw_items(path) == small_table
    assert db_verify(path)


# -- one sync per batch ------------------------------------------------------------------------

SYNC_BATCH = """
import sys
from pathlib import Path
from popwatch.store.bdb import BdbStore
store = BdbStore(Path(sys.argv[1]))
with store.batch() as view:
    for n in range(int(sys.argv[2])):
        view.put(f"10.{n >> 8 & 255}.{n & 255}.1", 1795323696)
print(store.expire(1795323696))
"""


@pytest.mark.parametrize("count", [50, 20_000])
def test_one_lock_and_one_sync_per_batch(path: Path, count: int) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    open_store(path).put("192.0.2.1", 1)
    out = subprocess.run(
        [
            *(strace, "-f", "-y", "-e", "trace=fsync,fdatasync,flock", "-o", f"{path}.trace"),
            *(sys.executable, "-c", SYNC_BATCH, str(path), str(count)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == str(count + 1), out.stderr
    trace = Path(str(path) + ".trace").read_text().splitlines()
    mine = [line for line in trace if f"<{path}>" in line]
    syncs = [line for line in mine if "sync(" in line]
    exclusive = [line for line in mine if "LOCK_EX" in line]
    # The batch, then expiry (a look under LOCK_SH, then its own batch): two of each.
    assert len(exclusive) == 2, mine
    assert len(syncs) == 2, mine
    assert db_verify(path)


# -- expiry ------------------------------------------------------------------------------------


def test_expire_removes_our_old_entries_in_one_batch(path: Path) -> None:
    write_raw(
        path,
        {
            b"192.0.2.1": b"100",
            b"192.0.2.2": b"200",
            b"192.0.2.3": b"4102444800",  # pinned
            b"2001:db8::1": b"100",
            b"10.1": b"100",  # not ours (a network): left for the administrator
            b"192.0.2.9": b"soon",  # not ours either
        },
    )
    store = BdbStore(path)
    flushes = store.flushes
    assert store.expire(150) == 2
    assert store.flushes == flushes + 1
    assert raw_items(path) == {
        b"192.0.2.2": b"200",
        b"192.0.2.3": b"4102444800",
        b"10.1": b"100",
        b"192.0.2.9": b"soon",
    }
    with store.batch() as view:
        assert view.expire(200) == 1
        assert view.get("192.0.2.2") is None


def test_expire_with_nothing_old_takes_no_exclusive_lock(path: Path, hold_lock: object) -> None:
    open_store(path).put("192.0.2.1", 500)
    mtime = path.stat().st_mtime_ns
    holder = hold_lock("sh")  # type: ignore[operator]
    store = BdbStore(path, StoreOptions(lock_timeout=0.1), create=False)
    assert store.expire(499) == 0  # an exclusive lock would time out behind the MTA
    with pytest.raises(StoreError, match="cannot lock"):
        store.expire(500)
    release(holder)
    assert store.expire(500) == 1
    assert path.stat().st_mtime_ns > mtime


def test_expire_handles_nul_keys_and_many_entries(path: Path) -> None:
    store = open_store(path, POSTFIX)
    with store.batch() as view:
        for n in range(5000):
            view.put(f"10.0.{n >> 8}.{n & 255}", n)
        view.put("2001:db8::5", 10)
    assert store.expire(2499) == 2501
    left = dict(store.items())
    assert len(left) == 2500 and min(left.values()) == 2500
    assert all(k.endswith(b"\0") for k in raw_items(path))

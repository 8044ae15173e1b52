"""Database faults under a real ``popwatch run`` (issue 7, item 3).

Every test starts the daemon as a subprocess on its own log, table and state directory, makes
the fault happen to the real Berkeley DB file or its file system, and reads the table the way
an MTA does (``postmap -q`` or a shared-locked read).  Faults:

* the table deleted, or replaced by another table, while the daemon runs: the next flush
  writes into the file now at the path, and the addresses written before are restored;
* the file system read-only (a read-only bind mount) and full (a 64 KiB tmpfs): a clear error
  naming the table, nothing dropped, everything written once the fault is gone, and
  ``db_verify`` still accepts the file;
* a damaged table at start: moved aside with a warning and rebuilt from the logs
  (:mod:`popwatch.repair`), or refused with exit 74;
* an MTA holding a shared lock for seconds: the writer waits and then flushes; held longer
  than ``lock_timeout``: a clear error, then written after the lock is released.

Mounts need root; those tests are skipped otherwise.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

from popwatch.errors import StoreError
from popwatch.repair import check_table, corrupt_name
from popwatch.store.bdb import BdbStore, verify

POPWATCH = [sys.executable, "-m", "popwatch"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def login(ip: str, user: str = "alice", when: float | None = None) -> bytes:
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(when or time.time()))
    return f"{stamp} mailhost ipop3d[4242]: Login user={user} host=[{ip}] nmsgs=1/1\n".encode()


class Daemon:
    """One ``popwatch run`` subprocess with its own files under ``home``."""

    def __init__(self, home: Path, db_dir: Path | None = None, **config: str) -> None:
        self.home = home
        self.log = home / "mail.log"
        self.db_dir = db_dir or home / "db"
        self.db = self.db_dir / "relayers.db"
        self.state = home / "state"
        self.errpath = home / "stderr"
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        keys = {
            "database": f'"{self.db}"',
            "logs": f'["{self.log}"]',
            "state_dir": f'"{self.state}"',
            "pattern_dirs": "[]",
            "lifetime": '"1h"',
            "flush_interval": '"0.2s"',
        }
        keys.update(config)
        self.cfg = home / "popwatch.toml"
        self.cfg.write_text("".join(f"{k} = {v}\n" for k, v in keys.items()))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.errpath, "ab") as err:
            self.proc = subprocess.Popen([*POPWATCH, "-c", str(self.cfg), "run"], stderr=err)
        return self

    def append(self, *lines: bytes) -> None:
        with open(self.log, "ab") as f:
            f.write(b"".join(lines))

    def stderr(self) -> str:
        return self.errpath.read_bytes().decode(errors="replace")

    def table(self) -> dict[str, int]:
        try:
            with BdbStore(self.db, create=False) as store:
                return dict(store.items())
        except StoreError:
            return {}

    def has(self, *ips: str) -> bool:
        got = self.table()
        return all(ip in got for ip in ips)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


def running(daemons: list[Daemon], d: Daemon) -> Daemon:
    daemons.append(d.start())
    return d


def postmap_q(db: Path, ip: str) -> str | None:
    out = subprocess.run(
        ["postmap", "-q", ip, f"hash:{db.with_suffix('')}"], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else None


def db_verify(db: Path) -> bool:
    return subprocess.run(["db_verify", "-q", str(db)], capture_output=True).returncode == 0


# -- the table deleted or replaced -----------------------------------------------------------


def test_table_deleted_while_running_is_recreated_and_restored(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path))
    d.append(login("192.0.2.1"))
    wait_until(lambda: postmap_q(d.db, "192.0.2.1"), 20, message="first login in the table")
    d.db.unlink()
    d.append(login("192.0.2.2"))
    wait_until(lambda: d.has("192.0.2.2"), 20, message="login after the deletion")
    # The MTA must still let 192.0.2.1 relay: its authorization was not lost with the file.
    wait_until(lambda: d.has("192.0.2.1"), 5, message="192.0.2.1 restored into the new table")
    assert d.proc is not None and d.proc.poll() is None
    assert db_verify(d.db)


def test_table_replaced_while_running_keeps_the_new_entries(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    # An administrator rebuilds the table with makemap/postmap and renames it into place.
    new = tmp_path / "db" / "new.db"
    with BdbStore(new) as store:
        store.put("198.51.100.9", 4102444800)  # pinned by hand (year 2100)
    os.rename(new, d.db)
    d.append(login("192.0.2.3"))
    wait_until(lambda: d.has("192.0.2.3"), 20, message="login after the replacement")
    assert d.table()["198.51.100.9"] == 4102444800
    wait_until(lambda: d.has("192.0.2.1"), 5, message="192.0.2.1 restored into the new table")


# -- read-only and full file systems --------------------------------------------------------


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "--bind", str(where), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@ROOT_ONLY
def test_read_only_file_system_keeps_pending_and_writes_later(
    tmp_path: Path, bind_mount: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path, db_dir=bind_mount))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(bind_mount)], check=True)
    d.append(*(login(f"192.0.2.{n}") for n in range(10, 20)))
    wait_until(lambda: "keeping" in d.stderr() and "pending" in d.stderr(), 20, message="a warning")
    warning = next(ln for ln in d.stderr().splitlines() if "keeping" in ln)
    assert str(d.db) in warning and "read-only" in warning.lower(), warning
    subprocess.run(["mount", "-o", "remount,rw,bind", str(bind_mount)], check=True)
    ips = [f"192.0.2.{n}" for n in range(10, 20)]
    wait_until(lambda: d.has(*ips), 40, message="pending logins written after remount rw")
    assert "writable again" in d.stderr()
    assert db_verify(d.db)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "tiny"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@ROOT_ONLY
def test_full_disk_keeps_pending_and_writes_when_space_returns(
    tmp_path: Path, tiny_fs: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path, db_dir=tiny_fs / "db"))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    filler = tiny_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # take every free block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    # Enough new addresses that the hash table must grow by pages.
    ips = [f"10.{n // 250}.{n % 250}.{n % 7 + 1}" for n in range(600)]
    d.append(*(login(ip) for ip in ips))
    wait_until(lambda: "keeping" in d.stderr(), 30, message="a warning about the full disk")
    warning = next(ln for ln in d.stderr().splitlines() if "keeping" in ln)
    assert str(d.db) in warning and "space" in warning.lower(), warning
    assert d.proc is not None and d.proc.poll() is None
    filler.unlink()
    # A write that fails half-way must not leave a table the MTA cannot read, nor lose
    # entries: every address is written once space returns and db_verify accepts the file.
    wait_until(lambda: db_verify(d.db), 40, message="db_verify accepting the table again")
    wait_until(lambda: d.has(*ips), 40, message="all 600 addresses after space returned")
    assert d.has("192.0.2.1")


# -- a damaged table at start ----------------------------------------------------------------


def damage(db: Path) -> None:
    """A real table whose second page is overwritten: the header still looks fine."""
    with BdbStore(db) as store, store.batch() as table:
        for n in range(2000):
            table.put(f"10.9.{n // 250}.{n % 250}", 1795323696)
    with open(db, "r+b") as f:
        f.seek(8192)
        f.write(b"\x5a" * 600)


def test_check_table_accepts_good_missing_and_empty_tables(tmp_path: Path) -> None:
    db = tmp_path / "relayers.db"
    assert check_table(db, tmp_path) is None  # missing
    db.touch()
    assert check_table(db, tmp_path) is None  # empty: a new table
    db.unlink()
    with BdbStore(db) as store:
        store.put("192.0.2.1", 1795323696)
    assert check_table(db, tmp_path) is None and db.exists()


@pytest.mark.parametrize("kind", ["damaged-page", "garbage", "truncated"])
def test_check_table_moves_a_damaged_table_and_the_positions_aside(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "relayers.db"
    damage(db)
    if kind == "garbage":
        db.write_bytes(b"this is not a database\n" * 500)
    elif kind == "truncated":
        os.truncate(db, 5000)
    assert verify(db) is not None
    state = tmp_path / "state"
    state.mkdir()
    (state / "positions.json").write_text("{}")
    moved = check_table(db, state, clock=lambda: 1795338902.0)
    assert moved == tmp_path / "relayers.db.corrupt-20261122T091502"
    assert moved.exists() and not db.exists()
    assert (state / "positions.json.before-repair").exists()
    assert not (state / "positions.json").exists()
    assert any(str(moved) in r.getMessage() for r in caplog.records)
    assert corrupt_name(db, 1795338902.0).name.endswith("-1")  # never overwrites an earlier one


def test_check_table_without_rebuild_refuses_and_touches_nothing(tmp_path: Path) -> None:
    db = tmp_path / "relayers.db"
    damage(db)
    before = db.read_bytes()
    with pytest.raises(StoreError, match=r"relayers\.db: .*refusing to start"):
        check_table(db, tmp_path, rebuild=False)
    assert db.read_bytes() == before


def test_daemon_rebuilds_a_damaged_table_from_the_logs(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon(tmp_path)
    damage(d.db)
    now = time.time()
    d.append(
        login("192.0.2.31", when=now - 7200),  # older than the lifetime: stays out
        login("192.0.2.32", when=now - 600),
        login("192.0.2.33", when=now - 5),
    )
    running(daemons, d)
    wait_until(lambda: d.has("192.0.2.32", "192.0.2.33"), 20, message="table rebuilt")
    assert "192.0.2.31" not in d.table()
    assert not any(k.startswith("10.9.") for k in d.table())
    assert list(d.db_dir.glob("relayers.db.corrupt-*")), "the damaged table was not kept"
    assert "moved to" in d.stderr()
    assert db_verify(d.db)


def test_daemon_refuses_an_unreadable_table_with_exit_74(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.db.mkdir()  # a directory where the table should be: nothing to repair, refuse
    proc = subprocess.run(
        [*POPWATCH, "-c", str(d.cfg), "run"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 74, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "fatal" in ln]
    assert len(lines) == 1 and str(d.db) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- an MTA holding a shared lock -------------------------------------------------------------


class SharedLock:
    """What Postfix's dict_db does during a lookup, held for as long as the test wants."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        os.close(self.fd)


def test_writer_waits_for_an_mta_shared_lock_then_flushes(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    lock = SharedLock(d.db)
    held_since = time.monotonic()
    try:
        d.append(login("192.0.2.41"), login("192.0.2.42"))
        # Readers share the lock, so the table can be read while the writer waits.
        deadline = held_since + 2.0
        while time.monotonic() < deadline:
            assert "192.0.2.41" not in d.table(), "written under an MTA's shared lock"
            time.sleep(0.1)
    finally:
        lock.release()
    wait_until(lambda: d.has("192.0.2.41", "192.0.2.42"), 20, message="flush after release")
    assert "keeping" not in d.stderr()  # waited quietly: 2 s is well within lock_timeout


def test_lock_held_longer_than_lock_timeout_is_an_error_then_retried(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path, lock_timeout='"0.5s"'))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    lock = SharedLock(d.db)
    try:
        d.append(login("192.0.2.51"))
        wait_until(lambda: "keeping" in d.stderr(), 20, message="lock timeout warning")
        warning = next(ln for ln in d.stderr().splitlines() if "keeping" in ln)
        assert str(d.db) in warning and "lock" in warning, warning
    finally:
        lock.release()
    wait_until(lambda: d.has("192.0.2.51"), 40, message="written after the lock was released")
    assert d.stop() == 0


def test_stopping_while_the_table_is_unwritable_says_what_was_not_written(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path, lock_timeout='"0.3s"'))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    lock = SharedLock(d.db)
    try:
        d.append(login("192.0.2.61"))
        wait_until(lambda: "keeping" in d.stderr(), 20, message="lock timeout warning")
        d.stop()
    finally:
        lock.release()
    assert "not written" in d.stderr() and "read again" in d.stderr(), d.stderr()
    # ... and they are: the next start catches up from the saved position.
    d2 = running(daemons, Daemon(tmp_path))
    wait_until(lambda: d2.has("192.0.2.61"), 20, message="caught up after restart")


def test_table_directory_removed_while_running_is_an_error_not_a_crash(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = running(daemons, Daemon(tmp_path))
    d.append(login("192.0.2.1"))
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    shutil.rmtree(d.db_dir)
    d.append(login("192.0.2.71"))
    wait_until(lambda: "keeping" in d.stderr(), 20, message="a warning")
    assert d.proc is not None and d.proc.poll() is None
    d.db_dir.mkdir()
    wait_until(lambda: d.has("192.0.2.71"), 40, message="written once the directory is back")

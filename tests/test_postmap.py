"""Interoperability with the real Postfix ``postmap``: it reads what popwatch writes, popwatch
reads (and keeps the form of) what postmap builds, and lookups during heavy writing never see
an error or a torn value.

postmap runs with ``-c DIR``, a private configuration directory holding an empty main.cf, so
the tests do not depend on (or touch) the machine's /etc/postfix.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from berkeleydb import db
from helpers import wait_until

from popwatch.store import StoreOptions, open_store

BIN = Path(sys.executable).parent
POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"
FUTURE = 4102444800

pytestmark = pytest.mark.skipif(
    not os.access(POSTMAP, os.X_OK),
    reason="Postfix's postmap is not installed (scripts/setup --test)",
)


@pytest.fixture
def pfconf(tmp_path: Path) -> Path:
    conf = tmp_path / "postfix-conf"
    conf.mkdir()
    (conf / "main.cf").write_text("")
    return conf


def postmap(conf: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTMAP, "-c", str(conf), *argv], capture_output=True, text=True, timeout=60, check=False
    )


def query(conf: Path, key: str, table: Path) -> str | None:
    """postmap -q: the value, or None when not found; any error fails the test."""
    out = postmap(conf, "-q", key, f"hash:{table.with_suffix('')}")
    assert out.stderr == "", out.stderr
    if out.returncode == 1:
        return None
    assert out.returncode == 0
    return out.stdout.rstrip("\n")


def listing(conf: Path, table: Path) -> list[str]:
    out = postmap(conf, "-s", f"hash:{table.with_suffix('')}")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return sorted(out.stdout.splitlines())


def popwatch(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "popwatch"), "-c", "/dev/null", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def raw_keys(path: Path) -> list[bytes]:
    h = db.DB()
    h.open(str(path), dbtype=db.DB_HASH, flags=db.DB_RDONLY)
    try:
        return sorted(h.keys())
    finally:
        h.close()


@pytest.mark.parametrize("key_format", ["sendmail", "postfix"])
def test_postmap_finds_what_the_cli_added(tmp_path: Path, pfconf: Path, key_format: str) -> None:
    path = tmp_path / "relayers.db"
    base = ["--db", str(path), "--key-format", key_format]
    assert popwatch(*base, "add", "192.0.2.10", "1000000001").returncode == 0
    assert popwatch(*base, "add", "2001:DB8::5", "1000000002").returncode == 0
    assert popwatch(*base, "add", "::ffff:198.51.100.7", "1000000003").returncode == 0
    assert popwatch(*base, "add", "203.0.113.1").returncode == 0
    assert query(pfconf, "192.0.2.10", path) == "1000000001"
    assert query(pfconf, "2001:db8::5", path) == "1000000002"
    # smtpd presents an IPv4-mapped client as plain IPv4: that is the key that must match
    assert query(pfconf, "198.51.100.7", path) == "1000000003"
    assert re.fullmatch(r"\d{10}", query(pfconf, "203.0.113.1", path) or "")
    assert query(pfconf, "192.0.2.11", path) is None
    assert query(pfconf, "192.0.2", path) is None  # never a network key
    assert listing(pfconf, path) == sorted(
        [
            "192.0.2.10\t1000000001",
            "2001:db8::5\t1000000002",
            "198.51.100.7\t1000000003",
            f"203.0.113.1\t{query(pfconf, '203.0.113.1', path)}",
        ]
    )
    nul = key_format == "postfix"
    assert all(k.endswith(b"\0") == nul for k in raw_keys(path))
    assert popwatch(*base, "delete", "192.0.2.10").returncode == 0
    assert query(pfconf, "192.0.2.10", path) is None


def test_prefixed_keys_for_sendmail_rulesets(tmp_path: Path, pfconf: Path) -> None:
    path = tmp_path / "relayers.db"
    store = open_store(path, StoreOptions(key_prefix="POP:", ipv6_prefix="IPv6:"))
    store.put("2001:db8::5", 7)
    store.put("192.0.2.1", 8)
    assert query(pfconf, "POP:IPv6:2001:db8::5", path) == "7"  # postmap folds the query
    assert query(pfconf, "pop:ipv6:2001:db8::5", path) == "7"
    assert listing(pfconf, path) == ["pop:192.0.2.1\t8", "pop:ipv6:2001:db8::5\t7"]


def test_postmap_built_table_is_read_and_stays_nul_keyed(tmp_path: Path, pfconf: Path) -> None:
    src = tmp_path / "relayers"
    src.write_text("# made by hand\n192.0.2.1 906502527\n2001:db8::5 4102444800\n")
    assert postmap(pfconf, f"hash:{src}").returncode == 0
    path = tmp_path / "relayers.db"
    assert all(k.endswith(b"\0") for k in raw_keys(path))  # postmap writes NUL keys
    dump = popwatch("--db", str(path), "dump")
    assert dump.returncode == 0 and dump.stderr == ""
    assert dump.stdout == (
        "# timestamp (UTC): Tue Sep 22 22:15:27 1998\n"
        "192.0.2.1 906502527\n"
        "# timestamp (UTC): Fri Jan  1 00:00:00 2100\n"
        "2001:db8::5 4102444800\n"
    )
    # default key_format is sendmail (no NUL), but the file's own form wins
    assert popwatch("--db", str(path), "add", "198.51.100.1", "5").returncode == 0
    assert popwatch("--db", str(path), "delete", "192.0.2.1").returncode == 0
    assert raw_keys(path) == [b"198.51.100.1\0", b"2001:db8::5\0"]
    assert query(pfconf, "198.51.100.1", path) == "5"
    assert listing(pfconf, path) == ["198.51.100.1\t5", "2001:db8::5\t4102444800"]


def test_dump_rebuilds_an_equivalent_map_with_postmap_and_with_load(
    tmp_path: Path, pfconf: Path
) -> None:
    path = tmp_path / "relayers.db"
    store = open_store(path)
    with store.batch() as view:
        for i in range(40):
            view.put(f"198.51.100.{i}", 1_000_000_000 + i)
        view.put("2001:db8::1", FUTURE)
        view.put("::1", 5)
    dump = popwatch("--db", str(path), "dump")
    assert dump.returncode == 0
    text = tmp_path / "rebuilt"
    text.write_text(dump.stdout)
    assert postmap(pfconf, f"hash:{text}").returncode == 0
    original = listing(pfconf, path)
    assert len(original) == 42
    assert listing(pfconf, tmp_path / "rebuilt.db") == original
    loaded = tmp_path / "loaded.db"
    out = popwatch("--db", str(loaded), "load", str(text))
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    assert listing(pfconf, loaded) == original
    # load into an existing table replaces it in place
    inode = loaded.stat().st_ino
    assert popwatch("--db", str(loaded), "load", "-", stdin="192.0.2.99 1\n").returncode == 0
    assert listing(pfconf, loaded) == ["192.0.2.99\t1"]
    assert loaded.stat().st_ino == inode


LOOKER = r"""
import subprocess, sys, os
postmap, conf, table, stop = sys.argv[1:5]
keys = sys.argv[5:]
n = 0
while not os.path.exists(stop):
    for key in keys:
        p = subprocess.run([postmap, "-c", conf, "-q", key, "hash:" + table],
                           capture_output=True, text=True)
        print(p.returncode, repr(p.stdout), repr(p.stderr), flush=True)
        n += 1
print("done", n, flush=True)
"""


def test_lookups_during_10000_updates_never_fail(tmp_path: Path, pfconf: Path) -> None:
    path = tmp_path / "relayers.db"
    store = open_store(path, StoreOptions(key_format="postfix", lock_timeout=30))
    store.put("192.0.2.200", 1)
    stop = tmp_path / "stop"
    keys = ["198.51.100.3", "198.51.100.50", "2001:db8::7", "192.0.2.200"]
    looker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LOOKER,
            POSTMAP,
            str(pfconf),
            str(path.with_suffix("")),
            str(stop),
            *keys,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert looker.stdout is not None
        first = looker.stdout.readline()  # the looker is up and has done one lookup
        assert first.startswith("0 ") or first.startswith("1 "), first
        started = time.monotonic()
        updates = 0
        base = 1_700_000_000
        for r in range(95):  # 95 batches of 100 ...
            with store.batch() as view:
                for i in range(100):
                    ip = f"198.51.100.{i}" if i < 90 else f"2001:db8::{i - 85:x}"
                    if r % 7 == 6 and i % 3 == 0:
                        view.delete(ip)  # some lookups must find nothing
                    else:
                        view.put(ip, base + r * 100 + i)
                    updates += 1
        for j in range(500):  # ... and 500 single writes, each its own lock and sync
            store.put(f"203.0.113.{j % 200}", base + j)
            updates += 1
        elapsed = time.monotonic() - started
    finally:
        stop.touch()
        out, _ = looker.communicate(timeout=60)
    lines = [first.rstrip("\n"), *out.splitlines()]
    done = lines.pop()
    assert done.startswith("done ")
    answers = [ln.split(" ", 2) for ln in lines if ln.strip()]
    assert updates == 10_000
    assert len(answers) >= 20, f"only {len(answers)} lookups ran during {elapsed:.1f} s"
    found = 0
    for code, value, err in answers:
        assert err == "''", f"postmap said {err}"
        assert code in ("0", "1"), (code, value)
        if code == "0":
            assert re.fullmatch(r"'\d{1,10}\\n'", value), value
            found += 1
        else:
            assert value == "''"
    assert found > 0
    print(f"\n{updates} updates in {elapsed:.2f} s alongside {len(answers)} postmap lookups")
    assert query(pfconf, "192.0.2.200", path) == "1"


def test_wait_until_reports_timeouts() -> None:
    # wait_until is shared with other test files; make sure it reports timeouts.
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for never"):
        wait_until(lambda: False, timeout=0.05, message="never")
    assert wait_until(lambda: 5, timeout=1) == 5

"""Configuration mistakes and privileges (issue 7, item 7).

* A table of bad configurations: ``popwatch run`` (a real subprocess) exits 78 with exactly
  one ``popwatch: fatal:`` line naming the file, the key and the reason, no traceback, and
  nothing started (no table created).
* ``popwatch run`` started as root warns that it needs no root; started as an ordinary user
  (uid 65534 through ``setpriv``) it does not warn, and it runs with write access to nothing
  but the table's directory and the state directory.  Without write access to those, it stops
  with one clear line: 74 for the table, 78 for the state directory.

The unprivileged runs keep CAP_DAC_READ_SEARCH (read-only, as an ambient capability) only
because the interpreter of this test venv lives under /root (mode 0700); write permissions are
checked for real.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

from popwatch.errors import StoreError
from popwatch.store.bdb import BdbStore

POPWATCH = [sys.executable, "-m", "popwatch"]
AS_NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)


def base(tmp: Path) -> str:
    (tmp / "mail.log").touch()
    (tmp / "db").mkdir(exist_ok=True)
    return (
        f'database = "{tmp / "db" / "relayers.db"}"\nlogs = ["{tmp / "mail.log"}"]\n'
        f'state_dir = "{tmp / "state"}"\n'
    )


# (id, extra TOML, words the one fatal line must contain besides the file name).
# "{tmp}" is replaced by the test's directory.
CASES = [
    ("unknown-key", "lifetme = 30\n", ['key "lifetme"', "unknown key"]),
    ("bad-duration", 'lifetime = "soon"\n', ['key "lifetime"', "bad duration", "soon"]),
    ("zero-lifetime", "lifetime = 0\n", ['key "lifetime"', "greater than zero"]),
    ("negative-duration", 'lock_timeout = "-5s"\n', ['key "lock_timeout"', "bad duration"]),
    ("key-format", 'key_format = "exim"\n', ['key "key_format"', "exim"]),
    ("bad-network", 'ignore = ["192.0.2.0/33"]\n', ['key "ignore"', "bad network"]),
    ("not-a-network", 'ignore = ["mail.example.org"]\n', ['key "ignore"', "bad network"]),
    ("line-length", "max_line_length = 10\n", ['key "max_line_length"', "at least 256"]),
    ("logs-type", "logs = 5\n", ['key "logs"', "list of strings"]),
    ("journal-type", 'journal = "yes"\n', ['key "journal"', "true or false"]),
    ("empty-database", 'database = ""\n', ['key "database"', "empty"]),
    ("prefix-space", 'key_prefix = "POP: "\n', ['key "key_prefix"', "white space"]),
    ("log-level", 'log_level = "loud"\n', ['key "log_level"', "loud"]),
    ("flush-vs-lifetime", 'lifetime = "1m"\nflush_interval = "2m"\n', ['"flush_interval"']),
    ("bad-toml", "lifetime = = 3\n", ["bad TOML"]),
    ("pattern-table-type", "pattern = 3\n", ['key "pattern"']),
    ("unknown-pattern", 'patterns = ["nosuch"]\n', ['"patterns"', "nosuch"]),
    ("unknown-pattern-table", "[pattern.nosuch]\nx = 1\n", ["pattern.nosuch", "no such pattern"]),
    ("bad-pattern-option", "[pattern.qpopper]\nbogus = 1\n", ["pattern.qpopper", "bogus"]),
    ("state-dir-under-a-file", 'state_dir = "{tmp}/mail.log/state"\n', ['"state_dir"']),
]


def write_config(tmp: Path, extra: str) -> Path:
    # Later keys of the same name would be a TOML error: put the case's keys first and drop
    # the base's duplicates.
    keys = {line.split("=")[0].strip() for line in extra.splitlines() if "=" in line}
    kept = [ln for ln in base(tmp).splitlines() if ln.split("=")[0].strip() not in keys]
    cfg = tmp / "popwatch.toml"
    body = extra.replace("{tmp}", str(tmp))
    if body.lstrip().startswith("["):  # a table must come after the top-level keys
        cfg.write_text("\n".join(kept) + "\n" + body)
    else:
        cfg.write_text(body + "\n".join(kept) + "\n")
    return cfg


@pytest.mark.parametrize("case,extra,words", CASES, ids=[c[0] for c in CASES])
def test_bad_configuration_is_exit_78_with_file_key_and_reason(
    tmp_path: Path, case: str, extra: str, words: list[str]
) -> None:
    cfg = write_config(tmp_path, extra)
    proc = subprocess.run(
        [*POPWATCH, "-c", str(cfg), "run"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 78, proc.stderr
    fatal = [ln for ln in proc.stderr.splitlines() if ln.startswith("popwatch: fatal: ")]
    assert len(fatal) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = fatal[0]
    assert str(cfg) in line, f"the file is not named: {line}"
    for word in words:
        assert word in line, f"{word!r} missing: {line}"
    assert not (tmp_path / "db" / "relayers.db").exists(), "table created despite the bad config"


@pytest.mark.parametrize(
    "problem", ["missing", "directory", "not-utf8"], ids=["missing", "directory", "not-utf8"]
)
def test_unreadable_configuration_file_is_exit_78(tmp_path: Path, problem: str) -> None:
    cfg = tmp_path / "popwatch.toml"
    if problem == "directory":
        cfg.mkdir()
    elif problem == "not-utf8":
        cfg.write_bytes(b'database = "\xff"\n')
    proc = subprocess.run([*POPWATCH, "-c", str(cfg), "run"], capture_output=True, text=True)
    assert proc.returncode == 78
    assert proc.stderr.count("popwatch: fatal:") == 1 and str(cfg) in proc.stderr


def test_broken_site_pattern_is_exit_78_naming_file_and_line(tmp_path: Path) -> None:
    site = tmp_path / "patterns.d"
    site.mkdir()
    (site / "uw-imap.py").write_text("def pattern(options):\n    return 1 +\n")
    cfg = write_config(tmp_path, f'pattern_dirs = ["{site}"]\n')
    proc = subprocess.run([*POPWATCH, "-c", str(cfg), "run"], capture_output=True, text=True)
    assert proc.returncode == 78
    assert f"{site / 'uw-imap.py'}, line 2" in proc.stderr


# -- privileges -------------------------------------------------------------------------------


class Run:
    def __init__(self, home: Path, prefix: list[str]) -> None:
        self.home = home
        self.db = home / "db" / "relayers.db"
        self.errpath = home / "stderr"
        cfg = home / "popwatch.toml"
        cfg.write_text(base(home) + 'pattern_dirs = []\nflush_interval = "0.2s"\n')
        with open(self.errpath, "wb") as err:
            self.proc = subprocess.Popen(prefix + POPWATCH + ["-c", str(cfg), "run"], stderr=err)

    def stderr(self) -> str:
        return self.errpath.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="popwatch-priv-"))
    path.chmod(0o755)
    (path / "db").mkdir()
    (path / "state").mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def login(ip: str) -> bytes:
    stamp = time.strftime("%b %e %H:%M:%S")
    return f"{stamp} mailhost ipop3d[4242]: Login user=alice host=[{ip}] nmsgs=1/1\n".encode()


def has(db: Path, ip: str) -> bool:
    try:
        with BdbStore(db, create=False) as store:
            return store.get(ip) is not None
    except StoreError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_run_as_root_warns(home: Path) -> None:
    run = Run(home, [])
    try:
        wait_until(lambda: "started" in run.stderr(), 20, message="start-up")
        warning = [ln for ln in run.stderr().splitlines() if "root" in ln]
        assert len(warning) == 1 and "warning" in warning[0], run.stderr()
        assert str(home / "db") in warning[0] and str(home / "state") in warning[0]
    finally:
        assert run.stop() == 0


@needs_root
def test_run_as_a_dedicated_user_needs_only_the_table_and_state_directories(home: Path) -> None:
    for d in ("db", "state"):
        os.chown(home / d, 65534, 65534)
    (home / "mail.log").write_bytes(login("192.0.2.1"))
    (home / "mail.log").chmod(0o640)  # root:root 0640 - readable via the capability only
    run = Run(home, AS_NOBODY)
    try:
        wait_until(lambda: has(run.db, "192.0.2.1"), 20, message="login written as nobody")
        assert "root" not in run.stderr(), run.stderr()
        assert os.stat(run.db).st_uid == 65534
        assert os.stat(run.db).st_mode & 0o777 == 0o644, "the MTA must be able to read it"
    finally:
        assert run.stop() == 0


@needs_root
def test_unwritable_table_directory_is_exit_74_in_one_line(home: Path) -> None:
    os.chown(home / "state", 65534, 65534)  # only the table's directory stays root's
    run = Run(home, AS_NOBODY)
    assert run.proc.wait(20) == 74
    fatal = [ln for ln in run.stderr().splitlines() if "fatal" in ln]
    assert len(fatal) == 1 and str(run.db) in fatal[0] and "permission denied" in fatal[0]


@needs_root
def test_unwritable_state_directory_is_exit_78_in_one_line(home: Path) -> None:
    os.chown(home / "db", 65534, 65534)
    run = Run(home, AS_NOBODY)
    assert run.proc.wait(20) == 78
    fatal = [ln for ln in run.stderr().splitlines() if "fatal" in ln]
    assert len(fatal) == 1 and str(home / "state") in fatal[0], run.stderr()
    assert "Traceback" not in run.stderr()

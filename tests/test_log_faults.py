"""Log-file faults under a real ``popwatch run`` (issue 7, item 5).

The followed log becomes unreadable, disappears for a while, is replaced by a directory, or
loses its whole directory.  In every case the daemon must warn (naming the file), keep
running, retry, and resume when the log is back: a login written after the fault ends up in
the table, and none from before is lost.

Root ignores permission bits, so the unreadable-log test runs the daemon as root *without*
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv --bounding-set``): the same permission
checks an unprivileged ``popwatch`` user meets, while the interpreter under /root stays
reachable.
"""

from __future__ import annotations

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
from popwatch.store.bdb import BdbStore

POPWATCH = [sys.executable, "-m", "popwatch"]
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def login(ip: str) -> bytes:
    stamp = time.strftime("%b %e %H:%M:%S")
    return f"{stamp} mailhost ipop3d[4242]: Login user=alice host=[{ip}] nmsgs=1/1\n".encode()


class Daemon:
    def __init__(self, home: Path, log: Path, prefix: list[str] | None = None) -> None:
        self.home, self.log = home, log
        self.db = home / "db" / "relayers.db"
        self.errpath = home / "stderr"
        (home / "db").mkdir(exist_ok=True)
        self.cfg = home / "popwatch.toml"
        self.cfg.write_text(
            f'database = "{self.db}"\nlogs = ["{log}"]\nstate_dir = "{home / "state"}"\n'
            'pattern_dirs = []\nlifetime = "1h"\nflush_interval = "0.2s"\n'
        )
        with open(self.errpath, "ab") as err:
            self.proc = subprocess.Popen(
                (prefix or []) + POPWATCH + ["-c", str(self.cfg), "run"], stderr=err
            )

    def append(self, *lines: bytes) -> None:
        with open(self.log, "ab") as f:
            f.write(b"".join(lines))

    def stderr(self) -> str:
        return self.errpath.read_bytes().decode(errors="replace")

    def has(self, *ips: str) -> bool:
        try:
            with BdbStore(self.db, create=False) as store:
                got = dict(store.items())
        except StoreError:
            return False
        return all(ip in got for ip in ips)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
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
        d.stop()


def warnings_about(d: Daemon, log: Path) -> list[str]:
    return [ln for ln in d.stderr().splitlines() if "warning" in ln and str(log) in ln]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_unreadable_log_warns_retries_and_resumes(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(login("192.0.2.1"))
    d = Daemon(tmp_path, log, prefix=NO_DAC)
    daemons.append(d)
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    # Rotation creates the new log with the wrong mode (a logrotate "create 0600 root").
    os.rename(log, tmp_path / "mail.log.1")
    # Created unreadable in one step: a chmod after the write would race with the daemon.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)
    os.write(fd, login("192.0.2.2"))
    os.close(fd)
    wait_until(lambda: warnings_about(d, log), 20, message="a warning naming the log")
    assert any("ermission denied" in w for w in warnings_about(d, log)), d.stderr()
    assert d.alive()
    before = len(warnings_about(d, log))
    d.append(login("192.0.2.3"))  # root writes on: still unreadable for the daemon
    log.chmod(0o640)
    wait_until(lambda: d.has("192.0.2.2", "192.0.2.3"), 30, message="logins after chmod")
    assert len(warnings_about(d, log)) <= before + 1, "one warning per change of state"
    assert d.stop() == 0


def test_log_disappearing_for_a_while_then_returning(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(login("192.0.2.1"))
    d = Daemon(tmp_path, log)
    daemons.append(d)
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    log.unlink()
    wait_until(lambda: warnings_about(d, log), 20, message="a warning about the missing log")
    assert d.alive()
    log.write_bytes(login("192.0.2.11"))
    wait_until(lambda: d.has("192.0.2.11"), 30, message="login in the returned log")
    assert d.stop() == 0


def test_log_replaced_by_a_directory(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(login("192.0.2.1"))
    d = Daemon(tmp_path, log)
    daemons.append(d)
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    log.unlink()
    log.mkdir()
    wait_until(
        lambda: any("directory" in w for w in warnings_about(d, log)), 20, message="a warning"
    )
    assert d.alive()
    log.rmdir()
    log.write_bytes(login("192.0.2.21"))
    wait_until(lambda: d.has("192.0.2.21"), 30, message="login after the directory went")
    assert d.stop() == 0
    assert "Traceback" not in d.stderr()


def test_log_directory_removed_and_recreated(tmp_path: Path, daemons: list[Daemon]) -> None:
    logdir = tmp_path / "log"
    logdir.mkdir()
    log = logdir / "mail.log"
    log.write_bytes(login("192.0.2.1"))
    d = Daemon(tmp_path, log)
    daemons.append(d)
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    shutil.rmtree(logdir)
    wait_until(lambda: warnings_about(d, log), 20, message="a warning about the missing log")
    assert d.alive()
    logdir.mkdir()
    log.write_bytes(login("192.0.2.31"))
    # The inotify watch died with the directory; the safety poll (10 s) must still find it.
    wait_until(lambda: d.has("192.0.2.31"), 30, message="login in the recreated directory")
    assert d.stop() == 0


def test_lines_appended_to_the_log_while_unreadable_are_not_lost(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The same inode goes unreadable and back: reading continues at the old offset."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    log = tmp_path / "mail.log"
    log.write_bytes(login("192.0.2.1"))
    d = Daemon(tmp_path, log, prefix=NO_DAC)
    daemons.append(d)
    wait_until(lambda: d.has("192.0.2.1"), 20, message="first login")
    log.chmod(0o000)  # the daemon keeps its open descriptor: that is fine and expected
    d.append(login("192.0.2.41"))
    wait_until(lambda: d.has("192.0.2.41"), 30, message="login appended to the open file")
    log.chmod(0o644)
    d.append(login("192.0.2.42"))
    wait_until(lambda: d.has("192.0.2.42"), 30, message="login after chmod back")

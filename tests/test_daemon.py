"""``popwatch run`` as a real process: a temp log, a temp config, a real Berkeley DB table.

The daemon is started as a subprocess with a site pattern of its own (``testpop``, only that
one enabled) so these tests do not depend on which shipped patterns exist.  Its systemd
notifications go to a real AF_UNIX datagram socket; STATUS= counters tell the tests when a line
has been read, so nothing here sleeps to synchronize.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

from popwatch.store import open_store

PATTERN = """\
from popwatch.grammar import LOGIN, OTHER, Pattern, Rule, bracketed_ip, lit, rest_of_line, word


def pattern(options):
    login = lit("Login user=") + word("user") + lit("host=") + bracketed_ip("ip")
    failed = lit("Login failed") + rest_of_line()
    return Pattern(
        programs=("testpop", "ipop3d"),
        rules=(
            Rule("login", login, LOGIN, ("Login user=",)),
            Rule("failed", failed, OTHER, ("Login failed",)),
        ),
    )
"""


def syslog_line(
    ip: str, when: float | None = None, user: str = "bob", prog: str = "testpop"
) -> str:
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(time.time() if when is None else when))
    return f"{stamp} mail {prog}[4242]: Login user={user} host=[{ip}]\n"


class NotifySocket:
    """The systemd side of sd_notify: a bound datagram socket collecting messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def collect(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def has(self, key: str, value: str = "1", after: int = 0) -> int | None:
        """Index of the first message at or after ``after`` with key=value."""
        for i, m in enumerate(self.collect()[after:], after):
            if m.get(key) == value:
                return i
        return None

    def wait(self, key: str, value: str = "1", after: int = 0, timeout: float = 10) -> int:
        return (
            wait_until(
                lambda: (i := self.has(key, value, after)) is not None and i + 1,
                timeout,
                message=f"{key}={value} on the notify socket",
            )
            - 1
        )

    def status(self) -> dict[str, int]:
        """The counters of the newest STATUS= message."""
        for m in reversed(self.collect()):
            if "STATUS" in m and m["STATUS"].startswith("lines"):
                return {k: int(v) for k, v in (p.split(" ") for p in m["STATUS"].split(", "))}
        return {}

    def close(self) -> None:
        self.sock.close()


class Popwatch:
    """One ``popwatch run`` process with its own log, config, state and table."""

    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.tmp = tmp
        self.log = tmp / "mail.log"
        self.db = tmp / "db" / "relayers.db"
        self.state = tmp / "state"
        self.config = tmp / "popwatch.toml"
        (tmp / "patterns").mkdir(exist_ok=True)
        (tmp / "patterns" / "testpop.py").write_text(PATTERN)
        self.db.parent.mkdir(exist_ok=True)
        self.log.touch()
        self.settings: dict[str, Any] = {
            "database": str(self.db),
            "state_dir": str(self.state),
            "logs": [str(self.log)],
            "pattern_dirs": [str(tmp / "patterns")],
            "patterns": ["testpop"],
            "ignore": [],
            "lifetime": "30m",
            "flush_interval": "1s",
            "log_level": "debug",
        }
        self.settings.update(settings)
        self.write_config()
        self.notify = NotifySocket(tmp / "notify.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = tmp / "stderr.txt"

    def write_config(self, text: str | None = None) -> None:
        if text is None:
            lines = [f"{k} = {json.dumps(v)}" for k, v in self.settings.items()]
            text = "\n".join(lines) + "\n"
        self.config.write_text(text)

    def start(self, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY", "WATCHDOG"))}
        environ["NOTIFY_SOCKET"] = str(self.notify.path)
        environ.update(env or {})
        self.mark = len(self.notify.collect())
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "popwatch", "-c", str(self.config), "run", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=environ,
            )
        if ready:
            wait_until(
                lambda: (
                    self.notify.has("READY", after=self.mark) is not None
                    or self.proc is None
                    or self.proc.poll() is not None
                ),
                15,
                message="READY=1",
            )
            assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def append(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(text)

    def table(self) -> dict[str, int]:
        if not self.db.exists():
            return {}
        store = open_store(self.db, create=False)
        try:
            return dict(store.items())
        finally:
            store.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def lines_read(self) -> int:
        return self.notify.status().get("lines", -1)


@pytest.fixture
def pw(tmp_path: Path) -> Iterator[Popwatch]:
    p = Popwatch(tmp_path)
    yield p
    p.stop()
    p.notify.close()


def test_login_reaches_table_fast_and_failed_login_does_not(pw: Popwatch) -> None:
    pw.start()
    pw.append(syslog_line("192.0.2.10"))
    t0 = time.monotonic()
    wait_until(lambda: "192.0.2.10" in pw.table(), 5, 0.005, "192.0.2.10 in the table")
    latency = time.monotonic() - t0
    print(f"login line to table: {latency * 1000:.1f} ms")
    assert latency < 1.0
    assert abs(pw.table()["192.0.2.10"] - time.time()) < 5
    pw.append(syslog_line("192.0.2.11").replace("Login user=bob", "Login failed user=bob"))
    pw.append(syslog_line("192.0.2.12", prog="postfix/smtpd"))
    wait_until(lambda: pw.lines_read() >= 3, 5, message="three lines read")
    assert set(pw.table()) == {"192.0.2.10"}


def test_relogin_of_fresh_address_causes_no_write(pw: Popwatch) -> None:
    pw.start()
    pw.append(syslog_line("192.0.2.20"))
    wait_until(lambda: "192.0.2.20" in pw.table(), 5)
    stamp, mtime = pw.table()["192.0.2.20"], pw.db.stat().st_mtime_ns
    for _ in range(5):
        pw.append(syslog_line("192.0.2.20"))
    wait_until(lambda: pw.notify.status().get("logins", 0) >= 6, 5, message="6 logins seen")
    assert pw.notify.status()["written"] == 1
    assert pw.db.stat().st_mtime_ns == mtime
    assert pw.table()["192.0.2.20"] == stamp


def test_old_line_and_ignored_network_write_nothing(pw: Popwatch) -> None:
    pw.settings["ignore"] = ["198.51.100.0/24"]
    pw.write_config()
    pw.start()
    pw.append(syslog_line("192.0.2.30", when=time.time() - 3600))  # older than the lifetime
    pw.append(syslog_line("198.51.100.7"))
    pw.append(syslog_line("192.0.2.31"))
    wait_until(lambda: "192.0.2.31" in pw.table(), 5)
    assert set(pw.table()) == {"192.0.2.31"}


def test_expiry_on_quiet_log_keeps_pinned(tmp_path: Path) -> None:
    pw = Popwatch(tmp_path, lifetime="3s", expire_interval="1s", flush_interval="0s")
    try:
        pinned = int(time.time()) + 10 * 365 * 86400
        store = open_store(pw.db)
        store.put("203.0.113.1", pinned)
        store.close()
        pw.start()
        pw.append(syslog_line("192.0.2.40"))
        wait_until(lambda: "192.0.2.40" in pw.table(), 5)
        t0 = time.monotonic()
        wait_until(lambda: "192.0.2.40" not in pw.table(), 10, message="expiry")
        print(f"expired after {time.monotonic() - t0:.1f} s (lifetime 3 s, interval 1 s)")
        assert pw.table() == {"203.0.113.1": pinned}
        wait_until(lambda: pw.notify.status().get("expired") == 1, 5, message="STATUS expired 1")
    finally:
        pw.stop()
        pw.notify.close()


@pytest.mark.skipif(shutil.which("postconf") is None, reason="postconf (Postfix) not installed")
def test_ignore_mynetworks_asks_the_real_postconf(pw: Popwatch) -> None:
    mynetworks = subprocess.run(
        ["postconf", "-h", "mynetworks"], capture_output=True, text=True, timeout=30
    ).stdout
    if "127.0.0.0/8" not in mynetworks:
        pytest.skip(f"this host's mynetworks does not contain loopback: {mynetworks!r}")
    pw.settings["ignore_mynetworks"] = True
    pw.write_config()
    pw.start()
    pw.append(syslog_line("127.0.0.2"))
    pw.append(syslog_line("192.0.2.33"))
    wait_until(lambda: "192.0.2.33" in pw.table(), 5)
    wait_until(lambda: pw.notify.status().get("logins") == 2, 5, message="two logins seen")
    assert set(pw.table()) == {"192.0.2.33"}


def test_sigterm_final_flush_and_exit_0(pw: Popwatch) -> None:
    pw.settings["flush_interval"] = "1m"
    pw.write_config()
    pw.start()
    pw.append(syslog_line("192.0.2.50"))
    wait_until(lambda: "192.0.2.50" in pw.table(), 5)  # leading edge
    pw.append(syslog_line("192.0.2.51"))  # the second flush credit (flush_burst 2): at once
    wait_until(lambda: "192.0.2.51" in pw.table(), 5)
    pw.append(syslog_line("192.0.2.52"))  # no credit left: waits for the next, a minute away
    wait_until(lambda: pw.notify.status().get("pending") == 1, 5, message="one address pending")
    assert "192.0.2.52" not in pw.table()
    pw.signal(signal.SIGTERM)
    assert pw.wait_exit() == 0, pw.stderr()
    assert set(pw.table()) == {"192.0.2.50", "192.0.2.51", "192.0.2.52"}
    assert pw.notify.has("STOPPING") is not None


def offsets_saved(state: Path, log: Path) -> bool:
    try:
        data = json.loads((state / "positions.json").read_text())
    except (OSError, ValueError):
        return False
    cur = (data.get("files", {}).get(str(log)) or {}).get("current") or {}
    return bool(cur.get("offset") == log.stat().st_size)


def test_sigkill_then_restart_resumes_without_losing_lines(pw: Popwatch) -> None:
    pw.start()
    first = [f"192.0.2.{i}" for i in range(60, 70)]
    pw.append("".join(syslog_line(ip) for ip in first))
    wait_until(lambda: set(first) <= set(pw.table()), 5)
    wait_until(lambda: offsets_saved(pw.state, pw.log), 5, message="positions saved")
    pw.signal(signal.SIGKILL)
    assert pw.wait_exit() == -signal.SIGKILL
    # Written while the daemon is down, plus a partial line finished after the restart.
    later = [f"198.51.100.{i}" for i in range(1, 6)]
    pw.append("".join(syslog_line(ip) for ip in later))
    half = syslog_line("203.0.113.5")
    pw.append(half[:20])
    pw.start()
    wait_until(lambda: set(later) <= set(pw.table()), 5, message="lines written while down")
    assert "203.0.113.5" not in pw.table()
    pw.append(half[20:])
    wait_until(lambda: "203.0.113.5" in pw.table(), 5, message="the completed partial line")
    assert set(pw.table()) == set(first) | set(later) | {"203.0.113.5"}
    # Resumed from the saved position: the first ten lines were not read again.
    wait_until(lambda: pw.lines_read() == len(later) + 1, 5, message="only new lines read")


def test_sighup_reload_good_then_bad_configuration(pw: Popwatch) -> None:
    pw.start()
    pw.append(syslog_line("198.51.100.9"))
    wait_until(lambda: "198.51.100.9" in pw.table(), 5)
    # Good: now ignore 198.51.100.0/24.
    pw.settings["ignore"] = ["198.51.100.0/24"]
    pw.write_config()
    mark = len(pw.notify.collect())
    pw.signal(signal.SIGHUP)
    reloading = pw.notify.wait("RELOADING", after=mark)
    assert "MONOTONIC_USEC" in pw.notify.messages[reloading]
    pw.notify.wait("READY", after=reloading)
    pw.append(syslog_line("198.51.100.10"))
    pw.append(syslog_line("192.0.2.80"))
    wait_until(lambda: "192.0.2.80" in pw.table(), 5)
    assert "198.51.100.10" not in pw.table()
    # Bad: an unknown key.  The old configuration keeps running.
    pw.write_config(pw.config.read_text() + 'no_such_key = "x"\n')
    mark = len(pw.notify.collect())
    pw.signal(signal.SIGHUP)
    reloading = pw.notify.wait("RELOADING", after=mark)
    pw.notify.wait("READY", after=reloading)
    err = wait_until(lambda: "reload failed" in pw.stderr() and pw.stderr(), 5)
    assert 'key "no_such_key": unknown key' in err
    assert pw.proc is not None and pw.proc.poll() is None
    pw.append(syslog_line("198.51.100.11"))
    pw.append(syslog_line("192.0.2.81"))
    wait_until(lambda: "192.0.2.81" in pw.table(), 5)
    assert "198.51.100.11" not in pw.table()  # still the good configuration's ignore list


def test_sighup_reload_switches_log_file(pw: Popwatch) -> None:
    pw.start()
    other = pw.tmp / "other.log"
    other.touch()
    pw.settings["logs"] = [str(other)]
    pw.write_config()
    mark = len(pw.notify.collect())
    pw.signal(signal.SIGHUP)
    pw.notify.wait("READY", after=pw.notify.wait("RELOADING", after=mark))
    with open(other, "a") as f:
        f.write(syslog_line("192.0.2.90"))
    wait_until(lambda: "192.0.2.90" in pw.table(), 5)


def test_idle_daemon_uses_no_cpu(pw: Popwatch) -> None:
    pw.start()
    pw.append(syslog_line("192.0.2.95"))
    wait_until(lambda: "192.0.2.95" in pw.table(), 5)
    before = pw.cpu_seconds()
    deadline = time.monotonic() + 2.0
    wait_until(lambda: time.monotonic() >= deadline, 5, 0.1)  # the measured idle period
    used = pw.cpu_seconds() - before
    print(f"CPU used in 2 s idle: {used:.3f} s")
    assert used < 0.1


def test_bad_configuration_at_start_is_exit_78(pw: Popwatch) -> None:
    pw.write_config('lifetime = "soon"\n')
    pw.start(ready=False)
    assert pw.wait_exit() == 78
    assert 'key "lifetime": bad duration "soon"' in pw.stderr()
    assert pw.notify.has("READY") is None


def test_unopenable_table_is_exit_74(pw: Popwatch) -> None:
    (pw.tmp / "not-a-dir").write_text("a file where the table's directory should be\n")
    pw.settings["database"] = str(pw.tmp / "not-a-dir" / "relayers.db")
    pw.write_config()
    pw.start(ready=False)
    assert pw.wait_exit() == 74
    assert "popwatch: fatal:" in pw.stderr() and "Traceback" not in pw.stderr()


def test_root_warning(pw: Popwatch) -> None:
    pw.start()
    if os.geteuid() == 0:
        assert "running as root" in pw.stderr()
    else:
        assert "running as root" not in pw.stderr()


# -- popwatch scan: the same pipeline over whole files ----------------------------------------


def scan(pw: Popwatch, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popwatch", "-c", str(pw.config), *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_scan_writes_recent_logins_once_and_exits(tmp_path: Path) -> None:
    pw = Popwatch(tmp_path)
    now = time.time()
    pw.append(
        syslog_line("192.0.2.1", now - 60)
        + syslog_line("192.0.2.2", now - 7200)  # older than the lifetime
        + syslog_line("192.0.2.3", now - 10).replace("Login user", "Login failed user")
        + "garbage \xff line\n"
        + syslog_line("2001:DB8::5", now - 5)
        + syslog_line("192.0.2.1", now - 1)
    )
    r = scan(pw, "-v", "scan", str(pw.log))
    assert r.returncode == 0, r.stderr
    table = pw.table()
    assert set(table) == {"192.0.2.1", "2001:db8::5"}
    assert abs(table["192.0.2.1"] - (now - 1)) <= 1  # the newest of its two logins
    assert f"{pw.log}: 6 lines, 4 logins" in r.stderr
    assert "1 ignored" in r.stderr and "2 written" in r.stderr
    assert not pw.state.exists()  # scan keeps no positions
    pw.notify.close()


def test_scan_reads_stdin(tmp_path: Path) -> None:
    pw = Popwatch(tmp_path)
    r = scan(pw, "scan", "-", stdin=syslog_line("198.51.100.1").encode())
    assert r.returncode == 0, r.stderr
    assert set(pw.table()) == {"198.51.100.1"}
    assert r.stderr == ""
    pw.notify.close()


def test_scan_unreadable_file_is_66_and_writes_nothing(tmp_path: Path) -> None:
    pw = Popwatch(tmp_path)
    pw.append(syslog_line("192.0.2.1"))
    r = scan(pw, "scan", str(pw.log), str(tmp_path / "absent.log"))
    assert r.returncode == 66
    assert (
        r.stderr
        == f"popwatch: fatal: {tmp_path / 'absent.log'}: cannot read: No such file or directory\n"
    )
    assert pw.table() == {}
    pw.notify.close()


def test_scan_over_long_line_skipped_and_next_line_read(tmp_path: Path) -> None:
    pw = Popwatch(tmp_path, max_line_length=1024)
    pw.append("x" * 5_000_000 + "\n" + syslog_line("192.0.2.9"))
    r = scan(pw, "scan", str(pw.log))
    assert r.returncode == 0, r.stderr
    assert f"{pw.log}, line 1: longer than max_line_length: skipped" in r.stderr
    assert set(pw.table()) == {"192.0.2.9"}
    pw.notify.close()


# -- rotation torture with restarts ------------------------------------------------------------


def _shift(log: Path) -> None:
    """Make room for a new .1 generation, as logrotate does."""
    one, two = log.with_name(log.name + ".1"), log.with_name(log.name + ".2")
    if one.exists():
        os.replace(one, two)


@pytest.mark.slow
def test_rotation_torture_with_restarts(tmp_path: Path) -> None:
    """Login lines with unique addresses, the log rotated every 200 lines by rename+create,
    copytruncate and delete+recreate in turn, popwatch stopped by SIGTERM or SIGKILL and
    started again at random points, partial lines written in two halves: afterwards every
    address is in the table exactly once with its own line's time, and nothing else."""
    import random

    rng = random.Random(int(os.environ.get("POPWATCH_DAEMON_TORTURE_SEED", "4")))
    pw = Popwatch(tmp_path)
    expected: dict[str, int] = {}
    counter = 0
    restarts = {"term": 0, "kill": 0}

    def write_lines(path: Path, count: int) -> None:
        nonlocal counter
        chunks = []
        for _ in range(count):
            counter += 1
            ip = f"10.{counter >> 16 & 255}.{counter >> 8 & 255}.{counter & 255}"
            when = time.time()
            expected[ip] = int(when)
            chunks.append(syslog_line(ip, when, user=f"u{counter}"))
        text = "".join(chunks)
        with open(path, "a") as f:
            if rng.random() < 0.3:  # a partial last line, finished a moment later
                cut = len(text) - rng.randint(5, 30)
                f.write(text[:cut])
                f.flush()
                wait_until(lambda: True)
                f.write(text[cut:])
            else:
                f.write(text)

    def caught_up() -> bool:
        return set(expected) <= set(pw.table())

    def maybe_restart() -> None:
        how = rng.choice(["none", "none", "term", "kill"])
        if how == "none":
            return
        restarts[how] += 1
        pw.signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
        code = pw.wait_exit()
        assert code == (0 if how == "term" else -signal.SIGKILL), pw.stderr()
        if rng.random() < 0.5:  # lines written while it is down
            write_lines(pw.log, 20)
        pw.start()

    pw.start()
    try:
        methods = ["rename", "copytruncate", "delete"]
        for round_no in range(12):
            for _ in range(4):
                write_lines(pw.log, 50)
                if rng.random() < 0.25:
                    maybe_restart()
            method = methods[round_no % 3]
            one = pw.log.with_name(pw.log.name + ".1")
            if method == "rename":
                _shift(pw.log)
                os.rename(pw.log, one)
                write_lines(one, 10)  # the writer has not been told to reopen yet
                pw.log.touch()
            elif method == "copytruncate":
                # No waiting: lines not yet read, even none of the file, come from the copy.
                _shift(pw.log)
                one.write_bytes(pw.log.read_bytes())
                os.truncate(pw.log, 0)
            else:
                # A deleted file's unread lines are gone for any reader: delete only once
                # everything in it is in the table.
                if pw.proc is None or pw.proc.poll() is not None:
                    pw.start()
                wait_until(caught_up, 20, message="caught up before delete")
                pw.log.unlink()
                pw.log.touch()
            maybe_restart()
        if pw.proc is None or pw.proc.poll() is not None:
            pw.start()
        wait_until(caught_up, 30, message="every address in the table")
        wait_until(lambda: pw.notify.status().get("pending") == 0, 10)
        table = pw.table()
        missing = set(expected) - set(table)
        extra = set(table) - set(expected)
        wrong = {ip: (table[ip], t) for ip, t in expected.items() if table.get(ip) != t}
        print(f"{len(expected)} addresses, restarts {restarts}")
        assert not missing and not extra and not wrong, (missing, extra, list(wrong.items())[:5])
        assert restarts["term"] + restarts["kill"] >= 3
    finally:
        pw.stop()
        pw.notify.close()

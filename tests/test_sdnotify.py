"""systemd integration: the notify protocol on a real AF_UNIX datagram socket, journal logging."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from test_daemon import Popwatch, syslog_line

from popwatch import logsetup
from popwatch.sdnotify import Notifier


def recv_all(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(65536).decode())
        except BlockingIOError:
            return out


@pytest.fixture
def pw(tmp_path: Path) -> Iterator[Popwatch]:
    p = Popwatch(tmp_path)
    yield p
    p.stop()
    p.notify.close()


def test_no_socket_is_a_no_op() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.watchdog() is False


def test_path_socket_receives_datagrams(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "n.sock"))
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
    assert n.ready("lines 0")
    assert n.reloading(123)
    assert n.stopping()
    got = recv_all(server)
    assert got == ["READY=1\nSTATUS=lines 0", "RELOADING=1\nMONOTONIC_USEC=123", "STOPPING=1"]
    n.close()
    server.close()


def test_abstract_socket(tmp_path: Path) -> None:
    name = f"popwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
    assert n.watchdog()
    assert recv_all(server) == ["WATCHDOG=1"]
    n.close()
    server.close()


def test_reloading_sends_current_monotonic_time(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "n.sock"))
    n = Notifier(str(tmp_path / "n.sock"))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    (msg,) = recv_all(server)
    usec = int(dict(line.split("=") for line in msg.splitlines())["MONOTONIC_USEC"])
    assert before <= usec <= after
    server.close()


def test_watchdog_interval_and_pid() -> None:
    n = Notifier.from_environ({"WATCHDOG_USEC": "3000000"})
    assert n.watchdog_interval == 1.5
    other = Notifier.from_environ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, pid=2)
    assert other.watchdog_interval is None
    mine = Notifier.from_environ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "2"}, pid=2)
    assert mine.watchdog_interval == 1.5
    with pytest.raises(ValueError):
        Notifier.from_environ({"WATCHDOG_USEC": "soon"})
    with pytest.raises(ValueError):
        Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"})


def test_send_failure_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="popwatch"):
        assert n.ready() is False
        assert n.ready() is False
    assert caplog.text.count("cannot notify systemd") == 1


def test_child_environment_loses_notify_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert Notifier.child_environ(env) == {"PATH": "/bin"}


# -- the daemon speaking the protocol ----------------------------------------------------------


def test_ready_after_table_open_and_sources_attached(pw: Popwatch) -> None:
    assert not pw.db.exists()
    pw.start()  # returns once READY=1 arrived
    assert pw.db.exists()  # the table was created and opened before READY
    ready = pw.notify.has("READY")
    assert ready is not None
    assert pw.notify.messages[ready].get("STATUS", "").startswith("lines 0")
    # The sources are attached: a line appended right after READY is picked up.
    pw.append(syslog_line("192.0.2.10"))
    wait_until(lambda: "192.0.2.10" in pw.table(), 5)
    wait_until(lambda: pw.notify.status().get("written") == 1, 5, message="STATUS written 1")


def test_watchdog_pings_at_half_watchdog_sec(pw: Popwatch) -> None:
    pw.start(env={"WATCHDOG_USEC": "400000"})  # WatchdogSec=0.4s: a ping every 0.2 s
    t0 = time.monotonic()
    wait_until(
        lambda: sum(1 for m in pw.notify.collect() if m.get("WATCHDOG") == "1") >= 5,
        5,
        message="five WATCHDOG=1",
    )
    assert time.monotonic() - t0 < 2.5


def test_no_watchdog_pings_without_watchdog_usec(pw: Popwatch) -> None:
    pw.start()
    pw.append(syslog_line("192.0.2.11"))
    wait_until(lambda: "192.0.2.11" in pw.table(), 5)
    assert all("WATCHDOG" not in m for m in pw.notify.collect())


def test_reloading_and_ready_around_sighup(pw: Popwatch) -> None:
    pw.start()
    mark = len(pw.notify.collect())
    pw.signal(signal.SIGHUP)
    r = pw.notify.wait("RELOADING", after=mark)
    ready = pw.notify.wait("READY", after=r)
    assert r < ready
    assert int(pw.notify.messages[r]["MONOTONIC_USEC"]) > 0


def test_stopping_on_sigterm(pw: Popwatch) -> None:
    pw.start()
    pw.signal(signal.SIGTERM)
    assert pw.wait_exit() == 0
    stop = pw.notify.has("STOPPING")
    assert stop is not None and stop > (pw.notify.has("READY") or 0)


# -- logging to the journal ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def keep_logger() -> Iterator[None]:
    """logsetup.configure changes the popwatch logger: give later tests the old one back."""
    logger = logging.getLogger("popwatch")
    saved = list(logger.handlers), logger.level, logger.propagate
    yield
    for h in list(logger.handlers):
        logger.removeHandler(h)
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_priority_prefixes_when_stderr_is_the_journal(tmp_path: Path) -> None:
    out = tmp_path / "stream"
    with open(out, "w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        logsetup.configure(logging.DEBUG, f, env)
        log = logging.getLogger("popwatch.test")
        log.warning("disk %s", "full")
        log.info("started")
        log.error("two\nlines")
    assert out.read_text().splitlines() == ["<4>disk full", "<6>started", "<3>two", "<3>lines"]


def test_plain_lines_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    out = tmp_path / "stream"
    with open(out, "w") as f:
        logsetup.configure(logging.INFO, f, {"JOURNAL_STREAM": "1:2"})
        logging.getLogger("popwatch.test").warning("careful")
        logging.getLogger("popwatch.test").debug("hidden")
    assert out.read_text() == "popwatch: warning: careful\n"
    buf = io.StringIO()  # no file descriptor at all: not the journal
    assert not logsetup.stream_is_journal(buf, {"JOURNAL_STREAM": "1:2"})  # type: ignore[arg-type]


def test_daemon_under_journal_stream_writes_priorities(tmp_path: Path) -> None:
    """The real process: JOURNAL_STREAM naming its stderr file gives <N> prefixes."""
    pw = Popwatch(tmp_path)
    try:
        pw.stderr_path.touch()
        st = pw.stderr_path.stat()
        pw.start(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        text = wait_until(lambda: "started" in pw.stderr() and pw.stderr(), 5)
        assert any(line.startswith("<6>started") for line in text.splitlines()), text
    finally:
        pw.stop()
        pw.notify.close()


# -- the shipped unit files ----------------------------------------------------------------------

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def test_unit_declares_the_promised_service_shape() -> None:
    unit = (CONTRIB / "popwatch.service").read_text()
    settings = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in unit.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert settings["Type"] == "notify"
    assert settings["User"] == "popwatch" and "adm" in settings["SupplementaryGroups"].split()
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["PrivateTmp"] == "yes" and settings["ProtectHome"] == "yes"
    assert settings["RestartPreventExitStatus"] == "78"
    assert settings["Restart"] == "on-failure"
    assert settings["ExecReload"].endswith("kill -HUP $MAINPID")
    assert "/etc/mail/relayers.db" in settings["ReadWritePaths"]
    assert settings["StateDirectory"] == "popwatch"
    assert "WatchdogSec" in settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify checks that ExecStart= exists; the shipped path is where `pip install` puts the
    script on Debian (/usr/local/bin).  When it is not installed there (a venv), the copy under
    test points at this environment's script instead - the only line changed."""
    unit = (CONTRIB / "popwatch.service").read_text()
    shipped = "ExecStart=/usr/local/bin/popwatch run"
    assert shipped in unit
    script = Path(sys.executable).parent / "popwatch"
    if not os.access("/usr/local/bin/popwatch", os.X_OK):
        assert script.exists(), script
        unit = unit.replace(shipped, f"ExecStart={script} run")
    copy = tmp_path / "popwatch.service"
    copy.write_text(unit)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Failed to initialize manager" in r.stderr or "Failed to connect to bus" in r.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # unknown settings are warnings, not failures


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers missing")
def test_sysusers_and_tmpfiles_create_user_state_and_table(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    (root / "etc" / "group").write_text("adm:x:4:\nsystemd-journal:x:999:\n")
    r = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(CONTRIB / "popwatch.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert passwd.startswith("popwatch:x:") and "nologin" in passwd
    group = (root / "etc" / "group").read_text()
    assert "adm:x:4:popwatch" in group and "systemd-journal:x:999:popwatch" in group
    r = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}", str(CONTRIB / "popwatch.tmpfiles")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    uid = int(passwd.split(":")[2])
    table = root / "etc" / "mail" / "relayers.db"
    assert table.stat().st_uid == uid and table.stat().st_mode & 0o777 == 0o644
    state = root / "var" / "lib" / "popwatch"
    assert state.stat().st_uid == uid and state.stat().st_mode & 0o777 == 0o750
    # popwatch accepts the empty file tmpfiles created as a new table.
    from popwatch.store import open_store

    store = open_store(table)
    store.put("192.0.2.1", 1)
    store.close()

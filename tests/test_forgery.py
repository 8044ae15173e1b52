"""Forged log lines (issue 7, item 6), with a real rsyslogd and the real ``logger``.

What ``tests/test_journal.py`` already proves is not repeated here: that journal mode rejects
``logger -t ipop3d`` records, copied binaries run by users, and other units' processes using
a POP daemon's tag.  This file proves the rest of what docs/security.md says:

* the threat is real: in file mode, an unprivileged user's ``logger -t ipop3d`` line is
  indistinguishable from the daemon's and opens the relay (``popwatch test`` shows the event);
* a user name with a line feed cannot start a forged line of its own: syslog delivers one
  message as one line;
* journal mode with ``logs = []`` reads no log file at all (otherwise the file would be a
  way around the journal's trusted fields);
* remote syslog: the host name in a UDP message is whatever the sender claims, so the
  per-pattern host check (``Pattern.hosts``) is only a defence when rsyslog writes the
  *sender's address* (``%FROMHOST-IP%``) in the host field; both are shown.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

from popwatch.config import load_config

POPWATCH = [sys.executable, "-m", "popwatch"]
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
needs_rsyslog = pytest.mark.skipif(
    not Path(RSYSLOGD).exists() or shutil.which("logger") is None, reason="rsyslogd, logger"
)


# The sender's address in place of the host name it claims (rsyslog property replacer).
BY_IP = "%TIMESTAMP% %FROMHOST-IP% %syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n"


class Rsyslog:
    """A private rsyslogd: a local socket (as /dev/log) and a UDP port on 127.0.0.1."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.socket = home / "log"
        self.mail_log = home / "mail.log"  # local messages, traditional format
        self.claimed = home / "claimed.log"  # remote: the host name the sender claims
        self.by_ip = home / "byip.log"  # remote: the sender's address as the host field
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = home / "rsyslog.conf"
        conf.write_text(
            f"""
global(workDirectory="{home}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.socket}")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{self.port}" ruleset="remote")
template(name="byip" type="string" string="{BY_IP}")
ruleset(name="remote") {{
  action(type="omfile" file="{self.claimed}" template="RSYSLOG_TraditionalFileFormat")
  action(type="omfile" file="{self.by_ip}" template="byip")
}}
*.* action(type="omfile" file="{self.mail_log}" template="RSYSLOG_TraditionalFileFormat")
"""
        )
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(home / "rsyslogd.pid")],
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.socket.exists, 10, message="rsyslogd's socket")
        self.logger("probe", "ready")
        wait_until(lambda: self.lines(self.mail_log), 10, message="rsyslogd writing")

    def logger(self, tag: str, message: str, user: int | None = None) -> None:
        prefix = []
        if user is not None:
            prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        subprocess.run(
            [*prefix, "logger", "-u", str(self.socket), "-t", tag, "--", message], check=True
        )

    def udp(self, packet: bytes, source: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.sendto(packet, ("127.0.0.1", self.port))

    @staticmethod
    def lines(path: Path) -> list[str]:
        try:
            return path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rsyslog() -> Iterator[Rsyslog]:
    # logger runs as nobody and must reach the socket: pytest's tmp_path is root's, 0700.
    home = Path(tempfile.mkdtemp(prefix="popwatch-forgery-"))
    home.chmod(0o755)
    r = Rsyslog(home)
    try:
        yield r
    finally:
        r.stop()
        shutil.rmtree(home, ignore_errors=True)


def events(log: Path, *args: str) -> list[dict[str, object]]:
    proc = subprocess.run(
        [*POPWATCH, "test", "--json", *args, str(log)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@needs_rsyslog
def test_any_local_user_can_forge_a_pop_login_in_a_log_file(rsyslog: Rsyslog) -> None:
    rsyslog.logger("ipop3d", "Login user=eve host=[203.0.113.66] nmsgs=1/1", user=65534)
    wait_until(lambda: any("203.0.113.66" in ln for ln in rsyslog.lines(rsyslog.mail_log)), 10)
    # Nothing in the file tells the forged line apart: this is why journal mode exists.
    assert [e["ip"] for e in events(rsyslog.mail_log)] == ["203.0.113.66"]


@needs_rsyslog
def test_a_line_feed_in_a_logged_field_does_not_start_a_forged_line(rsyslog: Rsyslog) -> None:
    stamp = time.strftime("%b %e %H:%M:%S")
    forged = f"{stamp} mailhost ipop3d[9]: Login user=y host=[203.0.113.67] nmsgs=1/1"
    # What ipop3d would log for the user name "x\n<forged line>", from the real client.
    rsyslog.logger("ipop3d", f"Login user=x\n{forged} host=[192.0.2.10] nmsgs=1/1")
    wait_until(lambda: any("192.0.2.10" in ln for ln in rsyslog.lines(rsyslog.mail_log)), 10)
    lines = [ln for ln in rsyslog.lines(rsyslog.mail_log) if "ipop3d" in ln]
    assert len(lines) == 1, lines  # one message, one line
    assert all(e["ip"] != "203.0.113.67" for e in events(rsyslog.mail_log))


def test_journal_mode_with_no_logs_reads_no_log_file(tmp_path: Path) -> None:
    cfg = tmp_path / "popwatch.toml"
    cfg.write_text('journal = true\njournal_units = ["dovecot.service"]\nlogs = []\n')
    # A mail.log still written by rsyslog would carry forged tags past the journal's checks.
    assert load_config(cfg, exists=lambda p: True).logs == ()


def site_pattern(directory: Path, hosts: set[str]) -> Path:
    """The documented recipe: the shipped uw-imap pattern, restricted to some hosts."""
    directory.mkdir(exist_ok=True)
    path = directory / "uw-imap.py"
    path.write_text(
        "import dataclasses\n"
        "from popwatch.patternload import load_pattern_file, shipped_dir\n\n\n"
        "def pattern(options):\n"
        '    shipped = load_pattern_file(shipped_dir() / "uw-imap.py", options)\n'
        f"    return dataclasses.replace(shipped, hosts=frozenset({sorted(hosts)!r}))\n"
    )
    return path


@needs_rsyslog
def test_remote_syslog_host_check_needs_the_senders_address(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    msg = b"<22>Nov 22 09:15:02 mailhost ipop3d[77]: Login user=%s host=[%s] nmsgs=1/1"
    rsyslog.udp(msg % (b"real", b"192.0.2.10"), "127.0.0.1")  # the mail host itself
    rsyslog.udp(msg % (b"eve", b"203.0.113.68"), "127.0.0.2")  # anyone, claiming "mailhost"
    wait_until(lambda: len(rsyslog.lines(rsyslog.by_ip)) == 2, 10, message="both messages")
    assert len(rsyslog.lines(rsyslog.claimed)) == 2
    # The claimed host name: the check lets the forgery through.
    by_name = site_pattern(tmp_path / "by-name", {"mailhost"})
    got = {e["ip"] for e in events(rsyslog.claimed, "--pattern", str(by_name))}
    assert got == {"192.0.2.10", "203.0.113.68"}
    # The sender's address in the host field: only the mail host's message counts.
    by_ip = site_pattern(tmp_path / "by-ip", {"127.0.0.1"})
    got = {e["ip"] for e in events(rsyslog.by_ip, "--pattern", str(by_ip))}
    assert got == {"192.0.2.10"}


def test_host_check_through_the_configured_pattern_directory(tmp_path: Path) -> None:
    site = tmp_path / "patterns.d"
    site_pattern(site, {"mailhost"})
    log = tmp_path / "remote.log"
    log.write_text(
        "Nov 22 09:15:02 mailhost ipop3d[1]: Login user=a host=[192.0.2.10] nmsgs=1/1\n"
        "Nov 22 09:15:03 intruder ipop3d[2]: Login user=b host=[203.0.113.69] nmsgs=1/1\n"
    )
    cfg = tmp_path / "popwatch.toml"
    cfg.write_text(f'pattern_dirs = ["{site}"]\npatterns = ["uw-imap"]\n')
    got = _events_with_config(log, cfg)
    assert [e["ip"] for e in got] == ["192.0.2.10"]


def _events_with_config(log: Path, cfg: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [*POPWATCH, "-c", str(cfg), "test", "--json", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]

"""``popwatch test``: the administrator's fail2ban-regex, run through main() and as a process."""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until  # type: ignore[import-not-found]

from popwatch.cli import main

ROOT = Path(__file__).resolve().parent.parent
POPWATCH = [sys.executable, "-m", "popwatch"]

LOG = (
    "Nov 22 09:15:02 mx postfix/smtpd[1]: connect from unknown[198.51.100.99]\n"
    "Nov 22 09:15:02 mx ipop3d[42]: Login user=alice host=pc.example.net [192.0.2.10] nmsgs=1/1\n"
    "Nov 22 09:15:03 mx dovecot: imap-login: Login: user=<bob>, method=PLAIN, "
    "rip=2001:db8::5, lip=2001:db8::1, mpid=7, TLS, session=<abcd>\n"
    "Nov 22 09:15:04 mx ipop3d[43]: Login failed user=eve auth=eve host=[203.0.113.9]\n"
    "Nov 22 09:15:05 mx ipop3d[44]: Login user=alice host=verylongname.example.net [192.0\n"
    "Nov 22 09:15:06 mx imapd[45]: Login user=carol host=[192.0.2.11]\r\n"
)


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "popwatch.toml"
    path.write_text("pattern_dirs = []\n")
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    path.write_bytes(LOG.encode())
    return path


def run(cfg: Path, *args: str) -> int:
    return main(["-c", str(cfg), "test", *args])


def test_summary(cfg: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, str(log)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "Lines read:   6 (1 file)" in out
    assert "Claimed:      5 " in out
    assert "Login events: 3" in out
    assert "uw-imap          login                            2" in out
    assert "dovecot          login                            1" in out
    assert "uw-imap          failure                          1" in out
    assert "Near misses:  1 (show them with --print-missed)" in out


def test_print_missed(cfg: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "--print-missed", str(log)) == 0
    out, _ = capsys.readouterr()
    assert f"  {log}:5: ipop3d: Login user=alice host=verylongname.example.net [192.0\n" in out


def test_json(cfg: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg, "--json", str(log)) == 0
    out, err = capsys.readouterr()
    events = [json.loads(x) for x in out.splitlines()]
    assert [(e["lineno"], e["ip"], e["pattern"], e["rule"], e["user"]) for e in events] == [
        (2, "192.0.2.10", "uw-imap", "login", "alice"),
        (3, "2001:db8::5", "dovecot", "login", "bob"),
        (6, "192.0.2.11", "uw-imap", "login", "carol"),
    ]
    assert all(e["file"] == str(log) for e in events)
    assert all(isinstance(e["time"], float) for e in events)
    assert "Login events: 3" in err  # the summary goes to stderr with --json


def test_pattern_selection(
    cfg: Path, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(cfg, "--json", "--pattern", "dovecot", str(log)) == 0
    out, _ = capsys.readouterr()
    assert [json.loads(x)["pattern"] for x in out.splitlines()] == ["dovecot"]
    site = tmp_path / "mine.py"
    site.write_text(
        "from popwatch.grammar import LOGIN, Pattern, Rule, bracketed_ip, lit, rest_of_line\n"
        "def pattern(options):\n"
        "    g = lit('Login failed') + rest_of_line('x')\n"
        "    return Pattern(programs=('ipop3d',), rules=(Rule('f', g, 'other'),))\n"
    )
    assert run(cfg, "--pattern", str(site), str(log)) == 0
    out, _ = capsys.readouterr()
    assert "Patterns:     mine" in out and "mine             f  " in out


def test_unknown_pattern_is_usage_error(
    cfg: Path, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(cfg, "--pattern", "nosuch", str(log)) == 64
    out, err = capsys.readouterr()
    assert out == "" and 'unknown pattern "nosuch"' in err


def test_unreadable_file(
    cfg: Path, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(cfg, "--json", str(log), str(tmp_path / "missing.log")) == 66
    out, err = capsys.readouterr()
    assert out == ""  # checked before anything is read
    assert (
        err
        == f"popwatch: fatal: {tmp_path / 'missing.log'}: cannot read: No such file or directory\n"
    )
    assert run(cfg, str(tmp_path)) == 66


def test_no_file_is_usage_error(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cfg) == 64
    assert "popwatch: fatal:" in capsys.readouterr().err


def test_undecodable_bytes_warn_once_per_file(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "latin1.log"
    bad.write_bytes(
        b"Nov 22 09:15:02 mx ipop3d[1]: Login user=j\xfcrgen host=[192.0.2.20] nmsgs=1/1\n"
        b"Nov 22 09:15:03 mx ipop3d[2]: Login user=\xff\xfe host=[192.0.2.21] nmsgs=1/1\n"
    )
    assert run(cfg, "--json", str(bad)) == 0
    out, err = capsys.readouterr()
    users = [json.loads(x)["user"] for x in out.splitlines()]
    assert users == ["j\ufffdrgen", "\ufffd\ufffd"]
    warnings = [x for x in err.splitlines() if "undecodable" in x]
    assert warnings == [
        f"popwatch: warning: {bad}, line 1: undecodable bytes replaced by U+FFFD "
        "(2 lines in this file)"
    ]


def test_stdin_in_a_real_process(cfg: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [*POPWATCH, "-c", str(cfg), "test", "--json", "-"],
        input=LOG.encode(),
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert [(e["file"], e["lineno"]) for e in events] == [("-", 2), ("-", 3), ("-", 6)]


def test_fixture_through_the_command(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped fixtures run through the command give the events the harness expects."""
    fixture = ROOT / "fixtures" / "logs" / "uw-imap.log"
    assert run(cfg, "--json", "--pattern", "uw-imap", str(fixture)) == 0
    out, _ = capsys.readouterr()
    got = [json.loads(x)["lineno"] for x in out.splitlines()]
    lines = fixture.read_text().splitlines()
    expected = [n + 2 for n, text in enumerate(lines) if text.startswith("#> {")]
    assert got == expected


# ---------------------------------------------------------------------------------------------
# A real Dovecot on loopback: its own log file through `popwatch test`.
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class _POP3From(poplib.POP3):
    """poplib with a chosen source address (any 127/8 address works on lo)."""

    def __init__(self, port: int, source: str) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )


class _IMAP4From(imaplib.IMAP4):
    def __init__(self, port: int, source: str) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )


@pytest.fixture
def dovecot() -> Iterator[tuple[Path, int, int]]:
    if not shutil.which("dovecot") or os.geteuid() != 0:
        pytest.skip("needs dovecot and root")
    # Not under pytest's tmp_path: its parent is mode 0700 and Dovecot's auth process runs as
    # the dovecot user, the mail process as nobody.
    base = Path(tempfile.mkdtemp(prefix="popwatch-dovecot-"))
    os.chmod(base, 0o755)
    try:
        yield from _run_dovecot(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_dovecot(base: Path) -> Iterator[tuple[Path, int, int]]:
    (base / "run").mkdir()
    (base / "state").mkdir()
    home = base / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    passwd = base / "passwd"
    passwd.write_text("alice:{PLAIN}secret::::::\n")
    passwd.chmod(0o644)
    log = base / "dovecot.log"
    pop_port, imap_port = _free_port(), _free_port()
    conf = base / "dovecot.conf"
    conf.write_text(
        f"base_dir = {base}/run\nstate_dir = {base}/state\n"
        f"log_path = {log}\ninfo_log_path = {log}\n"
        "protocols = pop3 imap\nlisten = 127.0.0.1\nssl = no\n"
        "disable_plaintext_auth = no\nauth_mechanisms = plain login\nfirst_valid_uid = 1\n"
        f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {passwd}\n}}\n"
        f"userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={home}/%u\n}}\n"
        "mail_location = maildir:~/Maildir\n"
        f"service pop3-login {{\n  inet_listener pop3 {{\n    port = {pop_port}\n  }}\n"
        "  inet_listener pop3s {\n    port = 0\n  }\n}\n"
        f"service imap-login {{\n  inet_listener imap {{\n    port = {imap_port}\n  }}\n"
        "  inet_listener imaps {\n    port = 0\n  }\n}\n"
    )
    subprocess.run(["dovecot", "-c", str(conf)], check=True, timeout=30)
    try:
        wait_until(lambda: _port_open(pop_port) and _port_open(imap_port), 20, message="dovecot")
        yield log, pop_port, imap_port
    finally:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], timeout=30, check=False)
        pidfile = base / "run" / "master.pid"
        wait_until(lambda: not pidfile.exists(), 20, message="dovecot to stop")


@pytest.mark.system
def test_real_dovecot_log(
    dovecot: tuple[Path, int, int], cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pop_port, imap_port = dovecot
    pop = _POP3From(pop_port, "127.0.0.41")
    pop.user("alice")
    pop.pass_("secret")
    pop.quit()
    imap = _IMAP4From(imap_port, "127.0.0.42")
    imap.login("alice", "secret")
    imap.logout()
    # a connection without a login must not count
    with socket.create_connection(("127.0.0.1", pop_port), 5, source_address=("127.0.0.43", 0)):
        pass
    wait_until(lambda: log.read_text().count("Login: ") >= 2, 20, message="login lines")
    wait_until(lambda: "rip=127.0.0.43" in log.read_text(), 20, message="disconnect line")
    assert run(cfg, "--json", "--pattern", "dovecot", str(log)) == 0
    out, err = capsys.readouterr()
    events = [json.loads(x) for x in out.splitlines()]
    assert [(e["ip"], e["user"], e["rule"]) for e in events] == [
        ("127.0.0.41", "alice", "login"),
        ("127.0.0.42", "alice", "login"),
    ]
    assert "Near misses:  0" in err

"""A private mail system on loopback: real rsyslogd, Dovecot and Postfix, started by hand.

NAME
    daemons - the harness of the end-to-end system test

DESCRIPTION
    :class:`MailLab` builds, in one fresh directory under the system temporary directory
    (``popwatch-e2e-XXXXXX``, mode 0755 so that Dovecot's and Postfix's unprivileged processes
    can reach it), a small mail host the way an administrator would, without systemd:

    * rsyslogd (``rsyslogd -n -f CONF -i PIDFILE``) reading the local log socket and writing
      ``mail.*`` to ``log/mail.log`` in the traditional format (``Nov 22 09:15:02 host tag:``);
    * Dovecot (``dovecot -F -c CONF``) with POP3 and IMAP on 127.0.0.1, ``ssl = no``,
      clear-text logins allowed, one passwd-file user, logging to syslog facility mail;
    * Postfix (``postfix -c DIR start-fg``), a private instance with its own configuration,
      queue and data directories, an smtpd on 127.0.0.1 whose relay restrictions are
      ``check_client_access hash:TABLE, reject_unauth_destination`` and nothing else.

    All three run inside one private mount namespace (:class:`Sandbox`) whose ``/dev`` is a
    small tmpfs holding only the usual device nodes.  rsyslogd creates ``/dev/log`` there, so
    Dovecot's and Postfix's syslog(3) calls reach this rsyslogd and no other, and the host's
    ``/dev/log`` (a running system logger, another test run) is never touched, stale or not.
    The clients of the test (:func:`rcpt`, :func:`pop3_login`, :func:`imap_login`) bind a
    chosen 127.0.0.N source address, so each one is a different client to the servers.

    Daemons are children of the test process and run in the foreground, so stopping one is
    a signal and a ``wait``: no pid-file races, no zombies.  :func:`reap_stale` stops what a
    killed earlier run left behind: every process in the mount namespace of a lab directory
    whose holder process is gone (processes are matched by namespace inode, never by name).

    :class:`PopwatchRun` starts ``popwatch -c CONF run`` as a systemd ``Type=notify`` service
    would be started and returns once it sent ``READY=1``; :func:`run_admin` runs ``popwatch``
    or ``vsmtprelay`` and parses their listing.  A daemon that does not stop within its time
    gets SIGKILL, and the kernel wait channel of each of its threads is noted in its output.

    Ports: the preferred ones (2525 SMTP, 21110 POP3, 21143 IMAP) when free, otherwise any
    free port; read them from the objects, never assume them.

WHAT IT DOES NOT DO
    Install packages (``scripts/setup --test`` does), use systemd, change anything under /etc
    (``postfix check`` still reads Postfix's own /etc/postfix/postfix-files), listen on
    anything but 127.0.0.1, or send mail: the SMTP client stops after RCPT TO.  It needs root
    (mount namespaces, Postfix's and Dovecot's privilege handling).

ERRORS
    :class:`DaemonError` names the daemon, what failed and the tail of its output; waiting
    helpers raise AssertionError (``helpers.wait_until``) naming what was awaited.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import pwd
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from helpers import wait_until

# report_figure(name, value, unit): a measured figure for the test summary (see conftest).
ReportFigure = Callable[[str, float, str], None]

LAB_PREFIX = "popwatch-e2e-"
LOCALHOST = "127.0.0.1"
TEST_USER = "alice"
TEST_PASSWORD = "correct horse"  # a space on purpose: clients must quote nothing themselves
REMOTE_RCPT = "someone@example.com"
REQUIRED_PROGRAMS = ("unshare", "nsenter", "rsyslogd", "logger", "dovecot", "postfix", "postmap")


class DaemonError(Exception):
    """A daemon would not start or stop; the message names it and quotes its output."""


def missing_programs() -> list[str]:
    """Programs this harness runs that are not on PATH."""
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]


def free_port(preferred: int) -> int:
    """``preferred`` if nothing listens on 127.0.0.1:preferred, else a free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DaemonError("no free TCP port on 127.0.0.1")  # pragma: no cover - port 0 always binds


def thread_states(pid: int) -> str:
    """Where each thread of ``pid`` waits in the kernel: a hint for a daemon that hangs."""
    states = []
    with contextlib.suppress(OSError):
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text().strip() or "running"
                states.append(f"{tid} {comm}: {wchan}")
    return "threads: " + ("; ".join(states) or "none")


def port_open(port: int, host: str = LOCALHOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"({path}: {err.strerror})"
    return "\n".join(text.splitlines()[-lines:])


# --- processes --------------------------------------------------------------------------


class Daemon:
    """One foreground child process, its output in ``ROOT/NAME.out``."""

    name = "daemon"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out_path = root / f"{self.name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and return once it serves; DaemonError or AssertionError if not."""
        raise NotImplementedError

    def spawn(self, argv: Sequence[str]) -> None:
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError(f"{self.name}: not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> bool:
        """True while running; DaemonError with its output once it has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DaemonError(
                f"{self.name} exited with status {self.proc.returncode}:\n{tail(self.out_path)}"
            )
        return True

    def request_stop(self) -> None:
        """Ask the daemon to stop; subclasses use the daemon's own stop command."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and reap; SIGKILL after ``timeout``.  Safe to call twice or when never started."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # When asking fails, the kill below still ends it.
            with contextlib.suppress(OSError, subprocess.SubprocessError, DaemonError):
                self.request_stop()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.note(f"did not stop within {timeout:g} s; {thread_states(self.proc.pid)}")
                self.proc.kill()
                self.proc.wait(timeout)

    def note(self, text: str) -> None:
        """Add a line of the harness's own to the daemon's output file."""
        with open(self.out_path, "a") as out:
            print(f"[harness] {self.name}: {text}", file=out)


class Sandbox:
    """A private mount namespace with its own /dev (so its own /dev/log), kept by a holder.

    The holder is ``unshare ... sh -c SCRIPT`` ending in ``exec cat``: it reads from a pipe
    whose other end only this object holds, so it exits when the test process goes away,
    however that happens.  Other programs join the namespace with :meth:`argv`.
    """

    # $1: a directory where the host's /dev is bind-mounted (only inside the namespace)
    # before a tmpfs covers /dev; the device nodes daemons open are bound back from there.
    SCRIPT = """
set -eu
mount --bind /dev "$1"
mount -t tmpfs -o mode=0755,size=1m popwatch-e2e-dev /dev
for n in null zero full random urandom tty; do
    [ -e "$1/$n" ] || continue
    : > "/dev/$n"
    mount --bind "$1/$n" "/dev/$n"
done
mkdir /dev/shm /dev/pts
mount -t tmpfs -o mode=1777,size=1m popwatch-e2e-shm /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
echo ready
exec cat
"""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        hostdev = self.root / "hostdev"
        hostdev.mkdir()
        err_path = self.root / "sandbox.out"
        with open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    self.SCRIPT,
                    "sandbox",
                    str(hostdev),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise DaemonError(f"mount namespace set-up failed: {tail(err_path)}")
        (self.root / "holder.pid").write_text(f"{self.proc.pid}\n")
        (self.root / "holder.ns").write_text(f"{os.stat(f'/proc/{self.proc.pid}/ns/mnt').st_ino}\n")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError("sandbox: not started")
        return self.proc.pid

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside the namespace (nsenter only joins it: the pid is the same)."""
        return ["nsenter", f"--target={self.pid}", "--mount", "--", *command]

    def run(
        self, command: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command), capture_output=True, text=True, timeout=timeout, check=False
        )

    def inside(self, path: str) -> Path:
        """How ``path`` inside the namespace is seen from outside (through /proc)."""
        return Path(f"/proc/{self.pid}/root{path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Rsyslog(Daemon):
    """rsyslogd writing ``mail.*`` to ``log/mail.log`` in the traditional file format."""

    name = "rsyslogd"

    def __init__(self, root: Path, sandbox: Sandbox) -> None:
        super().__init__(root)
        self.sandbox = sandbox
        self.dir = root / "rsyslog"
        self.conf = self.dir / "rsyslog.conf"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.log = root / "log" / "mail.log"
        self.all_log = root / "log" / "all.log"

    def write_config(self) -> None:
        (self.dir / "work").mkdir(parents=True)
        self.log.parent.mkdir(exist_ok=True)
        self.conf.write_text(
            f"""\
# popwatch end-to-end test: local socket in, mail.* out, nothing else.
global(workDirectory="{self.dir / "work"}")
# The test logs in quickly from few addresses; rate limiting would drop login lines.
module(load="imuxsock" SysSock.RateLimit.Interval="0" SysSock.FlowControl="on")
mail.*  action(type="omfile" file="{self.log}" template="RSYSLOG_TraditionalFileFormat"
               fileCreateMode="0640" fileGroup="adm")
*.*     action(type="omfile" file="{self.all_log}" template="RSYSLOG_TraditionalFileFormat")
"""
        )

    def start(self, timeout: float = 15.0) -> None:
        self.write_config()
        self.spawn(
            self.sandbox.argv(["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)])
        )
        wait_until(
            lambda: self.check_alive() and self.sandbox.inside("/dev/log").exists(),
            timeout,
            message="rsyslogd to create /dev/log",
        )
        self.mark("rsyslogd ready", timeout)

    def mark(self, text: str, timeout: float = 10.0) -> str:
        """Log ``text`` plus a unique token as mail.info and wait until the file has it.

        A barrier: every line logged before the call is in the log file when it returns
        (rsyslogd keeps the order of one socket).  Returns the token.
        """
        token = f"popwatch-e2e-mark-{time.monotonic_ns()}"
        result = self.sandbox.run(
            [
                "logger",
                "--socket-errors=on",
                "-p",
                "mail.info",
                "-t",
                "popwatch-e2e",
                f"{text} {token}",
            ]
        )
        if result.returncode != 0:
            raise DaemonError(f"logger failed: {result.stderr.strip()}")
        wait_until(
            lambda: self.check_alive() and token in self.read(),
            timeout,
            message=f"the mark {token!r} in {self.log}",
        )
        return token

    def read(self) -> str:
        """The current log file's text ('' while it does not exist)."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rotate(self, between: Callable[[], None] | None = None) -> Path:
        """Rotate as logrotate does: rename to ``.1``, create a new file, run ``between``
        (rsyslogd still writes to the renamed file then), HUP rsyslogd.  Returns the old path.
        """
        old = self.log.with_name(self.log.name + ".1")
        os.rename(self.log, old)
        st = old.stat()
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:  # logrotate's "create": the old file's owner, group and mode
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, st.st_mode & 0o7777)
        finally:
            os.close(fd)
        if between is not None:
            between()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        return old


@dataclass(frozen=True)
class MailUser:
    name: str
    password: str
    uid: int
    gid: int
    home: Path


class Dovecot(Daemon):
    """Dovecot with POP3 and IMAP on 127.0.0.1, a passwd-file user, syslog facility mail."""

    name = "dovecot"

    def __init__(self, root: Path, sandbox: Sandbox, pop3_port: int, imap_port: int) -> None:
        super().__init__(root)
        self.sandbox = sandbox
        self.dir = root / "dovecot"
        self.conf = self.dir / "dovecot.conf"
        self.pop3_port = pop3_port
        self.imap_port = imap_port
        nobody = pwd.getpwnam("nobody")
        self.user = MailUser(
            TEST_USER, TEST_PASSWORD, nobody.pw_uid, nobody.pw_gid, root / "home" / TEST_USER
        )

    def write_config(self) -> None:
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(parents=True)
        u = self.user
        u.home.mkdir(parents=True)
        os.chown(u.home, u.uid, u.gid)
        users = self.dir / "users"
        users.write_text(f"{u.name}:{{PLAIN}}{u.password}:{u.uid}:{u.gid}::{u.home}::\n")
        users.chmod(0o644)
        self.conf.write_text(
            f"""\
# popwatch end-to-end test: POP3 and IMAP on loopback, logging through syslog.
protocols = pop3 imap
listen = {LOCALHOST}
base_dir = {self.dir / "run"}
state_dir = {self.dir / "state"}
log_path = syslog
syslog_facility = mail
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Without this a failed login is answered two seconds late; the log line is the same.
auth_failure_delay = 0
# The mail user is nobody (65534); Dovecot refuses uids below first_valid_uid.
first_valid_uid = {u.uid}
last_valid_uid = {u.uid}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
        )

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        self.spawn(self.sandbox.argv(["dovecot", "-F", "-c", str(self.conf)]))
        wait_until(
            lambda: self.check_alive() and port_open(self.pop3_port) and port_open(self.imap_port),
            timeout,
            message=f"dovecot to listen on ports {self.pop3_port} and {self.imap_port}",
        )


class Postfix(Daemon):
    """A private Postfix instance whose smtpd relays only for clients in ``table``."""

    name = "postfix"

    def __init__(self, root: Path, sandbox: Sandbox, smtp_port: int, table: Path) -> None:
        super().__init__(root)
        self.sandbox = sandbox
        self.dir = root / "postfix"
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "queue"
        self.data_dir = self.dir / "data"
        self.smtp_port = smtp_port
        self.table = table  # hash: table name, i.e. the .db path without ".db"

    def write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True)
        postfix = pwd.getpwnam("postfix")
        # master refuses a data directory it does not own (master.lock).
        os.chown(self.data_dir, postfix.pw_uid, postfix.pw_gid)
        (self.config_dir / "main.cf").write_text(
            f"""\
# popwatch end-to-end test: a private instance; relaying only for addresses in the table.
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.popwatch.test
mydomain = popwatch.test
myorigin = $myhostname
# example.com is remote: only relay authorization can accept it.
mydestination = $myhostname, localhost
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
# Unused by the restrictions below, and in any case no test client is 127.0.0.1.
mynetworks = 127.0.0.1/32
smtpd_relay_restrictions = check_client_access hash:{self.table}, reject_unauth_destination
smtpd_recipient_restrictions =
# No DNS on these machines; a PTR lookup for 127.0.0.N would only wait.
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
syslog_facility = mail
maillog_file =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
"""
        )
        services = [
            f"{LOCALHOST}:{self.smtp_port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        (self.config_dir / "master.cf").write_text(
            "# popwatch end-to-end test: no chroot (the queue is a temporary directory).\n"
            + "\n".join(services)
            + "\n"
        )

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sandbox.run(["postfix", "-c", str(self.config_dir), *args])

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        # "check" creates the queue's subdirectories with Postfix's owners and modes.
        result = self.postfix("check")
        if result.returncode != 0:
            raise DaemonError(f"postfix check failed: {result.stdout}{result.stderr}")
        self.spawn(self.sandbox.argv(["postfix", "-c", str(self.config_dir), "start-fg"]))
        wait_until(
            lambda: self.check_alive() and port_open(self.smtp_port),
            timeout,
            message=f"postfix smtpd to listen on port {self.smtp_port}",
        )

    def request_stop(self) -> None:
        self.postfix("stop")


class PopwatchRun(Daemon):
    """``popwatch -c CONF run`` as a systemd ``Type=notify`` service would run it.

    ``$NOTIFY_SOCKET`` points at a datagram socket of ours, so :meth:`start` returns once
    popwatch says ``READY=1`` (table open, sources attached) instead of guessing.
    """

    name = "popwatch"

    def __init__(self, root: Path, settings: dict[str, object]) -> None:
        super().__init__(root)
        self.dir = root / "popwatch"
        self.conf = self.dir / "popwatch.toml"
        self.settings = settings
        self.notify_path = self.dir / "notify.sock"
        self.notify: socket.socket | None = None
        self.messages: list[str] = []

    def write_config(self) -> None:
        self.dir.mkdir(exist_ok=True)
        lines = ["# popwatch end-to-end test"]
        lines += [f"{key} = {toml_value(value)}" for key, value in self.settings.items()]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path))
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*popwatch_command("popwatch"), "-c", str(self.conf), "run"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_until(
            lambda: self.check_alive() and "READY=1" in self.notifications(),
            timeout,
            message="popwatch run to send READY=1",
        )

    def notifications(self) -> list[str]:
        """Every sd_notify line received so far."""
        while self.notify is not None:
            try:
                data = self.notify.recv(4096)
            except BlockingIOError:
                break
            self.messages.extend(data.decode(errors="replace").splitlines())
        return self.messages

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""


def popwatch_command(program: str) -> list[str]:
    """The installed console script next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / program
    found = str(here) if here.exists() else shutil.which(program)
    if found is None:
        raise DaemonError(f"{program}: not installed (pip install -e .)")
    return [found]


def run_admin(program: str, conf: Path, *args: str) -> dict[str, int]:
    """``PROGRAM -c CONF ARGS`` (list, dump): its listing as {address: timestamp}.

    The listing is vsmtprelay's: ``# timestamp (UTC): ...`` comment lines, then
    ``ADDRESS SECONDS`` lines.
    """
    result = subprocess.run(
        [*popwatch_command(program), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise DaemonError(
            f"{program} {' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}"
        )
    entries: dict[str, int] = {}
    for line in result.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        address, seconds = line.split()
        entries[address] = int(seconds)
    return entries


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# --- clients ----------------------------------------------------------------------------


class SourcePOP3(poplib.POP3):
    """poplib.POP3 whose connection comes from ``source`` (a local address)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 10.0) -> None:
        self.source = source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


class SourceIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 whose connection comes from ``source`` (a local address)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 10.0) -> None:
        self.source = source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def pop3_login(port: int, source: str, user: str, password: str) -> bool:
    """USER/PASS then QUIT; True when the server accepted the password."""
    client = SourcePOP3(LOCALHOST, port, source)
    try:
        client.user(user)
        client.pass_(password)
    except poplib.error_proto:
        return False
    finally:
        with contextlib.suppress(OSError, poplib.error_proto):
            client.quit()
    return True


def imap_login(port: int, source: str, user: str, password: str) -> bool:
    """LOGIN then LOGOUT; True when the server accepted the password."""
    client = SourceIMAP4(LOCALHOST, port, source)
    try:
        client.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()
    return True


def rcpt(port: int, source: str, recipient: str = REMOTE_RCPT) -> tuple[int, str]:
    """One SMTP session from ``source`` up to RCPT TO; the RCPT reply.  Nothing is sent.

    A new session each time on purpose: Postfix notices a changed table between sessions
    (an smtpd restarts), not within one.
    """
    with smtplib.SMTP(LOCALHOST, port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.popwatch.test")
        code, _ = client.mail("tester@mx.popwatch.test")
        if code != 250:
            raise DaemonError(f"MAIL FROM refused from {source}: {code}")
        code, message = client.rcpt(recipient)
        client.rset()
    return code, message.decode(errors="replace")


# --- the whole lab ----------------------------------------------------------------------


class MailLab:
    """rsyslogd, Dovecot and Postfix sharing one directory and one mount namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandbox = Sandbox(root)
        self.rsyslog = Rsyslog(root, self.sandbox)
        self.dovecot = Dovecot(root, self.sandbox, free_port(21110), free_port(21143))
        self.table_db = root / "relayers.db"
        self.postfix = Postfix(root, self.sandbox, free_port(2525), self.table)
        self.daemons: list[Daemon] = [self.rsyslog, self.dovecot, self.postfix]

    @classmethod
    @contextlib.contextmanager
    def running(cls, base: Path | None = None) -> Iterator[MailLab]:
        """Start everything in a fresh directory; stop and remove everything afterwards."""
        root = Path(tempfile.mkdtemp(prefix=LAB_PREFIX, dir=base))
        root.chmod(0o755)
        lab = cls(root)
        try:
            lab.start()
            yield lab
        finally:
            lab.stop()
            shutil.rmtree(root, ignore_errors=True)

    def start(self) -> None:
        # Postfix answers "451 temporary lookup failure" while its table does not exist: an
        # administrator creates an empty one before pointing Postfix at it, and so do we.
        self.write_table({})
        self.sandbox.start()
        for daemon in self.daemons:
            daemon.start()

    @property
    def table(self) -> Path:
        """The table's name as Postfix and postmap take it (``hash:`` + this)."""
        return self.table_db.with_suffix("")

    def write_table(self, entries: dict[str, int]) -> None:
        """Rebuild the table with postmap (NUL-terminated keys, as Postfix writes them).

        Waits first for the clock to pass the whole second of the table's last change:
        Postfix compares whole-second mtimes and would miss a second change in one second.
        """
        if self.table_db.exists():
            changed = int(self.table_db.stat().st_mtime)
            wait_until(
                lambda: time.time() >= changed + 1,
                2.0,
                message="the next second (Postfix sees whole-second mtimes)",
            )
        self.table.write_text("".join(f"{ip} {ts}\n" for ip, ts in entries.items()))
        self.table.chmod(0o644)
        result = subprocess.run(
            ["postmap", f"hash:{self.table}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise DaemonError(f"postmap hash:{self.table} failed: {result.stderr.strip()}")

    def query_table(self, key: str) -> str | None:
        """What Postfix's lookup code finds for ``key`` (``postmap -q``); None if nothing."""
        result = subprocess.run(
            ["postmap", "-q", key, f"hash:{self.table}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 1:
            return None
        if result.returncode != 0:
            raise DaemonError(f"postmap -q {key} hash:{self.table}: {result.stderr.strip()}")
        return result.stdout.strip()

    def stop(self) -> None:
        """Stop in reverse order; every daemon is stopped even when another one fails to."""
        for daemon in reversed(self.daemons):
            with contextlib.suppress(Exception):
                daemon.stop()
        self.sandbox.stop()

    def check_alive(self) -> None:
        for daemon in self.daemons:
            daemon.check_alive()

    @property
    def mail_logs(self) -> list[Path]:
        """The mail log and its rotated generations, oldest first."""
        rotated = sorted(self.rsyslog.log.parent.glob("mail.log.*"), reverse=True)
        return [*rotated, self.rsyslog.log]

    def mail_log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.mail_logs if p.exists())

    # Client shortcuts with the lab's ports and user.
    def rcpt(self, source: str) -> tuple[int, str]:
        return rcpt(self.postfix.smtp_port, source)

    def pop3_login(self, source: str, password: str | None = None) -> bool:
        u = self.dovecot.user
        return pop3_login(self.dovecot.pop3_port, source, u.name, password or u.password)

    def imap_login(self, source: str, password: str | None = None) -> bool:
        u = self.dovecot.user
        return imap_login(self.dovecot.imap_port, source, u.name, password or u.password)


def reap_stale(base: Path | None = None, log: IO[str] | None = None) -> list[int]:
    """Stop what killed earlier runs left: processes in the namespace of a dead holder.

    A lab directory whose holder process is gone belongs to a run that did not clean up.
    Every process still in that directory's mount namespace (same ``ns/mnt`` inode) was
    started by that run; each gets SIGKILL by its pid, then the directory is removed.
    Returns the pids killed.
    """
    base = Path(base or tempfile.gettempdir())
    killed: list[int] = []
    for root in base.glob(LAB_PREFIX + "*"):
        try:
            holder = int((root / "holder.pid").read_text())
            ns = int((root / "holder.ns").read_text())
        except (OSError, ValueError):
            continue  # being set up right now, or not ours to judge
        if _mount_ns(holder) == ns:
            continue  # its run is still going
        for pid in _pids_in_mount_ns(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if log is not None:
            print(f"removed stale {root} (killed {killed or 'nothing'})", file=log)
        shutil.rmtree(root, ignore_errors=True)
    return killed


def _mount_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _pids_in_mount_ns(ns: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _mount_ns(int(p)) == ns]

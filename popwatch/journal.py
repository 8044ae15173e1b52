"""The systemd journal as a source of login lines, trusting only what a local user cannot forge.

DESCRIPTION
    A syslog tag is chosen by whoever writes the line: any local user can run
    ``logger -t ipop3d 'Login user=x host=[203.0.113.9]'`` and, in a mail log file, that line
    is indistinguishable from the real daemon's.  The journal also stores *trusted* fields that
    journald fills in from the kernel and the cgroup of the sending process, which the sender
    cannot set: ``_SYSTEMD_UNIT``, ``_COMM``, ``_EXE``, ``_UID``, ``_PID``.  On a host with
    local users, journal mode is the recommended source.

    A record is accepted (:class:`TrustPolicy`) only when

    1. its ``_SYSTEMD_UNIT`` matches one of ``journal_units`` (shell globs, e.g.
       ``dovecot.service``, ``ipop3d@*.service``).  systemd sets this from the cgroup; a
       user's processes live in ``session-N.scope`` or ``user@UID.service``, never in a
       system unit.  This is the strongest test, and the one to use for Dovecot, whose
       log lines are written by its log process (``_COMM=log``), not by the login process;
    2. or its ``_COMM`` (the kernel's 15-character process name) is a program that the
       enabled patterns claim, **and** its ``_UID`` is a system account (below 1000, the
       Debian default SYS_UID_MAX + 1): ``_COMM`` alone comes from the executable's file name,
       which a user can choose by copying a binary to ``~/ipop3d``; a user's UID cannot be
       chosen.  ``logger -t ipop3d`` has ``_COMM=logger`` and fails this test, whatever it
       puts in SYSLOG_IDENTIFIER;

    and, in both cases, the record's ``SYSLOG_IDENTIFIER`` (the tag that selects the grammar)
    is one the patterns claim.  With rule 2 the tag must also belong to a pattern that claims
    the ``_COMM`` (``cyrus/pop3`` runs as ``pop3``), so one trusted daemon cannot speak with
    another daemon's grammar.

    :class:`JournalSource` runs ``journalctl -o json --follow`` as a child process (optionally
    ``--file`` for journal files copied from elsewhere, and tests), with journalctl matches
    that already narrow the output to the trusted units and programs, and reads its output
    without blocking: the daemon's main loop waits on :meth:`JournalSource.fileno`.  The
    position is the journal cursor: :meth:`JournalSource.checkpoint` writes the cursor of the
    last record handed out to the state directory (atomically), and a restart continues
    ``--after-cursor``; without a saved cursor it starts ``--since`` one lifetime ago,
    because older logins authorize nothing anyway.

WHAT IT DOES NOT
    It does not parse messages (the grammars do, through
    :func:`popwatch.syslogline.from_journal`) and does not use the python-systemd bindings
    (not in every venv); journalctl is part of systemd.  Trust in ``_UID`` below 1000 assumes
    system accounts are not shells for untrusted people (www-data running a hostile web
    application could still forge with a copied binary: name such services' units, not
    programs, or keep their UIDs out).

DIAGNOSTICS
    A journalctl that cannot be started is a :class:`popwatch.errors.ConfigError`.  When it
    exits, :meth:`JournalSource.is_alive` turns False and :attr:`JournalSource.exit_reason`
    holds its last stderr line: the daemon logs it and exits 70 so that systemd restarts it.
    A line that is not JSON is skipped with a warning (at most one per minute).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from popwatch.errors import ConfigError

log = logging.getLogger("popwatch.journal")

COMM_MAX = 15  # TASK_COMM_LEN - 1: the kernel truncates process names to this
SYSTEM_UID_LIMIT = 1000
FIELDS = (
    "MESSAGE",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_PID",
    "SYSLOG_TIMESTAMP",
    "_PID",
    "_COMM",
    "_EXE",
    "_UID",
    "_SYSTEMD_UNIT",
    "_HOSTNAME",
)
_READ_MAX = 1 << 20  # bytes read from journalctl per call: keeps one wake-up short
_LINE_MAX = 1 << 20  # a JSON record longer than this is skipped


def comm_names(program: str) -> set[str]:
    """The ``_COMM`` values a process logging as ``program`` can have."""
    names = {program[:COMM_MAX]}
    if "/" in program:  # cyrus/pop3: the executable is pop3
        names.add(program.rsplit("/", 1)[1][:COMM_MAX])
    return {n for n in names if n}


def field_text(value: Any) -> str | None:
    """A journal JSON field as text: journalctl writes non-UTF-8 values as arrays of bytes
    and repeated fields as arrays of values (the first is taken)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(b, int) for b in value):
            return bytes(b & 0xFF for b in value).decode("utf-8", "replace")
        return field_text(value[0])
    return None


class TrustPolicy:
    """Which journal records may be parsed at all (see the module documentation)."""

    def __init__(
        self,
        units: Iterable[str],
        programs: Mapping[str, Iterable[str]],
        *,
        uid_limit: int = SYSTEM_UID_LIMIT,
    ) -> None:
        """``programs`` maps each enabled pattern name to the program tags it claims."""
        self.units = tuple(units)
        self.uid_limit = uid_limit
        self._tag_patterns: dict[str, set[str]] = {}
        self._comm_patterns: dict[str, set[str]] = {}
        for name, tags in programs.items():
            for tag in tags:
                self._tag_patterns.setdefault(tag, set()).add(name)
                for comm in comm_names(tag):
                    self._comm_patterns.setdefault(comm, set()).add(name)

    @property
    def comms(self) -> list[str]:
        return sorted(self._comm_patterns)

    def unit_trusted(self, unit: str | None) -> bool:
        return unit is not None and any(fnmatch.fnmatchcase(unit, u) for u in self.units)

    def why_rejected(self, record: Mapping[str, Any]) -> str | None:
        """None when the record is trusted; otherwise the reason, for debug logs and tests."""
        # The same program name from_journal() gives the grammars: the identifier, else _COMM.
        tag = field_text(record.get("SYSLOG_IDENTIFIER")) or field_text(record.get("_COMM"))
        if tag is None or tag not in self._tag_patterns:
            return f"identifier {tag!r} is claimed by no pattern"
        if self.unit_trusted(field_text(record.get("_SYSTEMD_UNIT"))):
            return None
        comm = field_text(record.get("_COMM"))
        owners = self._comm_patterns.get(comm or "")
        if not owners:
            return f"neither unit {record.get('_SYSTEMD_UNIT')!r} nor process {comm!r} is trusted"
        uid = field_text(record.get("_UID"))
        if uid is None or not uid.isdigit() or int(uid) >= self.uid_limit:
            return f"process {comm!r} runs as uid {uid}, not a system account"
        if not owners & self._tag_patterns[tag]:
            return f"process {comm!r} may not log as {tag!r}"
        return None

    def trusted(self, record: Mapping[str, Any]) -> bool:
        return self.why_rejected(record) is None

    def matches(self) -> list[str]:
        """journalctl match arguments that pass every record this policy may trust (and
        more: the policy still checks each one)."""
        args: list[str] = []
        globbed = any(any(c in u for c in "*?[") for u in self.units)
        if self.units and not globbed:
            args += [f"_SYSTEMD_UNIT={u}" for u in self.units]
        elif globbed:
            return []  # journalctl cannot glob: take everything, filter here
        if self._comm_patterns:
            if args:
                args.append("+")
            args += [f"_COMM={c}" for c in self.comms]
        return args


class JournalSource:
    """Trusted journal records from a ``journalctl -o json --follow`` child process."""

    def __init__(
        self,
        trust: TrustPolicy,
        *,
        state_dir: Path | None,
        since: float | None = None,
        files: Sequence[Path] = (),
        follow: bool = True,
        command: Sequence[str] = ("journalctl",),
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trust = trust
        self.state_dir = state_dir
        self.since = since
        self.files = tuple(files)
        self.follow = follow
        self.command = tuple(command)
        self.environ = dict(os.environ if environ is None else environ)
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None  # a temporary file: a pipe nobody reads could fill and block
        self._buffer = b""
        self._cursor: str | None = None  # of the last record handed out
        self._saved: str | None = None
        self._last_warning = 0.0
        self.records = 0
        self.rejected = 0
        self.exit_reason = ""

    @property
    def cursor_file(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / "journal.cursor"

    def argv(self) -> list[str]:
        argv = [*self.command, "-o", "json", "--no-pager", "--all", "--quiet"]
        argv.append("--output-fields=" + ",".join(FIELDS))
        if self.follow:
            argv.append("--follow")
        argv += [f"--file={f}" for f in self.files]
        saved = self._load_cursor()
        if saved:
            argv.append(f"--after-cursor={saved}")
        elif self.since is not None:
            argv.append(f"--since=@{int(self.since)}")
        return argv + self.trust.matches()

    def _load_cursor(self) -> str | None:
        path = self.cursor_file
        if path is None:
            return None
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            log.warning("%s: cannot read the saved journal position (%s): starting anew", path, err)
            return None
        self._saved = text or None
        return self._saved

    def start(self) -> None:
        argv = self.argv()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=self.environ,
            )
        except OSError as err:
            self._stderr.close()
            raise ConfigError(f'journal: cannot run "{argv[0]}": {err.strerror}') from None
        assert self._proc.stdout is not None
        os.set_blocking(self._proc.stdout.fileno(), False)
        log.debug("journal: started %s", " ".join(argv))

    def fileno(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.fileno()

    def read(self) -> list[dict[str, Any]]:
        """Trusted records that are complete now (never blocks); rejected ones are counted."""
        if self._proc is None or self._proc.stdout is None:
            return []
        try:
            chunk = os.read(self._proc.stdout.fileno(), _READ_MAX)
        except BlockingIOError:
            return []
        if not chunk:
            self._ended()
            return []
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _LINE_MAX:
            self._warn("journal: record longer than %d bytes skipped", _LINE_MAX)
            self._buffer = b""
        out = []
        for line in lines:
            record = self._decode(line)
            if record is None:
                continue
            self.records += 1
            cursor = record.get("__CURSOR")
            if isinstance(cursor, str):
                self._cursor = cursor
            reason = self.trust.why_rejected(record)
            if reason is not None:
                self.rejected += 1
                log.debug("journal: record rejected: %s", reason)
                continue
            out.append(record)
        return out

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except ValueError:
            self._warn("journal: output of journalctl is not JSON: %r", line[:80])
            return None
        if not isinstance(record, dict):
            return None
        return record

    def _warn(self, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._last_warning >= 60:
            log.warning(msg, *args)
            self._last_warning = now

    def _ended(self) -> None:
        assert self._proc is not None
        try:
            status = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        err = b""
        if self._stderr is not None:
            try:
                self._stderr.seek(0)
                err = self._stderr.read()[-4096:]
            except OSError:
                pass
        lines = err.decode("utf-8", "replace").strip().splitlines()
        self.exit_reason = lines[-1] if lines else f"journalctl exited with status {status}"
        self._close_proc()

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def checkpoint(self) -> None:
        """Save the cursor of the last record handed out (call after the flush covering it)."""
        path = self.cursor_file
        if path is None or self._cursor is None or self._cursor == self._saved:
            return
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(self._cursor + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            self._warn("%s: cannot save the journal position: %s", path, err.strerror)
            return
        self._saved = self._cursor

    def _close_proc(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def close(self) -> None:
        self._close_proc()

#!/usr/bin/env python3
"""run - measure popwatch against the targets of issue 6 and print a table.

SYNOPSIS
    .venv/bin/python bench/run.py [--quick] [--runs N] [--lines N[,N...]] [--only PARTS]
                                  [--seed N] [--workdir DIR] [--json FILE] [--popwatch PATH]

DESCRIPTION
    Generates reproducible mail logs with bench/genlog.py (seeded, with ground truth), then
    measures, with the median and min-max over --runs runs (default 3):

    refs     on the same file, in the same run, in this process: a bare ``for line in f``
             loop and a plain-regex loop (anchored syslog header and tag, then one compiled
             regex per login format of UW-IMAP, Dovecot, Courier, Cyrus and qpopper that
             extracts the address) - lines/s.  The regex loop must find exactly the ground
             truth, which checks the generator as much as the reference.
    scan     ``popwatch -c CONF scan LOG`` on each --lines size (default 1M and 5M): lines/s
             of the whole command (and net of the start-up time of a scan of an empty file),
             the ratio to the regex loop of the same run, peak RSS of the process (wait4
             rusage), and whether relayers.db then holds exactly the ground-truth addresses
             (no decoy, none missing; stamps within ``refresh`` of the latest login).
    latency  ``popwatch -c CONF run`` following a log: isolated logins (--isolated of them, one
             every --gap seconds) appended with one write(2) each; the time from the write
             returning to the address being readable in relayers.db by this process
             (flock(LOCK_SH) + a fresh Berkeley DB handle every ~2 ms, as an MTA reads).
             Then a burst of --burst-rate logins/s for --burst-seconds: the max latency.
    dbwork   a daemon run under strace (flock, fsync, fdatasync): lock+sync operations per
             flush during a burst; re-logins of fresh addresses (must cause no write); and
             ``popwatch --db DB expire 30`` on a table of 100,000 stale entries (plus fresh
             and pinned ones that must stay), against ``popwatch --version`` start-up.
    idle     CPU time (utime+stime from /proc/PID/stat) and context switches of a daemon
             following a quiet log for --idle-seconds.

    --quick uses small sizes (20,000 lines, 1 run, short latency phases) for the CI smoke
    test.  Every daemon gets its own temporary configuration (keys of popwatch/config.py),
    database, log and state directory under --workdir (default: a temporary directory that
    is removed afterwards).

    A popwatch command that is not there yet (the placeholder exits 69) makes its part print
    "n/a" with the reason; the other parts still run.

WHAT IT DOES NOT DO
    It is not a test: it never fails on a missed target, it reports it ("MISS").  It does not
    pin CPUs or drop caches; the figures are for a warm page cache on a shared machine, so
    read the min-max column before believing a median.

EXIT STATUS
    0 when it ran (whatever the figures), 1 when a correctness check failed (wrong database
    contents, a lost login), 64 on usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import genlog
from berkeleydb import db

EX_UNAVAILABLE = 69
PARTS = ("refs", "scan", "latency", "dbwork", "idle")
NUL = b"\0"


class Unavailable(Exception):
    """A popwatch command this part needs is not implemented yet."""


class BenchError(Exception):
    """Something the benchmark could not do (daemon died, timed out)."""


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    ok: Callable[[float], bool] | None = None
    note: str = ""

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def verdict(self) -> str:
        m = self.median()
        if self.ok is None or m is None:
            return ""
        return "ok" if self.ok(m) else "MISS"


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def row(
        self,
        section: str,
        name: str,
        unit: str,
        target: str = "",
        ok: Callable[[float], bool] | None = None,
    ) -> Row:
        for r in self.rows:
            if r.section == section and r.name == name:
                return r
        r = Row(section, name, unit, target=target, ok=ok)
        self.rows.append(r)
        return r

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  # {text}", file=sys.stderr, flush=True)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        print(f"  # CHECK FAILED: {text}", file=sys.stderr, flush=True)

    def table(self) -> str:
        head = ("part", "measure", "median", "min-max", "unit", "target", "")
        lines = [head]
        for r in self.rows:
            if not r.values:
                lines.append((r.section, r.name, "n/a", "", r.unit, r.target, r.note))
                continue
            lo, hi = min(r.values), max(r.values)
            m = r.median()
            assert m is not None
            span = f"{_fmt(lo)}-{_fmt(hi)}" if len(r.values) > 1 else ""
            lines.append((r.section, r.name, _fmt(m), span, r.unit, r.target, r.verdict()))
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = []
        for i, row in enumerate(lines):
            cells = [
                c.rjust(w) if j in (2, 3) else c.ljust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            out.append("  ".join(cells).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": [
                {
                    "part": r.section,
                    "measure": r.name,
                    "unit": r.unit,
                    "values": r.values,
                    "median": r.median(),
                    "target": r.target,
                    "verdict": r.verdict(),
                    "note": r.note,
                }
                for r in self.rows
            ],
            "notes": self.notes,
            "failures": self.failures,
        }


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 10_000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3g}"


# ---------------------------------------------------------------------------------------------
# Reference loops
# ---------------------------------------------------------------------------------------------

_HEADER = re.compile(r"[A-Z][a-z]{2} [ 0-3]\d \d\d:\d\d:\d\d \S+ ([^\s\[:]+)(?:\[\d+\])?: ")
_UW = re.compile(r"(?:Login|Auth|APOP|Authenticated) user=\S+ host=(?:\S+ )?\[([0-9A-Fa-f:.]+)\]")
_COURIER = re.compile(r"LOGIN, user=[^,]*, ip=\[(?:::ffff:)?([0-9A-Fa-f:.]+)\]")


def reference_regexes() -> dict[str, list[re.Pattern[str]]]:
    """Program tag -> the compiled message regexes a plain-regex tool would try, in order."""
    dovecot = re.compile(
        r"(?:imap|pop3)-login: Login: user=<[^>]*>, method=\S+, rip=([0-9A-Fa-f:.]+),"
    )
    cyrus = re.compile(r"login: \S+ \[([0-9A-Fa-f:.]+)\] \S+ \S+ User logged in")
    qpopper = re.compile(r'\(v[\d.]+\) POP login by user ".*" at \(\S*\) ([0-9A-Fa-f:.]+)(?: \[|$)')
    table: dict[str, list[re.Pattern[str]]] = {
        "ipop3d": [_UW],
        "imapd": [_UW, _COURIER],
        "dovecot": [dovecot],
        "pop3d": [_COURIER],
        "pop3d-ssl": [_COURIER],
        "imapd-ssl": [_COURIER],
    }
    for tag in ("cyrus/imap", "cyrus/pop3", "cyrus/imaps", "cyrus/pop3s"):
        table[tag] = [cyrus]
    for tag in ("in.qpopper", "qpopper", "popper"):
        table[tag] = [qpopper]
    return table


def bare_loop(path: Path) -> int:
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for _line in f:
            n += 1
    return n


def regex_loop(path: Path) -> tuple[int, dict[str, int]]:
    """Lines read and {address: count} of the login lines the plain regexes find."""
    table = reference_regexes()
    header = _HEADER.match
    found: dict[str, int] = {}
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            n += 1
            m = header(line)
            if m is None:
                continue
            rules = table.get(m.group(1))
            if rules is None:
                continue
            pos = m.end()
            for rule in rules:
                hit = rule.match(line, pos)
                if hit is not None:
                    ip = hit.group(1)
                    found[ip] = found.get(ip, 0) + 1
                    break
    return n, found


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


# ---------------------------------------------------------------------------------------------
# The relay table, read as an MTA reads it
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked_handle(path: Path) -> Iterator[Any]:
    """A fresh read-only handle under flock(LOCK_SH), or None when there is no table yet."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_size == 0:
            yield None
            return
        handle = db.DB()
        try:
            handle.open(str(path), dbtype=db.DB_HASH, flags=db.DB_RDONLY)
            yield handle
        finally:
            handle.close()
    finally:
        os.close(fd)


def read_table(path: Path) -> dict[str, int]:
    """Every entry: address -> stamp (trailing NULs of the postfix key form removed)."""
    out: dict[str, int] = {}
    with _locked_handle(path) as h:
        if h is None:
            return out
        cur = h.cursor()
        try:
            rec = cur.first()
            while rec is not None:
                k, v = rec
                out[k.rstrip(NUL).decode("ascii", "replace")] = int(v.rstrip(NUL) or b"-1")
                rec = cur.next()
        finally:
            cur.close()
    return out


def lookup(path: Path, ips: Sequence[str]) -> dict[str, int]:
    """The stamps of those of ``ips`` that are in the table now."""
    out: dict[str, int] = {}
    try:
        with _locked_handle(path) as h:
            if h is None:
                return out
            for ip in ips:
                k = ip.encode()
                v = h.get(k)
                if v is None:
                    v = h.get(k + NUL)
                if v is not None:
                    out[ip] = int(v.rstrip(NUL))
    except db.DBError:
        # Not expected under the shared lock; a reader just tries again on the next poll.
        return out
    return out


def write_table(path: Path, entries: dict[str, int]) -> None:
    """Build a sendmail-form table (no NUL), as ``makemap hash`` would."""
    h = db.DB()
    h.open(str(path), dbtype=db.DB_HASH, flags=db.DB_CREATE | db.DB_TRUNCATE)
    try:
        for ip, stamp in entries.items():
            h.put(ip.encode(), str(stamp).encode())
    finally:
        h.close()


def check_table(
    res: Results,
    what: str,
    table: dict[str, int],
    truth: dict[str, Any],
    cutoff: float,
    refresh: float,
) -> None:
    """Exactly the ground-truth addresses; stamps no older than the last login - refresh."""
    logins: dict[str, int] = truth["logins"]
    expected = {ip for ip, t in logins.items() if t > cutoff}
    got = set(table)
    missing = expected - got
    extra = got - expected
    decoys = got & set(truth["decoys"])
    if missing or extra:
        res.fail(
            f"{what}: table differs from ground truth: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:3]}), {len(extra)} extra (e.g. {sorted(extra)[:3]}), "
            f"{len(decoys)} decoys"
        )
        return
    bad = [ip for ip in got if not logins[ip] - refresh <= table[ip] <= logins[ip]]
    if bad:
        res.fail(f"{what}: {len(bad)} stamps not within refresh of the latest login: {bad[:3]}")
        return
    exact = sum(1 for ip in got if table[ip] == logins[ip])
    res.note(f"{what}: table == ground truth ({len(got)} addresses, {exact} stamps exact)")


# ---------------------------------------------------------------------------------------------
# popwatch processes
# ---------------------------------------------------------------------------------------------


def _toml_str(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


def write_config(
    path: Path,
    *,
    database: Path,
    logs: Sequence[Path],
    state_dir: Path,
    lifetime: str = "30m",
    flush_interval: str = "1s",
    refresh: str = "60s",
) -> Path:
    path.write_text(
        "# written by bench/run.py\n"
        f"database = {_toml_str(database)}\n"
        'key_format = "sendmail"\n'
        f"logs = [{', '.join(_toml_str(p) for p in logs)}]\n"
        f'lifetime = "{lifetime}"\n'
        f'flush_interval = "{flush_interval}"\n'
        f'refresh = "{refresh}"\n'
        'expire_interval = "60s"\n'
        f"state_dir = {_toml_str(state_dir)}\n"
        "pattern_dirs = []\n",
        encoding="utf-8",
    )
    return path


@dataclass
class Finished:
    status: int
    elapsed: float
    maxrss_mb: float
    utime: float
    stime: float
    stdout: str
    stderr: str


def child_env(**extra: str) -> dict[str, str]:
    """The environment of measured popwatch processes: without PYTHONDONTWRITEBYTECODE, so
    that they run from cached bytecode as an installed popwatch does (pip compiles it at
    install time) instead of compiling every module from source at each start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def run_measured(argv: Sequence[str], timeout: float = 1800.0, cwd: Path | None = None) -> Finished:
    """Run a command to its end; wall time and the rusage of exactly that child (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=child_env()
        )
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            # wait4 has no timeout; a blocking wait would hang on a stuck child
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(
            proc.returncode,
            elapsed,
            ru.ru_maxrss / 1024.0,
            ru.ru_utime,
            ru.ru_stime,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


class NotifySocket:
    """An AF_UNIX datagram socket a daemon reports READY=1 and STATUS= to (sd_notify)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return
            self.messages.append(data.decode(errors="replace"))
            self.sock.settimeout(0)

    def ready(self) -> bool:
        self.sock.settimeout(0.05)
        self.poll()
        return any("READY=1" in m.split("\n") for m in self.messages)

    def last_status(self) -> str:
        self.sock.settimeout(0)
        self.poll()
        for m in reversed(self.messages):
            for part in m.split("\n"):
                if part.startswith("STATUS="):
                    return part[len("STATUS=") :]
        return ""

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """``popwatch -c CONF run`` on a fresh log, table and state directory in ``home``."""

    def __init__(
        self,
        popwatch: str,
        home: Path,
        *,
        flush_interval: str = "1s",
        strace: Path | None = None,
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.log = home / "mail.log"
        self.log.touch()
        self.db = home / "relayers.db"
        self.conf = write_config(
            home / "popwatch.toml",
            database=self.db,
            logs=[self.log],
            state_dir=home / "state",
            flush_interval=flush_interval,
        )
        self.notify = NotifySocket(home / "notify.sock")
        env = child_env(NOTIFY_SOCKET=str(self.notify.path))
        argv = [popwatch, "-c", str(self.conf), "run"]
        if strace is not None:
            argv = [
                "strace",
                "-f",
                "-qq",
                "-y",
                "-e",
                "trace=flock,fsync,fdatasync",
                "-o",
                str(strace),
                *argv,
            ]
        self.traced = strace is not None
        self.stderr = open(home / "stderr", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr, env=env
        )
        self.fd = os.open(self.log, os.O_WRONLY | os.O_APPEND)

    @property
    def pid(self) -> int:
        """The popwatch process itself (under strace: strace's child)."""
        if not self.traced:
            return self.proc.pid
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        found = poll_until(lambda: kids.read_text().split(), 10.0)
        return int(found[0])

    def append(self, text: str) -> float:
        """Append with one write(2); the perf_counter time just after it returned."""
        os.write(self.fd, text.encode())
        return time.perf_counter()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"popwatch run exited with status {self.proc.returncode}: {self.tail_stderr()}"
                )
            return self.notify.ready()

        if poll_until(check, timeout) is None:
            raise BenchError(f"popwatch run sent no READY=1 within {timeout:.0f}s")

    def tail_stderr(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip().splitlines()
        if any("not yet available" in line for line in text):
            raise Unavailable("popwatch run is not available yet")
        return " | ".join(text[-3:])

    def stop(self) -> int:
        os.close(self.fd)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.stderr.close()
        return self.proc.returncode


def poll_until(fn: Callable[[], Any], timeout: float, interval: float = 0.002) -> Any:
    """Call ``fn`` until it returns something true or ``timeout`` passes (then None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Login lines for the live parts
# ---------------------------------------------------------------------------------------------


class Logins:
    """Unique addresses in 198.18.0.0/15 (RFC 2544, benchmarking) and login lines for them,
    in the five formats in turn, stamped with the current time."""

    def __init__(self, seed: int, daemons: Sequence[str] = genlog.DAEMONS) -> None:
        self.state = genlog.make_state(seed, 1)
        self.daemons = tuple(daemons)
        self.n = 0

    def next_ip(self) -> str:
        self.n += 1
        n = self.n
        return f"198.{18 + (n >> 16) % 2}.{(n >> 8) & 255}.{n & 255}"

    def line(self, ip: str, daemon: str | None = None) -> str:
        """A login line for ``ip`` now; the formats take turns unless ``daemon`` is given."""
        c = genlog.Client(
            ip=ip, ptr=f"client-{ip.replace('.', '-')}.example.net", user="bench", v6=False
        )
        daemon = daemon or self.daemons[self.n % len(self.daemons)]
        tag, msg = genlog.success_line(self.state, c, daemon)
        return f"{genlog.syslog_prefix(int(time.time()))}{tag}: {msg}\n"


def wait_visible(dbpath: Path, ips: Sequence[str], timeout: float) -> dict[str, float]:
    """Poll the table every ~2 ms; perf_counter time at which each address was first seen."""
    seen: dict[str, float] = {}
    pending = list(ips)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        hits = lookup(dbpath, pending)
        now = time.perf_counter()
        if hits:
            for ip in hits:
                seen[ip] = now
            pending = [ip for ip in pending if ip not in hits]
        time.sleep(0.002)
    return seen


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    popwatch: str
    workdir: Path
    seed: int
    runs: int
    lines: list[int]
    isolated: int
    gap: tuple[float, float]
    burst_rate: int
    burst_seconds: float
    idle_seconds: float
    flush_interval: float
    relogins: int
    expire_entries: int
    scan_lifetime: str
    keep_files: bool = False
    daemons: tuple[str, ...] = genlog.DAEMONS


def make_log(opts: Options, lines: int) -> tuple[Path, dict[str, Any]]:
    log = opts.workdir / f"mail-{lines}.log"
    truth_path = opts.workdir / f"mail-{lines}.json"
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        truth = genlog.write_log(
            out,
            seed=opts.seed,
            lines=lines,
            end_time=int(time.time()),
            span=genlog.DEFAULT_SPAN,
            lifetime=genlog.DEFAULT_LIFETIME,
            daemons=opts.daemons,
        )
    truth_path.write_text(json.dumps(truth), encoding="utf-8")
    dt = time.perf_counter() - t0
    print(
        f"  # generated {log.name}: {lines:,} lines, {truth['bytes'] / lines:.0f} bytes/line, "
        f"{len(truth['logins'])} login addresses, {dt:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    return log, truth


def part_refs_and_scan(opts: Options, res: Results, parts: set[str]) -> None:
    scan_ok = "scan" in parts
    for size in opts.lines:
        label = f"{size / 1e6:g}M" if size >= 1_000_000 else f"{size / 1e3:g}k"
        log, truth = make_log(opts, size)
        bare_loop(log)  # warm the page cache
        want = set(truth["logins"])
        empty = opts.workdir / "empty.log"
        empty.touch()
        for run in range(opts.runs):
            dt, _, n = timed(functools.partial(bare_loop, log))
            res.row("refs", f"bare for-line loop {label}", "lines/s").values.append(n / dt)
            dt_re, cpu_re, (n, found) = timed(functools.partial(regex_loop, log))
            regex_lps = n / dt_re
            res.row("refs", f"plain-regex loop {label}", "lines/s").values.append(regex_lps)
            res.row("refs", f"plain-regex loop {label}, per CPU second", "lines/s").values.append(
                n / cpu_re
            )
            if run == 0:
                got = {ipaddress.ip_address(ip).compressed for ip in found}
                if got != want:
                    res.fail(
                        f"regex reference {label}: {len(got ^ want)} addresses differ "
                        "from the ground truth"
                    )
            if not scan_ok:
                continue
            home = opts.workdir / f"scan-{label}-{run}"
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            conf = write_config(
                home / "popwatch.toml",
                database=home / "relayers.db",
                logs=[log],
                state_dir=home / "state",
                lifetime=opts.scan_lifetime,
            )
            base = run_measured([opts.popwatch, "-c", str(conf), "scan", str(empty)])
            if base.status == EX_UNAVAILABLE:
                res.note("scan: popwatch scan is not available yet")
                scan_ok = False
                continue
            started = time.time()
            r = run_measured([opts.popwatch, "-c", str(conf), "scan", str(log)])
            if r.status != 0:
                res.fail(f"scan {label}: exit status {r.status}: {r.stderr.strip()[-300:]}")
                scan_ok = False
                continue
            lps = size / r.elapsed
            res.row(
                "scan", f"throughput {label}", "lines/s", ">= 600,000", lambda v: v >= 600_000
            ).values.append(lps)
            res.row("scan", f"throughput {label}, net of start-up", "lines/s").values.append(
                size / max(r.elapsed - base.elapsed, 1e-9)
            )
            res.row(
                "scan", f"ratio to plain regex {label}", "x", ">= 0.25", lambda v: v >= 0.25
            ).values.append(lps / regex_lps)
            # On a shared machine wall time includes waiting for a CPU; CPU time does not.
            cpu = r.utime + r.stime
            res.row("scan", f"throughput {label}, per CPU second", "lines/s").values.append(
                size / cpu
            )
            res.row("scan", f"ratio to plain regex {label}, CPU time", "x").values.append(
                (size / cpu) / (n / cpu_re)
            )
            res.row("scan", f"peak RSS {label}", "MB", "<= 40", lambda v: v <= 40).values.append(
                r.maxrss_mb
            )
            res.row("scan", "start-up (scan of an empty file)", "s").values.append(base.elapsed)
            lifetime = genlog.parse_duration(opts.scan_lifetime)
            check_table(
                res,
                f"scan {label} run {run + 1}",
                read_table(home / "relayers.db"),
                truth,
                started - lifetime,
                60.0,
            )
        if not opts.keep_files:
            log.unlink()


def part_latency(opts: Options, res: Results) -> None:
    rng = random.Random(opts.seed)
    logins = Logins(opts.seed, opts.daemons)
    d = Daemon(opts.popwatch, opts.workdir / "latency", flush_interval=f"{opts.flush_interval}s")
    try:
        d.wait_ready()
        # Warm-up: the first login proves the daemon writes at all; not counted.
        ip = logins.next_ip()
        d.append(logins.line(ip, "uw"))
        if not wait_visible(d.db, [ip], 10.0):
            raise BenchError(f"warm-up login {ip} not in the table after 10s: {d.tail_stderr()}")
        iso = res.row("latency", "isolated logins, median", "ms", "<= 50", lambda v: v <= 50)
        iso_max = res.row("latency", "isolated logins, max", "ms", "<= 100", lambda v: v <= 100)
        lat: list[float] = []
        slow_gap: list[float] = []  # latencies of logins that came >= flush_interval after the last
        pairs: list[str] = []
        prev = time.perf_counter()
        for _ in range(opts.isolated):
            # The gap is the workload (a quiet log between logins), not a synchronization.
            time.sleep(max(0.0, rng.uniform(*opts.gap) - (time.perf_counter() - prev)))
            ip = logins.next_ip()
            t0 = d.append(logins.line(ip))
            gap, prev = t0 - prev, t0
            seen = wait_visible(d.db, [ip], 10.0)
            if ip not in seen:
                res.fail(f"latency: isolated login {ip} not in the table after 10s")
                continue
            ms = (seen[ip] - t0) * 1000
            lat.append(ms)
            pairs.append(f"{gap:.1f}s:{ms:.1f}")
            if gap >= opts.flush_interval:
                slow_gap.append(ms)
        if lat:
            iso.values.append(statistics.median(lat))
            iso_max.values.append(max(lat))
            res.note("isolated logins (gap since the previous one: latency ms): " + " ".join(pairs))
        if slow_gap:
            res.row(
                "latency",
                "isolated, gap >= flush_interval, max",
                "ms",
                "<= 100",
                lambda v: v <= 100,
            ).values.append(max(slow_gap))
        burst_max, burst_median, lost = run_burst(
            d, logins, opts.burst_rate, opts.burst_seconds, opts.flush_interval
        )
        target = opts.flush_interval * 1000 + 100
        res.row(
            "latency",
            f"burst {opts.burst_rate}/s, max",
            "ms",
            f"<= {target:.0f}",
            lambda v: v <= target,
        ).values.append(burst_max)
        res.row("latency", f"burst {opts.burst_rate}/s, median", "ms").values.append(burst_median)
        if lost:
            res.fail(f"latency: {lost} burst logins never reached the table")
        status = d.notify.last_status()
        if status:
            res.note(f"daemon STATUS after latency part: {status}")
    finally:
        d.stop()


def run_burst(
    d: Daemon, logins: Logins, rate: int, seconds: float, flush_interval: float
) -> tuple[float, float, int]:
    """Append ``rate`` logins/s for ``seconds`` from a thread; (max ms, median ms, lost)."""
    total = int(rate * seconds)
    ips = [logins.next_ip() for _ in range(total)]
    appended: dict[str, float] = {}
    tick = 0.01  # write every 10 ms: 1000/s arrive as 10 lines per write(2)
    per_tick = max(1, int(rate * tick))

    def writer() -> None:
        start = time.perf_counter()
        for i in range(0, total, per_tick):
            due = start + (i // per_tick) * tick
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the burst's own schedule
            chunk = ips[i : i + per_tick]
            t = d.append("".join(logins.line(ip) for ip in chunk))
            for ip in chunk:
                appended[ip] = t

    th = threading.Thread(target=writer, name="burst-writer")
    th.start()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + seconds + flush_interval * 3 + 10
    while time.monotonic() < deadline:
        pending = [ip for ip in list(appended) if ip not in seen]
        if not pending and not th.is_alive() and len(seen) == total:
            break
        if pending:
            hits = lookup(d.db, pending)
            now = time.perf_counter()
            for ip in hits:
                seen[ip] = now
        time.sleep(0.002)
    th.join()
    lat = [(seen[ip] - appended[ip]) * 1000 for ip in seen]
    if not lat:
        return float("nan"), float("nan"), total
    return max(lat), statistics.median(lat), total - len(seen)


def part_dbwork(opts: Options, res: Results) -> None:
    expire_table(opts, res)
    if shutil.which("strace") is None:
        res.note("dbwork: strace not installed: lock/sync counts skipped")
        return
    logins = Logins(opts.seed + 1, opts.daemons)
    trace = opts.workdir / "dbwork" / "strace.out"
    trace.parent.mkdir(parents=True, exist_ok=True)
    d = Daemon(
        opts.popwatch,
        opts.workdir / "dbwork",
        strace=trace,
        flush_interval=f"{opts.flush_interval}s",
    )
    try:
        d.wait_ready(60)
        ip = logins.next_ip()
        d.append(logins.line(ip, "uw"))
        if not wait_visible(d.db, [ip], 20.0):
            raise BenchError(f"dbwork: warm-up login not in the table: {d.tail_stderr()}")
        mark = trace_counts(trace)
        secs = max(opts.burst_seconds, 2 * opts.flush_interval)
        _, _, lost = run_burst(d, logins, opts.burst_rate, secs, opts.flush_interval)
        after = trace_counts(trace)
        locks = after["lock_ex"] - mark["lock_ex"]
        syncs = after["sync"] - mark["sync"]
        other = after["other_sync"] - mark["other_sync"]
        reads = after["lock_sh"] - mark["lock_sh"]
        burst_n = int(opts.burst_rate * secs)
        if lost:
            res.fail(f"dbwork: {lost} burst logins never reached the table")
        res.row(
            "dbwork",
            "exclusive locks in burst",
            "count",
            f"~{secs / opts.flush_interval + 2:.0f} (one per flush, 2 credits)",
        ).values.append(locks)
        res.row("dbwork", "syncs of other files (state) in burst", "count").values.append(other)
        res.row("dbwork", "table reads (LOCK_SH) per login in burst", "count").values.append(
            reads / burst_n
        )
        res.row(
            "dbwork", "syncs per exclusive lock", "count", "<= 1", lambda v: v <= 1
        ).values.append(syncs / locks if locks else float("nan"))
        # Re-logins of addresses that are fresh in the table must not cause any write.  A new
        # address logged after them proves the daemon has read them (it reads in order).
        burst_ips = [
            f"198.{18 + (n >> 16) % 2}.{(n >> 8) & 255}.{n & 255}"
            for n in range(2, 2 + min(opts.relogins, logins.n - 1))
        ]
        before = lookup(d.db, burst_ips)
        time.sleep(1.1)  # a later whole second, so that a rewrite would show in the stamp
        mark = trace_counts(trace)
        d.append("".join(logins.line(ip) for ip in burst_ips))
        sentinel = logins.next_ip()
        d.append(logins.line(sentinel, "uw"))
        if not wait_visible(d.db, [sentinel], 20.0):
            raise BenchError("dbwork: sentinel login not in the table")
        after = trace_counts(trace)
        writes = after["lock_ex"] - mark["lock_ex"] - 1  # the sentinel's own flush
        res.row("dbwork", "table reads (LOCK_SH) per re-login", "count").values.append(
            (after["lock_sh"] - mark["lock_sh"]) / max(len(burst_ips), 1)
        )
        changed = sum(1 for ip, v in lookup(d.db, burst_ips).items() if before.get(ip) != v)
        res.row(
            "dbwork", f"writes caused by {len(burst_ips)} re-logins", "count", "0", lambda v: v == 0
        ).values.append(max(writes, 0))
        if changed:
            res.fail(f"dbwork: {changed} re-logins of fresh addresses changed their stamp")
    finally:
        d.stop()


def trace_counts(path: Path) -> dict[str, int]:
    """Exclusive locks and syncs on relayers.db, and syncs of other files (state, positions),
    from ``strace -y`` output (file descriptors shown with their paths)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    syncs = re.findall(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>", text)
    return {
        "lock_ex": len(re.findall(r"flock\(\d+<[^>]*/relayers\.db>, LOCK_EX", text)),
        "lock_sh": len(re.findall(r"flock\(\d+<[^>]*/relayers\.db>, LOCK_SH", text)),
        "sync": sum(1 for f in syncs if f.endswith("/relayers.db")),
        "other_sync": sum(1 for f in syncs if not f.endswith("/relayers.db")),
    }


def expire_table(opts: Options, res: Results) -> None:
    home = opts.workdir / "expire"
    home.mkdir(parents=True, exist_ok=True)
    dbpath = home / "relayers.db"
    now = int(time.time())
    rng = random.Random(opts.seed)
    entries: dict[str, int] = {}
    for n in range(opts.expire_entries):
        entries[f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"] = now - rng.randint(3600, 86400)
    keep = {f"172.16.0.{n}": now - 60 for n in range(1, 101)}
    keep.update({f"172.17.0.{n}": now + 365 * 86400 for n in range(1, 11)})  # pinned
    entries.update(keep)
    startup = run_measured([opts.popwatch, "--version"])
    res.row("dbwork", "popwatch start-up (--version)", "s").values.append(startup.elapsed)
    for _ in range(opts.runs):
        write_table(dbpath, entries)
        r = run_measured([opts.popwatch, "--db", str(dbpath), "expire", "30"])
        if r.status != 0:
            why = r.stderr.strip()[-200:] or r.stdout.strip()[-200:]
            res.note(f"dbwork: popwatch expire not available: exit {r.status}: {why}")
            res.row("dbwork", f"expire {opts.expire_entries:,} entries", "s").note = "n/a"
            return
        res.row(
            "dbwork",
            f"expire {opts.expire_entries:,} entries (command)",
            "s",
            "< 1",
            lambda v: v < 1,
        ).values.append(r.elapsed)
        res.row(
            "dbwork",
            f"expire {opts.expire_entries:,} entries, net of start-up",
            "s",
            "< 1",
            lambda v: v < 1,
        ).values.append(r.elapsed - startup.elapsed)
        left = read_table(dbpath)
        if left != keep:
            res.fail(
                f"dbwork: after expire the table holds {len(left)} entries, not the "
                f"{len(keep)} fresh and pinned ones"
            )


def part_idle(opts: Options, res: Results) -> None:
    logins = Logins(opts.seed + 2, opts.daemons)
    d = Daemon(opts.popwatch, opts.workdir / "idle")
    try:
        d.wait_ready()
        ip = logins.next_ip()
        d.append(logins.line(ip, "uw"))
        if not wait_visible(d.db, [ip], 10.0):
            raise BenchError(f"idle: warm-up login not in the table: {d.tail_stderr()}")
        pid = d.pid
        t0, c0, w0 = time.monotonic(), cpu_seconds(pid), switches(pid)
        time.sleep(opts.idle_seconds)  # the measurement window itself
        t1, c1, w1 = time.monotonic(), cpu_seconds(pid), switches(pid)
        res.row(
            "idle", f"CPU over {opts.idle_seconds:g}s quiet", "% of a core", "~0", lambda v: v < 0.5
        ).values.append(100 * (c1 - c0) / (t1 - t0))
        res.row("idle", "wake-ups (context switches)", "/s").values.append((w1 - w0) / (t1 - t0))
    finally:
        d.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


# ---------------------------------------------------------------------------------------------


def default_popwatch() -> str:
    here = Path(sys.executable).parent / "popwatch"
    return str(here) if here.exists() else shutil.which("popwatch") or "popwatch"


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        mult = 1_000_000 if p.endswith("m") else 1000 if p.endswith("k") else 1
        try:
            out.append(int(float(p.rstrip("mk")) * mult))
        except ValueError:
            raise argparse.ArgumentTypeError(f'bad size "{part}" (e.g. 1M,5M)') from None
    return out


def _gap(text: str) -> tuple[float, float]:
    try:
        lo, _, hi = text.partition("-")
        return float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f'bad gap "{text}" (e.g. 0.5-12)') from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"run: fatal: {message}", file=sys.stderr)
        sys.exit(64)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(prog="bench/run.py", description="Measure popwatch against issue 6's targets.")
    p.add_argument("--quick", action="store_true", help="small sizes, for the CI smoke test")
    p.add_argument("--runs", type=int, default=None, help="runs per measure (3; quick: 1)")
    p.add_argument("--lines", type=_sizes, default=None, help="scan sizes (1M,5M; quick: 20k)")
    p.add_argument("--only", default=",".join(PARTS), help=f"parts: {','.join(PARTS)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--daemons",
        type=genlog.daemon_list,
        default=genlog.DAEMONS,
        help=f"login formats to generate ({','.join(genlog.DAEMONS)})",
    )
    p.add_argument("--workdir", help="keep generated files here (default: a temp dir)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--popwatch", default=default_popwatch(), help="the popwatch executable")
    p.add_argument("--isolated", type=int, default=None, help="isolated logins (20; quick: 3)")
    p.add_argument("--gap", type=_gap, default=None, help="seconds between them (0.5-12)")
    p.add_argument("--burst-rate", type=int, default=1000, help="logins/s in the burst")
    p.add_argument("--burst-seconds", type=float, default=None, help="(3; quick: 1)")
    p.add_argument("--idle-seconds", type=float, default=None, help="(10; quick: 2)")
    p.add_argument("--flush-interval", type=float, default=1.0, help="daemon flush_interval")
    p.add_argument("--relogins", type=int, default=500, help="re-logins in the dbwork part")
    p.add_argument("--expire-entries", type=int, default=100_000)
    p.add_argument(
        "--scan-lifetime",
        default="1d",
        help="lifetime for scan runs: long, so that every run of the same file sees "
        "every login as current however long the runs take (1d)",
    )
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) in --only: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    q = args.quick
    parts = set(args.only.split(","))
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="popbench-")))
        opts = Options(
            popwatch=args.popwatch,
            workdir=workdir,
            seed=args.seed,
            runs=args.runs or (1 if q else 3),
            lines=args.lines or ([20_000] if q else [1_000_000, 5_000_000]),
            isolated=args.isolated if args.isolated is not None else (3 if q else 20),
            gap=args.gap or ((1.2, 2.0) if q else (0.5, 12.0)),
            burst_rate=args.burst_rate,
            burst_seconds=args.burst_seconds or (1.0 if q else 3.0),
            idle_seconds=args.idle_seconds or (2.0 if q else 10.0),
            flush_interval=args.flush_interval,
            relogins=args.relogins,
            expire_entries=args.expire_entries if not q else min(args.expire_entries, 10_000),
            scan_lifetime=args.scan_lifetime,
            keep_files=bool(args.workdir),
            daemons=args.daemons,
        )
        res = Results()
        print(
            f"popwatch benchmark: {opts.popwatch}, seed {opts.seed}, runs {opts.runs}, "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        steps: list[tuple[str, Callable[[], None]]] = []
        if parts & {"refs", "scan"}:
            steps.append(("scan", lambda: part_refs_and_scan(opts, res, parts)))
        if "latency" in parts:
            steps.append(("latency", lambda: part_latency(opts, res)))
        if "dbwork" in parts:
            steps.append(("dbwork", lambda: part_dbwork(opts, res)))
        if "idle" in parts:
            steps.append(("idle", lambda: part_idle(opts, res)))
        for name, step in steps:
            try:
                step()
            except Unavailable as why:
                res.note(f"{name}: n/a: {why}")
                res.row(name, "(all)", "").note = f"n/a: {why}"
            except BenchError as why:
                res.fail(f"{name}: {why}")
        print()
        print(res.table())
        for n in res.notes:
            print(f"note: {n}")
        for f in res.failures:
            print(f"CHECK FAILED: {f}")
        if args.json:
            Path(args.json).write_text(json.dumps(res.as_json(), indent=1) + "\n")
        return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tailer: complete lines from log files, followed through rotation, restarts and crashes.

NAME
    popwatch.tailer - the file source of log lines

SYNOPSIS
    tailer = Tailer(["/var/log/mail.log"], Path("/var/lib/popwatch"))
    while running:
        for line in tailer.poll():        # RawLine(source, data, lineno)
            handle(line)
        flush_database()
        tailer.checkpoint()               # only after the lines are safe downstream
        wait_for_watcher_or_timer()
    tailer.close()

DESCRIPTION
    A :class:`Tailer` follows log files named by paths or globs and hands out every complete
    line exactly once in file order.  It never blocks and never sleeps: :meth:`Tailer.poll`
    reads whatever is new and returns; the caller decides when to poll again, normally when
    :class:`popwatch.watcher.Watcher` reports activity in one of :meth:`Tailer.directories`.
    Globs are expanded again on every poll, so files that appear later are picked up.  Glob
    matches that look like rotated generations (``x.1``, ``x-20261122``, ``x.gz``) are not
    followed: they would be read twice.

    A followed file is an *instance* (an open descriptor on one inode).  On every poll the path
    is stat'ed and compared with the instance:

    * another inode at the path (rename+create, as logrotate does by default, or
      delete+recreate): the old instance is kept open and drained - including lines the writer
      appends to it before it is told to reopen - until it has been quiet for ``rotated_grace``
      seconds or has been deleted; the new file is read from its start.  Old instances are
      read before the new one on every poll.
    * the same inode, but smaller than what was read, or with other first bytes (copytruncate,
      or a file truncated and rewritten between two polls): read again from the start.  Lines
      that were written before the copy but not yet read are recovered from the copy when one
      with the same first bytes sits in the same directory; a file of which nothing was read
      has no first bytes to compare, and its copy is found as a younger generation (below).
    * no file, a directory, or a file that cannot be opened: one warning per change of that
      state (logger ``popwatch.tailer``), then retried on every poll.  A file that appears
      later is read from its start.

    Only complete lines are handed out: a partial last line is held until its line feed
    arrives.  A line longer than ``max_line_length`` is skipped with one warning naming the
    file and the offset; memory stays bounded while it is skipped.  A partial line left in an
    old instance that is closed is dropped with a warning.

    :meth:`Tailer.checkpoint` saves, for every path, the instance(s) being read, how far they
    were handed out (always just after a line feed) and a fingerprint of their first bytes
    (see :mod:`popwatch.positions`).  A new Tailer on the same state directory resumes there:
    the same instance is continued at its offset; an instance that was rotated away meanwhile
    is found by inode among the files in the same directory and finished first (followed by
    any younger rotated generation), then the new file is read from its start.  An instance
    that is gone (compressed or deleted) is reported and the new file is read from the start;
    a file that got shorter or has other first bytes is read from the start (after the rest
    from its copy, if there is one).  Paths without saved state are read from the start, or
    from the end when ``start_at_end`` is set.  Lines handed out after the last checkpoint are
    handed out again after a crash.

    Younger generations: rotated files (``NAME.N``, ``NAME-DATE``, uncompressed) in the same
    directory that were modified no earlier than the file read before (or than the saved
    position, when that file is gone or was empty) are rotations that happened before their
    lines were read - while popwatch was down, between two polls of a file seen empty (it
    grew, or its mtime moved while it stayed empty: copied and truncated), or between the
    rotation of one file and the first look at the next (a file created and rotated away
    unseen).  They are read whole, oldest first, except files being read, files read to their
    end by this Tailer, and copies of the file read before (same first bytes).  This relies on
    mtimes (on kernels with coarse timestamps, a file written, copied and truncated within one
    clock tick of being seen empty is noticed only when it grows again):
    a rotated file that received its last write later than the file that replaced it, and was
    finished before a restart, can be read a second time (harmless downstream: a line read
    again changes nothing), never the other way round.

    ``poll()`` reads in chunks of 1 MiB and splits them with ``bytes.split``; the per-line cost
    is building one :class:`RawLine`.  ``max_batch_bytes`` bounds the bytes read by one poll
    (0: no bound); when it stopped early, :attr:`Tailer.more` is true and the caller should
    poll again without waiting.

    The Tailer is not thread-safe: one thread polls, checkpoints and closes it.

WHAT IT DOES NOT
    Decode text (bytes are handed out as they are; a CR before the LF is kept), read
    compressed files, follow the systemd journal or stdin, or know what a line means.

DIAGNOSTICS
    Problems with log files are warnings, never exceptions.  The state directory: see
    :mod:`popwatch.positions` (ConfigError when it cannot be used, PopwatchError when another
    process holds it).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from popwatch.positions import (
    FINGERPRINT_BYTES,
    PathState,
    Position,
    PositionFile,
    fingerprint,
)

log = logging.getLogger("popwatch.tailer")

CHUNK = 1 << 20
# Names a glob must not pick up: rotated generations and compressed files.
ROTATED_NAME = re.compile(
    r"(?:\.\d+|-\d{8}(?:\d{2})?)(?:\.(?:gz|bz2|xz|zst|lz4|lzma|Z))?$|\.(?:gz|bz2|xz|zst|lz4|lzma|Z)$"
)

DevIno = tuple[int, int]


@dataclass(frozen=True, slots=True)
class RawLine:
    """One complete line of one file instance."""

    source: str  # the path as configured/expanded (the name the admin knows)
    data: bytes  # the line without its LF (a CR before it is kept); <= max_line_length
    lineno: int  # 1-based line number within the file instance; 0 if unknown


class _RawLineBuilder:
    """Mutable twin of RawLine with the same slots: built, then re-classed to RawLine.

    A frozen dataclass pays for ``object.__setattr__`` on every field (about 600 ns a line
    here); building this twin and switching ``__class__`` costs about 250 ns, which matters
    at catch-up rates of hundreds of thousands of lines per second.
    """

    __slots__ = ("data", "lineno", "source")

    def __init__(self, source: str, data: bytes, lineno: int) -> None:
        self.source = source
        self.data = data
        self.lineno = lineno


def _lines(source: str, parts: list[bytes], first: int | None) -> list[RawLine]:
    if first is None:
        built = [_RawLineBuilder(source, d, 0) for d in parts]
    else:
        built = [_RawLineBuilder(source, d, n) for n, d in enumerate(parts, first)]
    for obj in built:
        obj.__class__ = RawLine  # type: ignore[assignment]
    return built  # type: ignore[return-value]


class _Instance:
    """One open file instance (inode) and how far it has been read and handed out."""

    __slots__ = (
        "boundary",
        "counted",
        "dev",
        "fd",
        "head",
        "ino",
        "label",
        "lineno",
        "partial",
        "pos",
        "quiet_since",
        "read_before",
        "skipping",
        "unread_since",
    )

    def __init__(self, fd: int, label: str) -> None:
        st = os.fstat(fd)
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.label = label  # the name it had when opened, for messages
        self.pos = 0  # bytes read
        self.boundary = 0  # just after the last line feed handed out
        self.lineno = 0  # lines handed out before boundary
        self.counted = True  # False: line numbers unknown (resumed from the end)
        self.partial = b""  # bytes after boundary, read but not yet a line
        self.skipping = False  # inside an over-long line being discarded
        self.head = b""  # the first min(FINGERPRINT_BYTES, pos) bytes of the file
        self.quiet_since = 0.0
        self.unread_since: int | None = None  # mtime at the last look while nothing was read
        # What was read before the file was truncated: its copies are not rotations.
        self.read_before: Position | None = None

    @classmethod
    def open(cls, path: str) -> _Instance:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(21, "not a regular file")
            return cls(fd, path)
        except BaseException:
            os.close(fd)
            raise

    @property
    def ids(self) -> DevIno:
        return (self.dev, self.ino)

    def seek(self, offset: int, lineno: int, counted: bool = True) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.pos = self.boundary = offset
        self.unread_since = None
        self.read_before = None
        self.lineno = lineno
        self.counted = counted
        self.partial = b""
        self.skipping = False
        self.head = os.pread(self.fd, min(offset, FINGERPRINT_BYTES), 0) if offset else b""

    def seek_end(self) -> None:
        """Position after the last complete line (for start_at_end); line numbers unknown."""
        size = os.fstat(self.fd).st_size
        look = min(size, 65536)
        tail = os.pread(self.fd, look, size - look) if look else b""
        cut = tail.rfind(b"\n")
        if cut >= 0:
            self.seek(size - look + cut + 1, 0, counted=False)
        elif size == look:
            self.seek(0, 0)  # one unfinished first line: all of it is new
        else:
            self.seek(size, 0, counted=False)
            self.skipping = True  # in the middle of a huge line: skip its rest quietly

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def head_matches(self) -> bool:
        """The file still starts with the bytes read from it (not truncated and rewritten)."""
        return not self.head or os.pread(self.fd, len(self.head), 0) == self.head

    def matches(self, pos: Position) -> bool:
        """This instance is the one ``pos`` describes: same inode, first bytes and no shorter."""
        if self.ids != (pos.dev, pos.ino) or self.size() < max(pos.offset, pos.fp_len):
            return False
        return fingerprint(os.pread(self.fd, pos.fp_len, 0)) == pos.fingerprint

    def position(self) -> Position:
        # A file of which nothing was read is known only up to the last look at it: rotated
        # files newer than that may be its copies (see _Path._watch_unread).
        mtime = self.unread_since if self.pos == 0 else None
        return Position(
            dev=self.dev,
            ino=self.ino,
            offset=self.boundary,
            lineno=self.lineno if self.counted else 0,
            size=self.pos,
            fp_len=len(self.head),
            fingerprint=fingerprint(self.head),
            mtime_ns=os.fstat(self.fd).st_mtime_ns if mtime is None else mtime,
        )

    def read(self, source: str, out: list[RawLine], max_len: int, budget: int) -> int:
        """Append the complete lines now in the file to ``out``; bytes read (<= budget+CHUNK)."""
        total = 0
        while True:
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                break
            self.pos += len(chunk)
            total += len(chunk)
            self._feed(chunk, source, out, max_len)
            if len(chunk) < CHUNK or (budget and total >= budget):
                break
        if total and len(self.head) < FINGERPRINT_BYTES:
            self.head = os.pread(self.fd, min(self.pos, FINGERPRINT_BYTES), 0)
        return total

    def _feed(self, chunk: bytes, source: str, out: list[RawLine], max_len: int) -> None:
        if self.partial:
            chunk = self.partial + chunk
            self.partial = b""
        base = self.pos - len(chunk)  # file offset of chunk[0]
        parts = chunk.split(b"\n")
        tail = parts.pop()
        if self.skipping:
            if not parts:
                return  # still inside the over-long line; its bytes are dropped
            base += len(parts[0]) + 1
            del parts[0]
            self.lineno += 1
            self.skipping = False
            self.boundary = base
        if parts:
            if max(map(len, parts)) > max_len:
                self._feed_slow(parts, base, source, out, max_len)
            else:
                out += _lines(source, parts, self.lineno + 1 if self.counted else None)
            self.lineno += len(parts)
            self.boundary = self.pos - len(tail)
        if len(tail) > max_len:
            log.warning(
                "%s: line at offset %d is longer than %d bytes: skipping it",
                self.label,
                self.pos - len(tail),
                max_len,
            )
            self.skipping = True
        else:
            self.partial = tail

    def _feed_slow(
        self, parts: list[bytes], base: int, source: str, out: list[RawLine], max_len: int
    ) -> None:
        offset = base
        for n, data in enumerate(parts, self.lineno + 1):
            if len(data) > max_len:
                log.warning(
                    "%s: line at offset %d is longer than %d bytes: skipping it",
                    self.label,
                    offset,
                    max_len,
                )
            else:
                out += _lines(source, [data], n if self.counted else None)
            offset += len(data) + 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_matching(path: str, pos: Position) -> _Instance | None:
    try:
        inst = _Instance.open(path)
    except OSError:
        return None
    try:
        if inst.matches(pos):
            return inst
    except OSError:
        pass
    inst.close()
    return None


def _siblings(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return [e for e in it if e.is_file()]
    except OSError:
        return []


class _Path:
    """One followed path: the instance now at it and rotated-away instances still draining."""

    def __init__(self, name: str, from_glob: bool, saved: PathState | None, fresh: bool) -> None:
        self.name = name
        self.dir = os.path.dirname(name) or "."
        self.from_glob = from_glob
        self.saved = saved  # restored on the first poll
        self.fresh = fresh and saved is None  # present at start-up, no state: start_at_end
        self.current: _Instance | None = None
        self.draining: list[_Instance] = []
        self.status = "new"
        # The instance at the path before it was rotated away or vanished, until the next one
        # is opened: generations rotated in between (never seen at the path) are newer.
        self.last: Position | None = None

    def instances(self) -> list[_Instance]:
        return [*self.draining, *([self.current] if self.current else [])]

    def set_status(self, status: str, message: str = "") -> None:
        if status == self.status:
            return
        old, self.status = self.status, status
        if status == "ok":
            if old not in ("new", "missing-rotated"):
                log.info("%s: usable again: following it from the start", self.name)
        elif status == "missing-rotated":
            log.info("%s: renamed away (rotation): waiting for the new file", self.name)
        elif not (self.from_glob and status == "missing"):
            log.warning("%s: %s: will retry", self.name, message)

    # -- restoring saved positions -----------------------------------------------------------

    def restore(self, t: Tailer) -> None:
        saved, self.saved = self.saved, None
        if saved is None:
            return
        for pos in saved.draining:
            inst = self._find(pos, t)
            if inst is None:
                log.warning(
                    "%s: rotated file (inode %d) is gone: lines after offset %d of it are lost",
                    self.name,
                    pos.ino,
                    pos.offset,
                )
            else:
                self._drain(inst, t)
        cur = saved.current
        if cur is None:
            # Nothing was at the path: what appeared there since, and was rotated away before
            # this first look, is newer than the file that was there before (or, from an older
            # state file, than the rotated files being finished).
            newest = max(saved.draining, key=lambda pos: pos.mtime_ns, default=None)
            self.last = saved.previous or newest
            return
        inst = _open_matching(self.name, cur)
        if inst is not None:
            inst.seek(cur.offset, cur.lineno, counted=cur.lineno > 0 or cur.offset == 0)
            self.current = inst
            if cur.fp_len == 0 and cur.mtime_ns:
                # It was empty: nothing proves it was not copied and truncated meanwhile, and
                # it may still be between now and the first look at it in check().
                self._younger_generations(cur.mtime_ns, cur, t)
                inst.unread_since = cur.mtime_ns
            return
        try:
            st = os.stat(self.name)
            same_inode = (st.st_dev, st.st_ino) == (cur.dev, cur.ino)
        except OSError:
            same_inode = False
        # The rest of the file read before: under another name (rename), or a copy of it
        # (copytruncate); then every generation rotated after it, oldest first.
        old = None if same_inode else self._find(cur, t)
        if old is None:
            old = t.find_copy(self.dir, cur, exclude=self.name)
        if same_inode:
            log.info(
                "%s: truncated or replaced while popwatch was down: reading it from the start",
                self.name,
            )
        elif old is None:
            log.warning(
                "%s: the file read before (inode %d) is gone (compressed or deleted?): lines "
                "after offset %d of it are lost; reading the newer files from the start",
                self.name,
                cur.ino,
                cur.offset,
            )
        if old is not None:
            self._drain(old, t)
            # An empty file is recognized by its inode only: it may have been copied and
            # truncated after the checkpoint, so every file newer than then is a candidate.
            empty = cur.fp_len == 0 and cur.mtime_ns
            ref = cur.mtime_ns if empty else os.fstat(old.fd).st_mtime_ns
            self._younger_generations(ref, cur, t)
        elif cur.mtime_ns:
            self._younger_generations(cur.mtime_ns, cur, t)

    def _find(self, pos: Position, t: Tailer) -> _Instance | None:
        """The instance ``pos`` names, at the path or under another name in its directory."""
        if t.in_use((pos.dev, pos.ino)):
            return None
        # readdir can miss an entry renamed while it runs (logrotate shifting .1 -> .2 ...):
        # look again before declaring the file gone.
        for _ in range(3):
            names = [e.path for e in _siblings(self.dir) if e.inode() == pos.ino]
            for path in [self.name, *names]:
                inst = _open_matching(path, pos)
                if inst is not None:
                    inst.label = path
                    inst.seek(pos.offset, pos.lineno, counted=pos.lineno > 0 or pos.offset == 0)
                    return inst
        return None

    def _younger_generations(self, mtime_ns: int, read: Position, t: Tailer) -> None:
        """Read whole the rotated files modified after ``mtime_ns`` (the file read before, or
        its last known state): generations rotated while popwatch was down, or between two
        looks at the path (a file seen empty, or not seen at all).  Files being read,
        the file now at the path and copies of the file ``read`` (same first bytes: what they
        hold was read, or is being read from find_copy) are left alone."""
        base = os.path.basename(self.name)
        skip = set()
        try:
            now = os.stat(self.name)
            skip.add((now.st_dev, now.st_ino))
        except OSError:
            pass  # nothing at the path now: every younger generation is rotated
        found = []
        for e in _siblings(self.dir):
            if not e.name.startswith(base) or not ROTATED_NAME.fullmatch(e.name[len(base) :]):
                continue
            if e.name[len(base) :].endswith((".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".Z")):
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            ids = (st.st_dev, st.st_ino)
            if ids in skip or t.in_use(ids) or t.done.get(ids) == st.st_size:
                continue
            # >=: mtimes are coarse (one clock tick); reading a file twice is harmless
            # downstream, missing one is not.
            if st.st_mtime_ns >= mtime_ns:
                found.append((st.st_mtime_ns, e.path))
        for _, path in sorted(found):
            try:
                inst = _Instance.open(path)
            except OSError:
                continue
            try:
                copy = read.fp_len > 0 and inst.matches(
                    dataclasses.replace(read, dev=inst.dev, ino=inst.ino, offset=0)
                )
            except OSError:
                copy = True  # unreadable now: leave it
            if copy:
                inst.close()
                continue
            log.info("%s: rotated before it was read: reading it whole", path)
            self._drain(inst, t)

    # -- following ------------------------------------------------------------------------------

    def check(self, t: Tailer) -> None:
        """Compare the path with the current instance; handle rotation and appearance."""
        cur = self.current
        # Only a file present at start-up (without saved state) may start at its end; one that
        # appears later is new, all of it.
        fresh, self.fresh = self.fresh, False
        try:
            st = os.stat(self.name)
        except FileNotFoundError:
            if cur is not None:
                self._retire(t)
            self.set_status(
                "missing-rotated" if self.draining and self._renamed() else "missing",
                "does not exist: waiting for it to appear",
            )
            return
        except OSError as err:
            # Cannot even look: keep reading what is open, it is still the best guess.
            self.set_status(f"stat:{err.errno}", f"cannot look it up: {err.strerror}")
            return
        if not stat.S_ISREG(st.st_mode):
            if cur is not None:
                self._retire(t)
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            self.set_status("notfile", f"is {kind}, not a log file")
            return
        ids = (st.st_dev, st.st_ino)
        if cur is not None and cur.ids == ids:
            self.set_status("ok")
            if st.st_size < cur.pos or (st.st_size != cur.pos and not cur.head_matches()):
                self._truncated(t, cur, st)
            elif cur.pos == 0:
                self._watch_unread(cur, st, t)
            return
        if cur is not None:
            log.info("%s: rotated: finishing the old file, reading the new one", self.name)
            self._retire(t)
        for inst in self.draining:
            if inst.ids == ids:  # renamed back
                self.draining.remove(inst)
                self.current = inst
                self.last = None
                self.set_status("ok")
                return
        other = t.in_use(ids)
        if other:
            self.set_status("dup", f"is the same file as {other}: reading it once, as that")
            return
        try:
            inst = _Instance.open(self.name)
        except OSError as err:
            self.set_status(f"open:{err.errno}", f"cannot open: {err.strerror}")
            return
        if fresh and t.start_at_end:
            inst.seek_end()
        self.current = inst
        last, self.last = self.last, None
        if last is not None and last.mtime_ns:
            self._younger_generations(last.mtime_ns, last, t)
        self._watch_unread(inst, st, t)
        self.set_status("ok")

    def _watch_unread(self, cur: _Instance, st: os.stat_result, t: Tailer) -> None:
        """Nothing was read from ``cur`` yet (it was empty, or the read was put off): it has no
        first bytes to recognize it by.  If it was copied and truncated since the last look,
        the copy is a rotated file newer than that look; the truncation changed its mtime."""
        since, cur.unread_since = cur.unread_since, st.st_mtime_ns
        if since is None or st.st_mtime_ns == since:
            return  # first look, or untouched since the last one
        self._younger_generations(since, cur.read_before or cur.position(), t)

    def _renamed(self) -> bool:
        try:
            return os.fstat(self.draining[-1].fd).st_nlink > 0
        except OSError:
            return False

    def _retire(self, t: Tailer) -> None:
        assert self.current is not None
        self.last = self.current.position()
        self._drain(self.current, t)
        self.current = None

    def _drain(self, inst: _Instance, t: Tailer) -> None:
        inst.quiet_since = t.clock()
        self.draining.append(inst)

    def _truncated(self, t: Tailer, cur: _Instance, st: os.stat_result) -> None:
        log.info("%s: truncated (copytruncate?): reading it again from the start", self.name)
        before = cur.position()
        # Any first bytes read identify the copy, even when no whole line was handed out yet.
        copy = t.find_copy(self.dir, before, exclude=self.name)
        if copy is not None:
            self._drain(copy, t)
        cur.seek(0, 0)
        # Read again from the start: a next copy and truncation before anything new is read
        # must not go unseen (see _watch_unread); copies of what was read before are known.
        cur.unread_since = st.st_mtime_ns
        cur.read_before = before

    def read(self, t: Tailer, out: list[RawLine]) -> None:
        now = t.clock()
        for inst in list(self.draining):
            if t.budget_left() <= 0:
                return
            n = self._read_one(inst, t, out)
            if n:
                inst.quiet_since = now
            elif self._finished(inst, now, t.rotated_grace):
                if inst.partial or inst.skipping:
                    log.warning(
                        "%s: incomplete last line at offset %d dropped", inst.label, inst.boundary
                    )
                t.finished(inst)
                inst.close()
                self.draining.remove(inst)
        if self.current is not None and t.budget_left() > 0:
            self._read_one(self.current, t, out)

    def _read_one(self, inst: _Instance, t: Tailer, out: list[RawLine]) -> int:
        try:
            n = inst.read(self.name, out, t.max_line_length, t.budget_left())
        except OSError as err:
            log.warning("%s: read error: %s: will retry", inst.label, err.strerror)
            return 0
        t.spent += n
        return n

    @staticmethod
    def _finished(inst: _Instance, now: float, grace: float) -> bool:
        try:
            gone = os.fstat(inst.fd).st_nlink == 0
        except OSError:
            gone = True
        return gone or now - inst.quiet_since >= grace

    def close(self) -> None:
        for inst in self.instances():
            inst.close()
        self.current = None
        self.draining = []


class Tailer:
    """Follows ``paths`` (files or globs); see the module text."""

    def __init__(
        self,
        paths: Sequence[str],
        state_dir: Path | None,
        *,
        max_line_length: int = 16384,
        start_at_end: bool = False,
        rotated_grace: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_batch_bytes: int = 0,
    ) -> None:
        self.patterns = [str(p) for p in paths]
        self.max_line_length = max_line_length
        self.start_at_end = start_at_end
        self.rotated_grace = rotated_grace
        self.clock = clock
        self.max_batch_bytes = max_batch_bytes
        self.spent = 0
        self.more = False  # the last poll stopped at max_batch_bytes: poll again now
        self._store = PositionFile(state_dir) if state_dir is not None else None
        self._saved = self._store.load() if self._store is not None else {}
        self._paths: dict[str, _Path] = {}
        self._started = False
        self.done: dict[DevIno, int] = {}  # files read to their end: size then

    # -- the interface ---------------------------------------------------------------------------

    def poll(self) -> list[RawLine]:
        """Every complete new line of every followed file (old instances first); never raises
        for trouble with a log file, never blocks."""
        out: list[RawLine] = []
        self.spent = 0
        self._expand()
        for p in list(self._paths.values()):
            try:
                p.restore(self)
                p.check(self)
                p.read(self, out)
            except OSError as err:  # a race with the file system: try again next time
                log.warning("%s: %s: will retry", p.name, err.strerror or err)
            if p.from_glob and p.current is None and not p.draining and p.status != "ok":
                p.close()
                del self._paths[p.name]
        self.more = self.budget_left() <= 0
        return out

    def checkpoint(self) -> None:
        """Persist the positions of everything poll() has handed out (atomic; see positions)."""
        if self._store is None or not self._started:
            return  # nothing handed out yet: the saved state is still the truth
        states = {}
        for name, p in self._paths.items():
            if p.saved is not None:
                states[name] = p.saved
                continue
            # Kept even when nothing is open: a file that appears while popwatch is down is then
            # known to be new (read whole), not a file present at start-up (start_at_end).
            cur = p.current.position() if p.current is not None else None
            drained = tuple(i.position() for i in p.draining)
            states[name] = PathState(cur, drained, p.last if cur is None else None)
        self._store.save(states)

    def directories(self) -> set[Path]:
        """Directories whose activity should wake the caller (existing ones; the nearest
        existing parent for a directory that does not exist yet)."""
        dirs = set()
        for pattern in self.patterns:
            parent = os.path.dirname(pattern) or "."
            while glob.has_magic(parent):
                parent = os.path.dirname(parent) or "."
            dirs.add(parent)
            if glob.has_magic(pattern):
                dirs.update(os.path.dirname(m) or "." for m in glob.glob(pattern))
        for p in self._paths.values():
            dirs.add(p.dir)
            dirs.update(os.path.dirname(i.label) or "." for i in p.draining)
        return {_existing(Path(d).absolute()) for d in dirs}

    def close(self) -> None:
        """Close every file and release the state directory; positions are not saved."""
        for p in self._paths.values():
            p.close()
        self._paths.clear()
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- helpers for _Path -----------------------------------------------------------------------

    def budget_left(self) -> int:
        if not self.max_batch_bytes:
            return 1 << 62
        return self.max_batch_bytes - self.spent

    def finished(self, inst: _Instance) -> None:
        """Remember a file read to its end, so that no later search for rotated files reads
        it again (a rotated file can be newer than the file that replaced it: syslog writes
        to it until its HUP)."""
        self.done[inst.ids] = inst.pos
        while len(self.done) > 256:
            del self.done[next(iter(self.done))]

    def in_use(self, ids: DevIno) -> str | None:
        """The path following the instance ``ids``, if any."""
        for p in self._paths.values():
            for inst in p.instances():
                if inst.ids == ids:
                    return p.name
        return None

    def find_copy(self, directory: str, pos: Position, exclude: str) -> _Instance | None:
        """A copy (copytruncate) of the instance ``pos``: same first bytes, longer than the
        offset; positioned at the offset so that the lines not yet read are read from it.  An
        instance of which nothing was read (no first bytes) has no copy that can be told from
        any other file."""
        if pos.fp_len == 0:
            return None
        best: tuple[int, _Instance] | None = None
        for e in _siblings(directory):
            if e.path == exclude or e.name.endswith((".gz", ".bz2", ".xz", ".zst")):
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            if st.st_size <= pos.offset or self.in_use((st.st_dev, st.st_ino)):
                continue
            copy = Position(
                st.st_dev,
                st.st_ino,
                pos.offset,
                pos.lineno,
                st.st_size,
                pos.fp_len,
                pos.fingerprint,
            )
            inst = _open_matching(e.path, copy)
            if inst is None:
                continue
            if best is None or st.st_mtime_ns > best[0]:
                if best is not None:
                    best[1].close()
                best = (st.st_mtime_ns, inst)
            else:
                inst.close()
        if best is None:
            return None
        inst = best[1]
        inst.seek(pos.offset, pos.lineno, counted=pos.lineno > 0 or pos.offset == 0)
        log.info(
            "%s: reading the lines after offset %d from the copy %s",
            exclude,
            pos.offset,
            inst.label,
        )
        return inst

    def _expand(self) -> None:
        first = not self._started
        self._started = True
        for pattern in self.patterns:
            if not glob.has_magic(pattern):
                self._add(pattern, False, first)
                continue
            for name in sorted(glob.glob(pattern)):
                if not ROTATED_NAME.search(os.path.basename(name)) and os.path.isfile(name):
                    self._add(name, True, first)
        if first:
            # Saved paths that a glob matched before but not now (rotated away while we were
            # down and not yet recreated): their old instances still need finishing.
            for name in list(self._saved):
                if any(glob.has_magic(p) and fnmatchcase(name, p) for p in self.patterns):
                    self._add(name, True, first)

    def _add(self, name: str, from_glob: bool, first: bool) -> None:
        if name not in self._paths:
            self._paths[name] = _Path(name, from_glob, self._saved.pop(name, None), first)


def _existing(path: Path) -> Path:
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path

"""The pipeline from a log line to the relay table, shared by ``popwatch run`` and ``scan``.

DESCRIPTION
    :class:`Pipeline` is the one path from a log line to the relay table:
    bytes -> text (UTF-8; invalid bytes become U+FFFD, one warning per file) ->
    :class:`popwatch.matcher.Matcher` (syslog header, the program's grammar) ->
    :class:`popwatch.policy.Policy` (ignored networks, lifetime window, future clamp) ->
    :class:`popwatch.relaywriter.RelayWriter` (pending map, batched flushes).

    Lines come in three sizes: one at a time (``feed_bytes``: the daemon's tailer), a list of
    consecutive lines (``feed_batch``), or a whole block of lines as read
    (:func:`iter_blocks` and ``feed_block``: ``popwatch scan``).  For a block of ASCII lines,
    :meth:`popwatch.syslogline.ProgramFilter.claimed_lines` passes over the lines no pattern
    claims (most of a mail log) in one regular expression scan, so they never reach Python
    code one by one; the result is the same as line by line (``tests/test_blocks.py``).

    The ``make_*`` functions build the parts from a :class:`popwatch.config.Config`.

WHAT IT DOES NOT
    It does not follow files, talk to systemd or handle signals (:mod:`popwatch.daemon`), and
    does not parse lines itself.  Importing it loads neither watchdog nor the journal reader,
    so that ``popwatch scan`` starts quickly.

DIAGNOSTICS
    A line longer than ``max_line_length`` is skipped with a warning naming the file and line;
    the first invalid UTF-8 line of each file is reported once.  Pattern errors from
    :func:`load_patterns_for` name the configuration files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from popwatch.config import Config
from popwatch.errors import PatternError
from popwatch.event import LoginEvent
from popwatch.grammar import Pattern
from popwatch.matcher import Matcher
from popwatch.patternload import load_patterns
from popwatch.policy import NetRule, Policy, postfix_mynetworks
from popwatch.relaywriter import RelayWriter
from popwatch.store import Store, StoreOptions, open_store
from popwatch.syslogline import LogLine, ProgramFilter

log = logging.getLogger("popwatch.pipeline")

Clock = Callable[[], float]

READ_CHUNK = 1 << 18  # bytes per read in scan: memory, not speed, above this


class Block:
    """Whole lines as read (:func:`iter_blocks`): ``data`` is the lines each preceded by LF
    (``b"\\nline\\nline"``), ``first`` the number of the first line.  ``lines``, their
    number, is set by whoever counts them first (:meth:`Pipeline.feed_block` does while it
    reads), so that the block is not counted twice."""

    __slots__ = ("data", "first", "lines")

    def __init__(self, first: int, data: bytes, lines: int | None = None) -> None:
        self.first = first
        self.data = data
        self.lines = lines

    def count(self) -> int:
        if self.lines is None:
            self.lines = self.data.count(b"\n")
        return self.lines


@dataclass
class Counters:
    lines: int = 0
    logins: int = 0  # login events the grammars produced
    ignored: int = 0  # events the policy refused (ignored network, too old)
    undecodable: int = 0  # lines with invalid UTF-8
    too_long: int = 0  # lines skipped because longer than max_line_length (scan)


@dataclass
class Pipeline:
    """Decode, match, apply the policy, queue for writing.  Shared by run and scan."""

    matcher: Matcher
    policy: Policy
    writer: RelayWriter
    clock: Clock = time.time
    counters: Counters = field(default_factory=Counters)
    _bad_utf8: set[str] = field(default_factory=set)
    _filter: ProgramFilter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._filter = ProgramFilter(self.matcher.programs)

    def feed_bytes(self, data: bytes, source: str, lineno: int) -> None:
        if data.isascii() and self._filter.unclaimed(data):
            # No pattern claims its program (and ASCII cannot be undecodable): what the
            # matcher would do with it, without decoding it.
            self.counters.lines += 1
            self.matcher.stats.lines += 1
            return
        self._feed(data, source, lineno)

    def feed_batch(self, lines: Sequence[bytes], source: str, first: int, ascii: bool) -> None:
        """``feed_bytes`` for consecutive lines numbered from ``first``; ``ascii``: the caller
        knows that every one of them is ASCII.  Counts and warnings are feed_bytes'."""
        unclaimed = self._filter.unclaimed
        feed = self._feed
        skipped = 0
        if ascii:
            for i, data in enumerate(lines, first):
                if unclaimed(data):
                    skipped += 1
                else:
                    feed(data, source, i)
        else:
            for i, data in enumerate(lines, first):
                if data.isascii() and unclaimed(data):
                    skipped += 1
                else:
                    feed(data, source, i)
        self.counters.lines += skipped
        self.matcher.stats.lines += skipped

    def feed_block(self, block: Block, source: str, max_len: int) -> None:
        """The lines of one :func:`iter_blocks` block; a line longer than ``max_len`` is
        skipped with a warning.  Counts and warnings are feed_bytes'."""
        first, data = block.first, block.data
        if not (self._filter.enabled and data.isascii()):
            for start, run, ascii in split_block(block, source, max_len, self.counters):
                self.feed_batch(run, source, start, ascii)
            return
        # The lines no pattern claims are passed over by one regex scan, not one by one.
        feed = self._feed
        done = 0
        claimed, block.lines = self._filter.claimed_lines(data, max_len)
        for i, line in claimed:
            done += 1
            if len(line) > max_len:
                _too_long(source, first + i, self.counters)
            else:
                feed(line, source, first + i)
        skipped = block.lines - done
        self.counters.lines += skipped
        self.matcher.stats.lines += skipped

    def _feed(self, data: bytes, source: str, lineno: int) -> None:
        if data[-1:] == b"\r" or data[:1] == b"\r":
            # CRLF files, and the stray CR of LF CR endings that would start the next line
            data = data.strip(b"\r")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace")
            self.counters.undecodable += 1
            if source not in self._bad_utf8:
                self._bad_utf8.add(source)
                log.warning(
                    "%s, line %d: not valid UTF-8: reading it with replacement characters "
                    "(not reported again for this file)",
                    source,
                    lineno,
                )
        self.counters.lines += 1
        self.event(self.matcher.feed_line(text, source, lineno))

    def feed_logline(self, line: LogLine, source: str) -> None:
        self.counters.lines += 1
        self.event(self.matcher.feed(line, source, 0))

    def event(self, event: LoginEvent | None) -> None:
        if event is None:
            return
        self.counters.logins += 1
        stamp = self.policy.decide(event, self.clock())
        if stamp is None:
            self.counters.ignored += 1
            log.debug(
                "%s, line %d: %s not written (ignored or too old)",
                event.source,
                event.lineno,
                event.ip,
            )
            return
        if self.writer.add(event.ip, stamp):
            log.debug(
                "%s, line %d: login of %s from %s", event.source, event.lineno, event.user, event.ip
            )


# -- building the parts from a configuration -------------------------------------------------


def load_patterns_for(cfg: Config) -> list[Pattern]:
    """The enabled patterns; a PatternError names the configuration file(s) as well."""
    try:
        return load_patterns(list(cfg.pattern_dirs), cfg.patterns, cfg.pattern_options)
    except PatternError as err:
        if not cfg.sources:
            raise
        text = str(err).removeprefix("configuration ")
        raise PatternError(f"{', '.join(cfg.sources)}: {text}") from None


def make_matcher(patterns: Sequence[Pattern], clock: Clock) -> Matcher:
    return Matcher(patterns, clock=clock, report=False)


def make_policy(cfg: Config, mynetworks: Callable[[], Iterable[NetRule]] | None = None) -> Policy:
    """The address policy: ``ignore`` first, then (with ignore_mynetworks) Postfix's list."""
    rules: list[NetRule] = [NetRule(n) for n in cfg.ignore]
    if cfg.ignore_mynetworks:
        rules += list((mynetworks or postfix_mynetworks)())
    return Policy(rules, cfg.lifetime)


def store_options(cfg: Config) -> StoreOptions:
    return StoreOptions.from_config(cfg)


def open_table(cfg: Config) -> Store:
    return open_store(cfg.database, store_options(cfg))


def make_writer(cfg: Config, store: Store, clock: Clock, monotonic: Clock) -> RelayWriter:
    return RelayWriter(
        store,
        lifetime=cfg.lifetime,
        flush_interval=cfg.flush_interval,
        flush_burst=cfg.flush_burst,
        refresh=cfg.refresh,
        expire_interval=cfg.expire_interval,
        clock=clock,
        monotonic=monotonic,
    )


def programs_of(patterns: Sequence[Pattern]) -> dict[str, tuple[str, ...]]:
    return {p.name: tuple(p.programs) for p in patterns}


def iter_lines(
    f: IO[bytes], source: str, max_len: int, counters: Counters
) -> Iterator[tuple[int, bytes]]:
    """(lineno, line without LF) for every line of ``f``, a final partial line included.
    Lines longer than ``max_len`` are skipped with a warning naming file and line; memory
    stays bounded by the chunk size plus ``max_len``."""
    for first, lines, _ in iter_batches(f, source, max_len, counters):
        yield from enumerate(lines, first)


def iter_blocks(f: IO[bytes], source: str, max_len: int, counters: Counters) -> Iterator[Block]:
    """Whole lines of ``f`` a read chunk at a time: (number of the first line, the lines each
    preceded by LF: ``b"\\nline1\\nline2"``, how many), a final line without LF included.  A line
    that grows longer than ``max_len`` across reads is skipped with a warning as it comes,
    so memory stays bounded by the chunk size plus ``max_len``; a long line inside one
    block is the caller's to skip (:func:`split_block`, :meth:`Pipeline.feed_block`)."""
    tail = b"\n"  # the LF before the first line, then the LF and partial line left over
    lineno = 0  # lines before the tail's
    skipping = False
    while True:
        chunk = f.read(READ_CHUNK)
        if not chunk:
            break
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            lineno += 1  # the end of the too-long line
            skipping = False
            tail, chunk = b"", chunk[nl:]
        buf = tail + chunk
        cut = buf.rfind(b"\n")  # >= 0: buf starts with an LF
        if cut > 0:
            block = Block(lineno + 1, buf[:cut])
            yield block
            lineno += block.count()
        tail = buf[cut:]
        if len(tail) - 1 > max_len:
            _too_long(source, lineno + 1, counters)
            skipping = True
            tail = b""
    if len(tail) > 1 and not skipping:
        yield Block(lineno + 1, tail, 1)


def split_block(
    block: Block, source: str, max_len: int, counters: Counters
) -> Iterator[tuple[int, list[bytes], bool]]:
    """The lines of one :func:`iter_blocks` block as lists of consecutive lines: (number of
    the first, lines, True when all are ASCII).  A line longer than ``max_len`` is skipped
    with a warning and ends a list."""
    first = block.first
    ascii = block.data.isascii()  # one C-speed pass instead of a test per line
    lines = block.data[1:].split(b"\n")
    block.lines = len(lines)
    if max(map(len, lines)) <= max_len:
        yield first, lines, ascii
        return
    run: list[bytes] = []
    for i, line in enumerate(lines, first):
        if len(line) > max_len:
            if run:
                yield i - len(run), run, ascii
                run = []
            _too_long(source, i, counters)
        else:
            run.append(line)
    if run:
        yield first + len(lines) - len(run), run, ascii


def iter_batches(
    f: IO[bytes], source: str, max_len: int, counters: Counters
) -> Iterator[tuple[int, list[bytes], bool]]:
    """The lines of :func:`iter_lines` a read chunk at a time: (number of the first line,
    consecutive lines, True when all of them are ASCII).  A too-long line ends a batch."""
    for block in iter_blocks(f, source, max_len, counters):
        yield from split_block(block, source, max_len, counters)


def _too_long(source: str, lineno: int, counters: Counters) -> None:
    counters.too_long += 1
    log.warning("%s, line %d: longer than max_line_length: skipped", source, lineno)

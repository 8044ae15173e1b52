"""Log lines in, login events out: the engine that runs the patterns.

NAME
    popwatch.matcher - route each line to the patterns that claim its program, parse, decide

DESCRIPTION
    A :class:`Matcher` is built once from the loaded patterns (:mod:`popwatch.patternload`).
    For each line (:meth:`Matcher.feed_line` for text, :meth:`Matcher.feed` for an already
    split :class:`~popwatch.syslogline.LogLine`, e.g. from the journal) it:

    1. looks the line's program up in a dict of the programs the patterns claim; a line from
       any other program (most of a mail log: Postfix) stops here, before its time is even
       converted;
    2. skips patterns whose ``hosts`` set is not empty and lacks the line's host;
    3. tries the rules of each claiming pattern in order: a rule runs only when every one of
       its keywords is a substring of the message, then its grammar must match the *whole*
       message (the grammar followed by ``StringEnd()``, built once: what
       ``parse_all=True`` does); the first rule that matches decides:

       LOGIN    an event, with the address from the rule's ``ip`` result, normalized again
                (:func:`popwatch.address.normalize_host`; anything that is not one full host
                address gives no event) and the user from ``user``;
       CONNECT  remember the address for (host, pid), the pid from a ``pid`` result when the
                rule names one (xinetd logs the child's pid), else the line's;
       AUTH     an event if a CONNECT of the same (host, pid) is pending: its address, this
                rule's name and pattern, this line's time; the pending session is used up;
       END      forget the pending session of (host, pid);
       OTHER    nothing but a count.

    A claimed line that no rule matches is a *near miss*: counted, and a bounded sample kept
    for ``popwatch test --print-missed``.  :attr:`Matcher.stats` holds the counts.

    Speed.  Each rule's grammar is compiled once to an equivalent regular expression
    (:mod:`popwatch.grammar_compile`); a rule whose grammar uses something the compiler cannot
    reproduce exactly keeps pyparsing (the reason is logged at debug level), and a rule with a
    pattern author's own parse action uses the regex to reject and pyparsing to confirm.  The
    translation runs in the constructor; ``re.compile`` of a rule's regex waits for the first
    line that reaches the rule (start-up pays only for the daemons the log holds), and a regex
    that then does not compile puts that rule on pyparsing for good (logged at debug level).
    ``compile_grammars=False`` runs pyparsing for every rule (the reference the tests compare
    against).

    Reporting.  With ``report=True`` (the default; ``popwatch test``) every rule is tried in
    order until one matches, so OTHER hits and near misses are counted exactly.  With
    ``report=False`` (the daemon and ``popwatch scan``) OTHER rules are evaluated lazily: the
    LOGIN/CONNECT/AUTH/END rules are tried first, and only when one matches are the OTHER rules
    that come before it (same order, same keyword prefilter) tried; if one of them matches, it
    wins, exactly as in full evaluation.  The events, pending sessions and ``rejected_ip``
    counts are the same in both modes; in lazy mode ``hits`` of OTHER rules and near misses
    (``near_misses``, ``missed``) are not counted.

    It does not apply ignore lists, time windows or the store: events are what the grammars
    extract, exactly, so ``popwatch test`` can show an administrator what each pattern does.
    An event's ``time`` is the line's own time, or the clock's when the line has none.

ERRORS
    None escape :meth:`feed`: an exception inside a grammar or parse action (a broken site
    pattern) is logged as a warning on the ``popwatch.matcher`` logger, naming the pattern
    and rule, and the rule is treated as not matching.  ValueError from the constructor for
    nonsensical bounds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyparsing as pp

from popwatch.address import normalize_host
from popwatch.errors import AddressError
from popwatch.event import LoginEvent
from popwatch.grammar import AUTH, CONNECT, END, LOGIN, OTHER, Pattern, Rule
from popwatch.grammar_compile import (
    NEEDED,
    CompiledRule,
    RenameCache,
    Untranslatable,
    compile_rule,
)
from popwatch.sessions import Pending, PendingSessions
from popwatch.syslogline import LineParser, LogLine

__all__ = ["MatchStats", "Matcher", "Miss"]

log = logging.getLogger("popwatch.matcher")

# Grammar exceptions are logged for the first few lines of a rule, then every Nth, so that a
# broken site pattern on a busy log is visible without flooding the log.
_WARN_FIRST = 5
_WARN_EVERY = 1000
_ADDRESS_CACHE = 8192


@dataclass(frozen=True, slots=True)
class Miss:
    """A claimed line no rule matched."""

    source: str
    lineno: int
    program: str
    message: str


@dataclass
class MatchStats:
    lines: int = 0  # every line fed
    claimed: int = 0  # lines whose program (and host) some pattern claims
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (pattern, rule)
    hits: Counter[tuple[str, str]] = field(default_factory=Counter)  # CONNECT/END/OTHER rules
    near_misses: int = 0
    missed: deque[Miss] = field(default_factory=lambda: deque(maxlen=100))
    rejected_ip: int = 0  # a LOGIN/CONNECT matched but its ip was not a host address
    unpaired_auth: int = 0  # an AUTH line with no pending CONNECT
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # grammar exceptions

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


@dataclass(slots=True)
class _Compiled:
    pattern: str
    rule: Rule
    keywords: tuple[str, ...]
    is_other: bool
    use_regex: bool
    cache: RenameCache  # shared by the rules of one matcher
    # rule.grammar + StringEnd(), built once: what parse_all=True does, without pyparsing
    # building the same two elements again for every line.  Built with ``fast`` on the first
    # line that reaches the rule (None until then), so that the patterns of daemons that
    # never log here cost nothing at start-up.
    whole: pp.ParserElement | None = None
    # The grammar as one regex (its re.compile also waits for the first match); None:
    # pyparsing only (also set to None when the lazy compilation fails).
    fast: CompiledRule | None = None

    def prepare(self) -> pp.ParserElement:
        whole = self.rule.grammar + pp.StringEnd()
        whole.streamline()
        self.whole = whole
        if not self.use_regex:
            return whole
        try:
            self.fast = compile_rule(whole, self.cache, lazy=True)
        except Untranslatable as err:
            log.debug(
                "pattern %s, rule %s: kept on pyparsing: %s", self.pattern, self.rule.name, err
            )
        except Exception as err:  # a compiler bug must cost speed, never a pattern
            log.debug(
                "pattern %s, rule %s: kept on pyparsing: %s",
                self.pattern,
                self.rule.name,
                _describe(err),
            )
        return whole


Results = dict[str, str | None]  # "ip", "user", "pid" -> text as pyparsing gives it


@dataclass(frozen=True, slots=True)
class _Claim:
    hosts: frozenset[str]
    rules: tuple[_Compiled, ...]


class Matcher:
    """Runs patterns over log lines; one instance per log pipeline (not thread-safe)."""

    def __init__(
        self,
        patterns: Sequence[Pattern],
        *,
        clock: Callable[[], float] = time.time,
        parser: LineParser | None = None,
        max_pending: int = 10000,
        pending_age: float = 600.0,
        keep_missed: int = 100,
        report: bool = True,
        compile_grammars: bool = True,
    ) -> None:
        if pending_age <= 0:
            raise ValueError("pending_age must be positive")
        self._clock = clock
        self.report = report
        # normalize_host results of recent addresses: most logins are re-logins of the same
        # clients.  Bounded; cleared when full.
        self._addresses: dict[str, str | None] = {}
        self.parser = parser if parser is not None else LineParser(clock=clock)
        self.patterns = tuple(patterns)
        self.pending = PendingSessions(max_pending, pending_age)
        self.stats = MatchStats(missed=deque(maxlen=max(keep_missed, 0)))
        self._by_program: dict[str, list[_Claim]] = {}
        cache: RenameCache = {}
        for p in self.patterns:
            claim = _Claim(
                frozenset(p.hosts),
                tuple(
                    _Compiled(
                        p.name, r, tuple(r.keywords), r.kind == OTHER, compile_grammars, cache
                    )
                    for r in p.rules
                ),
            )
            for program in dict.fromkeys(p.programs):
                self._by_program.setdefault(program, []).append(claim)

    @property
    def programs(self) -> frozenset[str]:
        """The program names some pattern claims."""
        return frozenset(self._by_program)

    def feed_line(self, text: str, source: str = "", lineno: int = 0) -> LoginEvent | None:
        """One raw log line (a trailing CR/LF is ignored)."""
        self.stats.lines += 1
        line = self.parser.parse(text, self._by_program)
        if line is None:
            return None
        return self._match(line, source, lineno)

    def feed(self, line: LogLine, source: str = "", lineno: int = 0) -> LoginEvent | None:
        """One already split line (journal records)."""
        self.stats.lines += 1
        if line.program not in self._by_program:
            return None
        return self._match(line, source, lineno)

    def _match(self, line: LogLine, source: str, lineno: int) -> LoginEvent | None:
        claims = self._by_program[line.program]
        message = line.message
        claimed = False
        lazy = not self.report
        # OTHER rules passed over in lazy mode (their keywords matched), in claim order.
        others: list[_Compiled] = []
        for claim in claims:
            if claim.hosts and line.host not in claim.hosts:
                continue
            claimed = True
            for compiled in claim.rules:
                for k in compiled.keywords:
                    if k not in message:
                        break
                else:
                    if lazy and compiled.is_other:
                        others.append(compiled)
                        continue
                    results = self._parse(compiled, message)
                    if results is None:
                        continue
                    self.stats.claimed += 1
                    for other in others:
                        # First match wins: an earlier OTHER rule takes the line.
                        if self._parse(other, message) is not None:
                            return None
                    return self._decide(compiled, results, line, source, lineno)
        if claimed:
            self.stats.claimed += 1
            if not lazy:
                self.stats.near_misses += 1
                self.stats.missed.append(Miss(source, lineno, line.program, message))
        return None

    def _parse(self, compiled: _Compiled, message: str) -> Results | None:
        try:
            whole = compiled.whole
            if whole is None:
                whole = compiled.prepare()
            fast = compiled.fast
            if fast is not None:
                if not fast.confirm:
                    m = fast.match(message)
                    return None if m is None else fast.extract(m)
                if fast.match(message) is None:
                    return None  # exact: a parse action can only refuse more
            results = whole.parse_string(message)
            return {name: _text(results, name) for name in NEEDED}
        except pp.ParseBaseException:
            return None
        except Untranslatable as err:  # the lazily compiled regex did not compile
            log.debug(
                "pattern %s, rule %s: kept on pyparsing: %s",
                compiled.pattern,
                compiled.rule.name,
                err,
            )
            compiled.fast = None
            return self._parse(compiled, message)
        except Exception as err:  # a broken grammar or parse action must not stop the daemon
            key = (compiled.pattern, compiled.rule.name)
            self.stats.errors[key] += 1
            n = self.stats.errors[key]
            if n <= _WARN_FIRST or n % _WARN_EVERY == 0:
                log.warning(
                    "pattern %s, rule %s: %s in grammar (%d so far): treating as no match",
                    compiled.pattern,
                    compiled.rule.name,
                    _describe(err),
                    n,
                )
            return None

    def _decide(
        self,
        compiled: _Compiled,
        results: Results,
        line: LogLine,
        source: str,
        lineno: int,
    ) -> LoginEvent | None:
        rule = compiled.rule
        key = (compiled.pattern, rule.name)
        when = line.time if line.time is not None else self._clock()
        if rule.kind == LOGIN:
            ip = self._address(results)
            if ip is None:
                self.stats.rejected_ip += 1
                return None
            self.stats.events[key] += 1
            return LoginEvent(
                ip=ip,
                time=when,
                pattern=compiled.pattern,
                rule=rule.name,
                user=results.get("user"),
                program=line.program,
                pid=line.pid,
                host=line.host,
                source=source,
                lineno=lineno,
            )
        if rule.kind != AUTH:
            self.stats.hits[key] += 1
        if rule.kind == OTHER:
            return None
        pid = _pid(results, line.pid)
        if rule.kind == CONNECT:
            ip = self._address(results)
            if ip is None:
                self.stats.rejected_ip += 1
            elif pid is not None:
                self.pending.add((line.host, pid), Pending(ip, when, compiled.pattern, rule.name))
            return None
        if rule.kind == END:
            if pid is not None:
                self.pending.discard((line.host, pid))
            return None
        if rule.kind == AUTH:
            pending = self.pending.take((line.host, pid), when) if pid is not None else None
            if pending is None:
                self.stats.hits[key] += 1
                self.stats.unpaired_auth += 1
                return None
            self.stats.events[key] += 1
            return LoginEvent(
                ip=pending.ip,
                time=when,
                pattern=compiled.pattern,
                rule=rule.name,
                user=results.get("user"),
                program=line.program,
                pid=pid,
                host=line.host,
                source=source,
                lineno=lineno,
            )
        return None  # pragma: no cover - Rule validates kind

    def _address(self, results: Results) -> str | None:
        value = results.get("ip")
        if value is None:
            return None
        cache = self._addresses
        try:
            return cache[value]
        except KeyError:
            pass
        if len(cache) >= _ADDRESS_CACHE:
            cache.clear()
        ip = cache[value] = _address(results)
        return ip


def _text(results: pp.ParseResults, name: str) -> str | None:
    value: Any = results.get(name)  # type: ignore[no-untyped-call]
    if value is None:
        return None
    if isinstance(value, pp.ParseResults):
        value = "".join(str(v) for v in value)
    return str(value)


def _address(results: Results) -> str | None:
    value = results.get("ip")
    if value is None:
        return None
    try:
        return normalize_host(value)
    except AddressError:
        return None


def _pid(results: Results, default: int | None) -> int | None:
    value = results.get("pid")
    if value is None:
        return default
    return int(value) if value.isdigit() and len(value) <= 10 else None


def _describe(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

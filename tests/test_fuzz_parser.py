"""Fuzzing the line parser and every shipped pattern with hypothesis (issue 7, item 1).

What is proved, for every shipped pattern, on lines taken automatically from its annotated
sample log ``fixtures/logs/NAME.log`` (default options section only):

* random bytes and random Unicode fed to :meth:`Matcher.feed_line` (and through the daemon's
  :class:`Pipeline`, which decodes bytes) never raise;
* syslog-shaped lines whose program is one the patterns claim, with a random message built
  from dangerous fragments, never raise and never yield a non-normalized address;
* every successful-login line, with random text injected into an attacker-controlled field
  (the user name, a PTR host name, a session id), yields either no event or an event whose
  address is the one the daemon wrote in its own IP field;
* every failed-login line (``#> null`` lines containing "fail") with random text in its user
  field yields no event, even after the CONNECT line of its session;
* Postfix lines (MAIL FROM, HELO and user names are the attacker's) never yield an event.

The fields are found by experiment, not by a table that could go stale: a span of a login
line is the user field when replacing it with a marker gives an event whose user is that
marker; a host-name-looking span is a free field when replacing it with another host name
still gives the same event.

Examples per property: 300 by default (CI); set ``POPWATCH_FUZZ_EXAMPLES=100000`` for a long
run.  Run with ``-s`` to see how many examples each property ran.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyparsing as pp
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from popwatch.address import normalize_host
from popwatch.event import LoginEvent
from popwatch.grammar import LOGIN, Pattern, Rule
from popwatch.matcher import Matcher
from popwatch.patternload import find_pattern_files, load_pattern_file
from popwatch.pipeline import Pipeline
from popwatch.policy import Policy
from popwatch.relaywriter import RelayWriter
from popwatch.sessions import PendingSessions
from popwatch.store.memory import MemoryStore
from popwatch.syslogline import LineParser

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fixtures" / "logs").glob("*.log"))
CLOCK = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
EXAMPLES = int(os.environ.get("POPWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    # CI runs the same examples every time (no flaky red); a long run explores afresh.
    derandomize="POPWATCH_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
ATTACKER_IP = "203.0.113.66"

# Text an attacker would try: other addresses in every shape a grammar knows, the daemons'
# own field names and separators, quoting, and control characters.
FRAGMENTS = (
    ATTACKER_IP,
    f"[{ATTACKER_IP}]",
    f"({ATTACKER_IP})",
    f"::ffff:{ATTACKER_IP}",
    "[2001:db8::66]",
    "2001:db8::66",
    f"rip={ATTACKER_IP}",
    f", rip={ATTACKER_IP}, lip=192.0.2.1",
    f" host=[{ATTACKER_IP}]",
    f" host=evil.example [{ATTACKER_IP}]",
    f"ip=[::ffff:{ATTACKER_IP}]",
    f"{ATTACKER_IP}:4000->192.0.2.1:110",
    ' status="ok"',
    f"Login user=x host=[{ATTACKER_IP}] nmsgs=1/1",
    f"LOGIN, user=x, ip=[{ATTACKER_IP}], port=[1]",
    f"Login: user=<x>, method=PLAIN, rip={ATTACKER_IP}, lip=192.0.2.1",
    f"at (x) {ATTACKER_IP} [pop_log.c:250]",
    f"- {ATTACKER_IP}",
    "Authentication passed for ",
    "authenticated ",
    " logged in",
    " from ",
    "user=",
    "user=<",
    ">",
    "<",
    "[",
    "]",
    "(",
    ")",
    '"',
    "'",
    "`",
    ", ",
    " ",
    "  ",
    "\t",
    "=",
    ":",
    "@",
    "\\",
    "\x00",
    "\x1b[2J",
    "#012",
    "%s%n",
    "\u00e9",
    "\ufffd",
    "\u202e",
    "\uff3b",  # FULLWIDTH LEFT SQUARE BRACKET
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() is true for it
    ":",
    "::",
    "2001:db8:",  # before a daemon's "user:ip": an attacker's /96 around the real IPv4
    f"{ATTACKER_IP}:",
)

# Syslog daemons escape control characters (rsyslog: #012 for LF), and the tailer splits on
# LF: an injected field never contains a line break.
_FIELD_CHARS = st.characters(exclude_characters="\r\n", exclude_categories=["Cs"])
INJECTED = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(_FIELD_CHARS, max_size=6)), max_size=8
).map("".join)


# -- the sample lines ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    fixture: str
    lineno: int
    text: str
    expected: dict[str, object] | None
    context: tuple[str, ...]  # earlier lines naming the same pid: a CONNECT to pair with


def read_samples(path: Path) -> list[Sample]:
    """Log lines of the default options section with their ``#>`` expectation."""
    out: list[Sample] = []
    expected: object = ...
    parser = LineParser(clock=lambda: CLOCK, tz=datetime.UTC)
    seen: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if raw.startswith("#! options:"):
            break  # later sections need options; the default section is plenty
        if not raw.strip() or raw == "#" or raw.startswith("# "):
            continue
        if raw.startswith("#>"):
            expected = json.loads(raw[2:])
            continue
        assert expected is not ..., f"{path.name}:{lineno}: log line without #>"
        line = parser.parse(raw)
        pid = line.pid if line is not None else None
        # Same pid in the header or in the text (xinetd's "START: pop3 pid=4245 from=...").
        mine = re.compile(rf"(?<!\d){pid}(?!\d)")
        context = tuple(t for t in seen if pid is not None and mine.search(t))
        out.append(Sample(path.stem, lineno, raw, expected, context))  # type: ignore[arg-type]
        seen.append(raw)
        expected = ...
    return out


@pytest.fixture(scope="module")
def patterns() -> list[Pattern]:
    return [load_pattern_file(p) for p in find_pattern_files(()).values()]


@pytest.fixture(scope="module")
def examples_run() -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    yield counts
    total = sum(counts.values())
    print(f"\nfuzz examples run: {total} ({dict(sorted(counts.items()))})")


_MATCHERS: dict[int, Matcher] = {}


def new_matcher(patterns: list[Pattern]) -> Matcher:
    """A matcher for ``patterns`` without pending sessions.  Building one compiles every
    grammar (about 0.2 s), so one per pattern list is kept and only its sessions renewed."""
    matcher = _MATCHERS.get(id(patterns))
    if matcher is None or matcher.patterns != tuple(patterns):
        matcher = Matcher(
            patterns,
            clock=lambda: CLOCK,
            parser=LineParser(clock=lambda: CLOCK, tz=datetime.UTC),
        )
        _MATCHERS[id(patterns)] = matcher
    matcher.pending = PendingSessions()
    return matcher


def run_line(patterns: list[Pattern], sample: Sample, text: str) -> LoginEvent | None:
    matcher = new_matcher(patterns)
    for earlier in sample.context:
        matcher.feed_line(earlier, sample.fixture)
    return matcher.feed_line(text, sample.fixture, sample.lineno)


def message_start(text: str) -> int:
    """Offset of the message part: injections go there, never into the syslog header."""
    line = LineParser(clock=lambda: CLOCK, tz=datetime.UTC).parse(text)
    assert line is not None, text
    start = text.rfind(line.message)
    assert start >= 0
    return start


@dataclass(frozen=True)
class Field:
    kind: str  # "user", "host", "session"
    start: int
    end: int


USER_MARKER = "qqmarkerqq"
HOST_MARKER = "qq-marker.example.org"
HOSTLIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.[A-Za-z][A-Za-z0-9-]*")
SESSION = re.compile(r"(?:session|SESSIONID)=<([^>]*)>")


def find_fields(patterns: list[Pattern], sample: Sample) -> list[Field]:
    """The attacker-controlled spans of a login line, found by substituting markers."""
    original = run_line(patterns, sample, sample.text)
    assert original is not None, f"{sample.fixture}:{sample.lineno}: no event on its own line"
    text, base = sample.text, message_start(sample.text)
    fields: list[Field] = []
    if original.user:
        at = text.find(original.user, base)
        while at >= 0:
            swapped = text[:at] + USER_MARKER + text[at + len(original.user) :]
            event = run_line(patterns, sample, swapped)
            if event is not None and event.user == USER_MARKER and event.ip == original.ip:
                fields.append(Field("user", at, at + len(original.user)))
                break
            at = text.find(original.user, at + 1)
    for m in HOSTLIKE.finditer(text, base):
        if any(f.start <= m.start() < f.end for f in fields):
            continue
        swapped = text[: m.start()] + HOST_MARKER + text[m.end() :]
        event = run_line(patterns, sample, swapped)
        if event is not None and event.ip == original.ip:
            fields.append(Field("host", m.start(), m.end()))
    for m in SESSION.finditer(text, base):
        fields.append(Field("session", m.start(1), m.end(1)))
    return fields


ALL = [s for path in FIXTURES for s in read_samples(path)]
LOGINS = [s for s in ALL if s.expected is not None]
FAILURES = [s for s in ALL if s.expected is None and "fail" in s.text.lower()]

# User fields of failure lines, by shape: (regex with one group: the user text).
FAILURE_USER = (
    re.compile(r"user=<(.*?)>, method="),
    re.compile(r"user=([^\s,]+)"),
    re.compile(r"auth=(\S+)"),
    re.compile(r"authentication_id=\"(.*?)\" server="),
    re.compile(r"[Uu]ser [`']([^']*)'"),
    re.compile(r"failed for `([^']*)'"),
    re.compile(r"failed: (\S+)$"),
    re.compile(r"failed for (?:user )?(\S+)"),
    re.compile(r"failure (\S+) \d"),
    re.compile(r"fail (?:\(pass: '[^']*'\) )?(\S+)@"),
    re.compile(r"fail \[([^\]]*)\] from"),
    re.compile(r"login for (\S+) \["),
    re.compile(r"plaintext \((\w+)\)"),
)


def failure_spans(sample: Sample) -> list[tuple[int, int]]:
    base = message_start(sample.text)
    spans = []
    for rx in FAILURE_USER:
        for m in rx.finditer(sample.text, base):
            spans.append((m.start(1), m.end(1)))
    return sorted(set(spans))


def by_fixture(samples: list[Sample]) -> list[tuple[str, list[Sample]]]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.fixture, []).append(s)
    return sorted(groups.items())


# -- the harness itself must have something to fuzz ----------------------------------------


def test_every_fixture_gives_login_lines_with_attacker_fields(patterns: list[Pattern]) -> None:
    assert len(FIXTURES) >= 10
    stems = {p.stem for p in FIXTURES}
    assert {s.fixture for s in LOGINS} == stems, "a fixture without login lines to fuzz"
    kinds: Counter[str] = Counter()
    for sample in LOGINS:
        kinds.update(f.kind for f in find_fields(patterns, sample))
    # A user field is found in most lines; host names and session ids in many.
    assert kinds["user"] >= len(LOGINS) * 0.7, kinds
    assert kinds["host"] >= 10 and kinds["session"] >= 3, kinds


def test_failure_lines_have_user_fields_found() -> None:
    assert len(FAILURES) >= 30
    missing = [f"{s.fixture}:{s.lineno}" for s in FAILURES if not failure_spans(s)]
    # A few failures carry no user at all ("AUTHENTICATE PLAIN failure host=[...]").
    assert len(missing) <= len(FAILURES) // 4, missing


# -- properties ------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(
    patterns: list[Pattern], examples_run: Counter[str], data: bytes
) -> None:
    examples_run["random-bytes"] += 1
    matcher = new_matcher(patterns)
    event = matcher.feed_line(data.decode("utf-8", "replace"))
    if event is not None:
        assert event.ip == normalize_host(event.ip)
    pipeline = Pipeline(
        matcher, Policy((), 86400), RelayWriter(MemoryStore(), lifetime=86400), lambda: CLOCK
    )
    pipeline.feed_bytes(data, "fuzz", 1)
    assert pipeline.counters.lines == 1


@FUZZ
@given(
    header=st.sampled_from(
        (
            "Nov 22 09:15:02 mailhost {prog}[4242]: ",
            "Nov 22 09:15:02 mailhost {prog}: ",
            "2026-11-22T09:15:02.123456+01:00 mailhost {prog}[77]: ",
            "<22>1 2026-11-22T09:15:02Z mailhost {prog} 4242 - - ",
            "Nov 22 09:15:02 {prog}: ",
        )
    ),
    prog_index=st.integers(min_value=0, max_value=10_000),
    message=st.text(max_size=300) | INJECTED,
)
def test_random_messages_of_claimed_programs_never_raise(
    patterns: list[Pattern],
    examples_run: Counter[str],
    header: str,
    prog_index: int,
    message: str,
) -> None:
    examples_run["random-message"] += 1
    matcher = new_matcher(patterns)
    programs = sorted(matcher.programs)
    line = header.format(prog=programs[prog_index % len(programs)]) + message
    event = matcher.feed_line(line)
    if event is not None:
        # Whatever matched, the address is one full, normalized host address.
        assert event.ip == normalize_host(event.ip)
        assert event.ip in message or normalize_host(event.ip) in normalize_host_all(message)


def normalize_host_all(text: str) -> set[str]:
    """Every normalized address spelled somewhere in ``text`` (for the weak random check)."""
    out = set()
    for token in re.findall(r"[0-9A-Fa-f:.]{2,45}", text):
        for candidate in (token, token.strip(".:")):
            with contextlib.suppress(ValueError):
                out.add(normalize_host(candidate))
    return out


@pytest.mark.parametrize(
    "fixture,samples", by_fixture(LOGINS), ids=[name for name, _ in by_fixture(LOGINS)]
)
def test_injection_into_attacker_fields_never_changes_the_address(
    patterns: list[Pattern], examples_run: Counter[str], fixture: str, samples: list[Sample]
) -> None:
    cases = [(s, f) for s in samples for f in find_fields(patterns, s)]
    assert cases, f"{fixture}: no attacker-controlled field found in any login line"

    @FUZZ
    @given(case=st.sampled_from(cases), injected=INJECTED, keep=st.booleans())
    def prop(case: tuple[Sample, Field], injected: str, keep: bool) -> None:
        sample, fld = case
        examples_run[f"inject-{fld.kind}"] += 1
        text = sample.text
        # Replace the field, or append to it (keeps the original text as a prefix).
        middle = text[fld.start : fld.end] + injected if keep else injected
        mutated = text[: fld.start] + middle + text[fld.end :]
        event = run_line(patterns, sample, mutated)
        assert sample.expected is not None
        if event is not None:
            assert event.ip == sample.expected["ip"], (
                f"{fixture}:{sample.lineno}: {fld.kind} field injection {injected!r} "
                f"gave address {event.ip}: {mutated!r}"
            )

    prop()


@pytest.mark.parametrize(
    "fixture,samples", by_fixture(FAILURES), ids=[name for name, _ in by_fixture(FAILURES)]
)
def test_failed_login_lines_never_yield_an_event(
    patterns: list[Pattern], examples_run: Counter[str], fixture: str, samples: list[Sample]
) -> None:
    for sample in samples:  # as they are
        assert run_line(patterns, sample, sample.text) is None, f"{fixture}:{sample.lineno}"
    cases = [(s, span) for s in samples for span in failure_spans(s)]
    if not cases:
        pytest.skip(f"{fixture}: its failure lines carry no user field")

    @FUZZ
    @given(case=st.sampled_from(cases), injected=INJECTED)
    def prop(case: tuple[Sample, tuple[int, int]], injected: str) -> None:
        sample, (start, end) = case
        examples_run["failure-user"] += 1
        mutated = sample.text[:start] + injected + sample.text[end:]
        event = run_line(patterns, sample, mutated)
        assert event is None, f"{fixture}:{sample.lineno}: failure line gave {event}: {mutated!r}"

    prop()


def test_every_fragment_in_every_attacker_field(
    patterns: list[Pattern], examples_run: Counter[str]
) -> None:
    """The deterministic complement of the random search: each dangerous fragment alone,
    and appended to the original text, in every field found."""
    failures = []
    for sample in LOGINS:
        for fld in find_fields(patterns, sample):
            original = sample.text[fld.start : fld.end]
            for fragment in FRAGMENTS:
                for middle in (fragment, original + fragment):
                    examples_run["sweep"] += 1
                    mutated = sample.text[: fld.start] + middle + sample.text[fld.end :]
                    event = run_line(patterns, sample, mutated)
                    assert sample.expected is not None
                    if event is not None and event.ip != sample.expected["ip"]:
                        failures.append(
                            f"{sample.fixture}:{sample.lineno} {fld.kind} {middle!r} -> {event.ip}"
                        )
    assert not failures, "\n".join(failures[:20])


POSTFIX_LINES = (
    "Nov 22 09:15:02 mailhost postfix/smtpd[900]: NOQUEUE: reject: RCPT from "
    "unknown[198.51.100.9]: 554 5.7.1 <a@example.org>: Relay access denied; "
    "from=<{x}> to=<a@example.org> proto=ESMTP helo=<{x}>",
    "Nov 22 09:15:02 mailhost postfix/qmgr[901]: 4F2A31C0: from=<{x}>, size=1, nrcpt=1",
    "Nov 22 09:15:02 mailhost postfix/smtpd[902]: 4F2A31C0: client=unknown[198.51.100.9], "
    "sasl_method=PLAIN, sasl_username={x}",
    "Nov 22 09:15:02 mailhost postfix/cleanup[903]: 4F2A31C0: message-id=<{x}>",
    "Nov 22 09:15:02 mailhost sendmail[904]: 4AM9F2x1: from=<{x}>, size=1, relay=[198.51.100.9]",
)


@FUZZ
@given(template=st.sampled_from(POSTFIX_LINES), injected=INJECTED)
def test_mta_lines_never_yield_an_event(
    patterns: list[Pattern], examples_run: Counter[str], template: str, injected: str
) -> None:
    examples_run["mta-line"] += 1
    for x in (injected, f'POP login by user "admin" at (x) {ATTACKER_IP} [pop_log.c:250]'):
        assert new_matcher(patterns).feed_line(template.format(x=x)) is None


def test_the_harness_catches_a_grammar_that_takes_the_first_address(
    patterns: list[Pattern],
) -> None:
    """The injection property is not vacuous: a planted greedy grammar for ipop3d that takes
    the first bracketed address of the message is caught by the same strategy."""
    greedy = pp.Regex(r"Login user=\S+ host=.*?\[(?P<ip>[0-9a-fA-F:.]+)\].*")
    bad = Pattern(programs=("ipop3d",), rules=(Rule("login", greedy, LOGIN, ("Login",)),))
    bad = Pattern(bad.programs, bad.rules, name="greedy")
    sample = next(s for s in LOGINS if s.fixture == "uw-imap" and "client.example.net" in s.text)
    fields = [f for f in find_fields(patterns, sample) if f.kind == "host"]
    assert fields, sample.text
    fld = fields[0]

    def exploited(injected: str) -> bool:
        mutated = sample.text[: fld.start] + injected + sample.text[fld.end :]
        event = run_line([bad], sample, mutated)
        return event is not None and event.ip != sample.expected["ip"]  # type: ignore[index]

    found = find(INJECTED, exploited, settings=settings(max_examples=2000, database=None))
    assert ATTACKER_IP in found or "2001:db8::66" in found

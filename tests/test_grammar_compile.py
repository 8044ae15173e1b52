"""The compiled regexes against pyparsing: the automatic equivalence proof of grammar_compile.

For every rule of every shipped pattern, on every fixture message, on stretched variants and on
hypothesis-generated mutations, the compiled rule must give the same answer as pyparsing's
``parse_string`` of ``grammar + StringEnd()``: match or not, and the ``ip``, ``user`` and
``pid`` results.  No shipped rule may fall back to pyparsing silently: compiling one fails the
test.  Also: the IPv6 validity lookahead against ``normalize_host``, fallback for grammars the
compiler cannot translate, and lazy OTHER evaluation against full evaluation in the matcher.
"""

from __future__ import annotations

import datetime
import logging
import random
import re
from pathlib import Path

import pyparsing as pp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popwatch.address import normalize_host
from popwatch.errors import AddressError
from popwatch.grammar import (
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    bracketed_ip,
    ip_address,
    lit,
    quoted,
    word,
)
from popwatch.grammar_compile import IPV6_VALID, NEEDED, CompiledRule, Untranslatable, compile_rule
from popwatch.matcher import Matcher, _text
from popwatch.patternload import load_patterns
from popwatch.syslogline import LineParser

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fixtures" / "logs").glob("*.log"))
CLOCK = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC).timestamp()

PATTERNS = load_patterns()
RULES = [(p, r) for p in PATTERNS for r in p.rules]


def _whole(rule: Rule) -> pp.ParserElement:
    whole = rule.grammar + pp.StringEnd()
    whole.streamline()
    return whole


COMPILED: dict[tuple[str, str], tuple[pp.ParserElement, CompiledRule]] = {}
for _p, _r in RULES:
    _w = _whole(_r)
    COMPILED[(_p.name, _r.name)] = (_w, compile_rule(_w))  # Untranslatable here fails the run


def _fixture_lines() -> list[tuple[str, str]]:
    """(program, message) of every log line of every fixture."""
    parser = LineParser(clock=lambda: CLOCK, tz=datetime.UTC)
    out = []
    for path in FIXTURES:
        for raw in path.read_text(encoding="utf-8").splitlines():
            if not raw.strip() or raw.startswith("#"):
                continue
            line = parser.parse(raw)
            if line is not None:
                out.append((line.program, line.message))
    return out


LINES = _fixture_lines()
MESSAGES = sorted({m for _, m in LINES})


def _reference(whole: pp.ParserElement, message: str) -> dict[str, str | None] | None:
    try:
        results = whole.parse_string(message)
    except pp.ParseBaseException:
        return None
    return {name: _text(results, name) for name in NEEDED}


def _compiled(compiled: CompiledRule, message: str) -> dict[str, str | None] | None:
    m = compiled.match(message)
    if m is None:
        return None
    got = compiled.extract(m)
    if got is None:
        return None
    return {name: got.get(name) for name in NEEDED}


def _check(key: tuple[str, str], message: str) -> None:
    whole, compiled = COMPILED[key]
    want = _reference(whole, message)
    if compiled.confirm:  # the regex only rejects; pyparsing answers a match
        assert not (want is not None and compiled.match(message) is None), (key, message)
        return
    assert _compiled(compiled, message) == want, (key, message)


def test_every_shipped_rule_compiles_without_pyparsing() -> None:
    # compile_rule raised at import otherwise; none may need pyparsing to confirm either
    assert len(COMPILED) == len(RULES) > 50
    assert [k for k, (_, c) in COMPILED.items() if c.confirm] == []


def test_fixtures_exist_and_cover_every_pattern() -> None:
    assert len(MESSAGES) > 300
    programs = {prog for prog, _ in LINES}
    for p in PATTERNS:
        assert programs & set(p.programs), p.name


@pytest.mark.parametrize("key", sorted(COMPILED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_rule_equals_pyparsing_on_every_fixture_message(key: tuple[str, str]) -> None:
    matched = 0
    for message in MESSAGES:
        _check(key, message)
        matched += COMPILED[key][1].match(message) is not None
    assert matched > 0, f"{key}: no fixture message exercises it"


def _stretched(message: str) -> list[str]:
    """Attacker-controlled parts made long: every word repeated, spaces and tabs doubled,
    brackets and quotes repeated (what a hostile user name or PTR name can do)."""
    out = []
    words = message.split(" ")
    for i, w in enumerate(words[:24]):
        if not w:
            continue
        for times in (2, 40):
            out.append(" ".join([*words[:i], w * times, *words[i + 1 :]]))
        out.append(" ".join([*words[:i], w, w, *words[i + 1 :]]))
    out.append(message.replace(" ", "  "))
    out.append(message.replace(" ", "\t", 1))
    out.append(message + " ")
    out.append(" " + message)
    for ch in "[]<>\"'(),=:":
        if ch in message:
            out.append(message.replace(ch, ch * 3, 1))
            k = message.rfind(ch)
            out.append(message[:k] + ch * 50 + message[k:])
    return out


def test_rules_equal_pyparsing_on_stretched_lines() -> None:
    by_program: dict[str, list[tuple[str, str]]] = {}
    for p in PATTERNS:
        for prog in p.programs:
            by_program.setdefault(prog, []).extend((p.name, r.name) for r in p.rules)
    checked = 0
    for program, message in sorted(set(LINES)):
        for variant in _stretched(message):
            for key in by_program.get(program, ()):
                _check(key, variant)
                checked += 1
    assert checked > 10000


_PIECES = [
    " ",
    "\t",
    "[",
    "]",
    "<",
    ">",
    '"',
    "'",
    "`",
    "(",
    ")",
    ",",
    "=",
    ":",
    ".",
    "::",
    "1",
    "255",
    "256",
    "0",
    "01",
    "ffff",
    "g",
    " host=",
    " user=",
    "user=<",
    ">, method=",
    ", rip=",
    ", ip=[",
    "] from ",
    " from ",
    "[192.0.2.10]",
    "203.0.113.66",
    "::ffff:192.0.2.1",
    "2001:db8::5",
    "1.2.3.4:80",
    "Login",
    "SESSIONID=<x>",
    "\u00e9",
]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    message = draw(st.sampled_from(MESSAGES))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(message)))
        if draw(st.booleans()) and message:
            end = min(len(message), pos + draw(st.integers(1, 6)))
            message = message[:pos] + message[end:]
        else:
            message = message[:pos] + draw(st.sampled_from(_PIECES)) + message[pos:]
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_rules_equal_pyparsing_on_random_variants(message: str) -> None:
    for key in COMPILED:
        _check(key, message)


# --- the address building blocks --------------------------------------------------------------


def _valid(text: str) -> bool:
    try:
        normalize_host(text)
    except AddressError:
        return False
    return True


V6 = re.compile(IPV6_VALID)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="0123abcdefABF:.", min_size=2, max_size=45).filter(lambda s: ":" in s))
def test_ipv6_lookahead_admits_exactly_what_normalize_host_accepts(text: str) -> None:
    assert (V6.fullmatch(text) is not None) == _valid(text), text


def test_ipv6_lookahead_on_structured_addresses() -> None:
    rnd = random.Random(6)
    import ipaddress

    for _ in range(3000):
        addr = ipaddress.IPv6Address(
            rnd.getrandbits(128) & rnd.choice([2**128 - 1, 2**64 - 1, 0xFFFF, 0xFFFF_FFFF_FFFF])
        )
        forms = [str(addr), addr.exploded, str(addr).upper()]
        if rnd.random() < 0.5:
            v4 = ipaddress.IPv4Address(rnd.getrandbits(32))
            forms.append(f"::ffff:{v4}")
            forms.append(f"{addr.exploded.rsplit(':', 2)[0]}:{v4}")
            forms.append(f"1:2:3:4:5::{v4}")
            forms.append(f"1:2:3:4:5:6::{v4}")
        for form in forms:
            for text in (form, form + ":", ":" + form, form.replace(":", "::", 1), form + "0"):
                if ":" in text and len(text) <= 45:
                    assert (V6.fullmatch(text) is not None) == _valid(text), text


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789.", min_size=7, max_size=20))
def test_ipv4_block_admits_only_canonical_addresses(text: str) -> None:
    # normalize_host must leave whatever the ipv4 building block matches unchanged
    compiled = compile_rule(_whole(Rule("x", ip_address("ip"), LOGIN)))
    got = _compiled(compiled, text)
    want = _reference(_whole(Rule("x", ip_address("ip"), LOGIN)), text)
    assert got == want
    if got is not None and ":" not in text:
        assert got["ip"] == text == normalize_host(text)


# --- fallback and confirm -----------------------------------------------------------------------


def test_untranslatable_element_falls_back_and_still_matches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grammar = pp.Keyword("Login") + pp.Group(word("user")) + bracketed_ip("ip")
    with pytest.raises(Untranslatable):
        compile_rule(_whole(Rule("kw", grammar, LOGIN)))
    pattern = Pattern(("kwd",), (Rule("kw", grammar, LOGIN, ("Login",)),), name="kwtest")
    matcher = Matcher([pattern], clock=lambda: CLOCK, report=False)
    with caplog.at_level(logging.DEBUG, logger="popwatch.matcher"):
        # Rules are compiled when the first line reaches them, not at start-up.
        event = matcher.feed_line("Nov 22 09:15:02 host kwd[7]: Login alice [192.0.2.10]")
    assert any("kw" in r.getMessage() and "pyparsing" in r.getMessage() for r in caplog.records)
    assert event is not None and event.ip == "192.0.2.10"
    assert matcher.feed_line("Nov 22 09:15:02 host kwd[7]: Loginx alice [192.0.2.10]") is None


def test_unknown_action_off_the_spine_is_untranslatable() -> None:
    inner = word("user")
    inner.add_parse_action(lambda t: None)
    with pytest.raises(Untranslatable):
        compile_rule(_whole(Rule("x", lit("a") + pp.Opt(inner) + ip_address("ip"), LOGIN)))


def test_unknown_action_inside_the_spine_makes_a_confirm_rule() -> None:
    user = word("user")

    def refuse_root(s: str, loc: int, toks: pp.ParseResults) -> None:
        if toks[0] == "root":
            raise pp.ParseException(s, loc, "no")

    user.add_parse_action(refuse_root)
    grammar = lit("Login") + user + bracketed_ip("ip")
    whole = _whole(Rule("x", grammar, LOGIN))
    compiled = compile_rule(whole)
    assert compiled.confirm
    pattern = Pattern(("cf",), (Rule("x", grammar, LOGIN, ("Login",)),), name="cf")
    matcher = Matcher([pattern], clock=lambda: CLOCK, report=False)
    assert matcher.feed_line("Nov 22 09:15:02 h cf[1]: Login root [192.0.2.9]") is None
    event = matcher.feed_line("Nov 22 09:15:02 h cf[1]: Login alice [192.0.2.9]")
    assert event is not None and (event.ip, event.user) == ("192.0.2.9", "alice")


def test_quoted_block_and_validation_inside_alternatives() -> None:
    grammar = lit("by") + quoted("user") + lit("at") + ip_address("ip") + pp.Opt(lit(":80"))
    whole = _whole(Rule("q", grammar, LOGIN))
    compiled = compile_rule(whole)
    for message in [
        'by "alice smith" at 192.0.2.1',
        'by "x" at 1.2.3.4:80',  # ipv6 candidate fails validation, ipv4 + ":80" matches
        'by "x" at 1:2:3',
        'by "x" at ::ffff:192.0.2.1',
        'by "" at 2001:DB8::1',
        'by "a"b" at 192.0.2.1',
    ]:
        assert _compiled(compiled, message) == _reference(whole, message), message


# --- lazy OTHER evaluation ----------------------------------------------------------------------


def _feed_all(report: bool, lines: list[str]) -> list[tuple[str, str, str | None, str]]:
    parser = LineParser(clock=lambda: CLOCK, tz=datetime.UTC)
    matcher = Matcher(PATTERNS, clock=lambda: CLOCK, parser=parser, report=report)
    out = []
    for line in lines:
        event = matcher.feed_line(line)
        if event is not None:
            out.append((event.ip, event.rule, event.user, event.pattern))
    return out


def test_lazy_other_evaluation_gives_the_same_events_as_full_evaluation() -> None:
    raw = [
        line
        for path in FIXTURES
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    full = _feed_all(True, raw)
    assert len(full) > 50
    assert _feed_all(False, raw) == full
    for compile_grammars in (True, False):
        matcher = Matcher(
            PATTERNS,
            clock=lambda: CLOCK,
            parser=LineParser(clock=lambda: CLOCK, tz=datetime.UTC),
            compile_grammars=compile_grammars,
        )
        events = [matcher.feed_line(line) for line in raw]
        got = [(e.ip, e.rule, e.user, e.pattern) for e in events if e is not None]
        assert got == full


def test_an_earlier_other_rule_still_wins_in_lazy_mode() -> None:
    rules = (
        Rule("catch_all", pp.Regex(r"Login .*admin.*"), OTHER, ("Login",)),
        Rule("login", lit("Login") + word("user") + bracketed_ip("ip"), LOGIN, ("Login",)),
    )
    pattern = Pattern(("lz",), rules, name="lz")
    for report in (True, False):
        matcher = Matcher([pattern], clock=lambda: CLOCK, report=report)
        assert matcher.feed_line("Nov 22 09:15:02 h lz[1]: Login admin [192.0.2.7]") is None
        event = matcher.feed_line("Nov 22 09:15:02 h lz[1]: Login alice [192.0.2.7]")
        assert event is not None and event.rule == "login"
        assert matcher.stats.near_misses == 0
        assert matcher.stats.hits[("lz", "catch_all")] == (1 if report else 0)

"""Start-up and claimed-line shortcuts of the grammar compiler must not change any answer.

Covers: the compact IPv6 validity regex against the enumeration of every "::" split it
replaced, and its linear time on hostile text; the shared rename cache and the text fast path
of Regex group renaming; lazy compilation of a rule's regex (and the fall-back to pyparsing
when it does not compile); the per-rule memo of normalized IPv6 addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import random
import re
import time

import pyparsing as pp
import pytest

from popwatch.address import normalize_host
from popwatch.errors import AddressError
from popwatch.grammar import LOGIN, Pattern, Rule, bracketed_ip, ip_address, lit, word
from popwatch.grammar_compile import (
    _H,
    _V4,
    IPV6_VALID,
    CompiledRule,
    RenameCache,
    Untranslatable,
    compile_rule,
)
from popwatch.matcher import Matcher
from popwatch.patternload import load_patterns
from popwatch.syslogline import LineParser

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 22, 12, tzinfo=UTC).timestamp()


def _whole(grammar: pp.ParserElement) -> pp.ParserElement:
    whole = grammar + pp.StringEnd()
    whole.streamline()
    return whole


def _enumerated_ipv6() -> str:
    """The previous form: one alternative per (left, right) split of a "::" address."""
    forms = [rf"(?:{_H}:){{7}}{_H}", rf"(?:{_H}:){{6}}{_V4}"]
    for a in range(8):
        left = "" if a == 0 else (rf"(?:{_H}:){{{a - 1}}}{_H}" if a > 1 else _H)
        for b in range(8 - a):
            right = "" if b == 0 else (rf"{_H}(?::{_H}){{{b - 1}}}" if b > 1 else _H)
            forms.append(f"{left}::{right}")
        for c in range(6 - a):
            mid = "" if c == 0 else rf"(?:{_H}:){{{c}}}"
            forms.append(f"{left}::{mid}{_V4}")
    return "(?:" + "|".join(forms) + ")"


def _candidates(rnd: random.Random, n: int) -> list[str]:
    parts = ["", "0", "1", "ffff", "1a2b", "12345", "1.2.3.4", "255.255.0.1", "01.2.3.4", "abc"]
    out = []
    for i in range(n):
        if i % 2:
            text = ":".join(rnd.choice(parts) for _ in range(rnd.randint(0, 10)))
            if rnd.random() < 0.3:
                text = text.replace(":", "::", 1)
        else:
            text = "".join(rnd.choice("0123abcdefABF:.") for _ in range(rnd.randint(1, 45)))
        out.append(text)
    return out


def test_compact_ipv6_regex_is_the_enumerated_language() -> None:
    old, new = re.compile(_enumerated_ipv6()), re.compile(IPV6_VALID)
    tail = re.compile(f"(?:{IPV6_VALID})(?![0-9A-Fa-f:.])")
    old_tail = re.compile(f"(?:{_enumerated_ipv6()})(?![0-9A-Fa-f:.])")
    accepted = 0
    for text in _candidates(random.Random(6), 40000):
        want = old.fullmatch(text) is not None
        assert (new.fullmatch(text) is not None) == want, text
        accepted += want
        for after in (" x", "]"):  # as the compiled rules use it: inside a longer message
            assert (tail.match(text + after) is None) == (old_tail.match(text + after) is None)
    assert accepted > 300  # the sample reaches valid addresses, not only junk


@pytest.mark.parametrize(
    "text",
    ["a" * 20000 + ":", "1:" * 10000, ":" * 20000, "1" * 10000 + "." + "1" * 10000, "1::" * 5000],
)
def test_compact_ipv6_regex_is_linear_on_hostile_text(text: str) -> None:
    lookahead = re.compile(f"(?=(?:{IPV6_VALID})(?![0-9A-Fa-f:.]))")
    started = time.perf_counter()
    assert lookahead.match(text) is None
    assert time.perf_counter() - started < 0.5  # exponential backtracking takes forever


def test_shared_rename_cache_gives_the_same_regexes() -> None:
    cache: RenameCache = {}
    rules = [r for p in load_patterns() for r in p.rules]
    for rule in rules:
        alone = compile_rule(_whole(rule.grammar))
        shared = compile_rule(_whole(rule.grammar), cache, lazy=True)
        assert shared.pattern == alone.regex.pattern, rule.name
        assert shared.confirm == alone.confirm
    assert 0 < len(cache) < sum(len(list(r.grammar.recurse())) + 1 for r in rules)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "back references"),
        (r"(?P<x>a)(?P=x)", "back references"),
        (r"(?i)abc", "global flags"),
    ],
)
def test_regex_checks_still_refuse(pattern: str, reason: str) -> None:
    with pytest.raises(Untranslatable, match=reason):
        compile_rule(_whole(lit("x") + pp.Regex(pattern)), {})


def test_named_groups_in_a_regex_still_give_results_with_a_cache() -> None:
    grammar = lit("user") + pp.Regex(r"(?P<user>[a-z]+)@(?P<dom>[a-z.]+)") + bracketed_ip()
    cache: RenameCache = {}
    for _ in range(2):  # the second compilation takes the cached template
        rule = compile_rule(_whole(grammar), cache)
        m = rule.match("user alice@example.net [192.0.2.7]")
        assert m is not None
        assert rule.extract(m) == {"user": "alice", "ip": "192.0.2.7"}


def test_lazy_rule_compiles_on_first_match() -> None:
    rule = compile_rule(_whole(lit("Login") + word("user") + bracketed_ip()), lazy=True)
    eager = compile_rule(_whole(lit("Login") + word("user") + bracketed_ip()))
    assert rule.pattern == eager.regex.pattern
    m = rule.match("Login bob [2001:DB8::1]")
    assert m is not None and rule.extract(m) == {"user": "bob", "ip": "2001:db8::1"}
    assert rule.regex is rule.regex  # compiled once


def test_lazy_rule_whose_regex_does_not_compile_falls_back_to_pyparsing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = CompiledRule("(", lambda match: {}, False)  # a lazy regex that does not compile
    with pytest.raises(Untranslatable):
        broken.match("Login bob [192.0.2.1]")
    # Global flags inside a Regex translate, but the combined regex does not compile: the
    # matcher finds out on the first line that reaches the rule.
    grammar = lit("Login") + pp.Regex(r"(?i)[a-z]+")("user") + bracketed_ip()
    pattern = Pattern(("d",), (Rule("login", grammar, LOGIN, ("Login",)),), name="p")
    m = Matcher([pattern], clock=lambda: NOW, parser=LineParser(clock=lambda: NOW, tz=UTC))
    (claim,) = m._by_program["d"]
    assert claim.rules[0].whole is None  # nothing compiled before a line reaches the rule
    claim.rules[0].prepare()
    assert claim.rules[0].fast is not None  # translated; re.compile still to come
    with caplog.at_level(logging.DEBUG, logger="popwatch.matcher"):
        event = m.feed_line("Nov 22 09:15:02 h d[7]: Login BoB [192.0.2.1]")
    assert event is not None and (event.ip, event.user) == ("192.0.2.1", "BoB")
    assert claim.rules[0].fast is None  # pyparsing from now on
    assert "kept on pyparsing" in caplog.text and "global flags" in caplog.text
    assert m.feed_line("Nov 22 09:15:02 h d[7]: Login bob [192.0.2.300]") is None
    assert m.feed_line("Nov 22 09:15:02 h d[7]: Login bob1 [192.0.2.3]") is None


def test_ipv6_memo_repeats_answers_and_never_keeps_a_refusal() -> None:
    rule = compile_rule(_whole(lit("from") + ip_address("ip")))
    for _ in range(3):
        m = rule.match("from ::FFFF:192.0.2.9")
        assert m is not None and rule.extract(m) == {"ip": "192.0.2.9"}
        assert rule.match("from 1::2::3") is None  # refused by the lookahead, every time
    # More distinct addresses than the memo holds: still the normalized text for each.
    for i in range(5000):
        text = f"2001:DB8::{i:X}"
        m = rule.match(f"from {text}")
        assert m is not None and rule.extract(m) == {"ip": normalize_host(text)}
        assert rule.extract(m) == {"ip": str(ipaddress.IPv6Address(text))}


def test_mapped_ipv4_shortcut_is_normalize_host() -> None:
    rule = compile_rule(_whole(lit("from") + ip_address("ip")))
    rnd = random.Random(4)
    octets = ["0", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "01"]
    for _ in range(3000):
        quad = ".".join(rnd.choice(octets) for _ in range(4))
        text = rnd.choice(["::ffff:", "::FFFF:", "::fFfF:", "::fff:", "0::ffff:", "::ffff:0:"])
        text += quad
        try:
            want: dict[str, str] | None = {"ip": normalize_host(text)}
        except AddressError:
            want = None
        m = rule.match(f"from {text}")
        got = None if m is None else rule.extract(m)
        assert got == want, text

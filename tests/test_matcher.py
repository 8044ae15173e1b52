"""The matcher: routing by program, keyword prefilter, rule kinds, two-line sessions, bounds."""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

import pyparsing as pp
import pytest

from popwatch.grammar import (
    AUTH,
    CONNECT,
    END,
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    bracketed_ip,
    ip_address,
    lit,
    number,
    rest_of_line,
    word,
)
from popwatch.matcher import Matcher
from popwatch.syslogline import LineParser, LogLine

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 22, 12, tzinfo=UTC).timestamp()
T0 = datetime.datetime(2026, 11, 22, 9, 15, 2, tzinfo=UTC).timestamp()


def matcher(*patterns: Pattern, **kw: Any) -> Matcher:
    return Matcher(patterns, clock=lambda: NOW, parser=LineParser(clock=lambda: NOW, tz=UTC), **kw)


def uw_like(name: str = "uw", hosts: frozenset[str] = frozenset()) -> Pattern:
    login = lit("Login user=") + word("user") + lit("host=") + bracketed_ip("ip")
    failed = lit("Login failed") + rest_of_line()
    return Pattern(
        programs=("ipop3d", "imapd"),
        rules=(
            Rule("login", login, LOGIN, ("Login user=",)),
            Rule("failed", failed, OTHER, ("Login failed",)),
        ),
        name=name,
        hosts=hosts,
    )


def popa3d_like() -> Pattern:
    return Pattern(
        programs=("popa3d",),
        rules=(
            Rule("session", lit("Session from") + ip_address("ip"), CONNECT, ("Session from",)),
            Rule("passed", lit("Authentication passed for") + word("user"), AUTH, ("passed",)),
            Rule("failed", lit("Authentication failed for") + rest_of_line(), OTHER),
            Rule("end", lit("Session ended") + rest_of_line(), END, ("ended",)),
        ),
        name="popa3d",
    )


def xinetd_like() -> Pattern:
    start = (
        lit("START:")
        + word("service")
        + pp.Combine(lit("pid=") + number())("pid")
        + (pp.Combine(lit("from=") + ip_address(None))("ip"))
    )
    exit_ = (
        lit("EXIT:")
        + word("service")
        + pp.Combine(lit("pid=") + number())("pid")
        + (rest_of_line())
    )
    return Pattern(
        programs=("xinetd",),
        rules=(
            Rule("start", start, CONNECT, ("START:",)),
            Rule("exit", exit_, END, ("EXIT:",)),
        ),
        name="xinetd",
    )


def line(program: str, pid: int, message: str, sec: int = 2, host: str = "mx") -> str:
    return f"Nov 22 09:15:{sec:02d} {host} {program}[{pid}]: {message}"


# -------------------------------------------------------------------------------------------


def test_login_event_fields() -> None:
    m = matcher(uw_like())
    ev = m.feed_line(line("ipop3d", 42, "Login user=alice host=[::ffff:192.0.2.10]"), "f", 7)
    assert ev is not None
    assert (ev.ip, ev.user, ev.pattern, ev.rule) == ("192.0.2.10", "alice", "uw", "login")
    assert (ev.program, ev.pid, ev.host, ev.source, ev.lineno) == ("ipop3d", 42, "mx", "f", 7)
    assert ev.time == T0
    assert m.stats.events[("uw", "login")] == 1
    assert (m.stats.lines, m.stats.claimed, m.stats.near_misses) == (1, 1, 0)


def test_unclaimed_programs_and_shapes_are_ignored() -> None:
    m = matcher(uw_like())
    assert m.feed_line(line("postfix/smtpd", 1, "Login user=a host=[192.0.2.1]")) is None
    assert m.feed_line("not a syslog line") is None
    assert (m.stats.lines, m.stats.claimed) == (2, 0)


def test_other_rule_counts_and_near_miss_is_kept() -> None:
    m = matcher(uw_like(), keep_missed=2)
    assert m.feed_line(line("imapd", 1, "Login failed user=a host=[192.0.2.1]")) is None
    for n in range(3):
        assert m.feed_line(line("imapd", 1, f"Something else {n}"), "src", n + 1) is None
    assert m.stats.hits[("uw", "failed")] == 1
    assert m.stats.near_misses == 3
    assert [x.lineno for x in m.stats.missed] == [2, 3]  # bounded: the latest kept
    assert m.stats.missed[-1].message == "Something else 2"


def test_parse_all_whole_message_only() -> None:
    m = matcher(uw_like())
    assert m.feed_line(line("ipop3d", 1, "Login user=a host=[192.0.2.1] extra")) is None
    assert m.feed_line(line("ipop3d", 1, "xLogin user=a host=[192.0.2.1]")) is None
    assert m.stats.near_misses == 2


def test_keyword_prefilter_skips_the_grammar() -> None:
    calls: list[str] = []
    grammar = (lit("Login user=") + word("user") + bracketed_ip("ip")).add_parse_action(
        lambda t: calls.append("x")
    )
    p = Pattern(("ipop3d",), (Rule("login", grammar, LOGIN, ("Login user=", "[")),), name="k")
    m = matcher(p)
    m.feed_line(line("ipop3d", 1, "Logout user=a [192.0.2.1]"))
    m.feed_line(line("ipop3d", 1, "Login user=a 192.0.2.1"))
    assert calls == []
    assert m.feed_line(line("ipop3d", 1, "Login user=a [192.0.2.1]")) is not None
    assert calls == ["x"]


def test_invalid_address_in_ip_result_gives_no_event() -> None:
    # a sloppy site grammar that does not validate the address itself
    sloppy = lit("Login from") + pp.Regex(r"\S+")("ip")
    p = Pattern(("ipop3d",), (Rule("login", sloppy, LOGIN),), name="sloppy")
    m = matcher(p)
    for bad in ("999.1.2.3", "1.2.3.456", "10.1", "192.0.2.0/24", "host.example"):
        assert m.feed_line(line("ipop3d", 1, f"Login from {bad}")) is None
    assert m.stats.rejected_ip == 5
    ev = m.feed_line(line("ipop3d", 1, "Login from 2001:DB8:0::5"))
    assert ev is not None and ev.ip == "2001:db8::5"


def test_login_rule_without_ip_result_gives_no_event() -> None:
    p = Pattern(("x",), (Rule("login", lit("ok") + word("user"), LOGIN),), name="noip")
    m = matcher(p)
    assert m.feed_line(line("x", 1, "ok alice")) is None
    assert m.stats.rejected_ip == 1


def test_first_matching_rule_and_pattern_win() -> None:
    catch_all = Pattern(("ipop3d",), (Rule("any", rest_of_line(), OTHER),), name="aaa")
    m = matcher(catch_all, uw_like())
    assert m.feed_line(line("ipop3d", 1, "Login user=a host=[192.0.2.1]")) is None
    assert m.stats.hits[("aaa", "any")] == 1
    m2 = matcher(uw_like(), catch_all)
    assert m2.feed_line(line("ipop3d", 1, "Login user=a host=[192.0.2.1]")) is not None


def test_hosts_restriction() -> None:
    m = matcher(uw_like(hosts=frozenset({"mx"})))
    assert m.feed_line(line("ipop3d", 1, "Login user=a host=[192.0.2.1]", host="mx")) is not None
    assert m.feed_line(line("ipop3d", 1, "Login user=a host=[192.0.2.1]", host="evil")) is None
    assert m.stats.claimed == 1 and m.stats.near_misses == 0


def test_two_line_session_interleaved() -> None:
    m = matcher(popa3d_like())
    assert m.feed_line(line("popa3d", 10, "Session from 192.0.2.10", 1)) is None
    assert m.feed_line(line("popa3d", 11, "Session from 192.0.2.11", 2)) is None
    ev11 = m.feed_line(line("popa3d", 11, "Authentication passed for bob", 3), "log", 3)
    ev10 = m.feed_line(line("popa3d", 10, "Authentication passed for alice", 4), "log", 4)
    assert ev11 is not None and (ev11.ip, ev11.user, ev11.rule) == ("192.0.2.11", "bob", "passed")
    assert ev10 is not None and (ev10.ip, ev10.user, ev10.lineno) == ("192.0.2.10", "alice", 4)
    assert ev10.time == T0 + 2  # the completing line's time
    # the session is used up: a second AUTH line of the same pid gives nothing
    assert m.feed_line(line("popa3d", 10, "Authentication passed for alice", 5)) is None
    assert m.stats.unpaired_auth == 1
    assert len(m.pending) == 0


def test_session_is_per_host_and_pid() -> None:
    m = matcher(popa3d_like())
    m.feed_line(line("popa3d", 10, "Session from 192.0.2.10", host="a"))
    assert m.feed_line(line("popa3d", 10, "Authentication passed for x", host="b")) is None
    assert m.feed_line(line("popa3d", 11, "Authentication passed for x", host="a")) is None
    ev = m.feed_line(line("popa3d", 10, "Authentication passed for x", host="a"))
    assert ev is not None and ev.ip == "192.0.2.10"


def test_failed_login_then_end_forgets_session() -> None:
    m = matcher(popa3d_like())
    m.feed_line(line("popa3d", 10, "Session from 192.0.2.10"))
    assert m.feed_line(line("popa3d", 10, "Authentication failed for alice")) is None
    m.feed_line(line("popa3d", 10, "Session ended"))
    assert len(m.pending) == 0
    assert m.feed_line(line("popa3d", 10, "Authentication passed for alice")) is None


def test_new_connect_of_same_pid_replaces_old() -> None:
    m = matcher(popa3d_like())
    m.feed_line(line("popa3d", 10, "Session from 192.0.2.10"))
    m.feed_line(line("popa3d", 10, "Session from 192.0.2.99"))
    ev = m.feed_line(line("popa3d", 10, "Authentication passed for alice"))
    assert ev is not None and ev.ip == "192.0.2.99"


def test_connect_pid_from_result_pairs_with_child_across_patterns() -> None:
    """xinetd logs the child's pid; the child's AUTH line completes it (another pattern)."""
    m = matcher(xinetd_like(), popa3d_like())
    assert m.feed_line(line("xinetd", 1, "START: pop3 pid=4242 from=192.0.2.30")) is None
    ev = m.feed_line(line("popa3d", 4242, "Authentication passed for carol"))
    assert ev is not None and (ev.ip, ev.pattern, ev.rule) == ("192.0.2.30", "popa3d", "passed")
    m.feed_line(line("xinetd", 1, "START: pop3 pid=4243 from=192.0.2.31"))
    m.feed_line(line("xinetd", 1, "EXIT: pop3 pid=4243 duration=1(sec)"))
    assert m.feed_line(line("popa3d", 4243, "Authentication passed for carol")) is None


def test_pending_age_bound() -> None:
    m = matcher(popa3d_like(), pending_age=60)
    m.feed_line("Nov 22 09:00:00 mx popa3d[10]: Session from 192.0.2.10")
    assert m.feed_line("Nov 22 09:01:01 mx popa3d[10]: Authentication passed for a") is None
    m.feed_line("Nov 22 09:05:00 mx popa3d[11]: Session from 192.0.2.11")
    ev = m.feed_line("Nov 22 09:05:59 mx popa3d[11]: Authentication passed for a")
    assert ev is not None and ev.ip == "192.0.2.11"


def test_pending_size_bound_drops_oldest() -> None:
    m = matcher(popa3d_like(), max_pending=3)
    for pid in range(1, 6):
        m.feed_line(line("popa3d", pid, f"Session from 192.0.2.{pid}"))
    assert len(m.pending) == 3
    assert m.feed_line(line("popa3d", 1, "Authentication passed for a")) is None
    assert m.feed_line(line("popa3d", 2, "Authentication passed for a")) is None
    ev = m.feed_line(line("popa3d", 3, "Authentication passed for a"))
    assert ev is not None and ev.ip == "192.0.2.3"
    assert m.pending.dropped == 2


def test_pending_stays_bounded_under_a_flood() -> None:
    m = matcher(popa3d_like(), max_pending=100)
    for pid in range(5000):
        m.feed_line(line("popa3d", pid + 1, "Session from 203.0.113.7"))
    assert len(m.pending) == 100


def test_grammar_exception_does_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    def boom(toks: pp.ParseResults) -> None:
        raise RuntimeError("site pattern bug")

    broken = (lit("Login") + rest_of_line()).add_parse_action(boom)
    p = Pattern(("ipop3d",), (Rule("broken", broken, LOGIN), *uw_like().rules), name="b")
    m = matcher(p)
    with caplog.at_level(logging.WARNING, logger="popwatch.matcher"):
        ev = m.feed_line(line("ipop3d", 1, "Login user=a host=[192.0.2.1]"))
    assert ev is not None and ev.rule == "login"  # the next rule still gets its chance
    assert m.stats.errors[("b", "broken")] == 1
    assert "pattern b, rule broken: RuntimeError: site pattern bug" in caplog.text


def test_recursion_in_grammar_does_not_escape() -> None:
    fwd = pp.Forward()
    fwd <<= fwd + lit("x")  # left recursion: RecursionError inside pyparsing
    p = Pattern(("ipop3d",), (Rule("loop", fwd, LOGIN),), name="loop")
    m = matcher(p)
    assert m.feed_line(line("ipop3d", 1, "x x x")) is None
    assert m.stats.errors[("loop", "loop")] == 1


def test_feed_logline_from_journal() -> None:
    m = matcher(uw_like())
    ll = LogLine(None, "mx", "imapd", 9, "Login user=a host=[192.0.2.5]")
    ev = m.feed(ll, "journal")
    assert ev is not None and ev.ip == "192.0.2.5" and ev.time == NOW and ev.source == "journal"
    assert m.feed(LogLine(1.0, "", "sshd", 1, "Login user=a host=[192.0.2.5]")) is None
    assert m.stats.lines == 2


def test_unclaimed_lines_are_cheap() -> None:
    """A Postfix line must cost about a regex match and a dict lookup, not a grammar."""
    m = matcher(uw_like(), popa3d_like(), compile_grammars=False)  # pyparsing as the yardstick
    noise = line("postfix/smtpd", 123, "connect from unknown[198.51.100.99]")
    claimed = line("ipop3d", 1, "Login user=alice host=client.example.net [192.0.2.10]")
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        m.feed_line(noise)
    noise_cost = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n // 10):
        m.feed_line(claimed)
    claimed_cost = (time.perf_counter() - start) / (n // 10)
    assert m.stats.claimed == n // 10
    assert noise_cost < 50e-6, f"{noise_cost * 1e6:.1f} us per unclaimed line"
    assert noise_cost * 5 < claimed_cost, (noise_cost, claimed_cost)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        matcher(uw_like(), max_pending=0)
    with pytest.raises(ValueError):
        matcher(uw_like(), pending_age=0)
    assert matcher(uw_like(), popa3d_like()).programs == {"ipop3d", "imapd", "popa3d"}

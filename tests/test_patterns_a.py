"""Grammar-level checks for the qpopper, courier, cyrus, popa3d and solid-pop3d patterns.

The shared harness (test_pattern_fixtures.py) checks the annotated sample logs; this file
checks properties a handful of samples cannot: whatever text an attacker puts where the
daemon writes a user name (or a PTR name), the address that comes out is the daemon's own or
nothing, and options are validated.  Lines go through the real Matcher and LineParser.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popwatch.event import LoginEvent
from popwatch.grammar import LOGIN, OTHER, Pattern
from popwatch.matcher import Matcher
from popwatch.patternload import find_pattern_files, load_pattern_file
from popwatch.syslogline import LineParser

CLOCK = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC).timestamp()
NAMES = ("qpopper", "courier", "cyrus", "popa3d", "solid-pop3d")
REAL_IP = "192.0.2.10"
FAKE = "203.0.113.66"

# Attacker text: printable ASCII (syslog escapes control characters), heavy on the
# characters that the daemons' own fields are made of.
attacker_text = st.text(
    alphabet=st.sampled_from(list(' "()[]<>=,.:-+@ \\/') + list("0123456789abcfx")),
    min_size=1,
    max_size=60,
) | st.sampled_from(
    [
        f'x" at (h) {FAKE}',
        f"x, ip=[{FAKE}], port=[1]",
        f"x authenticated - {FAKE}",
        f"[{FAKE}]",
        f"rip={FAKE}",
        f"x plaintext User logged in SESSIONID=<a> [{FAKE}]",
        f"x 0 0 0 0 h {FAKE}",
    ]
)


@functools.cache
def _patterns(stats_line: bool) -> tuple[Pattern, ...]:
    """All shipped patterns (loaded once per option set: hypothesis calls this a lot)."""
    return tuple(
        load_pattern_file(path, {"stats_line": True} if stats_line and name == "qpopper" else {})
        for name, path in find_pattern_files(()).items()
    )


def _matcher(options: dict[str, dict[str, object]] | None = None) -> Matcher:
    """A fresh Matcher (no pending sessions) over all shipped patterns, fixed clock, UTC."""
    stats_line = bool((options or {}).get("qpopper", {}).get("stats_line", False))
    clock = lambda: CLOCK  # noqa: E731 - a fixed clock is the whole point
    parser = LineParser(clock=clock, tz=datetime.UTC)
    return Matcher(_patterns(stats_line), clock=clock, parser=parser)


def _feed(m: Matcher, *lines: str) -> list[LoginEvent]:
    events = []
    for i, line in enumerate(lines, 1):
        ev = m.feed_line(line, "test", i)
        if ev is not None:
            events.append(ev)
    return events


def _assert_only_real(events: list[LoginEvent]) -> None:
    for ev in events:
        assert ev.ip == REAL_IP, f"{ev.pattern}/{ev.rule} took {ev.ip} from attacker text"
        ipaddress.ip_address(ev.ip)  # a full host address, never a fragment


@pytest.mark.parametrize("name", NAMES)
def test_pattern_loads_with_defaults_and_rejects_unknown_options(name: str) -> None:
    path = find_pattern_files(())[name]
    p = load_pattern_file(path, {})
    assert p.name == name
    for rule in p.rules:
        assert rule.keywords, f"{name}/{rule.name} has no keywords (no prefilter)"
    with pytest.raises(Exception, match="unknown option"):
        load_pattern_file(path, {"no_such_option": True})


def test_qpopper_stats_line_is_other_by_default_and_login_with_option() -> None:
    path = find_pattern_files(())["qpopper"]
    assert {r.name: r.kind for r in load_pattern_file(path, {}).rules}["stats"] == OTHER
    on = load_pattern_file(path, {"stats_line": True})
    assert {r.name: r.kind for r in on.rules}["stats"] == LOGIN
    with pytest.raises(Exception, match="stats_line"):
        load_pattern_file(path, {"stats_line": "yes"})
    line = f"Nov 22 09:15:09 h qpopper[1]: Stats: alice 0 0 3 12 c.example.net {REAL_IP}"
    assert _feed(_matcher(), line) == []
    (ev,) = _feed(_matcher({"qpopper": {"stats_line": True}}), line)
    assert (ev.ip, ev.user, ev.rule) == (REAL_IP, "alice", "stats")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=attacker_text)
def test_attacker_user_names_never_provide_the_address(user: str) -> None:
    m = _matcher({"qpopper": {"stats_line": True}})
    ptr = "client.example.net"
    lines = [
        f'Nov 22 09:15:02 h in.qpopper[10]: (v4.1.0) POP login by user "{user}" at ({ptr}) '
        f"{REAL_IP} [pop_log.c:244]",
        f"Nov 22 09:15:03 h qpopper[11]: Stats: {user} 0 0 3 12 {ptr} {REAL_IP}",
        f"Nov 22 09:15:04 h imapd: LOGIN, user={user}, ip=[::ffff:{REAL_IP}], port=[1], "
        "protocol=IMAP",
        f"Nov 22 09:15:05 h imapd: LOGIN FAILED, user={user}, ip=[::ffff:{REAL_IP}], port=[1]",
        f"Nov 22 09:15:06 h cyrus/imap[12]: login: {ptr} [{REAL_IP}] {user} plaintext "
        "User logged in SESSIONID=<s-1>",
        f"Nov 22 09:15:07 h solid-pop3d[13]: user {user} authenticated - {ptr} ({REAL_IP})",
        f"Nov 22 09:15:08 h solid-pop3d[14]: authentication failed for user {user} - {FAKE}",
        f"Nov 22 09:15:09 h popa3d[15]: Session from {REAL_IP}",
        f"Nov 22 09:15:10 h popa3d[15]: Authentication passed for {user}",
        f"Nov 22 09:15:11 h popa3d[16]: Authentication failed for {user}",
    ]
    _assert_only_real(_feed(m, *lines))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ptr=attacker_text)
def test_attacker_ptr_names_never_provide_the_address(ptr: str) -> None:
    m = _matcher({"qpopper": {"stats_line": True}})
    lines = [
        f'Nov 22 09:15:02 h in.qpopper[10]: (v4.1.0) POP login by user "alice" at ({ptr}) '
        f"{REAL_IP}",
        f"Nov 22 09:15:03 h qpopper[11]: Stats: alice 0 0 3 12 {ptr} {REAL_IP}",
        f"Nov 22 09:15:06 h cyrus/imap[12]: login: {ptr} [{REAL_IP}] alice plaintext "
        "User logged in SESSIONID=<s-1>",
        f"Nov 22 09:15:07 h solid-pop3d[13]: user alice authenticated - {ptr} ({REAL_IP})",
        f"Nov 22 09:15:08 h cyrus/imap[14]: event=login.good r.sessionid=s-2 "
        f'r.clienthost="{ptr.replace(chr(92), "").replace(chr(34), "")} [{REAL_IP}]" '
        "u.username=alice login.mech=PLAIN login.tls=0",
    ]
    _assert_only_real(_feed(m, *lines))


def test_injection_lines_give_no_event_at_all() -> None:
    m = _matcher()
    events = _feed(
        m,
        # a PTR name with spaces faking the whole rest of the line
        f"Nov 22 09:20:04 h cyrus/imap[1]: login: evil [{FAKE}] x plaintext User logged in "
        f"SESSIONID=<a> [{REAL_IP}] bob plaintext User logged in SESSIONID=<b>",
        # anonymous and password-less Cyrus logins
        f"Nov 22 09:20:05 h cyrus/imap[2]: login: c.example.net [{FAKE}] anonymous plaintext "
        "User logged in SESSIONID=<x>",
        f"Nov 22 09:20:06 h cyrus/imap[3]: login: c.example.net [{FAKE}] bob nopassword "
        "User logged in SESSIONID=<x>",
        # a Courier failure whose typed user fakes a success
        f"Nov 22 09:20:07 h imapd: LOGIN FAILED, user=a, LOGIN, user=b, ip=[{FAKE}], "
        f"ip=[{FAKE}], port=[1]",
        # solid-pop3d PTR name with parentheses
        f"Nov 22 09:20:08 h solid-pop3d[4]: user a authenticated - evil ({FAKE}) ({REAL_IP})",
        # Postfix with qpopper's text in the MAIL FROM
        f"Nov 22 09:20:09 h postfix/smtpd[5]: NOQUEUE: reject: RCPT from unknown[{FAKE}]: "
        f'554 5.7.1 from=<"POP login by user \\"admin\\" at (x) {FAKE}"@example.org>',
        # out of range
        'Nov 22 09:20:10 h qpopper[6]: (v4.1.0) POP login by user "a" at (h) 1.2.3.456',
        "Nov 22 09:20:11 h imapd: LOGIN, user=a, ip=[::ffff:999.1.2.3], port=[1]",
    )
    assert events == []
    assert m.stats.claimed == 7  # all but the Postfix line were seen and refused


def test_popa3d_failure_ends_the_session_and_interleaving_keeps_pids_apart() -> None:
    m = _matcher()
    events = _feed(
        m,
        "Nov 22 09:15:01 h popa3d[100]: Session from 192.0.2.10",
        "Nov 22 09:15:01 h popa3d[200]: Session from 2001:db8::5",
        "Nov 22 09:15:02 h popa3d[100]: Authentication failed for alice",
        "Nov 22 09:15:03 h popa3d[100]: Authentication passed for alice",
        "Nov 22 09:15:04 h popa3d[200]: Authentication passed for bob",
    )
    assert [(e.ip, e.user, e.pid) for e in events] == [("2001:db8::5", "bob", 200)]


def test_stretched_attacker_lines_parse_quickly() -> None:
    # The harness stretches whole messages; these stretch only the attacker's field, which is
    # where a backtracking regex would hurt.
    m = _matcher({"qpopper": {"stats_line": True}})
    junk = (" 1 2 3 4 authenticated - " + FAKE + ', ip=[ " at (') * 120
    lines = [
        f'Nov 22 09:15:02 h qpopper[1]: (v4.1.0) POP login by user "{junk}" at (h) {REAL_IP}',
        f"Nov 22 09:15:03 h qpopper[2]: Stats: {junk} 0 0 3 12 h {REAL_IP}",
        f"Nov 22 09:15:04 h imapd: LOGIN, user={junk}, ip=[{REAL_IP}], port=[1]",
        f"Nov 22 09:15:05 h solid-pop3d[3]: user {junk} authenticated - {REAL_IP}",
        f"Nov 22 09:15:06 h cyrus/imap[4]: login: h [{REAL_IP}] {junk} plaintext",
    ]
    for line in lines:
        _feed(m, line)  # the first line to reach a rule also compiles it: not timed
        start = time.perf_counter()
        events = _feed(m, line)
        assert time.perf_counter() - start < 0.05, line[:60]
        _assert_only_real(events)

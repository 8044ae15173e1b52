"""Grammar-level checks for perdition, teapop, vpopmail, cucipop, vm-pop3d, gnu-pop3d,
mailutils, tcpd and xinetd.

The shared harness (test_pattern_fixtures.py) checks the annotated sample logs; this file
checks what a handful of samples cannot: whatever an attacker puts where the daemon writes a
user name, a password or a host name, the address that comes out is the daemon's own or
nothing; a failed login never becomes a login; two-line sessions pair only by (host, pid);
options are validated; long hostile lines parse quickly.  Lines go through the real loader,
Matcher and LineParser with all shipped patterns, as the daemon runs them.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popwatch.errors import PatternError
from popwatch.event import LoginEvent
from popwatch.grammar import Pattern
from popwatch.matcher import Matcher
from popwatch.patternload import find_pattern_files, load_pattern_file
from popwatch.syslogline import LineParser

CLOCK = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC).timestamp()
REAL = "198.51.100.7"
FAKE = "203.0.113.66"
HEAD = "Nov 22 09:15:02 mailhost"

attacker_text = st.text(
    alphabet=st.sampled_from(list(" \"'`()[]<>=,.:;-+@_/\\") + list("0123456789abcfx")),
    min_size=1,
    max_size=60,
) | st.sampled_from(
    [
        'x" server="a:1" protocol=POP3 server-secure=ssl status="ok',
        f"x [{FAKE}] from h [{FAKE}]",
        f"x@y:{FAKE}",
        f"x] from {FAKE}",
        f"x' logged in from {FAKE}",
        f"x logged in with mailbox /m from {FAKE}",
        f"[{FAKE}]",
        f"rip={FAKE}",
        f"{FAKE} 1, 1 (1), 1 (1)",
    ]
)


@functools.cache
def _patterns(options: tuple[tuple[str, str], ...] = ()) -> tuple[Pattern, ...]:
    """All shipped patterns; ``options`` is ((name, JSON text), ...), hashable for caching."""
    table: dict[str, Mapping[str, Any]] = {name: _json(text) for name, text in options}
    return tuple(
        load_pattern_file(path, table.get(name, {}))
        for name, path in find_pattern_files(()).items()
    )


def _json(text: str) -> Mapping[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def _matcher(**options: str) -> Matcher:
    clock = lambda: CLOCK  # noqa: E731 - a fixed clock
    return Matcher(
        _patterns(tuple(sorted(options.items()))),
        clock=clock,
        parser=LineParser(clock=clock, tz=datetime.UTC),
    )


def _feed(m: Matcher, *lines: str) -> list[LoginEvent]:
    out = []
    for n, line in enumerate(lines, 1):
        ev = m.feed_line(line, "t", n)
        if ev is not None:
            out.append(ev)
    return out


def _one(line: str) -> LoginEvent | None:
    events = _feed(_matcher(), line)
    return events[0] if events else None


def _pattern(name: str, options: Mapping[str, Any] | None = None) -> Pattern:
    return load_pattern_file(find_pattern_files(())[name], options or {})


# --------------------------------------------------------------------------------------------
# One-line logins: the daemon's address or nothing, whatever the attacker-controlled text.
# --------------------------------------------------------------------------------------------

ONE_LINE = {
    "perdition": (
        "perdition.pop3[7]: Auth: {ip}:40000->192.0.2.1:110 client-secure=plaintext "
        'authorisation_id=NONE authentication_id="{u}" server="10.0.0.5:110" protocol=POP3 '
        'server-secure=plaintext status="ok"'
    ),
    "teapop": "teapop[7]: Successful login for {u} [192.0.2.1] from host.example [{ip}]",
    "vpopmail": "vpopmail[7]: vchkpw: login [{u}] from {ip}",
    "vm-pop3d": "vm-pop3d[7]: User {u} logged in from {ip}",
    "gnu-pop3d": "gnu-pop3d[7]: User {u} logged in with mailbox /var/mail/x from {ip}",
    "cucipop": "cucipop[7]: {u} {ip} 1, 2 (3), 4 (5)",
}


@pytest.mark.parametrize("name", sorted(ONE_LINE))
def test_one_line_login_takes_the_daemons_address(name: str) -> None:
    ev = _one(f"{HEAD} " + ONE_LINE[name].format(u="alice", ip=REAL))
    assert ev is not None and ev.ip == REAL and ev.pattern == name


@pytest.mark.parametrize("name", sorted(ONE_LINE))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=attacker_text)
def test_user_text_never_supplies_the_address(name: str, user: str) -> None:
    ev = _one(f"{HEAD} " + ONE_LINE[name].format(u=user, ip=REAL))
    assert ev is None or ev.ip == REAL


@pytest.mark.parametrize(
    "line",
    [
        # perdition: a failed login whose user name carries a whole success tail
        "perdition.pop3[7]: Auth: 198.51.100.7:1->192.0.2.1:110 client-secure=plaintext "
        'authorisation_id=NONE authentication_id="x" server="a:1" protocol=POP3 '
        'server-secure=plaintext status="ok" server="10.0.0.5:110" protocol=POP3 '
        'server-secure=plaintext status="failed: Re-Authentication Failure"',
        # perdition: the password field cannot end the line with status="ok"
        "perdition.pop3[7]: Auth: 198.51.100.7:1->192.0.2.1:110 client-secure=plaintext "
        'authorisation_id=NONE authentication_id="x" passwd="a status=\\"ok\\"" '
        'server="10.0.0.5:110" protocol=POP3 server-secure=plaintext '
        'status="failed: local authentication failure"',
        # teapop and vchkpw failures imitating success text
        f"teapop[7]: Failed login for Successful login for x [{FAKE}] [192.0.2.1] from h [{REAL}]",
        f"vpopmail[7]: vchkpw-pop3: password fail (PLAIN) login success a@b:{FAKE}",
        f"vpopmail[7]: vchkpw-pop3: password fail a@b:{REAL}",
        # services that are not a mail client's POP/IMAP login
        f"vpopmail[7]: vchkpw-smtp: (PLAIN) login success a@b:{REAL}",
        f"vpopmail[7]: vchkpw-webmail: (PLAIN) login success a@b:{REAL}",
        # perdition ManageSieve without the option
        f"perdition.managesieve[7]: Auth: {REAL}:1->192.0.2.1:4190 client-secure=plaintext "
        'authorisation_id=NONE authentication_id="a" server="s:4190" protocol=MANAGESIEVE '
        'server-secure=plaintext status="ok"',
        # vm-pop3d / gnu-pop3d with a user made of several words
        f"vm-pop3d[7]: User x from {FAKE} logged in from {REAL}",
        f"gnu-pop3d[7]: User x y logged in with mailbox /m from {REAL}",
        # cucipop with a host name where the address belongs
        "cucipop[7]: alice host.example 1, 2 (3), 4 (5)",
        # vchkpw's filtered IPv6 address is not an address
        "vpopmail[7]: vchkpw-imap: (PLAIN) login success a@b:2001_db8__5",
    ],
)
def test_not_a_login(line: str) -> None:
    assert _one(f"{HEAD} {line}") is None


def test_perdition_ipv6_port_split_takes_the_last_colon() -> None:
    ev = _one(
        f"{HEAD} perdition.imap4[7]: Auth: 2001:db8::5:1234->2001:db8::1:143 "
        'client-secure=plaintext authorisation_id=NONE authentication_id="a" server="s:143" '
        'protocol=IMAP4 server-secure=plaintext status="ok"'
    )
    assert ev is not None and ev.ip == "2001:db8::5"


def test_perdition_password_is_never_the_user() -> None:
    ev = _one(
        f"{HEAD} perdition.pop3[7]: Auth: {REAL}:1->192.0.2.1:110 client-secure=plaintext "
        'authorisation_id=NONE authentication_id="alice" passwd="hunter2" server="s:110" '
        'protocol=POP3 server-secure=plaintext status="ok"'
    )
    assert ev is not None and ev.user == "alice"


def test_teapop_first_bracket_is_the_servers_address() -> None:
    # pop-before-smtp's pattern took the first bracket, the server's own address.
    ev = _one(f"{HEAD} teapop[7]: Successful login for a [192.0.2.1] from h [{REAL}]")
    assert ev is not None and ev.ip == REAL


# --------------------------------------------------------------------------------------------
# Two-line sessions: address from CONNECT (this or another pattern), login from AUTH.
# --------------------------------------------------------------------------------------------


def test_tcpd_connect_then_daemon_auth_same_pid() -> None:
    m = _matcher()
    events = _feed(
        m,
        f"{HEAD} vm-pop3d[10]: connect from {REAL}",
        f"{HEAD} vm-pop3d[11]: connect from {FAKE}",
        f"{HEAD} vm-pop3d[10]: User 'alice' logged in",
    )
    assert [(e.ip, e.pid, e.pattern) for e in events] == [(REAL, 10, "vm-pop3d")]
    assert m.stats.hits[("tcpd", "connect")] == 2


def test_xinetd_start_names_the_child_pid_not_xinetds() -> None:
    m = _matcher()
    events = _feed(
        m,
        f"{HEAD} xinetd[900]: START: pop3 pid=4242 from={REAL}",
        # a login under xinetd's own pid must not find the session
        f"{HEAD} imap4d[900]: user `mallory' logged in (source: system)",
        f"{HEAD} pop3d[4242]: user `alice' logged in with mailbox `/m' (1 message)",
    )
    assert [(e.ip, e.pid, e.user) for e in events] == [(REAL, 4242, "alice")]


def test_xinetd_exit_ends_the_child_session() -> None:
    events = _feed(
        _matcher(),
        f"{HEAD} xinetd[900]: START: imaps pid=77 from={FAKE}",
        f"{HEAD} xinetd[900]: EXIT: imaps status=0 pid=77 duration=1(sec)",
        f"{HEAD} imap4d[77]: user `alice' logged in (source: system)",
    )
    assert events == []


def test_xinetd_other_services_are_not_paired() -> None:
    events = _feed(
        _matcher(),
        f"{HEAD} xinetd[900]: START: ftp pid=78 from={FAKE}",
        f"{HEAD} imap4d[78]: user `alice' logged in (source: system)",
    )
    assert events == []


def test_mailutils_failure_between_connect_and_auth_of_other_pid() -> None:
    events = _feed(
        _matcher(),
        f"{HEAD} pop3d[20]: connect from {FAKE}",
        f"{HEAD} pop3d[20]: user `x': authentication failed",
        f"{HEAD} pop3d[20]: session ended for no user",
        f"{HEAD} pop3d[20]: user `x' logged in with mailbox `/m' (1 message)",
    )
    assert events == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=attacker_text)
def test_mailutils_failure_lines_never_auth(user: str) -> None:
    for failure in (
        f"user `{user}': authentication failed",
        f"user `{user}' nonexistent",
        f"login failed: {user}",
        f"user `{user}' tried to log in within the minimum allowed delay",
    ):
        events = _feed(
            _matcher(),
            f"{HEAD} imap4d[30]: connect from {FAKE}",
            f"{HEAD} imap4d[30]: {failure}",
        )
        assert events == [], failure


# --------------------------------------------------------------------------------------------
# Options and loading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("perdition", {"managesieve": "yes"}),
        ("perdition", {"programs": "perdition-x"}),
        ("perdition", {"programs": [""]}),
        ("vpopmail", {"programs": [1]}),
        ("tcpd", {"programs": "pop3d"}),
        ("xinetd", {"services": []}),
        ("xinetd", {"services": ["pop3 evil"]}),
        ("teapop", {"anything": True}),
        ("mailutils", {"nope": 1}),
    ],
)
def test_bad_options_are_a_clear_error(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(PatternError) as err:
        _pattern(name, options)
    assert f"{name}.py" in str(err.value) and "option" in str(err.value)


def test_programs_option_adds_tags() -> None:
    assert "in.pop3d" in _pattern("tcpd", {"programs": ["in.pop3d"]}).programs
    assert "mu-pop3d" in _pattern("mailutils", {"programs": ["mu-pop3d"]}).programs
    assert _pattern("tcpd").programs == ("pop3d", "imap4d", "gnu-pop3d", "vm-pop3d")


def test_xinetd_services_option_replaces_the_default_set() -> None:
    m = _matcher(xinetd='{"services": ["mailpop"]}')
    events = _feed(
        m,
        f"{HEAD} xinetd[900]: START: pop3 pid=50 from={FAKE}",
        f"{HEAD} popa3d[50]: Authentication passed for x",
        f"{HEAD} xinetd[900]: START: mailpop pid=51 from={REAL}",
        f"{HEAD} popa3d[51]: Authentication passed for alice",
    )
    assert [(e.ip, e.user) for e in events] == [(REAL, "alice")]


MINE = (
    "perdition",
    "teapop",
    "vpopmail",
    "cucipop",
    "vm-pop3d",
    "gnu-pop3d",
    "mailutils",
    "tcpd",
    "xinetd",
)


@pytest.mark.parametrize("name", MINE)
def test_every_rule_has_keywords_and_a_description(name: str) -> None:
    p = _pattern(name)
    for rule in p.rules:
        assert rule.keywords and all(rule.keywords), rule.name
        assert rule.description, rule.name


# --------------------------------------------------------------------------------------------
# No pathological backtracking on long hostile lines (an attacker controls user names).
# --------------------------------------------------------------------------------------------

HOSTILE = [
    "perdition.pop3[7]: Auth: 1.2.3.4:1->1.2.3.4:1 client-secure=ssl authorisation_id=NONE "
    'authentication_id="' + 'a" server="b:1" passwd="' * 150,
    'perdition.pop3[7]: Auth: 1.2.3.4:1->1.2.3.4:1 client-secure=ssl authorisation_id="'
    + 'x" passwd=".* ' * 200
    + 'status="ok"x',
    "perdition.pop3[7]: Auth: " + "1:" * 2000 + "->",
    "teapop[7]: Successful login for " + "x [1.2.3.4] from h " * 200 + "[1.2.3.4",
    "vpopmail[7]: vchkpw: login [" + "] from 1.2.3.4 " * 250,
    "vpopmail[7]: vchkpw-pop3: (PLAIN) login success " + "a@b:" * 900,
    "vm-pop3d[7]: User " + "x logged in " * 300,
    "gnu-pop3d[7]: User `" + "x' logged in with mailbox `" * 150,
    "pop3d[7]: user `" + "x' logged in with mailbox `y' " * 120,
    "imap4d[7]: user `" + "x' logged in " * 300,
    "cucipop[7]: " + "x 1.2.3.4 " * 400,
    "xinetd[7]: START: pop3 pid=1 from=" + "1:" * 2000,
    "vm-pop3d[7]: connect from " + "1." * 2000,
]


@pytest.mark.parametrize("line", HOSTILE)
def test_long_hostile_lines_parse_fast(line: str) -> None:
    m = _matcher()
    # The first line to reach a rule also compiles it; the second one times the match alone.
    assert m.feed_line(f"{HEAD} {line}") is None
    start = time.perf_counter()
    assert m.feed_line(f"{HEAD} {line}") is None
    assert time.perf_counter() - start < 0.05


# --------------------------------------------------------------------------------------------
# The real GNU Mailutils daemons (Debian's mailutils-pop3d / mailutils-imap4d), run in inetd
# mode on pipes: their current wording must be what the mailutils pattern expects.
# --------------------------------------------------------------------------------------------


def _sha512_crypt(password: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            crypt = None  # type: ignore[assignment]
    if crypt is not None:
        return str(crypt.crypt(password, "$6$popwatchsalt"))
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    out = subprocess.run(
        [openssl, "passwd", "-6", "-salt", "popwatchsalt", password],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


def _run_inetd(program: str, conf: Path, session: bytes) -> tuple[int, list[str]]:
    """One session of a Mailutils daemon in inetd mode; its pid and its log messages."""
    proc = subprocess.Popen(
        [program, "-i", f"--config-file={conf}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(session, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    prefix = f"{Path(program).name}: "
    return proc.pid, [
        line[len(prefix) :] for line in err.decode().splitlines() if line.startswith(prefix)
    ]


@pytest.mark.system
def test_real_mailutils_lines_pair_with_an_xinetd_start(tmp_path: Path) -> None:
    pop3d, imap4d = Path("/usr/sbin/pop3d"), Path("/usr/sbin/imap4d")
    if not (pop3d.exists() and imap4d.exists()):
        pytest.skip("mailutils-pop3d/mailutils-imap4d not installed (sh scripts/setup --test)")
    hashed = _sha512_crypt("secret")
    if hashed is None:
        pytest.skip("neither Python's crypt nor openssl is available to hash a password")
    (tmp_path / "vd").mkdir()
    (tmp_path / "mail" / "alice").mkdir(parents=True)
    (tmp_path / "vd" / "example.org").write_text(
        f"alice:{hashed}:{os.getuid()}:{os.getgid()}:A:{tmp_path / 'mail' / 'alice'}:/bin/sh\n"
    )
    conf = tmp_path / "mu.conf"
    conf.write_text(
        "logging { syslog no; }\n"
        "auth { authentication generic; authorization virtdomain; }\n"
        f"virtdomain {{ passwd-dir {tmp_path / 'vd'}; }}\n"
        "tcp-wrappers { enable no; }\n"
    )
    sessions = [
        (pop3d, b"USER alice@example.org\r\nPASS secret\r\nSTAT\r\nQUIT\r\n", REAL, "alice"),
        (pop3d, b"USER alice@example.org\r\nPASS wrong\r\nQUIT\r\n", FAKE, None),
        (pop3d, b"USER bob@example.org\r\nPASS wrong\r\nQUIT\r\n", FAKE, None),
        (imap4d, b"a LOGIN alice@example.org secret\r\nb LOGOUT\r\n", "2001:db8::5", "alice"),
        (imap4d, b"a LOGIN alice@example.org wrong\r\nb LOGOUT\r\n", FAKE, None),
    ]
    m = _matcher()
    for program, dialogue, client, user in sessions:
        pid, messages = _run_inetd(str(program), conf, dialogue)
        assert messages, f"{program.name} logged nothing"
        lines = [f"{HEAD} xinetd[900]: START: pop3 pid={pid} from={client}"]
        lines += [f"{HEAD} {program.name}[{pid}]: {msg}" for msg in messages]
        misses_before = m.stats.near_misses
        events = _feed(m, *lines)
        if user is None:
            assert events == [], messages
        else:
            assert [(e.ip, e.user, e.pattern) for e in events] == [(client, user, "mailutils")], (
                messages
            )
        # Every line the real daemon wrote is recognized, except imap4d's complaint that a
        # pipe is not a socket (it never appears under a real inetd).
        missed = [x.message for x in list(m.stats.missed)[misses_before:]]
        assert all("Socket operation on non-socket" in x for x in missed), missed

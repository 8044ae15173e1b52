"""The syslog header layer: every line shape of DOMAIN.md section 2, year inference, zones."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popwatch.syslogline import LineParser, LogLine, ProgramFilter, from_journal

UTC = datetime.UTC


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    tz: datetime.tzinfo = UTC,
) -> float:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()


NOW = at(2026, 11, 22, 12, 0, 0)


def parser(now: float = NOW, tz: datetime.tzinfo | None = UTC) -> LineParser:
    return LineParser(clock=lambda: now, tz=tz)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Nov 22 09:15:02 mailhost ipop3d[4242]: Login user=alice host=[192.0.2.10]",
            LogLine(
                at(2026, 11, 22, 9, 15, 2),
                "mailhost",
                "ipop3d",
                4242,
                "Login user=alice host=[192.0.2.10]",
            ),
        ),
        (  # space-padded day
            "Nov  2 09:15:02 mailhost dovecot: imap-login: Login: user=<a>",
            LogLine(
                at(2026, 11, 2, 9, 15, 2),
                "mailhost",
                "dovecot",
                None,
                "imap-login: Login: user=<a>",
            ),
        ),
        (  # a slash in the tag
            "Nov 22 09:15:02 mx cyrus/pop3[7]: login: h [192.0.2.1] a plaintext User logged in",
            LogLine(
                at(2026, 11, 22, 9, 15, 2),
                "mx",
                "cyrus/pop3",
                7,
                "login: h [192.0.2.1] a plaintext User logged in",
            ),
        ),
        (  # a dot in the tag, rsyslog high precision with offset
            "2026-11-22T09:15:02.123456+01:00 mx perdition.pop3[7]: Auth: x",
            LogLine(at(2026, 11, 22, 8, 15, 2) + 0.123456, "mx", "perdition.pop3", 7, "Auth: x"),
        ),
        (  # a dash in the tag, no pid, Z zone
            "2026-11-22T09:15:02Z mx pop3d-ssl: LOGIN, user=a",
            LogLine(at(2026, 11, 22, 9, 15, 2), "mx", "pop3d-ssl", None, "LOGIN, user=a"),
        ),
        (  # RFC 5424 with a pid
            "<22>1 2026-11-22T09:15:02.5+00:00 mx ipop3d 4242 - - Login user=a",
            LogLine(at(2026, 11, 22, 9, 15, 2) + 0.5, "mx", "ipop3d", 4242, "Login user=a"),
        ),
        (  # RFC 5424: "-" pid, structured data with an escaped bracket, BOM before MSG
            '<22>1 2026-11-22T09:15:02Z mx dovecot - ID47 [x@1 a="b\\]c"][y@2] \ufeffhello',
            LogLine(at(2026, 11, 22, 9, 15, 2), "mx", "dovecot", None, "hello"),
        ),
        (  # RFC 5424 without time and host
            "<22>1 - - popa3d 12 - - Session from 192.0.2.1",
            LogLine(None, "", "popa3d", 12, "Session from 192.0.2.1"),
        ),
        (  # Dovecot's own log_path file: no host
            "Nov 22 09:15:02 pop3-login: Info: Login: user=<alice>, method=PLAIN",
            LogLine(
                at(2026, 11, 22, 9, 15, 2),
                "",
                "pop3-login",
                None,
                "Info: Login: user=<alice>, method=PLAIN",
            ),
        ),
        (  # a <PRI> prefix as received from the network
            "<22>Nov 22 09:15:02 mx ipop3d[1]: x",
            LogLine(at(2026, 11, 22, 9, 15, 2), "mx", "ipop3d", 1, "x"),
        ),
        (  # an IPv6 address as the host field, CRLF line end
            "Nov 22 09:15:02 2001:db8::1 imapd[3]: Logout\r\n",
            LogLine(at(2026, 11, 22, 9, 15, 2), "2001:db8::1", "imapd", 3, "Logout"),
        ),
        (  # empty message
            "Nov 22 09:15:02 mx popa3d[3]:",
            LogLine(at(2026, 11, 22, 9, 15, 2), "mx", "popa3d", 3, ""),
        ),
    ],
)
def test_line_shapes(line: str, expected: LogLine) -> None:
    got = parser().parse(line)
    assert got is not None
    assert got.time == pytest.approx(expected.time) if expected.time else got.time is None
    assert (got.host, got.program, got.pid, got.message) == (
        expected.host,
        expected.program,
        expected.pid,
        expected.message,
    )


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "Nov 22 09:15:02 mailhost last message repeated 2 times",
        "Nov 22 09:15:02",
        "Foo 22 09:15:02 mx ipop3d[1]: x",
        "<22>1 2026-11-22T09:15:02Z mx - - - - no program",
        "2026-11-22 mx ipop3d[1]: x",
    ],
)
def test_unknown_shapes_give_none(line: str) -> None:
    assert parser().parse(line) is None


def test_year_inference_at_the_new_year() -> None:
    jan1 = at(2027, 1, 1, 0, 0, 10)
    # read just after midnight: yesterday's line belongs to last year
    line = parser(jan1).parse("Dec 31 23:59:59 mx ipop3d[1]: x")
    assert line is not None and line.time == at(2026, 12, 31, 23, 59, 59)
    # a writer whose clock runs a few seconds ahead on Dec 31: the line is next year's
    dec31 = at(2026, 12, 31, 23, 59, 50)
    line = parser(dec31).parse("Jan  1 00:00:05 mx ipop3d[1]: x")
    assert line is not None and line.time == at(2027, 1, 1, 0, 0, 5)
    # an ordinary line from earlier this year
    line = parser(NOW).parse("Jan  5 10:00:00 mx ipop3d[1]: x")
    assert line is not None and line.time == at(2026, 1, 5, 10, 0, 0)
    # a line from later in the "year" than now is last year's
    line = parser(NOW).parse("Dec 24 10:00:00 mx ipop3d[1]: x")
    assert line is not None and line.time == at(2025, 12, 24, 10, 0, 0)


def test_feb_29_looks_back_to_a_leap_year() -> None:
    line = parser(NOW).parse("Feb 29 10:00:00 mx ipop3d[1]: x")
    assert line is not None and line.time == at(2024, 2, 29, 10, 0, 0)


def test_impossible_date_keeps_the_line_without_time() -> None:
    line = parser().parse("Feb 30 10:00:00 mx ipop3d[1]: x")
    assert line is not None and line.time is None and line.program == "ipop3d"


def test_local_zone_and_dst() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    p = parser(NOW, berlin)
    line = p.parse("Nov 22 09:15:02 mx ipop3d[1]: x")  # CET, UTC+1
    assert line is not None and line.time == at(2026, 11, 22, 8, 15, 2)
    line = p.parse("Jul  1 09:15:02 mx ipop3d[1]: x")  # CEST, UTC+2
    assert line is not None and line.time == at(2026, 7, 1, 7, 15, 2)
    # ISO lines carry their own offset; the zone does not change them
    line = p.parse("2026-07-01T09:15:02+00:00 mx ipop3d[1]: x")
    assert line is not None and line.time == at(2026, 7, 1, 9, 15, 2)


def test_default_zone_is_the_local_one() -> None:
    line = parser(NOW, None).parse("Nov 22 09:15:02 mx ipop3d[1]: x")
    local = datetime.datetime(2026, 11, 22, 9, 15, 2).timestamp()
    assert line is not None and line.time == local


def test_minute_cache_follows_the_clock() -> None:
    """The year decision is cached per minute but not across a long clock change."""
    now = [at(2026, 11, 22, 12)]
    p = LineParser(clock=lambda: now[0], tz=UTC)
    first = p.parse("Dec 24 10:00:00 mx x[1]: y")
    assert first is not None and first.time == at(2025, 12, 24, 10)
    now[0] = at(2026, 12, 25, 12)  # a month later the same text means this year's Dec 24
    again = p.parse("Dec 24 10:00:30 mx x[1]: y")
    assert again is not None and again.time == at(2026, 12, 24, 10, 0, 30)


def test_program_filter_skips_before_time_conversion() -> None:
    calls = []

    def clock() -> float:
        calls.append(1)
        return NOW

    p = LineParser(clock=clock, tz=UTC)
    wanted = {"ipop3d"}
    assert p.parse("Nov 22 09:15:02 mx postfix/smtpd[1]: connect from x", wanted) is None
    assert p.parse("2026-11-22T09:15:02Z mx postfix/smtpd[1]: x", wanted) is None
    assert p.parse("<22>1 2026-11-22T09:15:02Z mx postfix 1 - - x", wanted) is None
    assert calls == []
    assert p.parse("Nov 22 09:15:02 mx ipop3d[1]: x", wanted) is not None
    assert calls == [1]


def test_from_journal() -> None:
    record = {
        "MESSAGE": "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.1, lip=192.0.2.2",
        "SYSLOG_IDENTIFIER": "dovecot",
        "_PID": "812",
        "SYSLOG_PID": "999",
        "_COMM": "imap-login",
        "__REALTIME_TIMESTAMP": "1795338902123456",
        "_HOSTNAME": "mx",
    }
    line = from_journal(record)
    assert line == LogLine(1795338902.123456, "mx", "dovecot", 812, record["MESSAGE"])


def test_from_journal_fallbacks_and_bytes() -> None:
    # non-UTF-8 MESSAGE comes as a list of byte values; no identifier: _COMM
    line = from_journal({"MESSAGE": [104, 105, 0xFF], "_COMM": "popa3d", "SYSLOG_PID": "5"})
    assert line == LogLine(None, "", "popa3d", 5, "hi\ufffd")
    assert from_journal({"SYSLOG_IDENTIFIER": "x"}) is None
    assert from_journal({"MESSAGE": "x"}) is None


@given(st.text(max_size=300))
def test_never_raises(text: str) -> None:
    line = parser().parse(text)
    assert line is None or isinstance(line.message, str)


# -- ProgramFilter: the undecoded fast path for unclaimed programs ------------------------------

CLAIMED = frozenset({"imapd", "imap", "dovecot", "cyrus/pop3", "pop3-login", "in.qpopper"})

# Pieces that meet at the places the filter's argument depends on: spaces and other
# whitespace (ASCII, C0 separators, Unicode), colons, brackets, claimed names and their
# prefixes, non-ASCII text and undecodable bytes.
_PIECES = [
    b" ",
    b"  ",
    b":",
    b": ",
    b"[",
    b"]",
    b"[42]",
    b"\t",
    b"\r",
    b"\n",
    b"\x1c",
    b"\x0b",
    "\u00a0".encode(),
    "\u2003".encode(),
    "\u0085".encode(),
    "é".encode(),
    "\u0663".encode(),
    b"\xff",
    b"\xc2",
    b"\xe2\x80",
    b"imapd",
    b"imap",
    b"imapx",
    b"dovecot",
    b"dove",
    b"cyrus/pop3",
    b"pop3-login",
    b"in.qpopper",
    b"postfix/smtpd",
    b"host",
    b"x",
    b"-",
    b"T",
    b"1",
    b"12",
]
_HEADERS = [
    b"Nov 22 09:15:02 ",
    b"Nov  2 09:15:02 ",
    b"Nov 2 09:15:02 ",
    b"Nov 22 09:15:02.25 ",
    b"<13>Nov 22 09:15:02 ",
    b"Feb 30 09:15:02 ",
    b"Xyz 22 09:15:02 ",
    b"Nov 22 09:15:0",
    b"2026-11-22T09:15:02.123456+01:00 ",
    b"2026-11-22T09:15:02Z ",
    b"2026-11-22 09:15:02 ",
    "2026-11-2\u0663T09:15:02 ".encode(),
    b"<22>1 2026-11-22T09:15:02Z ",
    b"<1>1 a ",
    b"2026-11-22T",
    b"",
    b"\r",
    "Nov 2 09:15:0\u0663 ".encode(),
    "Nov 2 09:1\u0665:02 ".encode(),
    "Nov \u0662\u0662 09:15:02 ".encode(),
    "Nov 2 0\U0001d7ce:15:02 ".encode(),
    "202\u0666-11-22T09:15:02 ".encode(),
    "202\u0666-11-22 09:15:02 ".encode(),
    b"<1>1 - mailhst1 ",
]
_lines = st.tuples(
    st.sampled_from(_HEADERS),
    st.lists(st.sampled_from(_PIECES), max_size=8).map(b"".join),
    st.sampled_from([b"", b" Login: user=<a>", b" x: y", b"\r", b"\r\n"]),
).map(b"".join)


# Nearly well-formed lines: most parse, many are claimed, the rest differ by one odd piece.
_near = st.tuples(
    st.sampled_from(_HEADERS),
    st.sampled_from(
        [
            b"mailhost ",
            b"",
            b"ho:st ",
            b"h\tx ",
            "h\u00e9 ".encode(),
            b"\xff ",
            b"host: ",
            b"host\x1c",
            "host\u2003".encode(),
            b"host  ",
            b"a b ",
        ]
    ),
    st.sampled_from(
        [
            b"imapd",
            b"imap",
            b"dovecot",
            b"cyrus/pop3",
            b"pop3-login",
            b"imapx",
            b"postfix/smtpd",
            b"dove",
            b"in.qpopper",
            b"im\xffap",
            b"",
        ]
    ),
    st.sampled_from([b"", b"[42]", b"[x]", b"[]"]),
    st.sampled_from([b":", b"", b"::"]),
    st.sampled_from([b" Login: user=<a>", b"", b"x", b"\tmsg", b"\r", b" a: b"]),
).map(b"".join)


def _filter_agrees(data: bytes, programs: frozenset[str]) -> bool:
    """The filter's contract: it rejects only lines that parse() would also reject."""
    if not ProgramFilter(programs).unclaimed(data):
        return True
    return parser().parse(data.decode("utf-8", "replace"), programs) is None


@settings(max_examples=600)
@given(st.one_of(_lines, _near))
def test_filter_never_rejects_a_claimed_line(data: bytes) -> None:
    assert _filter_agrees(data, CLAIMED)


@given(
    st.one_of(_lines, _near),
    st.sets(st.sampled_from(["qp", "imapd", "x", "T", "host", "dove"]), max_size=3),
)
def test_filter_never_rejects_a_claimed_line_short_names(data: bytes, names: set[str]) -> None:
    assert _filter_agrees(data, frozenset(names))


@given(st.binary(max_size=60), st.binary(max_size=60))
def test_filter_never_rejects_a_claimed_line_random_bytes(head: bytes, tail: bytes) -> None:
    assert _filter_agrees(b"Nov 22 09:15:02 " + head + b"dovecot: " + tail, CLAIMED)
    assert _filter_agrees(head + b" imapd[1]: " + tail, CLAIMED)


@pytest.mark.parametrize(
    "data",
    [
        b"Nov 22 09:15:02 mailhost postfix/smtpd[3069]: connect from unknown[192.0.2.1]",
        b"Nov  2 09:15:02 mailhost postfix/qmgr[42752]: 4F2A1: removed",
        b"Nov 22 09:15:02 postfix/smtpd[3069]: connect from x",
        b"2026-11-22T09:15:02.123456+01:00 mailhost sshd[1]: Accepted publickey",
    ],
)
def test_filter_rejects_ordinary_unclaimed_lines(data: bytes) -> None:
    assert ProgramFilter(CLAIMED).unclaimed(data)
    assert parser().parse(data.decode(), CLAIMED) is None


@pytest.mark.parametrize(
    "data",
    [
        b"Nov 22 09:15:02 mailhost imapd[4242]: Login user=alice host=[192.0.2.10]",
        b"Nov 22 09:15:02 mailhost dovecot: imap-login: Login: user=<a>",
        b"Nov 22 09:15:02 pop3-login: Info: Login: user=<a>",  # own log file, no host
        b"Nov 22 09:15:02 mailhost cyrus/pop3[7]: login: x [192.0.2.1] a plaintext",
        b"2026-11-22T09:15:02Z mailhost in.qpopper[9]: x",
        b"Nov 22 09:15:02 mailhost dovecot:",
        b"Nov 22 09:15:02 mailhost dovecot:\r",
        # a program that shares its first four bytes with a claimed one: left to parse()
        b"Nov 22 09:15:02 mailhost imapproxy[3]: (imapd is elsewhere)",
        # shapes the filter does not judge: it must leave them to parse()
        b"<13>Nov 22 09:15:02 mailhost postfix/smtpd[1]: x",
        b"Nov 22 09:15:02.5 mailhost postfix/smtpd[1]: x",
        b"Nov 2 09:15:02 mailhost postfix/smtpd[1]: x",
        b"<22>1 2026-11-22T09:15:02Z mailhost postfix/smtpd 1 - - x",
        b"<1>1 - mailhst1 dovecot 1 - - x",  # RFC 5424 with a space at byte 15
        "202\u0666-11-22 09:15:02 mailhost dovecot: x".encode(),  # a non-ASCII digit
        b"short",
    ],
)
def test_filter_passes_claimed_and_unjudged_lines(data: bytes) -> None:
    assert not ProgramFilter(CLAIMED).unclaimed(data)


def test_filter_with_non_ascii_program_judges_nothing() -> None:
    f = ProgramFilter({"imapd", "pop\ufffd"})
    assert not f.unclaimed(b"Nov 22 09:15:02 mailhost postfix/smtpd[3069]: connect")


@pytest.mark.parametrize(
    ("text", "when", "pid", "msg"),
    [
        (
            "Nov 22 09:15:02.250 2026 [4242] (v4.1.0) POP login by user",
            datetime.datetime(2026, 11, 22, 9, 15, 2, 250000, tzinfo=UTC),
            4242,
            "(v4.1.0) POP login by user",
        ),
        (
            "Sun Nov 22 09:15:02 2026 [7]  POP login",
            datetime.datetime(2026, 11, 22, 9, 15, 2, tzinfo=UTC),
            7,
            "POP login",
        ),
        (
            "Dec 31 23:59:59 2025 [8] x",  # the year is written: no inference from the clock
            datetime.datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
            8,
            "x",
        ),
    ],
)
def test_qpopper_trace_file_shape(text: str, when: datetime.datetime, pid: int, msg: str) -> None:
    line = parser().parse(text)
    assert line == LogLine(when.timestamp(), "", "qpopper", pid, msg)
    assert parser().parse(text, programs={"dovecot"}) is None
    # The byte filter must let it through to parse() whenever qpopper is claimed.
    assert not ProgramFilter(["qpopper", "dovecot"]).unclaimed(text.encode())


def test_qpopper_trace_shape_needs_its_brackets_and_year() -> None:
    p = parser()
    assert p.parse("Nov 22 09:15:02 2026 4242 POP login") is None
    assert p.parse("Nov 22 09:15:02 26 [4242] POP login") is None
    assert p.parse("Feb 30 09:15:02 2026 [4242] POP login") is None  # no such day


# -- claimed_lines: the same decision for a whole block at once --------------------------------


def _per_line(f: ProgramFilter, lines: list[bytes], max_len: int) -> list[tuple[int, bytes]]:
    """What claimed_lines must return: unclaimed() line by line, long lines always."""
    return [(i, d) for i, d in enumerate(lines) if len(d) > max_len or not f.unclaimed(d)]


def _ascii_only(lines: list[bytes]) -> list[bytes]:
    return [d.replace(b"\n", b"").decode("ascii", "ignore").encode() for d in lines]


@settings(max_examples=400)
@given(st.lists(st.one_of(_lines, _near), max_size=12), st.sampled_from([17, 30, 60, 16384]))
def test_claimed_lines_agrees_with_unclaimed_line_by_line(lines: list[bytes], max_len: int) -> None:
    lines = _ascii_only(lines)  # blocks are ASCII (the caller checks) and split at LF
    f = ProgramFilter(CLAIMED)
    block = b"".join(b"\n" + d for d in lines)
    claimed, total = f.claimed_lines(block, max_len)
    assert claimed == _per_line(f, lines, max_len)
    assert total == len(lines)


@given(
    st.lists(st.one_of(_lines, _near), max_size=8),
    st.sets(st.sampled_from(["qp", "imapd", "x", "T", "host", "dove", "a.b", "[x"]), min_size=1),
)
def test_claimed_lines_agrees_with_short_and_odd_names(lines: list[bytes], names: set[str]) -> None:
    lines = _ascii_only(lines)
    f = ProgramFilter(names)
    block = b"".join(b"\n" + d for d in lines)
    assert f.claimed_lines(block, 16384)[0] == _per_line(f, lines, 16384)


@given(st.lists(st.binary(max_size=40), max_size=6), st.binary(max_size=40))
def test_claimed_lines_agrees_on_random_ascii(heads: list[bytes], tail: bytes) -> None:
    lines = _ascii_only(
        [b"Nov 22 09:15:02 " + h + b"dovecot: " + tail for h in heads]
        + [h + b" imapd[1]: " + tail for h in heads]
        + [b"2026-11-22T" + h + b" x " + tail for h in heads]
    )
    f = ProgramFilter(CLAIMED)
    block = b"".join(b"\n" + d for d in lines)
    assert f.claimed_lines(block, 50)[0] == _per_line(f, lines, 50)


def test_claimed_lines_on_a_mail_log_block() -> None:
    lines = [
        b"Nov 22 09:15:02 mailhost postfix/smtpd[3069]: connect from unknown[192.0.2.1]",
        b"Nov 22 09:15:02 mailhost imapd[4242]: Login user=alice host=[192.0.2.10]",
        b"",
        b"Nov  2 09:15:02 mailhost postfix/qmgr[42752]: 4F2A1: removed",
        b"Nov 22 09:15:03 mailhost postfix/smtpd[3069]: " + b"x" * 100,
        b"Nov 22 09:15:02 pop3-login: Info: Login: user=<a>",
    ]
    f = ProgramFilter(CLAIMED)
    got, total = f.claimed_lines(b"".join(b"\n" + d for d in lines), 100)
    assert total == len(lines)
    # the login, the empty line (too short to judge), the long line (for its warning), the
    # host-less own-log-file line
    assert [i for i, _ in got] == [1, 2, 4, 5]
    assert got[0][1] == lines[1]

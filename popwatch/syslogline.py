"""Split one mail-log line into time, host, program, pid and message.

NAME
    popwatch.syslogline - the syslog header layer under the message grammars

DESCRIPTION
    :class:`LineParser` reads the line shapes a mail log has in practice (DOMAIN.md section 2)
    and returns a :class:`LogLine`; the message part goes on to the per-daemon grammars.

    ``Nov 22 09:15:02 mailhost ipop3d[4242]: MSG``
        Traditional file format (RFC 3164).  No year and no zone: the time is read in ``tz``
        (default: the local zone) and the year is the one that puts the line at the latest
        moment not more than a day ahead of the injected clock, so a ``Dec 31`` line read on
        Jan 1 belongs to last year and a ``Jan  1`` line written by a clock a few seconds ahead
        on Dec 31 to next year.  The day may be padded with a space.  Fractional seconds and a
        ``<PRI>`` prefix (lines received from the network) are accepted.
    ``2026-11-22T09:15:02.123456+01:00 mailhost ipop3d[4242]: MSG``
        rsyslog's high-precision format (``RSYSLOG_FileFormat``), ISO 8601 with offset.
    ``<22>1 2026-11-22T09:15:02.123456+00:00 mailhost ipop3d 4242 - - MSG``
        RFC 5424 (``RSYSLOG_SyslogProtocol23Format``); ``-`` stands for an absent field.
    ``Nov 22 09:15:02 pop3-login: Info: Login: ...``
        A daemon's own log file (Dovecot ``log_path``): no host; ``host`` is ``""``.
    Qpopper's own trace file (``-t FILE``)
        ``Nov 22 09:15:02.123 2026 [4242] msg`` (qpopper 4) or ``Sun Nov 22 09:15:02 2026
        [4242]  msg`` (qpopper 3): program ``qpopper``, no host, the year as written.

    Tags may have no pid (``dovecot:``) and may contain ``/``, ``.``, ``-`` and ``_``
    (``cyrus/pop3[7]``, ``perdition.pop3``, ``pop3d-ssl``).  :func:`from_journal` turns a
    ``journalctl -o json`` record into the same :class:`LogLine`.

    ``parse(line, programs)`` returns None at once for a line whose program is not in
    ``programs``, before any time conversion: on a busy mail log most lines come from Postfix
    and must cost no more than a regular expression match and a dictionary lookup.

    :class:`ProgramFilter` is cheaper still, for raw bytes before they are even decoded:
    ``unclaimed(data)`` is True only when ``parse(data.decode("utf-8", "replace"), programs)``
    would certainly be None, found with a few byte comparisons, one ``find`` and one set
    lookup of the tag's first bytes (for the RFC 3164 ``Mmm dd hh:mm:ss `` header and the
    ISO header with a ``T``).  False means "do not know": parse the line.  The argument that
    this never drops a line whose program is claimed is written out in the method and checked
    by a property test against :meth:`LineParser.parse`.  ``claimed_lines(block, max_len)``
    makes the same decision for a whole block of lines with one regular expression, so that
    the lines no pattern claims (most of a mail log) never reach Python code one by one; a
    property test checks that it agrees with ``unclaimed`` line by line.

    It does not decode bytes (callers decode UTF-8 with replacement), does not strip the line
    terminator beyond a trailing CR/LF, and does not judge whether a tag is trustworthy: any
    local user can write ``logger -t ipop3d ...``; the journal's trusted fields are the answer
    to that (see :func:`from_journal`).

ERRORS
    None raised for log content: a line in no known shape gives None; an impossible date
    (``Feb 30``) gives a LogLine with ``time`` None rather than dropping the line.
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LineParser", "LogLine", "ProgramFilter", "from_journal"]


@dataclass(frozen=True, slots=True)
class LogLine:
    time: float | None  # Unix seconds; None when the line has no time
    host: str  # "" when absent (own log files)
    program: str  # tag's program name: "ipop3d", "dovecot", "cyrus/pop3", "pop3-login"
    pid: int | None
    message: str  # everything after "tag: "


_MONTHS: Final = {name: i for i, name in enumerate(calendar.month_abbr) if name}
# How far ahead of the clock an RFC 3164 time may be before it is taken as last year's: covers
# a writer whose clock runs ahead and lines that wait in a buffer.
_FUTURE_SLACK: Final = 86400.0
# A cached year decision is reused only while the clock stays this close to when it was made.
_CACHE_SPAN: Final = 3600.0

# Tag: program name, optional [pid], colon.  No spaces, colons or brackets in the name.
_TAG: Final = r"(?P<prog>[^\s\[\]:]{1,64})(?:\[(?P<pid>\d{1,10})\])?:(?: |$)(?P<msg>.*)"
# A host field never ends with a colon; this is what tells ``host tag: msg`` from an own log
# file's ``tag: msg`` whose message happens to contain another ``word:``.
_HOST: Final = r"(?:(?P<host>\S*[^\s:]) )?"

_RFC3164: Final = re.compile(
    r"(?:<\d{1,3}>)?(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<day>[ \d]?\d) "
    r"(?P<hh>\d\d):(?P<mm>\d\d):(?P<ss>\d\d)(?P<frac>\.\d{1,9})? " + _HOST + _TAG,
    re.DOTALL,
)
_ISO: Final = re.compile(
    r"(?:<\d{1,3}>)?(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?"
    r"(?:Z|[+-]\d\d:?\d\d)?) " + _HOST + _TAG,
    re.DOTALL,
)
# Qpopper's own trace file (-t FILE): no host and no tag, the year after the time, the pid in
# brackets.  qpopper 4: "Nov 22 09:15:02.123 2026 [4242] msg"; qpopper 3: "Sun Nov 22 09:15:02
# 2026 [4242]  msg".  Such a line can only come from qpopper writing its own file (syslog
# always puts a header first), so it is attributed to the program QPOPPER_TRACE_PROGRAM.
_QPOPPER_TRACE: Final = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) )?"
    r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<day>[ \d]?\d) "
    r"(?P<hh>\d\d):(?P<mm>\d\d):(?P<ss>\d\d)(?P<frac>\.\d{1,9})? (?P<year>\d{4}) "
    r"\[(?P<pid>\d{1,10})\]  ?(?P<msg>.*)",
    re.DOTALL,
)
QPOPPER_TRACE_PROGRAM: Final = "qpopper"
# RFC 5424: <PRI>1 TIMESTAMP HOST APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]
_RFC5424: Final = re.compile(
    r"<\d{1,3}>1 (?P<ts>\S+) (?P<host>\S+) (?P<prog>\S+) (?P<pid>\S+) \S+ "
    r"(?P<sd>-|(?:\[(?:[^\]\"\\]|\\.|\"(?:[^\"\\]|\\.)*\")*\])+)(?: (?P<msg>.*))?",
    re.DOTALL,
)


def _iso_time(text: str, tz: datetime.tzinfo | None) -> float | None:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 fromisoformat takes at most 6 fraction digits; rsyslog may give up to 9.
    dot = text.find(".")
    if dot >= 0:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        if end - dot > 7:
            text = text[: dot + 7] + text[end:]
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz) if tz is not None else dt
    return dt.timestamp()


class LineParser:
    """Parses log lines; holds only the clock, the zone and a one-minute year cache."""

    def __init__(
        self, clock: Callable[[], float] = time.time, tz: datetime.tzinfo | None = None
    ) -> None:
        self._clock = clock
        self._tz = tz
        # (month, day, hour, minute) as written -> (clock when decided, Unix seconds of that
        # minute).  One entry: log lines arrive in time order, so consecutive lines share it.
        self._cache_key: tuple[str, str, str, str] | None = None
        self._cache_val: tuple[float, float | None] = (0.0, None)

    def parse(self, line: str, programs: Container[str] | None = None) -> LogLine | None:
        """The parts of ``line``, or None when it is in no known shape.  With ``programs``,
        also None (cheaply, before converting the time) when the program is not in it."""
        if line[-1:] in ("\n", "\r"):
            line = line.rstrip("\r\n")
        if not line:
            return None
        first = line[0]
        if first == "<" and line[1:6].find(">1 ") >= 0:
            m5 = _RFC5424.match(line)
            if m5 is not None:
                return self._rfc5424(m5, programs)
        if first.isdigit() or first == "<":
            mi = _ISO.match(line)
            if mi is not None:
                prog = mi.group("prog")
                if programs is not None and prog not in programs:
                    return None
                ts, host, _, pid, msg = mi.groups()
                return LogLine(_iso_time(ts, self._tz), host or "", prog, _int_or_none(pid), msg)
        m = _RFC3164.match(line)
        if m is None:
            return self._qpopper_trace(line, programs)
        prog = m.group("prog")
        if programs is not None and prog not in programs:
            return None
        # One groups() call instead of ten group() calls: this runs for every claimed line.
        mon, day, hh, mm, ss, frac, host, _, pid, msg = m.groups()
        return LogLine(
            self._rfc3164_time(mon, day, hh, mm, ss, frac),
            host or "",
            prog,
            _int_or_none(pid),
            msg,
        )

    def _qpopper_trace(self, line: str, programs: Container[str] | None) -> LogLine | None:
        mt = _QPOPPER_TRACE.match(line)
        if mt is None or (programs is not None and QPOPPER_TRACE_PROGRAM not in programs):
            return None
        mon, day, hh, mm, ss, frac, year, pid, msg = mt.groups()
        try:
            dt = datetime.datetime(int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss))
        except ValueError:
            return None
        ts = dt.replace(tzinfo=self._tz).timestamp() if self._tz else dt.timestamp()
        return LogLine(
            ts + (float(frac) if frac else 0.0), "", QPOPPER_TRACE_PROGRAM, int(pid), msg
        )

    def _rfc5424(self, m: re.Match[str], programs: Container[str] | None) -> LogLine | None:
        prog = m.group("prog")
        if prog == "-" or (programs is not None and prog not in programs):
            return None
        ts = m.group("ts")
        host = m.group("host")
        pid = m.group("pid")
        msg = m.group("msg") or ""
        if msg.startswith("\ufeff"):
            msg = msg[1:]
        return LogLine(
            None if ts == "-" else _iso_time(ts, self._tz),
            "" if host == "-" else host,
            prog,
            _int_or_none(pid) if pid != "-" else None,
            msg,
        )

    def _rfc3164_time(
        self, mon: str, day: str, hh: str, mm: str, ss: str, frac: str | None
    ) -> float | None:
        # The cache is keyed by the texts: equal texts are the same minute, and comparing
        # four short strings is cheaper than converting them.
        texts = (mon, day, hh, mm)
        now = self._clock()
        if texts == self._cache_key and abs(now - self._cache_val[0]) < _CACHE_SPAN:
            base = self._cache_val[1]
        else:
            month = _MONTHS.get(mon)
            if month is None:
                return None
            base = self._minute_start((month, int(day), int(hh), int(mm)), now)
            self._cache_key, self._cache_val = texts, (now, base)
        if base is None:
            return None
        return base + int(ss) + (float(frac) if frac else 0.0)

    def _minute_start(self, key: tuple[int, int, int, int], now: float) -> float | None:
        """Unix seconds of the minute ``key`` in the latest year that is not more than
        _FUTURE_SLACK ahead of ``now`` (Feb 29 looks back to the last leap year)."""
        mon, day, hh, mm = key
        year = datetime.datetime.fromtimestamp(now, datetime.UTC).year
        for y in range(year + 1, year - 8, -1):
            try:
                dt = datetime.datetime(y, mon, day, hh, mm)
            except ValueError:
                continue
            ts = dt.replace(tzinfo=self._tz).timestamp() if self._tz else dt.timestamp()
            if ts <= now + _FUTURE_SLACK:
                return ts
        return None


class ProgramFilter:
    """Rejects raw lines whose program is certainly not one of ``programs``, undecoded."""

    __slots__ = ("_bulk", "_enabled", "_prefixes", "_width")

    def __init__(self, programs: Iterable[str]) -> None:
        names = list(programs)
        # The tag's first bytes are compared with the programs' first bytes: four tell
        # "postfix/..." from every POP/IMAP daemon; never more than the shortest name has.
        self._width = min([4, *map(len, names)])
        self._prefixes = frozenset(n[: self._width].encode("ascii", "replace") for n in names)
        # A non-ASCII name could be the decoding of bytes that differ from its UTF-8 form
        # (U+FFFD from any invalid byte): then the bytes say nothing, so never reject.
        self._enabled = all(n.isascii() for n in names) and self._width > 0
        self._bulk: dict[int, re.Pattern[bytes]] = {}  # claimed_lines' regex by max_len

    @property
    def enabled(self) -> bool:
        """False when nothing can be rejected (a non-ASCII or empty program name)."""
        return self._enabled

    def unclaimed(self, data: bytes) -> bool:
        """True only if :meth:`LineParser.parse` would give None for this line (decoded with
        replacement) and these programs; False when it might not."""
        # Why this is exact.  Suppose a header regex matches the decoded text T with tag
        # program P from the claimed set.  UTF-8 decoding (with replacement too) turns an
        # ASCII byte into the same character, never folds it into a neighbouring sequence,
        # and never makes an ASCII character out of other bytes; so T's character number i
        # starts at some byte offset >= i, and an ASCII byte at offset b is a character
        # number <= b of T.  (The header regexes' \d also matches non-ASCII digits.)
        # * data[0] an ASCII capital: parse tries only _RFC3164, without <PRI> (neither
        #   '<' nor a digit first): MON ' ' DAY ' ' hh:mm:ss[.frac] ' ' host? tag.  The
        #   spaces inside the header are characters 3 to 6, at bytes <= 12 (only the two
        #   day digits can be wider than a byte); the shortest header has its end space at
        #   character 14 and the host or tag then starts with a non-space.  So a space at
        #   byte 15 is the header's end and the host or tag starts at byte 16.
        # * data[0] an ASCII digit and 'T' at byte 10: parse tries only _ISO (and
        #   _RFC3164, which needs a letter or '<' first).  The timestamp starts with
        #   \d{4}-\d\d-\d\d[T ], so the 'T' can only be character 10: the timestamp holds
        #   no space and the header ends with the first space after it.
        # * After the header (offset s): the host \S*[^\s:] must be followed by a space,
        #   so it is the whole first word, and only if the first whitespace is a space
        #   and the word does not end in ':'.  Without a host the tag starts at s and is
        #   prog[pid]: followed by a space or the end, so the tag is the first word itself
        #   (ending in ':') or the rest of the line; with a first whitespace that is not a
        #   space neither branch can match.  The first space byte is the first space of
        #   T, and the byte before it is ':' exactly when T's character is.  So the tag
        #   starts at s when the first word ends in ':' (or there is no space), else after
        #   the first space: where it starts here.
        # * P is ASCII and at least _width long, so its first _width characters are the
        #   first _width bytes there.  Trailing CR/LF that parse strips change none of this.
        if not self._enabled or len(data) < 17:
            return False
        c = data[0]
        if 65 <= c <= 90 and data[15] == 32:
            start = 16
        elif 48 <= c <= 57 and data[10] == 84:
            start = data.find(b" ", 11) + 1
            if start == 0:
                return False
        else:
            return False
        sp = data.find(b" ", start)
        if sp > start and data[sp - 1] != 58:
            start = sp + 1
        if data[start : start + 1] == b"[":
            # Qpopper's trace shape ("... 2026 [4242] msg"): parse() reads it as program
            # QPOPPER_TRACE_PROGRAM, which these bytes do not show; never reject it here.
            return False
        return data[start : start + self._width] not in self._prefixes

    def claimed_lines(self, block: bytes, max_len: int) -> tuple[list[tuple[int, bytes]], int]:
        """The lines of ``block`` that :meth:`unclaimed` would not reject or that are longer
        than ``max_len`` bytes, as (index, line) in order, and the number of lines in
        ``block``; the other lines are passed over at C speed.

        ``block`` is ASCII lines each *preceded* by LF: ``b"\\nline0\\nline1"`` (the LF of
        the line before, so that every line starts right after an LF).  Indexes count from 0.
        Requires :attr:`enabled` (when it is False every line is claimed)."""
        limit = max_len if max_len < len(block) else -1  # -1: no line can be that long
        regex = self._bulk.get(limit)
        if regex is None:
            regex = self._bulk[limit] = self._bulk_regex(limit)
        count = block.count
        found = []
        index = 0
        last = 0
        for m in regex.finditer(block):
            # Counting LFs between the claimed lines is one pass over the block in all.
            at = m.start()
            index += count(b"\n", last, at)
            last = at
            found.append((index, m.group(1)))
        return found, index + count(b"\n", last)

    def _bulk_regex(self, max_len: int) -> re.Pattern[bytes]:
        """The regex of :meth:`claimed_lines`; ``max_len`` -1: no length check."""
        # An LF, then a line that is NOT certainly unclaimed.  "Certainly unclaimed" is
        # unclaimed() written as a regex, step by step (only for ASCII, as the caller
        # guarantees):
        #   len(data) >= 17                        (?=L{17})
        #   RFC 3164: capital, data[15] == " "     [A-Z]L{14}[ ]          (start = 16)
        #   ISO: digit, data[10] == "T", first
        #   space after it                         [0-9]L{9}T[^ \n]*+[ ]  (start after it)
        #   the first word ends at a space and
        #   not in ":" (sp > start): a host        WORD = [^ \n]*+(?<=[^ :\n])[ ]
        #   ... then the tag is after it, else
        #   at start; the two are exclusive        (?:WORD|(?!WORD))
        #   no "[" and no claimed prefix there     (?!\[|prefix|...)
        # The possessive quantifiers give the same first-space positions as find(); the
        # lookbehind sees the space before the word when the word is empty (sp == start).
        # Lines longer than max_len are always returned, for the caller to skip with a warning.
        line = rb"[^\n]"
        word = rb"[^ \n]*+(?<=[^ :\n]) "
        prefixes = _trie(sorted(self._prefixes))
        unclaimed = (
            rb"(?=" + line + rb"{17})"
            rb"(?:[A-Z]" + line + rb"{14} |[0-9]" + line + rb"{9}T[^ \n]*+ )"
            rb"(?:" + word + rb"|(?!" + word + rb"))"
            rb"(?!\[|" + prefixes + rb")"
        )
        short = rb"(?!" + line + rb"{%d})" % (max_len + 1) if max_len >= 0 else b""
        return re.compile(rb"\n((?!" + short + unclaimed + rb")" + line + rb"*)")


def _trie(words: list[bytes]) -> bytes:
    """A regex for any of ``words`` (bytes of one length), one branch per first byte: the
    regex engine tries the branches of an alternation one by one."""
    if not words[0]:
        return b""
    groups: dict[bytes, list[bytes]] = {}
    for w in words:
        groups.setdefault(w[:1], []).append(w[1:])
    branches = [re.escape(first) + _trie(rest) for first, rest in groups.items()]
    return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"


def _int_or_none(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    return int(text)


def _field(record: Mapping[str, Any], name: str) -> str | None:
    """A journal field as text; journalctl gives non-UTF-8 values as lists of byte values
    and repeated fields as lists of values (take the first)."""
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(b, int) for b in value):
            return bytes(b & 0xFF for b in value).decode("utf-8", errors="replace")
        return _field({name: value[0]}, name)
    if isinstance(value, int | float):
        return str(value)
    return None


def from_journal(record: Mapping[str, Any]) -> LogLine | None:
    """A LogLine from one ``journalctl -o json`` record, or None without MESSAGE or a
    program name.  The program is SYSLOG_IDENTIFIER (what a syslog tag would say), else
    ``_COMM``; the pid is the trusted ``_PID``, else ``SYSLOG_PID``.  The time is
    ``__REALTIME_TIMESTAMP`` (microseconds).  Judging the trusted fields (``_SYSTEMD_UNIT``,
    ``_UID``) is the journal reader's business, not this function's."""
    message = _field(record, "MESSAGE")
    program = _field(record, "SYSLOG_IDENTIFIER") or _field(record, "_COMM")
    if message is None or not program:
        return None
    stamp = _field(record, "__REALTIME_TIMESTAMP")
    when = int(stamp) / 1e6 if stamp and stamp.isdigit() else None
    pid = _int_or_none(_field(record, "_PID")) or _int_or_none(_field(record, "SYSLOG_PID"))
    return LogLine(when, _field(record, "_HOSTNAME") or "", program, pid, message.rstrip("\r\n"))

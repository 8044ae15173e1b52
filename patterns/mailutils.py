"""mailutils: GNU Mailutils pop3d and imap4d (Debian's mailutils-pop3d, mailutils-imap4d).

PROGRAM TAGS
    ``pop3d`` and ``imap4d`` (openlog with the program name and LOG_PID; the ``logging { tag }``
    setting can rename it: option ``programs`` adds tags).

LINES
    Mailutils never writes the client address in its login line, so every login here is a
    two-line session: a CONNECT line with the address and a later AUTH line of the same pid.

    connect (CONNECT), Mailutils up to 1.2 (2007): after ``Incoming connection opened`` pop3d
    writes ``connect from 192.0.2.10``, imap4d ``Connect from 192.0.2.10`` (inet_ntoa).
    Mailutils 2.0 and later (Debian 12 ships 3.15) write no address line at all: a login is
    only seen when the daemon runs from inetd through tcpd (pattern ``tcpd``: ``connect from
    IP`` under this tag and pid) or from xinetd with ``log_on_success += PID HOST`` (pattern
    ``xinetd``: ``START: pop3 pid=N from=IP`` names this pid).  A standalone (``--daemon``)
    Mailutils 2.0+ gives no login events; this is a limit of its logging, not fixable here.

    pop3_mailbox (AUTH): ``user `alice' logged in with mailbox `/var/mail/alice' (3 messages)``
    (``User`` and ``msgs`` in old versions, no counter after APOP in 1.x, ``'`` quoting before
    2005).  It is written after the password, the login delay check and the mailbox lock, so
    it is the one line per successful POP3 session.
    imap_login (AUTH): ``user `alice' logged in (source: system)`` (2.0 and later; ``User``
    until 2009) and ``User `alice' logged in`` (1.x).
    pop3_login (OTHER): ``POP3 login: user `alice', source system``: written *before* the
    login delay check and the mailbox lock, so it is not the login (the mailbox line follows).
    end (END): ``session ended for user: alice`` / ``for no user`` (pop3d),
    ``session terminating for user: alice`` / ``session terminating`` (imap4d).
    failed (OTHER): ``user `alice': authentication failed``, ``user `x' nonexistent``,
    ``APOP user x tried to log in with USER``, ``user `x' tried to log in within the minimum
    allowed delay``.  login_failed (OTHER): imap4d's ``login failed: x``.
    opened (OTHER): ``Incoming connection opened`` (no address).
    process_end (OTHER): the parent's ``process N finished with code N (...)`` about a child
    (logged under the parent's pid, so it is not that child's END).
    started (OTHER): ``pop3d (GNU Mailutils 3.15) started``.
    Other messages (I/O errors, signals) are near misses in ``popwatch test``.

    With ``logging { session-id yes; }`` every message starts with an 8-character session id
    (``2AM4qIfG user `alice' logged in (source: system)``); it is accepted.

SECURITY
    The AUTH lines carry no address; the event's address comes only from a CONNECT line of
    the same host and pid (this pattern's, tcpd's or xinetd's).  The AUTH grammars are
    anchored at both ends on the daemon's fixed words, and every failure message ends with
    different fixed words, so no user name can turn a failure into an AUTH line.  The user
    text is shown, never trusted.

KNOWN LIMITS
    See CONNECT above: standalone Mailutils 2.0+ cannot be used for POP-before-SMTP from its
    own log lines.  ``logging { print-severity yes; }`` prefixes are not accepted.

SOURCES
    GNU Mailutils ``pop3d/user.c`` (POP3 login, logged in with mailbox, failures),
    ``pop3d/apop.c``, ``pop3d/quit.c``, ``pop3d/pop3d.c`` (1.x: connect from),
    ``imap4d/imap4d.c`` (logged in (source: ...); 1.x: Connect from), ``imap4d/login.c``,
    ``libmailutils/server/sid.c`` (session ids), and the history of these files; lines captured
    from Debian 12's mailutils-pop3d/mailutils-imap4d 3.15 on loopback; DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import (
    ADDRESS_TEXT,
    AUTH,
    CONNECT,
    END,
    OTHER,
    Pattern,
    Rule,
    check_options,
    checked_regex,
    with_extra_programs,
)

_PROGRAMS = ("pop3d", "imap4d")
_SID = r"(?:[0-9A-Za-z]{8} )?"
# `alice' (1.x-3.x) or 'alice' (before 2005); the user is shown only, so a lazy match is fine.
_QUSER = r"[`'](?P<user>.*?)'"


def _connect() -> pp.ParserElement:
    return checked_regex(rf"{_SID}[Cc]onnect from (?P<ip>{ADDRESS_TEXT})\Z")


def pattern(options: Mapping[str, Any]) -> Pattern:
    opts = check_options(options, {"programs": list})
    return Pattern(
        programs=with_extra_programs(_PROGRAMS, opts),
        rules=(
            Rule("connect", _connect(), CONNECT, ("onnect from ",), "[Cc]onnect from IP (1.x)"),
            Rule(
                "pop3_mailbox",
                pp.Regex(
                    rf"{_SID}[Uu]ser {_QUSER} logged in with mailbox [`'].*'"
                    r"(?: \(\d+ (?:messages?|msgs)\))?\Z"
                ),
                AUTH,
                (" logged in with mailbox ",),
                "user `USER' logged in with mailbox `M' (N messages)",
            ),
            Rule(
                "imap_login",
                pp.Regex(rf"{_SID}[Uu]ser {_QUSER} logged in(?: \(source: [A-Za-z0-9_-]+\))?\Z"),
                AUTH,
                ("' logged in",),
                "user `USER' logged in (source: S)",
            ),
            Rule(
                "pop3_login",
                pp.Regex(rf"{_SID}POP3 login: user {_QUSER}, source [A-Za-z0-9_-]+\Z"),
                OTHER,
                ("POP3 login: user ",),
                "before the login delay check: not the login itself",
            ),
            Rule(
                "end",
                pp.Regex(
                    rf"{_SID}(?:[Ss]ession ended for (?:user: .*|no user)"
                    r"|session terminating(?: for user: .*)?)\Z"
                ),
                END,
                ("ession ",),
                "end of the session",
            ),
            Rule(
                "failed",
                pp.Regex(
                    rf"{_SID}(?:[Uu]ser [`'].*(?:': authentication failed|' nonexistent"
                    r"|' tried to log in within the minimum allowed delay)"
                    r"|APOP user .* tried to log in with USER)\Z"
                ),
                OTHER,
                ("ser ",),
                "a failed POP3 login",
            ),
            Rule(
                "login_failed",
                pp.Regex(rf"{_SID}[Ll]ogin failed: .*"),
                OTHER,
                ("ogin failed: ",),
                "a failed IMAP login",
            ),
            Rule(
                "opened",
                pp.Regex(rf"{_SID}[Ii]ncoming connection opened\Z"),
                OTHER,
                ("ncoming connection opened",),
                "a connection (no address)",
            ),
            Rule(
                "process_end",
                pp.Regex(r"process \d+ finished with code \d+ \(.*\)\Z"),
                OTHER,
                ("finished with code ",),
                "the parent about a child: not this pid's end",
            ),
            Rule(
                "started",
                pp.Regex(r"\S+ \(GNU Mailutils [0-9.]+\) started\Z"),
                OTHER,
                ("GNU Mailutils",),
                "the daemon started",
            ),
        ),
        description="GNU Mailutils pop3d/imap4d (two-line: CONNECT from tcpd/xinetd/1.x)",
    )

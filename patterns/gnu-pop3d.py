"""gnu-pop3d: the older GNU pop3d (Debian's ``gnu-pop3d`` package, GNU Mailutils 0.x/1.x).

PROGRAM TAGS
    ``gnu-pop3d`` (Debian renamed the binary so it could coexist with other pop3d's; LOG_PID).
    The same daemon under its own name ``pop3d`` is the ``mailutils`` pattern.

LINES
    login (LOGIN), as pop-before-smtp matched it::

        User alice logged in with mailbox /var/mail/alice from 192.0.2.10

    connect (CONNECT): ``connect from 192.0.2.10`` (inet_ntoa), written after
    ``Incoming connection opened`` at the start of every session (Mailutils up to 1.2), and
    then, on success, auth (AUTH): ``User 'alice' logged in with mailbox '/var/mail/alice'
    (3 msgs)`` - quoting with ``'`` before 2005 and `````...'`` after, ``(N messages)`` after
    2003, no counter in the earliest versions and after APOP.  The address is the same pid's
    ``connect from``.
    end (END): ``Session ended for user: alice`` / ``Session ended for no user``.
    failed (OTHER): ``User 'alice': authentication failed``, ``User 'x': nonexistent``,
    ``User 'x' tried to log in within the minimum allowed delay``.
    apop_failed (OTHER): ``APOP user x tried to log in with USER``, ``APOP failed for 'x'``.
    opened (OTHER): ``Incoming connection opened``.

SECURITY
    In the one-line form the user and the mailbox path (which contains the user name) come
    before the daemon's `` from IP``; both must be single words (a POP3 user name has no
    spaces and a successful login needs a real account), and the message must end with
    exactly one address.  The quoted two-line forms end with a quote or a counter, never an
    address, so the one-line rule cannot match them.  AUTH lines carry no address.

SOURCES
    GNU Mailutils history: ``pop3d/user.c``, ``pop3d/apop.c``, ``pop3d/quit.c``,
    ``pop3d/pop3d.c`` (1999-2007 versions); pop-before-smtp's "GNU pop3d" pattern (the one-line
    form); DOMAIN.md section 3.
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
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    check_options,
    checked_regex,
)


def _auth() -> pp.ParserElement:
    el = pp.Regex(
        r"User [`'](?P<user>.*?)' logged in with mailbox [`'].*'"
        r"(?: \(\d+ (?:messages?|msgs)\))?\Z"
        r"|User (?P<apop>\S+) logged in with mailbox \S+\Z"
    )

    def name(toks: pp.ParseResults) -> None:
        # The unquoted (APOP) form names its user "apop": one regex cannot repeat a group name.
        apop = toks.as_dict().get("apop")
        if apop:
            toks["user"] = apop

    el.add_parse_action(name)
    return el


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    return Pattern(
        programs=("gnu-pop3d",),
        rules=(
            Rule(
                "login",
                checked_regex(
                    rf"User (?P<user>[^\s'`]\S*) logged in with mailbox \S+ "
                    rf"from (?P<ip>{ADDRESS_TEXT})\Z"
                ),
                LOGIN,
                (" logged in with mailbox ", " from "),
                "User USER logged in with mailbox M from IP",
            ),
            Rule(
                "connect",
                checked_regex(rf"connect from (?P<ip>{ADDRESS_TEXT})\Z"),
                CONNECT,
                ("connect from ",),
                "connect from IP",
            ),
            Rule(
                "auth",
                _auth(),
                AUTH,
                (" logged in with mailbox ",),
                "User 'USER' logged in with mailbox 'M' (N msgs)",
            ),
            Rule(
                "end",
                pp.Regex(r"Session ended for (?:user: .*|no user)\Z"),
                END,
                ("Session ended for ",),
                "end of the session",
            ),
            Rule(
                "failed",
                pp.Regex(
                    r"User [`'].*(?:': authentication failed|': nonexistent"
                    r"|' tried to log in within the minimum allowed delay)\Z"
                ),
                OTHER,
                ("User ",),
                "a failed login",
            ),
            Rule(
                "apop_failed",
                pp.Regex(r"(?:APOP user .* tried to log in with USER|APOP failed for [`'].*')\Z"),
                OTHER,
                ("APOP ",),
                "a failed or refused APOP login",
            ),
            Rule(
                "opened",
                pp.Regex(r"Incoming connection opened\Z"),
                OTHER,
                ("Incoming connection opened",),
                "a connection (no address)",
            ),
        ),
        description="older GNU pop3d: one-line 'from IP' or connect from + logged in",
    )

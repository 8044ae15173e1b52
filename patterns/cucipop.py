"""cucipop: Cubic Circle's POP3 daemon (Stephen R. van den Berg, 1.x), end-of-session line.

PROGRAM TAGS
    ``cucipop`` (LOG_PID).

LINES
    session (LOGIN)::

        alice 192.0.2.10 3, 12345 (5678), 2 (4096)

    cucipop writes this accounting line when an authenticated session ends: the user, the
    client's address, then message and byte counters.  It is written only for a session that
    logged in, so it is the login evidence; its time is the end of the session, which is when
    the client is most likely to send mail next.  This is the shape pop-before-smtp matched
    (a sample from Daniel Roesen's log); cucipop writes nothing with an address at login time.

    auth_failure (OTHER): ``authentication failure ...`` followed by the client's address
    (the shape sshguard's scanner recognizes as a cucipop attack).

SECURITY
    The user is one word (a POP3 USER argument has no spaces) and the address must be exactly
    the second word, followed by exactly the counter shape to the end of the message; any
    other shape gives no event.  A user name that is itself an address is still only the
    first word.

KNOWN LIMITS
    IPv4 only in practice (cucipop predates IPv6 support).  cucipop's source did not survive
    in a form we could read: the formats are the two that other tools recognized, and any
    other cucipop line is a near miss in ``popwatch test``, never an event.

SOURCES
    pop-before-smtp's cucipop pattern (pop-before-smtp-conf.pl); sshguard's
    ``src/parser/attack_scanner.l`` (the cucipop failure signature); DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import ADDRESS_TEXT, LOGIN, OTHER, Pattern, Rule, check_options, checked_regex


def _session() -> pp.ParserElement:
    return checked_regex(
        rf"(?P<user>[^\s]+) (?P<ip>{ADDRESS_TEXT}) \d+, \d+ \(\d+\), \d+ \(\d+\)\Z"
    )


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    return Pattern(
        programs=("cucipop",),
        rules=(
            Rule("session", _session(), LOGIN, (", ", " ("), "USER IP N, N (N), N (N)"),
            Rule(
                "auth_failure",
                pp.Regex(r"authentication failure .*"),
                OTHER,
                ("authentication failure ",),
                "a failed login",
            ),
        ),
        description="cucipop: end-of-session accounting line with the client address",
    )

"""popa3d: Solar Designer's small POP3 daemon (0.x, 1.x); logs the address and the login on two
lines of the same process.

PROGRAM TAGS
    ``popa3d`` (openlog with LOG_PID).

LINES
    session (CONNECT)
        ``Session from 192.0.2.10`` (``2001:db8::5`` in IPv6-capable 1.x builds), written by
        the standalone server's child right after fork(), so its pid is the pid of the
        session's later lines.  Under inetd with TCP wrappers, tcpd writes
        ``connect from 192.0.2.10`` under the same tag and pid before exec'ing popa3d; that
        line is a CONNECT too (``connect`` rule).  A ``connect from`` with a host name (tcpd
        with name lookups) carries no usable address and is only recognized (``connect_name``).
    auth_passed (AUTH)
        ``Authentication passed for alice`` (virtual-domain builds: ``alice@example.com``).
        With the CONNECT of the same (host, pid) it makes the login event.
    auth_failed (END)
        ``Authentication failed for alice`` (or ``UNKNOWN USER``): popa3d allows a single
        authentication attempt per connection and ends the session after a failure, so the
        pending CONNECT is forgotten at once (fail closed: no later line can complete it).
    no_auth (END)
        ``Didn't attempt authentication``: the client left without logging in.
    limits (OTHER)
        ``192.0.2.10: per source limit reached``, ``192.0.2.10: sessions limit reached``,
        ``192.0.2.10: fork: ...``, tcpd's ``refused connect from ...``.

SECURITY
    The AUTH line carries no address; the event's address is the CONNECT line's, which popa3d
    writes with a numeric-host conversion of the socket's peer address.  The user name
    (attacker text) is only shown, never parsed for an address.  ``Authentication failed``
    never matches the AUTH rule (its literal start is ``Authentication passed for``).  The
    pattern with the patch in pop-before-smtp's contrib (``Authentication passed for alice --
    [192.0.2.10]``) is not claimed: an unpatched popa3d's user name could hold that text.

SOURCES
    popa3d ``standalone.c`` (``Session from %s`` in the child after fork, the limit messages),
    ``pop_root.c``/``pop_auth.c`` (``log_pop_auth``: ``Authentication %s for %s``, ``%s@%s``,
    ``Didn't attempt authentication``); pop-before-smtp's popa3d PID/IP/OK patterns;
    DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import (
    AUTH,
    CONNECT,
    END,
    OTHER,
    Pattern,
    Rule,
    check_options,
    ip_address,
    lit,
    rest_of_line,
)


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    session = lit("Session from") + ip_address("ip")
    connect = lit("connect from") + ip_address("ip")
    connect_name = pp.Regex(r"(?:refused )?connect from \S+")
    passed = lit("Authentication passed for ") + pp.Regex(r".+")("user")
    failed = lit("Authentication failed for ") + rest_of_line()
    no_auth = pp.Regex(r"Didn.t attempt authentication")
    limits = pp.Regex(r"\S+: (?:per source limit reached|sessions limit reached|fork: .*)")
    return Pattern(
        programs=("popa3d",),
        rules=(
            Rule("session", session, CONNECT, ("Session from ",), "Session from IP"),
            Rule("connect", connect, CONNECT, ("connect from ",), "tcpd: connect from IP"),
            Rule("connect_name", connect_name, OTHER, ("connect from ",), "no address"),
            Rule("auth_passed", passed, AUTH, ("Authentication passed for ",)),
            Rule("auth_failed", failed, END, ("Authentication failed for ",)),
            Rule("no_auth", no_auth, END, ("attempt authentication",)),
            Rule("limits", limits, OTHER, (": ",), "connection limits"),
        ),
        description="popa3d: Session from IP + Authentication passed for USER (same pid)",
    )

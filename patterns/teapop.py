"""teapop: Teapop, a small POP3 server (Toontown), logging one line per successful login.

PROGRAM TAGS
    ``teapop`` and ``teapop_ssl`` (its SSL mode opens syslog under that name); LOG_PID.

LINES
    login (LOGIN), Teapop 0.3 and later::

        Successful login for alice [192.0.2.1] from client.example.net [192.0.2.10]

    The first bracket is the *local* (server) address the client connected to, the last the
    client's; ``from`` is followed by the client's host name, or its address when it has none
    (or with ``-n``).  With virtual domains the user is written ``alice@example.org``.
    login_old (LOGIN), Teapop 0.2x as pop-before-smtp matched it:
    ``Successful login for alice [192.0.2.10]`` (the bracket is the client's address).
    failed (OTHER): ``Failed login for alice [LOCAL] from HOST [IP]`` and
    ``Three failed login attempts from HOST [IP] - Possible account probe``.
    session_stats (OTHER): the end of a session, ``alice [192.0.2.10] R1(100) D1(100) L0(0)``.
    It is written only after a successful login, but at the end of the session; the login
    line already counted, so it is not a login here.

SECURITY
    The user name (whatever the client sent to USER) comes first and may contain spaces and
    brackets.  The grammar takes the daemon's fields from the *end* of the message: the last
    `` [LOCAL] from HOST [IP]`` where LOCAL and IP are exactly one address each and HOST is
    one word.  A PTR host name is never read as an address.  pop-before-smtp's pattern took
    the *first* bracket, which for Teapop 0.3 is the server's own address; this one does not.

KNOWN LIMITS
    The 0.2x one-bracket form is accepted only as ``USER [IP]`` at the very end of the message
    and only after the 0.3 form did not match.

SOURCES
    Teapop 0.3.8 ``teapop/pop_auth.c`` (Successful/Failed login, account probe),
    ``teapop/pop_dele.c`` (session statistics), ``teapop/teapop.c`` (openlog names),
    ``teapop/pop_socket.c`` (remotehost falls back to the address); pop-before-smtp's teapop
    pattern; DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import ADDRESS_TEXT, LOGIN, OTHER, Pattern, Rule, check_options, checked_regex


def _checked_teapop(regex: str) -> pp.ParserElement:
    """The whole message; its ``ip`` and (when present) ``local`` must be host addresses."""
    return checked_regex(regex, also_addresses=("local",))


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    # The greedy user text backs off to the last place where the daemon's strict tail fits.
    login = _checked_teapop(
        rf"Successful login for (?P<user>.+) \[(?P<local>{ADDRESS_TEXT})\] from [A-Za-z0-9_.:-]+ "
        rf"\[(?P<ip>{ADDRESS_TEXT})\]\Z"
    )
    login_old = _checked_teapop(rf"Successful login for (?P<user>.+) \[(?P<ip>{ADDRESS_TEXT})\]\Z")
    return Pattern(
        programs=("teapop", "teapop_ssl"),
        rules=(
            Rule("login", login, LOGIN, ("Successful login for ", "] from "), "Teapop 0.3"),
            Rule("login_old", login_old, LOGIN, ("Successful login for ",), "Teapop 0.2x"),
            Rule(
                "failed",
                pp.Regex(r"(?:Failed login for .+|Three failed login attempts from .+)"),
                OTHER,
                ("ailed login",),
                "a failed login or an account probe",
            ),
            Rule(
                "session_stats",
                pp.Regex(r".+ \[[0-9A-Fa-f:.]+\] R\d+\(\d+\) D\d+\(\d+\) L\d+\(\d+\)\Z"),
                OTHER,
                ("] R",),
                "end-of-session statistics",
            ),
        ),
        description="Teapop: Successful login for USER [LOCAL] from HOST [IP]",
    )

"""solid-pop3d: the Solid POP3 server (0.15-0.16, Debian package ``solid-pop3d``).

PROGRAM TAGS
    ``solid-pop3d`` (its POP_IDENT, LOG_PID) and ``spop3d`` (the binary's name, which older
    builds and pop-before-smtp use).

LINES
    login (LOGIN), builds with ``--enable-logextend`` (Debian's)
        ``user alice authenticated - 192.0.2.10``; with ``--enable-resolve`` and a PTR name
        ``user alice authenticated - client.example.net (192.0.2.10)``; also ``mapped user
        alice authenticated - ...`` and ``user alice authenticated through APOP - ...``.
        IPv6 peers are written with inet_ntop, IPv4-mapped ones without the ``::ffff:``.
    connect (CONNECT), builds with ``--enable-connect``
        ``connect from 192.0.2.10`` (standalone: always numeric) or, under inetd,
        ``connect from client.example.net (192.0.2.10)``.
    auth (AUTH), plain builds (no logextend)
        ``user alice authenticated`` (and the ``mapped user`` / ``through APOP`` forms): no
        address; completes the CONNECT of the same (host, pid).
    session_end (END)
        ``session ended for user alice - 192.0.2.10``, ``session ended for mapped user ...``,
        ``session ended - ...``, ``session ended``, and ``autologout time elapsed ...``.
    failure (OTHER)
        ``authentication failed for user alice - ...``, ``authentication failed: no such
        user: ...``, ``authentication failed: can't map user name: ...``, ``root login not
        allowed``, ``can't find APOP secret ...``, ``wrong commands limit exceeded``.
    stats (OTHER)
        ``Stats: alice 0 0 3 12345`` (``--enable-statistics``; no address).

SECURITY
    The user name (USER argument, up to 40 characters, attacker text) comes before the
    daemon's `` authenticated - `` and the client field.  The grammar takes the user up to the
    *last* `` authenticated`` + optional `` through APOP`` + `` - `` and then demands exactly
    ``ADDRESS`` or ``HOST (ADDRESS)`` (host a plain host-name token) up to the end.  A PTR name
    with spaces or parentheses leaves the daemon's tail unparsed and fails closed.  The AUTH
    rule demands that the line *end* with ``authenticated`` (or ``through APOP``), so a
    one-line login is never also taken for an AUTH.  Failure lines start with
    ``authentication failed`` and never reach the login rules.

SOURCES
    solid-pop3d ``src/main.c`` (ahname: ``%.256s (%.100s)`` or the address; ``user %.40s
    authenticated - %.384s``, ``connect from``, ``session ended``, failures, ``Stats:``),
    ``src/standalone.c`` (numeric ``connect from``), ``src/const.h`` (POP_IDENT),
    ``debian/rules`` (Debian builds with --enable-logextend --enable-connect --enable-resolve);
    pop-before-smtp's spop3d patterns; DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import (
    AUTH,
    CONNECT,
    END,
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    check_options,
    hostname,
    ip_address,
)

# "user " or "mapped user ", then the user's text, then the daemon's verb.
_WHO = r"(?:mapped )?user (?P<user>.+)"
_VERB = r" authenticated(?: through APOP)?"


def _client() -> pp.ParserElement:
    """The daemon's client field: ``ADDRESS`` or ``HOST (ADDRESS)``."""
    named = pp.Suppress(hostname()) + pp.Suppress("(") + ip_address("ip") + pp.Suppress(")")
    return named | ip_address("ip")


def _login() -> pp.ParserElement:
    # Greedy user: the split is at the last " authenticated[ through APOP] - ".
    head = pp.Regex(_WHO + "(?=" + _VERB + " - )")
    # pyparsing skips the space before the verb; the verb itself is matched without it.
    verb = pp.Suppress(pp.Regex(_VERB.lstrip() + r" -"))
    return head + verb + _client()


def _auth() -> pp.ParserElement:
    return pp.Regex(_WHO + _VERB + r"$")


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    connect = pp.Suppress(pp.Literal("connect from")) + _client()
    session_end = pp.Regex(r"session ended(?: .*)?")
    failure = pp.Regex(
        r"(?:authentication failed.*|root login not allowed.*|can't find APOP secret .*"
        r"|wrong commands limit exceeded.*|unallowed non-IP based virtual hosting .*)"
    )
    stats = pp.Regex(r"Stats: .+ \d+ \d+ \d+ \d+")
    return Pattern(
        programs=("solid-pop3d", "spop3d"),
        rules=(
            Rule("login", _login(), LOGIN, ("user ", " authenticated", " - ")),
            Rule("connect", connect, CONNECT, ("connect from ",), "connect from [HOST (]IP[)]"),
            Rule("auth", _auth(), AUTH, ("user ", " authenticated")),
            Rule("session_end", session_end, END, ("session ended",)),
            Rule("autologout", pp.Regex(r"autologout time elapsed .*"), END, ("autologout",)),
            Rule("failure", failure, OTHER, (" ",), "failed logins and refusals"),
            Rule("stats", stats, OTHER, ("Stats: ",), "end-of-session statistics"),
        ),
        description="solid-pop3d: user U authenticated - [HOST (]IP[)], or connect + auth",
    )

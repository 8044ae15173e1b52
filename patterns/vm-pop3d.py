"""vm-pop3d: the virtual-mail POP3 daemon (a GNU pop3d descendant), one- and two-line forms.

PROGRAM TAGS
    ``vm-pop3d`` (LOG_PID).

LINES
    login (LOGIN), "modern" vm-pop3d as pop-before-smtp matched it::

        User alice logged in from 192.0.2.10

    connect (CONNECT), older vm-pop3d and the vm-pop3d-cc fork: ``Connect from 192.0.2.10``
    (inet_ntoa of the peer) at the start of the session, then one of
    auth (AUTH): ``User 'alice' logged in``, ``User 'alice' of 'example.org' logged in``
    (virtual domains) or, for APOP, ``User alice logged in with mailbox /var/spool/...``
    (``with shared mailbox`` when read-only).  The same pid's Connect line supplies the address.
    end (END): ``Session ended for user: alice``, ``Session ended for no user``,
    ``Session timed out for user: alice`` / ``for no user``.
    opened (OTHER): ``Incoming connection opened`` / ``Connection opened`` (no address).
    nonexistent, apop_refused, pam (OTHER): failed logins: ``Non-existent user: ...``,
    ``APOP user ... tried to log in with USER``, ``pam: <PAM error>``.
    stats (OTHER): ``Total messages = N Messages to delete = N``, ``Deleted all messages``.

SECURITY
    In the one-line form the user comes first; the grammar requires the user to be one word
    (POP3 USER arguments have no spaces) and the message to end with `` logged in from `` and
    exactly one address.  A failed login writes no ``User ... logged in`` line at all.  The
    AUTH lines carry no address; they only complete a Connect line of the same process, so a
    user name cannot supply one.

KNOWN LIMITS
    The one-line form's exact quoting is known only from pop-before-smtp's pattern; a quoted
    user (``'alice'``) is accepted and shown with its quotes removed.  IPv4 only (inet_ntoa).

SOURCES
    vm-pop3d-cc ``vm-pop3d.c`` (Connect from), ``user.c`` (logged in, Non-existent user),
    ``apop.c`` (logged in with mailbox), ``quit.c`` and ``extra.c`` (session end, timeouts);
    pop-before-smtp's vm-pop3d patterns (both forms); DOMAIN.md section 3.
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


def _checked(regex: str) -> pp.ParserElement:
    """The whole message with a checked ``ip``; a quoted user is shown without its quotes."""
    el = checked_regex(regex)

    def unquote(toks: pp.ParseResults) -> None:
        if "user" in toks:
            toks["user"] = toks["user"].strip("'")

    el.add_parse_action(unquote)
    return el


def _user_only(regex: str) -> pp.ParserElement:
    el = pp.Regex(regex)
    el.add_parse_action(lambda t: t.__setitem__("user", t["user"].strip("'")))
    return el


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    return Pattern(
        programs=("vm-pop3d",),
        rules=(
            Rule(
                "login",
                _checked(rf"User (?P<user>\S+) logged in from (?P<ip>{ADDRESS_TEXT})\Z"),
                LOGIN,
                (" logged in from ",),
                "User USER logged in from IP",
            ),
            Rule(
                "connect",
                _checked(rf"Connect from (?P<ip>{ADDRESS_TEXT})\Z"),
                CONNECT,
                ("Connect from ",),
                "Connect from IP (older vm-pop3d)",
            ),
            Rule(
                "auth",
                _user_only(
                    r"User (?P<user>'[^']*'|\S+)(?: of '[^']*')? logged in"
                    r"(?: with (?:shared )?mailbox \S+)?\Z"
                ),
                AUTH,
                (" logged in",),
                "User 'USER' logged in (the Connect line has the address)",
            ),
            Rule(
                "end",
                pp.Regex(r"Session (?:ended|timed out) for (?:user: .*|no user)\Z"),
                END,
                ("Session ",),
                "end of the session",
            ),
            Rule(
                "opened",
                pp.Regex(r"(?:Incoming connection|Connection) opened\Z"),
                OTHER,
                ("onnection opened",),
                "a connection without an address",
            ),
            Rule(
                "nonexistent",
                pp.Regex(r"Non-existent user: .*"),
                OTHER,
                ("Non-existent user: ",),
                "a failed login (unknown user, debug builds)",
            ),
            Rule(
                "apop_refused",
                pp.Regex(r"APOP user .* tried to log in with USER\Z"),
                OTHER,
                ("tried to log in with USER",),
                "USER/PASS refused for an APOP user",
            ),
            Rule("pam", pp.Regex(r"pam: .*"), OTHER, ("pam: ",), "a PAM failure"),
            Rule(
                "stats",
                pp.Regex(
                    r"(?:Total messages = \d+ Messages to delete = \d+|Deleted all messages)\Z"
                ),
                OTHER,
                ("essages",),
                "mailbox statistics at QUIT",
            ),
        ),
        description="vm-pop3d: User USER logged in from IP, or Connect from IP + logged in",
    )

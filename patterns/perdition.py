"""perdition: the Perdition POP3/IMAP4 proxy (Horms), logging one ``Auth:`` line per login.

PROGRAM TAGS
    ``perdition`` and the per-protocol names the packages install as links to the one binary
    (the tag is the basename of argv[0]): ``perdition.pop3``, ``perdition.pop3s``,
    ``perdition.imap4``, ``perdition.imap4s``, ``perdition.imaps``, ``perdition.managesieve``.
    Option ``programs`` (a list of names) adds site-specific link names.

LINES
    login (LOGIN), Perdition 1.19 (2010) and later::

        Auth: 192.0.2.10:53949->192.0.2.1:110 client-secure=plaintext authorisation_id=NONE
        authentication_id="alice" server="10.0.0.5:110" protocol=POP3
        server-secure=plaintext status="ok"

    (one line).  ``authorisation_id`` is ``NONE`` or a quoted string; a debug build with
    ``log_passwd`` adds `` passwd="..."`` after ``authentication_id``.  Only ``status="ok"``
    is a login; failures write ``status="failed: <reason>"``.  With ``connect_relog`` set,
    perdition writes the same line again every N seconds while the session lasts: each repeat
    counts as a fresh login, which is what that option is for (keeping POP-before-SMTP
    entries alive for long IMAP sessions).
    login_2010 (LOGIN): the short-lived 2010 form with ``passwd="..." server="HOST"
    port="110" server-secure=...`` and no ``protocol`` field.
    login_old (LOGIN), Perdition 1.x before 2010: ``Auth: 192.0.2.10->192.0.2.1
    user="alice" [passwd="..."] server="10.0.0.5" port="110" status="ok"``.
    managesieve_login (LOGIN, only with option ``managesieve = true``): ``status="ok"`` with
    ``protocol=MANAGESIEVE``.  By default a ManageSieve login is not a mail client's POP/IMAP
    login and is counted as OTHER (``auth_other``).
    auth_failed (OTHER): ``status="failed: <reason>"``.
    auth_other (OTHER): a ManageSieve ``status="ok"`` while option ``managesieve`` is off.
    Any other ``Auth:`` line (a user name with a double quote, say) is a near miss, so that
    ``popwatch test`` shows it.
    connect (OTHER): ``Connect: IP:PORT->IP:PORT`` (optionally `` inetd_pid=N``): a
    connection, not a login; the Auth line carries the address itself.
    close (OTHER): ``Closing session: ... received=N sent=N`` and ``Closing NULL session: ...``.
    fatal (OTHER): ``Fatal error ...`` / ``Fatal Error ...`` lines of a child.

SECURITY
    The client address is the first field after ``Auth:``, written by perdition from
    getnameinfo(NI_NUMERICHOST) before any client text; the port follows the *last* colon
    before ``->`` (an IPv6 address has colons of its own).  The user names, the password and
    the server name (a map may derive it from the user's domain) are client-controlled and
    sit in the middle; the grammar demands that the message *ends* with the daemon's own
    ``protocol=... server-secure=... status="ok"`` tail, which no client text can supply
    because perdition writes it after all of them.  A user name or server name containing a
    double quote fails closed (no event).

KNOWN LIMITS
    Perdition built without IPv6 (1.x) logs IPv4 only.  A link-local client address with a
    zone (``fe80::1%eth0``) is not a relay key and gives no event.

SOURCES
    perdition ``perdition/perdition.c`` (perdition_log_auth, perdition_log_close, the
    Connect line; its history for the 2001, 2005, 2009 and 2010 forms), ``perdition/protocol.c``
    (protocol names); pop-before-smtp's Perdition pattern; DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import (
    ADDRESS_TEXT,
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    check_options,
    checked_regex,
    with_extra_programs,
)

_PROGRAMS = (
    "perdition",
    "perdition.pop3",
    "perdition.pop3s",
    "perdition.imap4",
    "perdition.imap4s",
    "perdition.imaps",
    "perdition.managesieve",
)

# Address candidates; the exact check is normalize_host() in checked_regex().  The port is the
# digits after the last colon, so the greedy candidate gives back exactly ":PORT".
_PORTED = rf"(?P<ip>{ADDRESS_TEXT}):\d{{1,5}}->{ADDRESS_TEXT}:\d{{1,5}}"
_SECURE = r"(?:ssl|starttls|plaintext)"
_AUTHZ = r'(?:NONE|"[^"]*")'
_USER = r'"(?P<user>[^"]*)"'
# Perdition only logs a password in debug mode; it is never returned as a result.
_PASSWD = r'(?: passwd=".*")?'


def _login(protocols: str) -> pp.ParserElement:
    return checked_regex(
        rf"Auth: {_PORTED} client-secure={_SECURE} authorisation_id={_AUTHZ} "
        rf"authentication_id={_USER}{_PASSWD} server=\"[^\"]*\" protocol=(?:{protocols}) "
        rf'server-secure={_SECURE} status="ok"\Z'
    )


def pattern(options: Mapping[str, Any]) -> Pattern:
    opts = check_options(options, {"managesieve": bool, "programs": list})
    mail = "POP3S?|IMAP4S?"
    rules = [
        Rule("login", _login(mail), LOGIN, ('status="ok"', "Auth: "), "Auth: ... status=ok"),
        Rule(
            "login_2010",
            checked_regex(
                rf"Auth: {_PORTED} client-secure={_SECURE} authorisation_id={_AUTHZ} "
                rf"authentication_id={_USER}{_PASSWD} server=\"[^\"]*\" port=\"\d{{1,5}}\" "
                rf'server-secure={_SECURE} status="ok"\Z'
            ),
            LOGIN,
            ('status="ok"', "Auth: "),
            "the 2010 form (server and port fields, no protocol)",
        ),
        Rule(
            "login_old",
            checked_regex(
                rf"Auth: (?P<ip>{ADDRESS_TEXT})->{ADDRESS_TEXT} user={_USER}{_PASSWD} "
                r'server="[^"]*" port="[^"\s]*" status="ok"\Z'
            ),
            LOGIN,
            ('status="ok"', "Auth: "),
            "perdition 1.x before 2010 (no ports, user=)",
        ),
    ]
    if opts.get("managesieve", False):
        rules.append(
            Rule(
                "managesieve_login",
                _login("MANAGESIEVE"),
                LOGIN,
                ('status="ok"', "protocol=MANAGESIEVE"),
                "a ManageSieve login (option managesieve)",
            )
        )
    rules += [
        Rule(
            "auth_failed",
            pp.Regex(r'Auth: .* status="failed: [^"]*"\Z'),
            OTHER,
            ("Auth: ", 'status="failed'),
            "a failed login",
        ),
        Rule(
            "auth_other",
            pp.Regex(r'Auth: .* protocol=MANAGESIEVE server-secure=[a-z]+ status="ok"\Z'),
            OTHER,
            ("Auth: ", "protocol=MANAGESIEVE"),
            "a ManageSieve login while option managesieve is off",
        ),
        Rule(
            "connect",
            pp.Regex(
                rf"Connect: {ADDRESS_TEXT}:\d{{1,5}}->{ADDRESS_TEXT}:\d{{1,5}}(?: inetd_pid=\d+)?\Z"
            ),
            OTHER,
            ("Connect: ",),
            "a connection (not a login)",
        ),
        Rule(
            "close",
            pp.Regex(r"Closing (?:NULL )?session:.*"),
            OTHER,
            ("Closing ",),
            "end of a session",
        ),
        Rule("fatal", pp.Regex(r"Fatal [Ee]rror.*"), OTHER, ("Fatal ",), "a child's fatal error"),
    ]
    return Pattern(
        programs=with_extra_programs(_PROGRAMS, opts),
        rules=tuple(rules),
        description='Perdition POP3/IMAP4 proxy: Auth: ... status="ok"',
    )

"""cyrus: the Cyrus IMAP server's imapd and pop3d (2.x and 3.x, and the 3.13+ logfmt lines).

PROGRAM TAGS
    The syslog ident is the service name from ``cyrus.conf``, with ``syslog_prefix`` (Debian:
    ``cyrus``) in front: ``cyrus/imap``, ``cyrus/imaps``, ``cyrus/pop3``, ``cyrus/pop3s``,
    ``cyrus/imapd``, ``cyrus/pop3d``; without a prefix ``imap``, ``imaps``, ``pop3``,
    ``pop3s``, ``imapd``, ``pop3d``.

LINES
    login (LOGIN)
        ``login: client.example.net [192.0.2.10] alice plaintext User logged in
        SESSIONID=<mail.example.com-4242-1795338902-1-123456789>``; variants: the client
        part is ``HOST [IP]`` or just ``[IP]`` (no PTR name; some 2.x builds wrote
        ``HOST[IP]``), the user may carry a ``+subfolder``/magic plus, the mechanism is
        ``plaintext``, a SASL name (``PLAIN``, ``LOGIN``, ``CRAM-MD5``, ``SCRAM-SHA-256``...) or
        ``APOP``, each optionally ``+TLS``; the reply is ``User logged in`` with or without a
        session id (2.x had none); very old builds stop after the mechanism.
    login_logfmt (LOGIN)
        Cyrus 3.13 and later: ``event=login.good r.sessionid=... r.clienthost="client.example.net
        [192.0.2.10]" u.username=alice login.mech=plaintext login.tls=0 ...`` (logfmt).
    badlogin (OTHER)
        ``badlogin: client.example.net [192.0.2.10] plaintext (alice) [SASL(-13): ...]`` and
        the logfmt ``event=login.bad ...``.
    not_a_login (OTHER)
        ``login: HOST [IP] anonymous PASSWORD`` (anonymous access: never a relay grant) and
        ``login: ... nopassword ...`` (imapd started with ``-N``: the password is not checked,
        so the line proves nothing); logfmt lines with ``login.anonymous`` or
        ``login.nopassword``.
    session (OTHER)
        ``accepted connection``, ``starttls: ...``, ``SSL_accept() ...``, ``Connection reset by
        peer``, ``USAGE ...``, ``open: user ... opened ...``, ``client id ...``,
        ``Expunged ...``, ``seen_db: ...``, ``auditlog: ...``, ``event=...`` logfmt lines.

SECURITY
    The daemon writes its client field *first*: ``[HOST ]\\[IP\\]``.  The PTR name is
    attacker-controlled, so it must be one plain host-name token (no spaces or brackets), the
    address is the first bracketed token, and the rest of the line must be exactly ``USER
    MECH[+TLS] User logged in [SESSIONID=<id>]``, with a user token that holds no brackets.
    A PTR name with spaces and a fake ``[address] user mech ...`` inside it therefore leaves the
    daemon's own tail unparsed and the line fails closed.  ``anonymous`` and ``nopassword``
    logins are recognized but never count.  In the logfmt form the values are parsed as
    logfmt (quoted strings with escapes), every key may occur once, and the address comes only
    from ``r.clienthost``.

SOURCES
    cyrus-imapd ``imap/imapd.c`` (cmd_login, cmd_authenticate: ``login: %s %s%s plaintext%s
    %s``, ``login: %s %s%s %s%s User logged in SESSIONID=<%s>``, ``nopassword``, ``anonymous``,
    ``badlogin:``), ``imap/pop3d.c`` (``APOP``, plaintext and SASL logins), ``imap/global.c``
    (``get_clienthost``: ``HOST [IP]`` / ``[IP]``), ``lib/sessionid.c``; 3.13+:
    ``imap/loginlog.c`` and ``lib/logfmt.c`` (``event=login.good``); pop-before-smtp's Cyrus
    patterns; DOMAIN.md section 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.address import normalize_host
from popwatch.errors import AddressError
from popwatch.grammar import (
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    check_options,
    host_bracketed_ip,
    lit,
)

_PROGRAMS = (
    "cyrus/imap",
    "cyrus/imaps",
    "cyrus/pop3",
    "cyrus/pop3s",
    "cyrus/imapd",
    "cyrus/pop3d",
    "imap",
    "imaps",
    "pop3",
    "pop3s",
    "imapd",
    "pop3d",
)

# A user token: no spaces, no brackets (so a PTR name cannot smuggle in a second client field)
_USER_RE = r"[^\s\[\]<>]{1,256}"
_MECH_RE = r"[A-Za-z0-9_-]{1,40}(?:\+TLS)?"
# Mechanisms whose "login" proves nothing (see the module docstring).
_NOT_LOGIN_MECHS = frozenset({"nopassword", "nopassword+tls"})


def _reject_non_logins(s: str, loc: int, toks: pp.ParseResults) -> None:
    user = str(toks["user"]) if "user" in toks else ""
    mech = str(toks["mech"]) if "mech" in toks else ""
    if user.lower() == "anonymous" or user.lower().startswith("anonymous@"):
        raise pp.ParseException(s, loc, "anonymous login")
    if mech.lower() in _NOT_LOGIN_MECHS:
        raise pp.ParseException(s, loc, "login without a password check")


def _login() -> pp.ParserElement:
    session = pp.Suppress(pp.Regex(r"SESSIONID=<[^\s<>]{1,200}>"))
    reply = pp.Opt(lit("User logged in") + pp.Opt(session))
    grammar = (
        lit("login:")
        + host_bracketed_ip("ip", None)
        + pp.Regex(_USER_RE)("user")
        + pp.Regex(_MECH_RE)("mech")
        + reply
    )
    grammar.add_parse_action(_reject_non_logins)
    return grammar


def _not_a_login() -> pp.ParserElement:
    anonymous = pp.Regex(r"login: .*\] anonymous( .*)?")
    nopassword = pp.Regex(r"login: .* nopassword(\+TLS)? .*")
    flagged = pp.Regex(r"event=login\.good .*login\.(?:anonymous|nopassword)=.*")
    return anonymous | nopassword | flagged


# --- logfmt (Cyrus 3.13+) ---------------------------------------------------------------------
# pair = key "=" value; value = okchr+ / DQUOTE (escaped / SP / "=" / okchr / 8bit)* DQUOTE
_LOGFMT_PAIR = re.compile(
    r'(?P<key>[!#-<>-\[\]-~]+)=(?P<val>[!#-<>-\[\]-~]+|"(?:\\(?:[\\nrt"]|x\{[0-9A-Fa-f]{2}\})'
    r'|[^"\\\x00-\x1f\x7f])*")'
)
_LOGFMT_LINE = r'(?:[!#-<>-\[\]-~]+=(?:[!#-<>-\[\]-~]+|"(?:\\.|[^"\\])*")(?: |$))+'
_CLIENTHOST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,253} )?\[(?P<ip>[0-9A-Fa-f:.]{2,45})\]")
_UNESCAPE = re.compile(r"\\(x\{[0-9A-Fa-f]{2}\}|.)")


def _logfmt_value(raw: str) -> str:
    if not raw.startswith('"'):
        return raw
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}

    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc.startswith("x{"):
            return chr(int(esc[2:4], 16))
        return simple.get(esc, esc)

    return _UNESCAPE.sub(sub, raw[1:-1])


def _logfmt_login(s: str, loc: int, toks: pp.ParseResults) -> pp.ParseResults:
    text = toks[0]
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LOGFMT_PAIR.match(text, pos)
        if m is None or m.group("key") in fields:
            raise pp.ParseException(s, loc, "not a well-formed logfmt line")
        fields[m.group("key")] = _logfmt_value(m.group("val"))
        pos = m.end()
        if pos < len(text):
            if text[pos] != " ":
                raise pp.ParseException(s, loc, "not a well-formed logfmt line")
            pos += 1
    if fields.get("event") != "login.good" or "u.username" not in fields:
        raise pp.ParseException(s, loc, "not a successful login")
    if "login.anonymous" in fields or "login.nopassword" in fields:
        raise pp.ParseException(s, loc, "login that proves nothing")
    client = _CLIENTHOST.fullmatch(fields.get("r.clienthost", ""))
    if client is None:
        raise pp.ParseException(s, loc, "no client address")
    try:
        ip = normalize_host(client.group("ip"))
    except AddressError:
        raise pp.ParseException(s, loc, "not a valid host address") from None
    return pp.ParseResults.from_dict({"ip": ip, "user": fields["u.username"]})


def _login_logfmt() -> pp.ParserElement:
    el = pp.Regex(r"event=login\.good " + _LOGFMT_LINE)
    el.add_parse_action(_logfmt_login)
    return el


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    logfmt = _login_logfmt()
    session = pp.Regex(
        r"(?:accepted connection|starttls: .*|SSL_accept\(\) .*"
        r"|Connection reset by peer.*|USAGE .*|open: user .*|client id .*|Expunged .*"
        r"|seen_db: .*|auditlog: .*|event=.* .*|IOERROR: .*|Fatal error: .*)"
    )
    return Pattern(
        programs=_PROGRAMS,
        rules=(
            Rule("login", _login(), LOGIN, ("login: ", "["), "login: [HOST ][IP] USER MECH ..."),
            Rule("login_logfmt", logfmt, LOGIN, ("event=login.good",), "3.13+ logfmt login"),
            Rule(
                "badlogin",
                pp.Regex(r"(?:badlogin: |event=login\.bad ).*"),
                OTHER,
                ("login",),
                "a failed login",
            ),
            Rule("not_a_login", _not_a_login(), OTHER, ("login",), "anonymous / nopassword"),
            Rule("session", session, OTHER, (" ",), "session notices"),
        ),
        description="Cyrus IMAP imapd/pop3d: login: HOST [IP] USER MECH User logged in",
    )

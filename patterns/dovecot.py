"""dovecot: Dovecot 2.x (and 1.x) POP3 and IMAP login processes.

PROGRAM TAGS
    ``dovecot`` (syslog; ``dovecot[PID]`` from the journal), where the message starts with the
    process name: ``imap-login: Login: ...``; and ``pop3-login``/``imap-login`` themselves,
    the program field of Dovecot's own log file (``log_path``/``info_log_path``), where the
    message starts with the level: ``Info: Login: ...``.

LINES
    login (LOGIN)
        ``Login: user=<alice>, method=PLAIN, rip=192.0.2.10, lip=192.0.2.1, mpid=123, TLS,
        session=<...>``, the default ``login_log_format_elements`` (``user=<%u> method=%m
        rip=%r lip=%l mpid=%e %c session=<%{session}>``, empty elements left out): ``mpid``
        since 2.1, ``session`` since 2.1.10; ``%c`` is ``TLS``, ``secured`` (trusted network
        or localhost) or nothing; ``%k`` (``TLSv1.3 with cipher ... (256/256 bits)``) is
        accepted after it.  Only ``pop3-login`` and ``imap-login`` count: a successful
        ``submission-login`` or ``managesieve-login`` is not a mail-reading login.
    failure (OTHER)
        A login process giving up after failed authentication: ``Disconnected: Connection
        closed (auth failed, 1 attempts in 2 secs): user=<...>, ...`` (2.3), ``Disconnected
        (auth failed, ...)`` and ``Aborted login (auth failed, ...)`` (2.0-2.2), ``Login
        aborted: ... (auth_failed)`` (2.3.21+), and the plaintext-auth refusals.
    disconnect (OTHER)
        Any other end of a login process's connection without login: ``Disconnected (no auth
        attempts in 0 secs)``, ``Aborted login by logging out``, ``Disconnected: Inactivity``.
    notice (OTHER)
        Other lines of a POP3/IMAP login process (proxy lines, warnings, connection limits),
        except ``Login:`` lines, which must match the login rule or be a near miss.
    service (OTHER)
        Lines of every other Dovecot process under the ``dovecot`` tag: ``master``, ``auth``,
        the post-login ``pop3(alice)<pid><session>: Disconnected: Logged out ...``, ``lmtp``,
        ``submission-login``.

SECURITY
    Dovecot writes the user name between ``user=<`` and ``>`` without escaping: a client may
    send ``x>, method=PLAIN, rip=203.0.113.66, lip=...`` and the failure line shows exactly
    that (seen with Dovecot 2.3.19).  The grammar takes the user up to the *last*
    ``>, method=`` on the line; after it, the daemon's own fields must follow in the default
    order, each ``key=value`` strict (the address must be one full host address), up to the
    end of the message.  Dovecot's own text after the user name cannot contain ``>, method=``
    (the session id is base64), so a forged tail in the user name never becomes the address.
    A site with a customized ``login_log_format_elements`` sees its login lines as near misses
    in ``popwatch test --print-missed`` and can override this pattern in its pattern directory.

SOURCES
    Lines captured from Dovecot 2.3.19.1 (Debian 12) on loopback with poplib/imaplib;
    Dovecot's ``src/login-common/client-common.c`` (login_log_format_elements, the
    ``Disconnected``/``Aborted login`` reasons) and the default ``10-logging.conf``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import (
    LOGIN,
    OTHER,
    Pattern,
    Rule,
    check_options,
    ip_address,
    key_value,
    lit,
    number,
    rest_of_line,
    text_before_last,
)

_LOGIN_PROCESSES = r"(?:pop3|imap)-login"
_LEVEL = r"(?:Info|Warning|Error|Fatal|Panic|Debug): "


def _process_prefix() -> pp.ParserElement:
    """``imap-login: `` (syslog under the dovecot tag) and/or ``Info: `` (own log file)."""
    return pp.Optional(pp.Suppress(pp.Regex(_LOGIN_PROCESSES + r": "))) + pp.Optional(
        pp.Suppress(pp.Regex(_LEVEL))
    )


def _login() -> pp.ParserElement:
    comma = lit(",")
    connection = pp.Regex(r"TLS handshaking|TLS|secured")("secured")
    cipher = pp.Regex(r"TLSv[0-9.]{1,4} with cipher [A-Za-z0-9_-]{1,64} \(\d{1,4}/\d{1,4} bits\)")
    session = key_value("session", pp.Regex(r"<[A-Za-z0-9+/]{1,64}={0,2}>"))
    return (
        _process_prefix()
        + lit("Login: user=<")
        + text_before_last(">, method=", "user")
        + lit(">,")
        + key_value("method", pp.Regex(r"[A-Za-z0-9_-]+"))
        + comma
        + key_value("rip", ip_address(None))("ip")
        + comma
        + key_value("lip", ip_address(None))
        + pp.Optional(comma + key_value("mpid", number()))
        + pp.Optional(comma + connection)
        + pp.Optional(comma + cipher)
        + pp.Optional(comma + session)
    )


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    failure = (
        _process_prefix()
        + pp.Regex(
            r"(?:Disconnected|Aborted login|Login aborted)\b[^(]{0,80}"
            r"\((?:auth failed, |tried to use (?:disallowed|disabled) plaintext auth)"
        )
        + rest_of_line()
    )
    disconnect = (
        _process_prefix()
        + pp.Regex(r"(?:Disconnected|Aborted login|Login aborted)\b")
        + rest_of_line()
    )
    notice = pp.Regex(_LOGIN_PROCESSES + r": (?:" + _LEVEL + r")?(?!Login: )") + rest_of_line()
    own_log_notice = pp.Regex(_LEVEL + r"(?!Login: )") + rest_of_line()
    service = pp.Regex(
        r"(?!" + _LOGIN_PROCESSES + r": )(?!(?:" + _LEVEL + r")?Login: )"
        r"[A-Za-z][\w-]*(?:\([^)\n]*\))?[^:\s]*: "
    )
    return Pattern(
        programs=("dovecot", "pop3-login", "imap-login"),
        description="Dovecot POP3/IMAP login processes",
        rules=(
            Rule("login", _login(), LOGIN, ("Login: user=<", ", rip=")),
            # service first: the commonest lines under the dovecot tag, and its pattern
            # cannot match a login process's line, so the order does not change a result.
            Rule("service", service + rest_of_line(), OTHER),
            Rule("failure", failure, OTHER, ("auth",)),
            Rule("disconnect", disconnect, OTHER),
            Rule("notice", notice | own_log_notice, OTHER),
        ),
    )

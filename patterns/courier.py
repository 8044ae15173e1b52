"""courier: the Courier mail server's POP3 and IMAP servers (also sold alone as Courier-IMAP).

PROGRAM TAGS
    ``pop3d``, ``pop3d-ssl``, ``imapd``, ``imapd-ssl`` (Debian and the upstream init scripts
    name courierlogger's tag after the service), the ``courier``-prefixed forms some packages
    use (``courierpop3d``, ``courierpop3login``, ``courierimapd``, ``courierimaplogin``,
    ``courier-imapd``, ``courier-pop3d``, with ``-ssl`` variants) and ``pop3login``/``imaplogin``.
    courierlogger opens syslog without LOG_PID, so the tag usually has no pid.

LINES
    The daemons write to stderr with a level prefix (``INFO:``, ``ERR:``, ``DEBUG:``) that
    courierlogger strips before syslog(3); when the daemon runs without courierlogger (stderr
    to the systemd journal) the prefix stays, so it is accepted here.

    login (LOGIN)
        ``LOGIN, user=alice, ip=[::ffff:192.0.2.10], port=[51234], protocol=IMAP`` plus an
        optional ``, starttls=1`` (IMAP) or ``, stls=1`` (POP3); POP3 writes no protocol;
        Courier-IMAP before 3.0 wrote only ``LOGIN, user=alice, ip=[...]``.  ``user`` is the
        authenticated account (``AUTHENTICATED``), the address is ``TCPREMOTEIP`` as
        couriertcpd sets it (IPv4 clients appear IPv4-mapped).
    login_failed (OTHER)
        ``LOGIN FAILED, user=alice, ip=[...], port=[...]`` and
        ``LOGIN FAILED, method=PLAIN, ip=[...], port=[...]``; old: ``LOGIN FAILED, ip=[...]``.
    session_end (OTHER)
        ``LOGOUT, user=...``, ``DISCONNECTED, user=...``, ``TIMEOUT, user=...`` with counters,
        and the login proxy's ``LOGOUT, ip=[...]``.
    connection (OTHER)
        ``Connection, ip=[...], port=[...]`` and ``Disconnected, ip=[...]`` (no login).
    session_info (OTHER)
        ``LOCKED, user=...``, ``ID, user=...``, ``EXPUNGED, user=...``, ``DELETED, user=...``,
        ``Maximum connection limit reached for ...``, ``authentication error: ...``.

SECURITY
    ``user`` comes before the daemon's ``ip=[...]`` field.  On a successful login it is an
    account name, but it is still treated as untrusted text: the grammar takes it up to the
    *last* ``, ip=[`` and then demands exactly the bracketed address and the optional
    ``port``, ``protocol`` and TLS fields up to the end of the message.  ``LOGIN FAILED`` lines
    (whose user is whatever the client typed) never reach the LOGIN rule: its literal start is
    ``LOGIN, user=``.  The tags ``imapd`` and ``pop3d`` are shared with UW-IMAP and Cyrus; the
    message shapes do not overlap.

KNOWN LIMITS
    sqwebmail's ``LOGIN, user=..., ip=[...]`` (tag ``sqwebmaild``) is not claimed: a webmail
    login is not a mail client on that address.  Courier's SMTP and authdaemond lines are not
    claimed.

SOURCES
    courier-libs ``imap/imapd.C`` (LOGIN with protocol and ``starttls=1``), ``imap/imaplogin.C``
    and ``imap/pop3login.C`` (proxy LOGIN, LOGIN FAILED, Connection, Disconnected, LOGOUT),
    ``imap/pop3dserver.C`` (LOGIN with ``stls=1``, acctout: LOGOUT/DISCONNECTED/TIMEOUT),
    ``imap/imaptoken.C`` (bye_msg), ``liblog/logger.c`` (courierlogger: prefix stripping, no
    LOG_PID); pop-before-smtp's Courier pattern; DOMAIN.md section 3.
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
    bracketed_ip,
    check_options,
    lit,
    text_before_last,
)

_PROGRAMS = (
    "pop3d",
    "pop3d-ssl",
    "imapd",
    "imapd-ssl",
    "pop3login",
    "imaplogin",
    "courierpop3d",
    "courierpop3d-ssl",
    "courierpop3login",
    "courierimapd",
    "courierimapd-ssl",
    "courierimaplogin",
    "courier-pop3d",
    "courier-pop3d-ssl",
    "courier-imapd",
    "courier-imapd-ssl",
)


def _level() -> pp.ParserElement:
    """The stderr level prefix, present only when courierlogger did not strip it."""
    return pp.Opt(pp.Suppress(pp.Regex(r"(?:INFO|ERR|WARN|DEBUG|NOTICE):")))


def _login() -> pp.ParserElement:
    # Daemon-written tail after the address: every piece is a fixed shape, so nothing of the
    # user's text can be taken for it.
    port = pp.Opt(pp.Suppress(pp.Regex(r", port=\[(?:\d{1,5}|N/A)\]")))
    protocol = pp.Opt(pp.Suppress(pp.Regex(r", protocol=[A-Z0-9]{1,10}")))
    tls = pp.Opt(pp.Suppress(pp.Regex(r", (?:starttls|stls)=1")))
    # The user runs from after "user=" (no space skipped: the value starts right there).
    user = text_before_last(", ip=[").leave_whitespace()
    return (
        _level()
        + lit("LOGIN, user=")
        + user
        + pp.Suppress(pp.Literal(", ip=").leave_whitespace())
        + bracketed_ip("ip").leave_whitespace()
        + port.leave_whitespace()
        + protocol.leave_whitespace()
        + tls.leave_whitespace()
    )


def _prefixed(regex: str) -> pp.ParserElement:
    return _level() + pp.Regex(regex)


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    return Pattern(
        programs=_PROGRAMS,
        rules=(
            Rule("login", _login(), LOGIN, ("LOGIN, user=", ", ip=["), "LOGIN, user=..., ip=[]"),
            Rule(
                "login_failed",
                _prefixed(r"LOGIN FAILED, .*"),
                OTHER,
                ("LOGIN FAILED, ",),
                "a failed login",
            ),
            Rule(
                "session_end",
                _prefixed(r"(?:LOGOUT|DISCONNECTED|TIMEOUT), (?:user|ip)=.*"),
                OTHER,
                ("=",),
                "end of a session (with its counters)",
            ),
            Rule(
                "connection",
                _prefixed(r"(?:Connection|Disconnected), ip=\[.*"),
                OTHER,
                ("ip=[",),
                "a connection without a login",
            ),
            Rule(
                "session_info",
                _prefixed(
                    r"(?:(?:LOCKED|ID|EXPUNGED|DELETED), user=.*"
                    r"|Maximum connection limit reached for .*"
                    r"|authentication error: .*|I/O error disconnect.*)"
                ),
                OTHER,
                (" ",),
                "other session notices",
            ),
        ),
        description="Courier (Courier-IMAP) pop3d/imapd: LOGIN, user=..., ip=[...]",
    )

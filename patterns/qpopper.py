"""qpopper: Qualcomm's (originally Berkeley's) POP3 server, versions 3.x and 4.x.

PROGRAM TAGS
    ``in.qpopper`` (inetd installs), ``qpopper``, ``popper``.

LINES
    login (LOGIN)
        ``(v4.1.0) POP login by user "alice" at (client.example.net) 192.0.2.10``, optionally
        followed by `` [pop_log.c:244]`` (builds with DEBUGGING append the source file and line
        to every message).  Written when qpopper is built with LOG_LOGIN or has a
        ``log-login`` string configured; the default string is
        ``(v%0) POP login by user "%1" at (%2) %3``.  The host in parentheses is the PTR name
        or, without one, the address itself.
    stats (OTHER, or LOGIN with the ``stats_line`` option)
        ``Stats: alice 0 0 3 12345 client.example.net 192.0.2.10`` (user, messages and bytes
        deleted, messages and bytes left, host, address), written at the end of a session
        that logged in (the update state).  Older builds leave the host out.  Sites without
        LOG_LOGIN (the compile-time default is off) only have this line, so the option makes it
        a login: the relay then opens at the *end* of the POP session, when the mail client
        usually sends its queued mail.
    failure (OTHER)
        ``alice at client.example.net (192.0.2.10): -ERR [AUTH] Password supplied for "alice"
        is incorrect.`` - every ``-ERR`` answer is logged this way (user ``(null)`` before USER).
    session_start (OTHER)
        ``(v4.0.9) Servicing request from "client.example.net" at 192.0.2.10`` (debug builds):
        a connection, not a login.
    notice (OTHER)
        qpopper's other notices that mail logs are full of (bulletins, I/O errors, drop
        locking), so that they are not reported as near misses.

OPTIONS
    ``stats_line`` (bool, default false): count the ``Stats:`` line as a login.

SECURITY
    The user name is attacker-controlled and is written *before* the daemon's fields, inside
    double quotes that qpopper does not escape.  The grammar therefore takes the user up to
    the *last* ``" at (`` and then demands exactly ``HOST) ADDRESS`` and the optional
    ``[file.c:N]`` up to the end of the message.  The PTR host name must be a plain host name
    (letters, digits, ``.-_:``); anything else fails closed.  A Postfix line whose MAIL FROM
    carries qpopper's text is not claimed (wrong program tag).

KNOWN LIMITS
    qpopper's trace file (``-t FILE``, debug mode) has lines
    ``Nov 22 09:15:02.123 2026 [4242] (v4.1.0) POP login by user ...`` (qpopper 4,
    ``pop_log.c``) or ``Sun Nov 22 09:15:02 2026 [4242]  Stats: ...`` (qpopper 3): the message
    grammar above reads them, but the line layer (``popwatch.syslogline``) has no shape for
    them yet, so they are not seen.  IPv4 only in the versions seen (qpopper has no IPv6
    support); IPv6 text is accepted should a patched build write it.

SOURCES
    qpopper 4.x ``popper/pop_log.c`` (``do_log_login``, ``pop_logv`` with the ``[%s:%lu]``
    suffix and the trace-file format), ``popper/pop_init.c`` (default ``pLog_login`` string,
    ``Servicing request from``), ``popper/pop_updt.c`` (``Stats: %s %d %ld %d %ld %s %s``),
    ``popper/pop_msg.c`` (``%s at %s (%s): %s`` for failures); pop-before-smtp's
    ``pop-before-smtp-conf.pl`` qpopper patterns; real lines posted from in.qpopper 4.0.9.
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
    lit,
    number,
    rest_of_line,
    text_before_last,
)

_HOST_RE = r"[A-Za-z0-9_.:-]*"


def _version() -> pp.ParserElement:
    return pp.Opt(pp.Suppress(pp.Regex(r"\(v[0-9][0-9A-Za-z._-]{0,30}\)")))


def _whence() -> pp.ParserElement:
    """The `` [pop_log.c:244]`` that DEBUGGING builds append to every message."""
    return pp.Opt(pp.Suppress(pp.Regex(r"\[[A-Za-z0-9_]{1,40}\.c:\d{1,6}\]")))


def _login() -> pp.ParserElement:
    return (
        _version()
        + lit('POP login by user "')
        + text_before_last('" at (')
        + lit('" at (')
        + pp.Suppress(pp.Regex(_HOST_RE))
        + lit(")")
        + ip_address("ip")
        + _whence()
    )


def _stats() -> pp.ParserElement:
    # The user (free text, may hold spaces) runs up to the daemon's tail: four counters,
    # an optional host and the address, then the optional whence.  The lookahead picks the
    # split; the strict elements after it then parse the tail itself.
    tail = r" \d+ \d+ \d+ \d+ (?:\S+ )?\S+(?: \[[^\]]*\])?$"
    user = pp.Regex(r"(?P<user>\S.*)(?=" + tail + ")")
    host = pp.Suppress(pp.Regex(r"[A-Za-z0-9_.:-]+"))
    counters = pp.Suppress(number() + number() + number() + number())
    where = (host + ip_address("ip")) | ip_address("ip")
    return lit("Stats:") + user + counters + where + _whence()


def _failure() -> pp.ParserElement:
    return pp.Regex(r".* at .*\): -ERR( .*)?$")


def _session_start() -> pp.ParserElement:
    return _version() + lit("Servicing request from") + rest_of_line()


def _notice() -> pp.ParserElement:
    return pp.Regex(
        r"(?:Unable to open bulletin directory|I/O error flushing output to client"
        r"|Unable to get canonical name of client|Possible probe of account"
        r"|\(v[0-9][0-9A-Za-z._-]*\) Unable to|Debugging turned on|Tracing session)"
        r".*"
    )


def pattern(options: Mapping[str, Any]) -> Pattern:
    opts = check_options(options, {"stats_line": bool})
    stats_kind = LOGIN if opts.get("stats_line", False) else OTHER
    return Pattern(
        programs=("in.qpopper", "qpopper", "popper"),
        rules=(
            Rule("login", _login(), LOGIN, ("POP login by user",), "POP login by user ... at"),
            Rule("stats", _stats(), stats_kind, ("Stats: ",), "end-of-session statistics"),
            Rule("failure", _failure(), OTHER, (": -ERR",), "an -ERR answer (failed login)"),
            Rule("session_start", _session_start(), OTHER, ("Servicing request from",)),
            Rule("notice", _notice(), OTHER, (" ",), "other known notices"),
        ),
        description="Qualcomm qpopper 3.x/4.x (LOG_LOGIN line; Stats line as an option)",
    )

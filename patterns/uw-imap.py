"""uw-imap: the University of Washington IMAP toolkit's ipop3d and imapd (imap-2007f).

PROGRAM TAGS
    ``ipop3d`` and ``imapd`` (the name the daemon was started as, from argv[0]), and the
    ``ipop3sd``/``imapsd`` names some packages give the SSL-only builds.  ``imapd`` is shared
    with Courier and Cyrus; the message shapes do not overlap.

LINES
    Every line that names the client ends in ``host=`` + ``tcp_clienthost()``: ``NAME [IP]``
    when the reverse lookup gave a name, ``[IP]`` when not, IPv6 inside the brackets
    (``[2001:db8::5]``, mapped ``[::ffff:192.0.2.10]``), all cut at 80 characters (``%.80s``).

    login (LOGIN)
        ipop3d ``Login user=alice host=NAME [IP] nmsgs=3/3`` or ``... no mailbox``; imapd
        ``Login user=alice host=NAME [IP]`` without the tail; ``Admin Login user=...`` when
        an administrator opened the mailbox (``user*admin``).
    auth (LOGIN)
        ipop3d's SASL login ``Auth user=alice host=... nmsgs=N/M`` (or ``no mailbox``).
    apop (LOGIN)
        ipop3d ``APOP user=alice host=... nmsgs=N/M`` (or ``no mailbox``).
    authenticated (LOGIN)
        imapd's SASL login ``Authenticated user=alice host=... mech=PLAIN``.
    failure (OTHER)
        ``Login failed|disabled|excessive login failures|SYSTEM BREAK-IN ATTEMPT user=...
        auth=... host=...`` (server_login), ``Login failure``/``Excessive login attempts``
        (older builds), ``Failed ADMIN override of user=...``.
    auth_failure (OTHER)
        ``AUTHENTICATE MECH failure host=...`` and ``AUTHENTICATE MECH invalid host=...``.
    logout (OTHER)
        ``Logout``, ``Autologout``, ``Hangup``, ``Killed``, ``Killed (lost mailbox lock)``,
        ``Command stream end of file, while reading line``, ``Unexpected client disconnect,
        while reading line`` and friends, each ``user=... host=...``; ipop3d's ``Update
        user=... nmsgs=.. ndele=.. nseen=..``.
    connect (OTHER)
        ``pop3 service init from IP``, ``imaps SSL service init from IP``, ``port 1110 service
        init from IP`` (LOG_DEBUG): a connection, not a login.
    notice (OTHER)
        Anonymous logins (``Login anonymous=``, ``Authenticated anonymous=``), ssh/rsh
        ``Preauthenticated user=``, the POP-to-IMAP proxy's ``IMAP login to host=`` (the
        password is checked by the remote server, after this line), ``Admin ADMIN override``,
        ``Login USER failed: unable to set chroot=`` (a server set-up error), mailbox errors
        and pre-authentication protocol noise.

    Some syslog daemons put a bracketed id before the message (Solaris: ``[ID 748625
    mail.info] Login user=...``); a leading ``[...]`` of up to 64 characters is accepted.

SECURITY
    The user name comes first and is the client's text (imapd's LOGIN takes a quoted IMAP
    string, which may hold spaces and ``host=[...]``).  The grammar takes it up to the *last*
    `` host=`` on the line: the daemon writes its own ``host=`` after the user, and a PTR name
    holds only letters, digits, ``.`` and ``-`` (c-client's tcp_name_valid), so no later
    `` host=`` can exist.  After it, exactly ``[NAME ][IP]`` and the daemon's tail must follow
    to the end.  A long PTR name whose ``[IP]`` was cut off by ``%.80s`` does not match: it is
    a near miss (a lost login, never a wrong address).  ``host=UNKNOWN`` and
    ``host=SSH_CLIENT=...`` (not a socket) carry no address and do not match either.

SOURCES
    imap-2007f ``src/ipopd/ipop3d.c`` (``%sLogin``, ``Auth``, ``APOP``, ``Update``,
    ``AUTHENTICATE %s failure``, sayonara's ``%s user=%.80s host=%.80s``),
    ``src/imapd/imapd.c`` (``Login``, ``Authenticated ... mech=``, anonymous, preauth),
    ``src/osdep/unix/env_unix.c`` (server_login's ``Login %s user=%.64s auth=%.64s``,
    ``service init from``), ``src/osdep/unix/tcp_unix.c`` (tcp_clienthost, tcp_name:
    ``%s [%s]``, tcp_name_valid); pop-before-smtp's UW patterns (the ``[...]`` prefix).
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
    host_bracketed_ip,
    lit,
    rest_of_line,
    text_before_last,
    word,
)


def _prefix() -> pp.ParserElement:
    return pp.Optional(pp.Suppress(pp.Regex(r"\[[^\]\n]{1,64}\]")))


def _user_host(keyword: str, admin: bool = False) -> pp.ParserElement:
    """``KEYWORD user=USER host=[NAME ][IP]``: the user up to the last `` host=``."""
    lead = _prefix() + pp.Optional(lit("Admin")) if admin else _prefix()
    return (
        lead
        + lit(keyword + " user=")
        + text_before_last(" host=", "user")
        + lit("host=")
        + host_bracketed_ip("ip")
    )


def _pop_tail() -> pp.ParserElement:
    return pp.Optional(pp.Regex(r"nmsgs=\d+/\d+") | lit("no mailbox"))


def pattern(options: Mapping[str, Any]) -> Pattern:
    check_options(options, {})
    login = _user_host("Login", admin=True) + _pop_tail()
    auth = _user_host("Auth") + _pop_tail()
    apop = _user_host("APOP") + _pop_tail()
    authenticated = _user_host("Authenticated") + lit("mech=") + word("mech")
    failure = (
        _prefix()
        + pp.Regex(
            r"(?:Login (?:failed|disabled|excessive login failures|SYSTEM BREAK-IN ATTEMPT)"
            r" user="
            r"|Login failure user=|Excessive login attempts user="
            r"|Failed \S+ override of user=)"
        )
        + rest_of_line()
    )
    auth_failure = (
        _prefix() + pp.Regex(r"AUTHENTICATE \S+ (?:failure|invalid) host=") + (rest_of_line())
    )
    logout = (
        _prefix()
        + pp.Regex(
            r"(?:Logout|Autologout|Hangup|Killed(?: \([^)\n]{0,40}\))?|Update"
            r"|[A-Za-z][^,=\n]{0,80}, while reading [a-z ]{1,30}) user="
        )
        + rest_of_line()
    )
    connect = _prefix() + pp.Regex(r"(?:[a-z0-9]+ (?:SSL )?service|port \d+ service) init from \S+")
    notice = (
        _prefix()
        + pp.Regex(
            r"(?:Login anonymous=|Authenticated anonymous=|Preauthenticated user="
            r"|IMAP login to host=|Admin \S+ override of user="
            r"|Login \S+ failed: unable to set chroot="
            r"|Error opening or locking INBOX |Fatal (?:mailbox|disk) error "
            r"|Overlong \(\d+\) client literal "
            r"|(?:Line too long|Null command|Missing command) before authentication "
            r"|Anonymous select of )"
        )
        + rest_of_line()
    )
    return Pattern(
        programs=("ipop3d", "imapd", "ipop3sd", "imapsd"),
        description="UW-IMAP ipop3d/imapd (imap-2007)",
        rules=(
            Rule("login", login, LOGIN, ("Login user=", " host=")),
            Rule("auth", auth, LOGIN, ("Auth user=", " host=")),
            Rule("apop", apop, LOGIN, ("APOP user=", " host=")),
            Rule("authenticated", authenticated, LOGIN, ("Authenticated user=", " mech=")),
            Rule("failure", failure, OTHER, (" user=",)),
            Rule("auth_failure", auth_failure, OTHER, ("AUTHENTICATE ",)),
            Rule("logout", logout, OTHER, (" user=",)),
            Rule("connect", connect, OTHER, (" init from ",)),
            # Many shapes and no common word: tried last, only on lines no other rule took.
            Rule("notice", notice, OTHER),
        ),
    )

"""tcpd: TCP Wrappers' ``connect from IP`` line, the address half of a two-line login.

PROGRAM TAGS
    tcpd (and libwrap in a daemon) logs under the tag and pid of the daemon it starts: tcpd
    execs the server in the same process, so the server's own login line later carries the
    same pid.  This pattern claims the tags of the daemons whose login line has no address
    and that are classically run from inetd through tcpd:

    ``pop3d``, ``imap4d``       GNU Mailutils (2.0 and later log no address at all);
    ``gnu-pop3d``               Debian's old GNU pop3d;
    ``vm-pop3d``                vm-pop3d (its own ``Connect from`` has a capital C).

    The ``mailutils`` and ``gnu-pop3d`` patterns also recognize this very text (their 1.x
    daemons wrote it themselves) and, loaded first, take it for those tags; the result is the
    same CONNECT.  popa3d and solid-pop3d recognize tcpd's line in their own patterns.
    Daemons that log the address in their login line (UW-IMAP, qpopper, Courier, Dovecot,
    Cyrus, Teapop) do not need it and are not claimed: a CONNECT nobody completes only takes
    room in the pending table.  Option ``programs`` (a list of tags) adds the tags of other
    daemons run through tcpd whose patterns have an AUTH rule, e.g. a site pattern's.

LINES
    connect (CONNECT): ``connect from 192.0.2.10`` - the pending session of this pid; the
    daemon's AUTH line (``user `alice' logged in ...``) completes it into a login event.
    connect_name (OTHER): ``connect from client.example.net`` or ``connect from
    ident@192.0.2.10``: tcpd writes a host *name* when it looked one up (``-DALWAYS_HOSTNAME``,
    or a hosts.allow rule that needs names) and the ident user when RFC 931 lookups are on.
    Neither is used: no address is taken from a name or from ident text, so such sessions
    give no login (fail closed; turn name lookups off to use this pattern).
    refused (OTHER): ``refused connect from ...`` (hosts.deny).

SECURITY
    The whole message must be exactly ``connect from`` and one full address.  The line is
    only half a login: by itself it never makes an event.  A PTR record made to look like an
    address (``203.0.113.66``) is refused by tcpd's double-reverse check and logged as the
    real address.

SOURCES
    tcp_wrappers 7.6 ``tcpd.c`` (``connect from %s`` with eval_client), ``eval.c``
    (eval_client: ``user@host``, name or address), ``refuse.c`` (``refused connect from``);
    the popa3d and solid-pop3d notes in pop-before-smtp's pattern file; DOMAIN.md section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import (
    ADDRESS_TEXT,
    CONNECT,
    OTHER,
    Pattern,
    Rule,
    check_options,
    checked_regex,
    with_extra_programs,
)

_PROGRAMS = ("pop3d", "imap4d", "gnu-pop3d", "vm-pop3d")


def _connect() -> pp.ParserElement:
    return checked_regex(rf"connect from (?P<ip>{ADDRESS_TEXT})\Z")


def pattern(options: Mapping[str, Any]) -> Pattern:
    opts = check_options(options, {"programs": list})
    return Pattern(
        programs=with_extra_programs(_PROGRAMS, opts),
        rules=(
            Rule("connect", _connect(), CONNECT, ("connect from ",), "connect from IP"),
            Rule(
                "connect_name",
                pp.Regex(r"connect from \S+\Z"),
                OTHER,
                ("connect from ",),
                "connect from a host name or ident@address (not used)",
            ),
            Rule(
                "refused",
                pp.Regex(r"refused connect from \S+\Z"),
                OTHER,
                ("refused connect from ",),
                "hosts.deny refused the client",
            ),
        ),
        description="TCP Wrappers: connect from IP (pairs with the daemon's login line)",
    )

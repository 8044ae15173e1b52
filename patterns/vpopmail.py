"""vpopmail: vchkpw, vpopmail's checkpassword program behind qmail-pop3d and IMAP servers.

PROGRAM TAGS
    ``vpopmail`` (the default ``--enable-log-name``, with LOG_PID) and ``vchkpw``.  The
    message begins with vchkpw's own name for the service: ``vchkpw-pop3:``, ``vchkpw-pop3s:``,
    ``vchkpw-imap:``, ``vchkpw-imaps:`` (chosen from TCPLOCALPORT), and in old versions plain
    ``vchkpw:``.  Option ``programs`` (a list) adds tags for sites built with another log name.

LINES
    login (LOGIN), vpopmail 5.4 and later (only with ``--enable-logging=y`` or ``v``, values
    1 and 4; the default logs failures only)::

        vchkpw-pop3: (PLAIN) login success alice@example.org:192.0.2.10

    The method is ``PLAIN``, ``APOP`` or ``CRAM-MD5``.
    login_system (LOGIN): ``vchkpw-pop3: system password login success alice:192.0.2.10``
    (a /etc/passwd user when vpopmail falls back to system accounts).
    login_old (LOGIN), vpopmail before 5.4, as pop-before-smtp matched it:
    ``vchkpw: login [alice] from 192.0.2.10``, also with a service (``vchkpw-pop3: login
    [alice] from ...``) and without the colon after the name.
    other_service (OTHER): the same success lines for SMTP AUTH (``vchkpw-smtp``,
    ``vchkpw-smtps``, ``vchkpw-submission``), webmail (``vchkpw-webmail``: the address is the
    web server's or unknown, never the mail client's) and unknown ports (``vchkpw-2110``).
    failed (OTHER): ``password fail``, ``vpopmail user not found``, ``user has no password``,
    ``... access denied``, ``invalid user/domain characters``, ``null user name given``,
    ``null password given`` and the other refusals, with or without a service name.

SECURITY
    vchkpw writes ``USER@DOMAIN:IP``: the user and domain pass vpopmail's character checks
    (is_username_valid/is_domain_valid), which refuse ``:``, ``@``, spaces and brackets, so
    the address is everything after the first colon; the grammar still demands exactly one
    user word, one domain word, and one full address to the end of the message.  The address
    is TCPREMOTEIP (tcpserver) or REMOTE_HOST (xinetd) after vchkpw's filter, which turns a
    ``:`` into ``_``: an IPv6 client appears as ``2001_db8__5`` and gives no event (the
    address field accepts dotted quads only); only the ``::ffff:`` prefix of a mapped
    address is stripped by vchkpw itself.  The old form's user in brackets is taken up to
    the *last* ``] from``.

KNOWN LIMITS
    IPv6 clients of a native IPv6 tcpserver are not usable (see above).  vchkpw logs
    successes only when built to; without that the pattern sees failures only.

SOURCES
    vpopmail ``vchkpw.c`` (VchkpwLogName, the LogLine formats, vlog), ``vpopmail.c``
    (get_remote_ip, ok_env_chars, parse_email, is_username_valid); pop-before-smtp's "qmail's
    pop3d" pattern; DOMAIN.md section 3.
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
    checked_regex,
    with_extra_programs,
)

# vchkpw writes IPv4 dotted quads only (it turns the colons of an IPv6 address into "_"), so
# the field takes no colon: a user name ending in ":" or "2001:db8:" can then never combine
# with the real address into another IPv6 address.
_ADDR = r"(?:\d{1,3}\.){3}\d{1,3}"
# vchkpw's service names whose logins are a mail client's POP/IMAP login; the bare "vchkpw"
# of old versions was only used from qmail-pop3d.
_MAIL = r"vchkpw(?:-pop3s?|-imaps?)?"
_OTHER = r"vchkpw-(?:smtps?|submission|webmail|\d{1,5})"
# Characters vpopmail accepts in user and domain names (no space, ":", "@", "[" or "]").
_NAME = r"[!#$%&'*+\-./0-9=?A-Z^_`a-z{|}~]+"


def _success(service: str) -> str:
    return (
        rf"{service}: \((?:PLAIN|APOP|CRAM-MD5|[A-Z0-9-]{{1,14}})\) login success "
        rf"(?P<user>{_NAME}@{_NAME}|{_NAME}):(?P<ip>{_ADDR})\Z"
    )


def pattern(options: Mapping[str, Any]) -> Pattern:
    opts = check_options(options, {"programs": list})
    base = ("vpopmail", "vchkpw")
    failures = (
        r"password fail|vpopmail user not found|user has no password|"
        r"(?:pop|smtp|webmail|imap) access denied|invalid user/domain characters|"
        r"null user name given|null password given|[a-z ]*failed|setgid|setuid|chdir|"
        r"dir auto create|can't write SQL logs"
    )
    return Pattern(
        programs=with_extra_programs(base, opts),
        rules=(
            Rule(
                "login",
                checked_regex(_success(_MAIL)),
                LOGIN,
                (") login success ",),
                "vchkpw-pop3: (PLAIN) login success USER@DOMAIN:IP",
            ),
            Rule(
                "login_system",
                checked_regex(
                    rf"{_MAIL}: system password login success (?P<user>{_NAME}):"
                    rf"(?P<ip>{_ADDR})\Z"
                ),
                LOGIN,
                ("system password login success ",),
                "a system account's login",
            ),
            Rule(
                "login_old",
                checked_regex(rf"{_MAIL}:? login \[(?P<user>.*)\] from (?P<ip>{_ADDR})\Z"),
                LOGIN,
                ("login [", "] from "),
                "vchkpw: login [USER] from IP (before 5.4)",
            ),
            Rule(
                "other_service",
                pp.Regex(
                    rf"{_OTHER}: (?:\([A-Z0-9-]{{1,14}}\) |system password )login success \S*"
                    rf"|{_OTHER}:? login \[.*"
                ),
                OTHER,
                ("login",),
                "a login to SMTP AUTH, webmail or an unknown port",
            ),
            Rule(
                "failed",
                pp.Regex(rf"vchkpw(?:-[a-z0-9]+)?:? (?:{failures}).*"),
                OTHER,
                ("vchkpw",),
                "a refused login or an internal error",
            ),
        ),
        description="vpopmail vchkpw: login success USER@DOMAIN:IP",
    )

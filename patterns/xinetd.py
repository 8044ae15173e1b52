"""xinetd: the START line naming the child pid and the client address of a POP/IMAP service.

PROGRAM TAGS
    ``xinetd`` (xinetd's own pid in the tag; the child's pid is in the message).

LINES
    start (CONNECT), with ``log_on_success`` including ``PID`` and ``HOST``::

        START: pop3 pid=1234 from=192.0.2.10

    The pending session is recorded for the *child's* pid (the ``pid`` result), which is the
    pid the mail daemon then logs under; that daemon's AUTH line (GNU Mailutils
    ``user `alice' logged in ...``, popa3d ``Authentication passed for alice``, ...) completes
    it into a login event.  IPv6 clients appear as ``from=2001:db8::5`` or
    ``from=::ffff:192.0.2.10`` (getnameinfo, numeric).
    exit (END): ``EXIT: pop3 status=0 pid=1234 duration=5(sec)`` (``signal=N`` instead of
    ``status=N``; each field optional) ends the child's session: nothing later can complete
    it.  Enable ``log_on_exit += PID`` so that a pid is forgotten as soon as its process ends.
    start_other (OTHER): a START of a service not in ``services``, a START without ``pid=``
    (nothing to pair it with) or without a usable address.
    exit_other (OTHER): an EXIT without ``pid=`` or of another service.
    fail (OTHER): ``FAIL: pop3 address from=IP`` and other refusals.
    userid (OTHER): ``USERID: pop3 ...`` (an ident answer: attacker text, never used).
    daemon (OTHER): xinetd's own messages (``Started working``, ``Reading included
    configuration file``, ``Exiting...``).

    Option ``services`` (list of xinetd service ids) replaces the default set of POP/IMAP
    service names: ``pop2``, ``pop3``, ``pop-3``, ``pop3s``, ``pop3-ssl``, ``pops``, ``imap``,
    ``imap2``, ``imap3``, ``imap4``, ``imaps``, ``imap4-ssl``, ``imap-ssl``.

SECURITY
    The address is xinetd's own ``from=`` field and must be one full address ending the
    message; the service id and pid are xinetd's.  Only POP/IMAP services are paired: a START
    of another service (ftp, telnet) from an attacker must not wait in the pending table for a
    mail daemon that happens to get the same pid later.  A START is only half a login: an
    event needs a successful-login line of a mail daemon pattern with that very pid.

KNOWN LIMITS
    Without ``PID`` in ``log_on_success`` the START line cannot be paired (OTHER).  With
    ``log_on_success += HOST`` but no ``EXIT`` logging, a child that ends without logging in
    stays pending until the engine's age limit; a later process with the same pid that logs
    no connect line of its own could then be paired with it, so enable ``log_on_exit``.

SOURCES
    xinetd ``xinetd/log.c`` (svc_log_success, svc_log_failure, svc_log_exit, xaddrname),
    ``xinetd/nvlists.c`` (log_on_success/log_on_exit flags); DOMAIN.md section 3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pyparsing as pp

from popwatch.grammar import CONNECT, END, OTHER, Pattern, Rule, check_options, checked_regex

_SERVICES = (
    "pop2",
    "pop3",
    "pop-3",
    "pop3s",
    "pop3-ssl",
    "pops",
    "imap",
    "imap2",
    "imap3",
    "imap4",
    "imaps",
    "imap4-ssl",
    "imap-ssl",
)


def _start(services: str) -> pp.ParserElement:
    return checked_regex(
        rf"START: (?:{services}) pid=(?P<pid>\d{{1,10}}) from=(?P<ip>[0-9A-Fa-f:.]{{2,45}})\Z"
    )


def pattern(options: Mapping[str, Any]) -> Pattern:
    opts = check_options(options, {"services": list})
    services = tuple(opts.get("services", _SERVICES))
    if not services or not all(
        isinstance(s, str) and re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", s) for s in services
    ):
        raise ValueError('option "services": expected a list of xinetd service ids')
    names = "|".join(re.escape(s) for s in services)
    return Pattern(
        programs=("xinetd",),
        rules=(
            Rule("start", _start(names), CONNECT, ("START: ", " pid=", " from="), "START"),
            Rule(
                "exit",
                pp.Regex(
                    rf"EXIT: (?:{names})(?: (?:status|signal)=-?\d+)? pid=(?P<pid>\d{{1,10}})"
                    r"(?: duration=\d+\(sec\))?\Z"
                ),
                END,
                ("EXIT: ", " pid="),
                "EXIT of a POP/IMAP child",
            ),
            Rule("start_other", pp.Regex(r"START: \S+.*"), OTHER, ("START: ",), "other START"),
            Rule("exit_other", pp.Regex(r"EXIT: \S+.*"), OTHER, ("EXIT: ",), "other EXIT"),
            Rule("fail", pp.Regex(r"FAIL: \S+ .*"), OTHER, ("FAIL: ",), "a refused connection"),
            Rule("userid", pp.Regex(r"USERID: \S+ .*"), OTHER, ("USERID: ",), "ident answer"),
            Rule(
                "daemon",
                pp.Regex(
                    r"(?:Started working: \d+ available services?"
                    r"|Reading included configuration file: .*|Exiting\.\.\.)\Z"
                ),
                OTHER,
                ("ing",),
                "xinetd's own messages",
            ),
        ),
        description="xinetd: START: SERVICE pid=CHILD from=IP (pairs with the child's login)",
    )

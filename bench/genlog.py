#!/usr/bin/env python3
"""genlog - write a reproducible, realistic mail log with its ground truth.

SYNOPSIS
    python bench/genlog.py [--seed N] [--lines N] [--out FILE] [--truth FILE.json]
                           [--end-time SECONDS] [--span DURATION] [--lifetime DURATION]
                           [--old] [--clients N]

DESCRIPTION
    Writes N lines of a Debian-style mail log (traditional syslog format, local time, host
    "mailhost") that look like a busy small-ISP mail server:

    * about 95% Postfix traffic: smtpd connect/disconnect, client=, NOQUEUE rejects, lost
      connections, cleanup message-ids, qmgr from=/removed, smtp and local deliveries,
      pickup, anvil statistics, postscreen, with realistic queue ids, message ids and relays;
    * about 2% successful POP3/IMAP logins over a pool of client addresses (default 5,000;
      IPv4 mostly, about one in ten IPv6), written by UW-IMAP (ipop3d/imapd), Dovecot 2.x,
      Courier, Cyrus and qpopper in the formats of ../shared/DOMAIN.md section 3;
    * the rest: failed logins, logouts, session statistics and connection notices of the
      same daemons, some with attacker-chosen text (user names and MAIL FROM addresses that
      contain another address) that a correct parser must not take as a login.

    Lines average about 131 bytes.  Timestamps are whole seconds, never decreasing, the last
    line at --end-time (default: now) and the first --span earlier (default 20m, so that a
    log generated now lies entirely within a 30-minute lifetime for the next ten minutes).
    --old makes the span 3h: only the logins of the last --lifetime count.

    The same --seed, --lines, --end-time, --span and --clients give the same bytes.  The
    generator streams: memory does not grow with --lines (5,000,000 lines take well under a
    minute on one core).

GROUND TRUTH
    --truth FILE.json receives a JSON object:

    ``addresses``   {ip: latest login time} for every address that logged in successfully
                    at or after end_time - lifetime: what relayers.db must hold after a
                    catch-up scan at end_time.  Addresses are normalized as popwatch stores
                    them (IPv4-mapped IPv6 as IPv4, IPv6 compressed lowercase).
    ``logins``      the same for every successful login, whatever its age, so that a caller
                    scanning later can apply its own cutoff.
    ``decoys``      addresses that appear only in failed logins or attacker-controlled text:
                    none of them may ever reach the database.
    ``counts``      lines per kind; ``start_time``, ``end_time``, ``lifetime``, ``lines``,
                    ``bytes``, ``seed``.

    Times are Unix seconds of the line's own (local time) timestamp.

WHAT IT DOES NOT DO
    It writes no RFC 5424, ISO or journal records, no multi-line sessions (popa3d and the like)
    and no IPv4-mapped addresses outside Courier.  It is a load generator with known answers,
    not a fixture of every corner case: those live in fixtures/logs/.

ERRORS
    Bad arguments exit 64 with one line on stderr; an unwritable output exits 73.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
HOST = "mailhost"
SERVER_IP = "192.0.2.1"
DEFAULT_SPAN = 1200.0
OLD_SPAN = 3 * 3600.0
DEFAULT_LIFETIME = 1800.0

# Share of all lines, by class; the remainder is Postfix noise.
LOGIN_SHARE = 0.02
OTHER_LOGIN_SHARE = 0.03

DAEMONS = ("uw", "dovecot", "courier", "cyrus", "qpopper")

_FIRST = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "nina",
    "oscar",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "xena",
    "yves",
    "zoe",
    "anna",
    "bert",
    "cora",
    "dirk",
    "edda",
    "fritz",
    "gina",
    "hans",
    "ines",
    "jan",
    "kai",
    "lena",
    "max",
    "nora",
    "olaf",
    "paul",
    "rita",
    "sven",
    "tina",
    "uwe",
    "vera",
    "wim",
)
_DOMAINS = (
    "example.com",
    "example.net",
    "example.org",
    "mail.example.com",
    "lists.example.org",
    "shop.example",
    "news.example.net",
    "corp.example",
    "bank.example",
    "travel.example",
)
_ISP_SUFFIX = (
    "dyn.example-isp.net",
    "dsl.example-telecom.de",
    "cable.example-broadband.com",
    "pool.example-mobile.net",
    "static.example-hosting.org",
    "customers.example-fiber.nl",
)
_MX = (
    "mx1.example.com",
    "mx2.example.com",
    "mail.example.net",
    "smtp.example.org",
    "aspmx.l.example-mail.com",
    "mx.shop.example",
    "mx01.bank.example",
    "in1.travel.example",
)
_LONG_LIVED = frozenset(("qmgr", "pickup", "anvil", "postscreen", "dovecot", "tlsmgr"))
_HELO = ("localhost", "[192.168.1.10]", "User", "mail.example.com", "desktop-7h2k9q")


def _b62(rng: random.Random, n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choices(alphabet, k=n))


def _hexid(rng: random.Random, n: int) -> str:
    return "".join(rng.choices("0123456789ABCDEF", k=n))


@dataclass(frozen=True)
class Client:
    """A mail user's machine: its address as logged, as stored, and its PTR name."""

    ip: str  # as popwatch stores it
    ptr: str  # reverse name, "" when it has none
    user: str
    v6: bool


def _public_v4(rng: random.Random) -> str:
    while True:
        a = rng.randint(1, 223)
        if a in (10, 127, 0, 100, 169, 172, 192, 198, 203):
            continue
        return f"{a}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def make_clients(rng: random.Random, n: int) -> list[Client]:
    """``n`` distinct client addresses: public-looking IPv4 and 2001:db8::/32 IPv6."""
    seen: set[str] = set()
    out: list[Client] = []
    while len(out) < n:
        v6 = rng.random() < 0.1
        if v6:
            ip = str(
                ipaddress.IPv6Address(
                    (0x20010DB8 << 96)
                    | (rng.getrandbits(32) << 64)
                    | (0 if rng.random() < 0.5 else rng.getrandbits(48))
                    | rng.getrandbits(16)
                )
            )
        else:
            ip = _public_v4(rng)
        if ip in seen:
            continue
        seen.add(ip)
        ptr = ""
        if rng.random() < 0.7:
            tag = ip.replace(".", "-").replace(":", "-")
            ptr = f"{tag}.{rng.choice(_ISP_SUFFIX)}"
        user = rng.choice(_FIRST) + (str(rng.randint(1, 999)) if rng.random() < 0.6 else "")
        out.append(Client(ip, ptr, user, v6))
    return out


@dataclass
class State:
    """Everything the generator remembers: bounded, whatever the number of lines."""

    rng: random.Random
    clients: list[Client]
    busy: list[Client]
    decoys: list[str]
    queue: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    latest: dict[str, int] = field(default_factory=dict)
    decoys_used: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    daemons: tuple[str, ...] = DAEMONS  # formats of the successful logins
    daemons_v6: tuple[str, ...] = DAEMONS[:4]  # qpopper's IPv6 form is not known: none

    def pid(self, prog: str) -> int:
        # Long-lived daemons keep their pid for a while; per-session daemons get new ones.
        p = self.pids.get(prog)
        if p is None or self.rng.random() < (0.0005 if prog in _LONG_LIVED else 0.05):
            p = self.rng.randint(300, 65000)
            self.pids[prog] = p
        return p

    def qid(self) -> str:
        if not self.queue or self.rng.random() < 0.2:
            q = _hexid(self.rng, self.rng.choice((10, 11, 11, 12)))
            self.queue.append(q)
            return q
        return self.queue[self.rng.randrange(len(self.queue))]

    def client(self) -> Client:
        # Half the logins come from a busy tenth of the users (mail clients polling often).
        return self.rng.choice(self.busy if self.rng.random() < 0.5 else self.clients)

    def decoy(self) -> str:
        ip = self.rng.choice(self.decoys)
        self.decoys_used.add(ip)
        return ip


# ---------------------------------------------------------------------------------------------
# Login-related lines.  Each returns (tag, message); a success also records the ground truth
# through the ``login`` callback with the stored form of the address.
# ---------------------------------------------------------------------------------------------


def _uw_host(c: Client, ip: str) -> str:
    return f"{c.ptr} [{ip}]" if c.ptr else f"[{ip}]"


def _nomsgs(rng: random.Random) -> str:
    n = rng.randint(0, 40)
    return f"{rng.randint(0, n)}/{n}"


def success_line(st: State, c: Client, daemon: str) -> tuple[str, str]:
    rng = st.rng
    if daemon == "uw":
        if rng.random() < 0.5:
            verb = rng.choice(("Login", "Login", "Login", "Auth", "APOP"))
            return f"ipop3d[{st.pid('ipop3d')}]", (
                f"{verb} user={c.user} host={_uw_host(c, c.ip)} nmsgs={_nomsgs(rng)}"
            )
        if rng.random() < 0.5:
            return f"imapd[{st.pid('imapd')}]", f"Login user={c.user} host={_uw_host(c, c.ip)}"
        mech = rng.choice(("PLAIN", "LOGIN", "CRAM-MD5"))
        return f"imapd[{st.pid('imapd')}]", (
            f"Authenticated user={c.user} host={_uw_host(c, c.ip)} mech={mech}"
        )
    if daemon == "dovecot":
        svc = rng.choice(("imap-login", "pop3-login"))
        tag = "dovecot" if rng.random() < 0.5 else f"dovecot[{st.pid('dovecot')}]"
        tls = rng.choice((", TLS", ", TLS", "", ", secured"))
        return tag, (
            f"{svc}: Login: user=<{c.user}>, method={rng.choice(('PLAIN', 'PLAIN', 'LOGIN'))}, "
            f"rip={c.ip}, lip={SERVER_IP}, mpid={rng.randint(1000, 60000)}{tls}, "
            f"session=<{_b62(rng, 16)}>"
        )
    if daemon == "courier":
        shown = c.ip if c.v6 else f"::ffff:{c.ip}"
        prog = rng.choice(("pop3d", "pop3d-ssl", "imapd", "imapd-ssl"))
        tag = prog if rng.random() < 0.6 else f"{prog}[{st.pid(prog)}]"
        msg = f"LOGIN, user={c.user}, ip=[{shown}], port=[{rng.randint(1024, 65535)}]"
        if prog.startswith("imapd"):
            msg += ", protocol=IMAP"
        return tag, msg
    if daemon == "cyrus":
        prog = rng.choice(("cyrus/imap", "cyrus/pop3", "cyrus/imaps", "cyrus/pop3s"))
        mech = rng.choice(("plaintext", "PLAIN", "plaintext+TLS", "LOGIN"))
        host = c.ptr or "unknown"
        started = rng.randint(1_600_000_000, 1_800_000_000)
        sid = f"cyrus-{rng.randint(1000, 99999)}-{started}-1-{rng.getrandbits(60)}"
        return f"{prog}[{st.pid(prog)}]", (
            f"login: {host} [{c.ip}] {c.user} {mech} User logged in SESSIONID=<{sid}>"
        )
    # qpopper (IPv4 clients only: see success())
    prog = rng.choice(("in.qpopper", "qpopper", "popper"))
    host = c.ptr or c.ip
    suffix = f" [pop_log.c:{rng.choice((250, 264))}]" if rng.random() < 0.7 else ""
    return f"{prog}[{st.pid(prog)}]", (
        f'(v4.1.0) POP login by user "{c.user}" at ({host}) {c.ip}{suffix}'
    )


def other_login_line(st: State) -> tuple[str, str]:
    """A failed login, a logout, statistics or a connection notice: never a login."""
    rng = st.rng
    c = st.client()
    # Failures come both from real users mistyping and from attackers' addresses.
    attacker = rng.random() < 0.5
    ip = st.decoy() if attacker else c.ip
    v6 = ":" in ip
    user = c.user
    if attacker and rng.random() < 0.3:
        # Attacker-chosen user names that carry another address.
        user = rng.choice(
            (
                f"admin rip={st.decoy()}",
                f"root [{st.decoy()}]",
                f"x host=[{st.decoy()}]",
                f'test" at (x) {st.decoy()}',
            )
        )
    ptr = c.ptr if not attacker else ""
    host = f"{ptr} [{ip}]" if ptr else f"[{ip}]"
    daemon = rng.choice(DAEMONS)
    r = rng.random()
    if daemon == "uw":
        prog = rng.choice(("ipop3d", "imapd"))
        tag = f"{prog}[{st.pid(prog)}]"
        svc = "pop3" if prog == "ipop3d" else "imap"
        if r < 0.35:
            return tag, f"{svc} service init from {ip}"
        if r < 0.65:
            return tag, f"Login failed user={user} auth={user} host={host}"
        if r < 0.75:
            return tag, f"AUTHENTICATE PLAIN failure host={host}"
        if prog == "ipop3d":
            return tag, f"Logout user={c.user} host={host} nmsgs={rng.randint(0, 9)} ndele=0"
        return tag, f"Logout user={c.user} host={host}"
    if daemon == "dovecot":
        tag = "dovecot" if rng.random() < 0.5 else f"dovecot[{st.pid('dovecot')}]"
        svc = rng.choice(("imap-login", "pop3-login"))
        tail = f"rip={ip}, lip={SERVER_IP}, TLS, session=<{_b62(rng, 16)}>"
        if r < 0.4:
            return tag, (
                f"{svc}: Disconnected (auth failed, {rng.randint(1, 3)} attempts in "
                f"{rng.randint(2, 12)} secs): user=<{user}>, method=PLAIN, {tail}"
            )
        if r < 0.6:
            return tag, f"{svc}: Aborted login (no auth attempts in 0 secs): user=<>, {tail}"
        sess = f"<{rng.randint(1000, 60000)}><{_b62(rng, 16)}>"
        if svc == "imap-login":
            return tag, (
                f"imap({c.user}){sess}: Disconnected: Logged out in={rng.randint(50, 9000)} "
                f"out={rng.randint(500, 900000)} deleted=0 expunged=0 trashed=0 hdr_count=0 "
                "hdr_bytes=0 body_count=0 body_bytes=0"
            )
        return tag, (
            f"pop3({c.user}){sess}: Disconnected: Logged out top=0/0, "
            f"retr={rng.randint(0, 9)}/{rng.randint(0, 99999)}, del=0/{rng.randint(0, 9)}, "
            f"size={rng.randint(0, 999999)}"
        )
    if daemon == "courier":
        prog = rng.choice(("pop3d", "pop3d-ssl", "imapd", "imapd-ssl"))
        tag = prog if rng.random() < 0.6 else f"{prog}[{st.pid(prog)}]"
        shown = ip if v6 else f"::ffff:{ip}"
        if r < 0.3:
            return tag, f"Connection, ip=[{shown}]"
        if r < 0.6:
            return tag, f"LOGIN FAILED, user={user}, ip=[{shown}]"
        if r < 0.7:
            return tag, f"Disconnected, ip=[{shown}], time={rng.randint(0, 30)}"
        return tag, (
            f"LOGOUT, user={c.user}, ip=[{shown}], port=[{rng.randint(1024, 65535)}], "
            f"top=0, retr={rng.randint(0, 999)}, rcvd=24, sent={rng.randint(30, 99999)}, "
            f"time={rng.randint(0, 30)}"
        )
    if daemon == "cyrus":
        prog = rng.choice(("cyrus/imap", "cyrus/pop3", "cyrus/imaps", "cyrus/pop3s"))
        tag = f"{prog}[{st.pid(prog)}]"
        if r < 0.3:
            return tag, "accepted connection"
        if r < 0.7:
            return tag, (
                f"badlogin: {ptr or 'unknown'} [{ip}] plaintext {user} SASL(-13): "
                "authentication failure: checkpass failed"
            )
        return tag, (
            "starttls: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits new) "
            "no authentication"
        )
    prog = rng.choice(("in.qpopper", "qpopper", "popper"))
    tag = f"{prog}[{st.pid(prog)}]"
    if v6:
        return (
            tag,
            f'{user} at {ptr or "unknown"} ({ip}): -ERR [AUTH] Password supplied for "{user}" '
            "is incorrect.",
        )
    if r < 0.5:
        # The Stats: line is off by default in popwatch's qpopper pattern: not a login.
        return (
            tag,
            f"Stats: {c.user} 0 0 {rng.randint(0, 9)} {rng.randint(0, 99999)} {ptr or ip} {ip}",
        )
    return tag, (
        f'{user} at {ptr or ip} ({ip}): -ERR [AUTH] Password supplied for "{user}" is incorrect.'
    )


# ---------------------------------------------------------------------------------------------
# Postfix noise
# ---------------------------------------------------------------------------------------------


def _peer(st: State) -> tuple[str, str]:
    rng = st.rng
    ip = st.decoy() if rng.random() < 0.1 else _public_v4(rng)
    name = (
        "unknown"
        if rng.random() < 0.4
        else f"{rng.choice(('mail', 'smtp', 'out', 'mx'))}{rng.randint(1, 99)}."
        f"{rng.choice(_DOMAINS)}"
    )
    return name, ip


def _email(rng: random.Random) -> str:
    sep = rng.choice(("", ".", "_"))
    return f"{rng.choice(_FIRST)}{sep}{rng.choice(_FIRST)}@{rng.choice(_DOMAINS)}"


def _sender(st: State) -> str:
    rng = st.rng
    if rng.random() < 0.03:
        # MAIL FROM is attacker-controlled: text that imitates a login line.
        d = st.decoy()
        return rng.choice(
            (
                f'"POP login by user \\"admin\\" at (x) {d}"@spam.example',
                f"Login.user=admin.host=[{d}]@spam.example",
                f'"user=<a>, rip={d}, lip=1.2.3.4"@spam.example',
            )
        )
    return _email(rng)


def _delays(rng: random.Random) -> str:
    parts = [rng.random() * rng.choice((0.1, 1, 5)) for _ in range(4)]
    shown = "/".join(f"{p:.2g}" for p in parts)
    return f"delay={sum(parts):.2f}, delays={shown}"


def noise_line(st: State) -> tuple[str, str]:
    rng = st.rng
    r = rng.random()
    if r < 0.12:
        n, ip = _peer(st)
        return f"postfix/smtpd[{st.pid('smtpd')}]", f"connect from {n}[{ip}]"
    if r < 0.24:
        n, ip = _peer(st)
        cmds = rng.choice(
            (
                "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
                "ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7",
                "ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
                "ehlo=1 auth=0/1 commands=1/2",
            )
        )
        return f"postfix/smtpd[{st.pid('smtpd')}]", f"disconnect from {n}[{ip}] {cmds}"
    if r < 0.33:
        n, ip = _peer(st)
        msg = f"{st.qid()}: client={n}[{ip}]"
        if rng.random() < 0.15:
            msg += f", sasl_method=PLAIN, sasl_username={rng.choice(_FIRST)}"
        return f"postfix/smtpd[{st.pid('smtpd')}]", msg
    if r < 0.37:
        n, ip = _peer(st)
        rcpt = _email(rng)
        reason = rng.choice(
            (
                f"554 5.7.1 <{rcpt}>: Relay access denied",
                f"450 4.7.1 Client host rejected: cannot find your hostname, [{ip}]",
                f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local "
                "recipient table",
                f"554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org",
            )
        )
        return f"postfix/smtpd[{st.pid('smtpd')}]", (
            f"NOQUEUE: reject: RCPT from {n}[{ip}]: {reason}; from=<{_sender(st)}> "
            f"to=<{rcpt}> proto=ESMTP helo=<{rng.choice(_HELO)}>"
        )
    if r < 0.40:
        n, ip = _peer(st)
        after = rng.choice(("EHLO", "CONNECT", "AUTH", "DATA", "STARTTLS", "RCPT"))
        return f"postfix/smtpd[{st.pid('smtpd')}]", f"lost connection after {after} from {n}[{ip}]"
    if r < 0.50:
        dom = rng.choice(_DOMAINS)
        mid = rng.choice(
            (
                f"{_b62(rng, 24)}@mail.{dom}",
                f"{rng.randint(10**11, 10**12)}.{rng.randint(1000, 99999)}.JavaMail.root@{dom}",
                f"CA+{_b62(rng, 40)}@mail.gmail.com",
                time.strftime(
                    "%Y%m%d%H%M%S.", time.gmtime(rng.randint(1_600_000_000, 1_800_000_000))
                )
                + f"{_hexid(rng, 8)}@{HOST}.{dom}",
            )
        )
        return f"postfix/cleanup[{st.pid('cleanup')}]", f"{st.qid()}: message-id=<{mid}>"
    if r < 0.61:
        return f"postfix/qmgr[{st.pid('qmgr')}]", (
            f"{st.qid()}: from=<{_sender(st)}>, size={rng.randint(600, 4_000_000)}, "
            f"nrcpt={rng.choice((1, 1, 1, 2, 3))} (queue active)"
        )
    if r < 0.71:
        mx = rng.choice(_MX)
        status = rng.choice(
            (
                f"status=sent (250 2.0.0 OK  {rng.randint(1_600_000_000, 1_800_000_000)} "
                f"{_b62(rng, 12).lower()}si{rng.randint(100, 9999)}.{rng.randint(10, 999)} "
                "- gsmtp)",
                f"status=sent (250 2.0.0 Ok: queued as {_hexid(rng, 11)})",
                f"status=sent (250 2.0.0 Ok: queued as {_hexid(rng, 11)})",
                f"status=sent (250 2.0.0 Ok: {rng.randint(200, 90000)} bytes)",
                f"status=sent (250 OK id=1q{_b62(rng, 5)}-000{_b62(rng, 2)}-{_b62(rng, 2)})",
                f"status=deferred (host {mx}[{_public_v4(rng)}] said: 451 4.7.1 Greylisting "
                "in action, please come back later (in reply to RCPT TO command))",
            )
        )
        dsn = "4.7.1" if "deferred" in status else "2.0.0"
        return f"postfix/smtp[{st.pid('smtp')}]", (
            f"{st.qid()}: to=<{_email(rng)}>, relay={mx}[{_public_v4(rng)}]:25, "
            f"{_delays(rng)}, dsn={dsn}, {status}"
        )
    if r < 0.76:
        user = rng.choice(_FIRST)
        how = rng.choice(
            (
                "delivered to mailbox",
                "delivered to mailbox",
                'delivered to command: /usr/bin/procmail -a "$EXTENSION"',
            )
        )
        return f"postfix/local[{st.pid('local')}]", (
            f"{st.qid()}: to=<{user}@{HOST}.example.net>, "
            f"{'orig_to=<' + user + '@example.net>, ' if rng.random() < 0.3 else ''}"
            f"relay=local, {_delays(rng)}, dsn=2.0.0, status=sent ({how})"
        )
    if r < 0.90:
        q = st.queue.popleft() if st.queue else _hexid(rng, 11)
        return f"postfix/qmgr[{st.pid('qmgr')}]", f"{q}: removed"
    if r < 0.94:
        return f"postfix/pickup[{st.pid('pickup')}]", (
            f"{st.qid()}: uid={rng.choice((0, 33, 1000, 1001))} from=<{rng.choice(_FIRST)}>"
        )
    if r < 0.96:
        _, ip = _peer(st)
        return f"postfix/anvil[{st.pid('anvil')}]", (
            f"statistics: max connection rate {rng.randint(1, 9)}/60s for (smtp:{ip}) at "
            f"{rng.choice(MONTHS)} {rng.randint(1, 28):2d} {rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        )
    _, ip = _peer(st)
    port = rng.randint(1024, 65535)
    return f"postfix/postscreen[{st.pid('postscreen')}]", rng.choice(
        (
            f"CONNECT from [{ip}]:{port} to [{SERVER_IP}]:25",
            f"PASS OLD [{ip}]:{port}",
            f"DNSBL rank {rng.randint(1, 5)} for [{ip}]:{port}",
            f"HANGUP after {rng.random() * 5:.1f} from [{ip}]:{port} in tests after SMTP handshake",
        )
    )


# ---------------------------------------------------------------------------------------------


def syslog_prefix(t: int) -> str:
    """``Nov 22 09:15:02 mailhost `` in local time, English month, space-padded day."""
    tm = time.localtime(t)
    return (
        f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {HOST} "
    )


def make_state(seed: int, clients: int, daemons: Sequence[str] = DAEMONS) -> State:
    rng = random.Random(seed)
    pool = make_clients(rng, clients)
    decoys = [f"203.0.113.{i}" for i in range(1, 255)]
    decoys += [f"2001:db8:bad::{i:x}" for i in range(1, 33)]
    fmts = tuple(d for d in DAEMONS if d in daemons)
    v6 = tuple(d for d in fmts if d != "qpopper")
    if not v6:
        # Only qpopper chosen: IPv6 clients log in through it too rather than not at all.
        v6 = fmts
    return State(
        rng=rng,
        clients=pool,
        busy=pool[: max(1, clients // 10)],
        decoys=decoys,
        daemons=fmts,
        daemons_v6=v6,
    )


def daemon_list(text: str) -> tuple[str, ...]:
    """``uw,dovecot`` -> ("uw", "dovecot"); argparse type for --daemons."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in DAEMONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown login format(s) {', '.join(bad) or '(none)'}: use {','.join(DAEMONS)}"
        )
    return names


def success(st: State, t: int) -> tuple[str, str]:
    c = st.client()
    daemons = st.daemons_v6 if c.v6 else st.daemons
    tag, msg = success_line(st, c, st.rng.choice(daemons))
    prev = st.latest.get(c.ip)
    if prev is None or t > prev:
        st.latest[c.ip] = t
    return tag, msg


def generate(st: State, lines: int, start: int, end: int) -> Iterator[str]:
    """Yield ``lines`` log lines (with newline), timestamps from ``start`` to ``end``."""
    rng = st.rng
    counts = st.counts
    span = end - start
    last_t = -1
    prefix = ""
    kinds: tuple[tuple[str, Callable[[State], tuple[str, str]]], ...] = (
        ("other", other_login_line),
        ("noise", noise_line),
    )
    for i in range(lines):
        t = start + (span * i) // (lines - 1) if lines > 1 else end
        if t != last_t:
            prefix = syslog_prefix(t)
            last_t = t
        r = rng.random()
        if r < LOGIN_SHARE:
            kind = "login"
            tag, msg = success(st, t)
        else:
            kind, fn = kinds[0] if r < LOGIN_SHARE + OTHER_LOGIN_SHARE else kinds[1]
            tag, msg = fn(st)
        counts[kind] = counts.get(kind, 0) + 1
        yield f"{prefix}{tag}: {msg}\n"


def write_log(
    out: IO[str],
    *,
    seed: int,
    lines: int,
    end_time: int,
    span: float,
    lifetime: float,
    clients: int = 5000,
    daemons: Sequence[str] = DAEMONS,
) -> dict[str, Any]:
    """Write the log to ``out``; return the ground truth (see the module docstring)."""
    st = make_state(seed, clients, daemons)
    start = end_time - int(span)
    nbytes = 0
    chunk: list[str] = []
    for line in generate(st, lines, start, end_time):
        chunk.append(line)
        if len(chunk) >= 4096:
            s = "".join(chunk)
            nbytes += len(s.encode())
            out.write(s)
            chunk.clear()
    s = "".join(chunk)
    nbytes += len(s.encode())
    out.write(s)
    cutoff = end_time - lifetime
    logins = dict(sorted(st.latest.items()))
    return {
        "seed": seed,
        "lines": lines,
        "bytes": nbytes,
        "start_time": start,
        "end_time": end_time,
        "lifetime": lifetime,
        "counts": dict(sorted(st.counts.items())),
        "addresses": {ip: t for ip, t in logins.items() if t >= cutoff},
        "logins": logins,
        "decoys": sorted(st.decoys_used - set(logins)),
    }


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f'bad duration "{text}" (e.g. 20m, 90s, 3h)') from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"genlog: fatal: {message}", file=sys.stderr)
        sys.exit(64)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="genlog", description="Write a reproducible mail log and its ground truth.")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--out", default="-", help="log file (default: stdout)")
    p.add_argument("--truth", help="write the ground truth as JSON here")
    p.add_argument("--end-time", type=int, default=None, help="Unix time of the last line")
    p.add_argument("--span", type=parse_duration, default=None, help="time covered (20m)")
    p.add_argument("--lifetime", type=parse_duration, default=DEFAULT_LIFETIME)
    p.add_argument("--old", action="store_true", help="span 3h: only the last lifetime counts")
    p.add_argument("--clients", type=int, default=5000, help="client address pool size")
    p.add_argument(
        "--daemons",
        type=daemon_list,
        default=DAEMONS,
        help=f"formats of the successful logins (default: {','.join(DAEMONS)})",
    )
    args = p.parse_args(argv)
    if args.lines < 1 or args.clients < 1:
        p.error("--lines and --clients must be at least 1")
    span = args.span if args.span is not None else OLD_SPAN if args.old else DEFAULT_SPAN
    end = args.end_time if args.end_time is not None else int(time.time())
    try:
        out: TextIO
        if args.out == "-":
            out = sys.stdout
            truth = write_log(
                out,
                seed=args.seed,
                lines=args.lines,
                end_time=end,
                span=span,
                lifetime=args.lifetime,
                clients=args.clients,
                daemons=args.daemons,
            )
        else:
            with open(args.out, "w", encoding="utf-8") as out:
                truth = write_log(
                    out,
                    seed=args.seed,
                    lines=args.lines,
                    end_time=end,
                    span=span,
                    lifetime=args.lifetime,
                    clients=args.clients,
                    daemons=args.daemons,
                )
        if args.truth:
            with open(args.truth, "w", encoding="utf-8") as f:
                json.dump(truth, f, indent=1)
                f.write("\n")
    except OSError as err:
        print(f"genlog: fatal: {err.filename}: {err.strerror}", file=sys.stderr)
        return 73
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Address and time policy: which login events may authorize relaying, and with what stamp.

DESCRIPTION
    A :class:`Policy` sits between the grammars and the relay table.  ``decide(event, now)``
    returns the Unix second to write for the event's address, or None when the event must
    authorize nothing:

    * the address is in an ignored network (``ignore``: loopback by default; an empty list
      ignores nothing) or, with ``ignore_mynetworks``, in Postfix's ``mynetworks``: such
      clients are trusted by the MTA already and an entry for them only makes smtpd restart;
    * the event is older than the lifetime (a catch-up over an old log must not hand out
      stale relay rights): ``event.time <= now - lifetime``;

    and it clamps a future event time to ``now``, so that a clock or year-inference mistake
    can never create a future-stamped entry, which the table treats as pinned forever.

    :func:`postfix_mynetworks` reads ``postconf -h mynetworks`` (through an injectable command
    runner) and follows what Postfix itself follows in that parameter: ``$name`` and
    ``${name}`` references (asked of postconf again), ``/file/name`` patterns (the file's
    words, ``#`` comments allowed), ``[ipv6]/len`` brackets, and ``!pattern`` exclusions.  The
    list is matched first-match-wins, as Postfix does.  IPv4-mapped IPv6 networks
    (``[::ffff:127.0.0.0]/104``) become the IPv4 network they map, because popwatch stores
    mapped client addresses as IPv4.

WHAT IT DOES NOT
    It does not enumerate ``type:table`` lookup tables (``cidr:/etc/postfix/net.cidr``): such a
    pattern is skipped with a warning, since only Postfix can evaluate it.  It does not
    normalize addresses: events arrive normalized (:mod:`popwatch.address`).

DIAGNOSTICS
    ``postfix_mynetworks`` raises :class:`popwatch.errors.ConfigError` when postconf cannot be
    run or fails, when a ``/file`` cannot be read, on a bad network pattern, and on a reference
    loop.  The error names the parameter or file and the offending word.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from popwatch.address import parse_host, quad_value
from popwatch.errors import AddressError, ConfigError
from popwatch.event import LoginEvent

log = logging.getLogger("popwatch.policy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# A runner takes argv and returns stdout; it raises OSError or CalledProcessError on failure.
Runner = Callable[[Sequence[str]], str]

_MAX_DEPTH = 16  # deeper nesting of $var and /file references than this is a loop
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True)
class NetRule:
    """One element of an ordered network list: ``negate`` means "!pattern" (not ignored)."""

    network: Network
    negate: bool = False


def run_command(argv: Sequence[str]) -> str:
    """The default runner: run argv, return stdout; errors surface as exceptions."""
    done = subprocess.run(
        list(argv), check=True, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    return done.stdout


class Policy:
    """Decide whether a login event authorizes its address, and the stamp to write."""

    def __init__(self, ignore: Iterable[Network | NetRule], lifetime: float) -> None:
        if lifetime <= 0:
            raise ValueError("lifetime must be greater than zero")
        self.lifetime = float(lifetime)
        self.rules: tuple[NetRule, ...] = tuple(
            r if isinstance(r, NetRule) else NetRule(r) for r in ignore
        )
        # The rules as integers: (version, network address, netmask, negate).  The test
        # below is what "addr in network" does, without building an address object per login.
        self._ints = tuple(
            (
                r.network.version,
                int(r.network.network_address),
                int(r.network.netmask),
                r.negate,
            )
            for r in self.rules
        )

    def ignored(self, ip: str) -> bool:
        """True when the first rule matching ``ip`` is a positive one (first match wins)."""
        value = quad_value(ip)  # the common case, without building an address object
        if value is not None:
            version = 4
        else:
            try:
                addr = parse_host(ip)
            except AddressError:
                return True  # not a host address: never write it (fail closed)
            version, value = addr.version, int(addr)
        for v, network, mask, negate in self._ints:
            if v == version and value & mask == network:
                return not negate
        return False

    def stamp(self, event_time: float, now: float) -> int | None:
        """The stamp for a login at ``event_time``; None when it is older than the lifetime."""
        if event_time <= now - self.lifetime:
            return None
        return int(min(event_time, now))

    def decide(self, event: LoginEvent, now: float) -> int | None:
        """The stamp to write for ``event``, or None when it authorizes nothing."""
        stamp = self.stamp(event.time, now)
        if stamp is None or self.ignored(event.ip):
            return None
        return stamp


def parse_network(word: str) -> Network:
    """One Postfix-style network word: ``192.0.2.0/24``, ``192.0.2.7``, ``[2001:db8::]/32``.

    Host bits below the mask are allowed (Postfix only warns about them); an IPv4-mapped IPv6
    network becomes the IPv4 network it maps.  Raises ValueError."""
    text = word
    m = re.fullmatch(r"\[([^\]]*)\](/\d+)?", text)
    if m:
        text = m.group(1) + (m.group(2) or "")
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        v4 = net.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network(f"{v4}/{net.prefixlen - 96}", strict=False)
    return net


def postfix_mynetworks(
    runner: Runner = run_command,
    postconf: Sequence[str] = ("postconf",),
    read_file: Callable[[Path], str] = lambda p: p.read_text(encoding="utf-8"),
) -> tuple[NetRule, ...]:
    """Postfix's ``mynetworks`` as ordered rules, following ``$var`` and ``/file`` references.

    ``postconf`` is the command prefix (``("postconf", "-c", "/etc/postfix-out")`` for another
    instance).  Raises ConfigError with the place and the reason."""
    rules: list[NetRule] = []

    def param(name: str) -> str:
        argv = [*postconf, "-h", name]
        try:
            return runner(argv)
        except FileNotFoundError:
            raise ConfigError(f'ignore_mynetworks: cannot run "{argv[0]}": not installed') from None
        except subprocess.CalledProcessError as err:
            why = (err.stderr or "").strip().splitlines()
            reason = why[-1] if why else f"exit status {err.returncode}"
            raise ConfigError(f'ignore_mynetworks: "{" ".join(argv)}" failed: {reason}') from None
        except (OSError, subprocess.SubprocessError) as err:
            raise ConfigError(f'ignore_mynetworks: cannot run "{" ".join(argv)}": {err}') from None

    def expand(text: str, where: str, negate: bool, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ConfigError(f"{where}: references nested too deeply (a loop?)")
        for word in re.split(r"[\s,]+", text):
            if word:
                element(word, where, negate, depth)

    def element(word: str, where: str, negate: bool, depth: int) -> None:
        neg = negate
        while word.startswith("!"):
            neg, word = not neg, word[1:]
        if not word:
            raise ConfigError(f'{where}: bad pattern "!" without a network')
        var = re.fullmatch(r"\$(?:\{([A-Za-z0-9_]+)\}|\(([A-Za-z0-9_]+)\)|([A-Za-z0-9_]+))", word)
        if var:
            name = next(g for g in var.groups() if g)
            expand(param(name), f"postconf parameter {name}", neg, depth + 1)
        elif word.startswith("/"):
            path = Path(word)
            try:
                content = read_file(path)
            except (OSError, UnicodeDecodeError) as err:
                reason = getattr(err, "strerror", None) or str(err)
                raise ConfigError(f"{where}: cannot read {path}: {reason}") from None
            lines = (line.split("#", 1)[0] for line in content.splitlines())
            expand(" ".join(lines), str(path), neg, depth + 1)
        else:
            try:
                rules.append(NetRule(parse_network(word), neg))
            except ValueError:
                if re.match(r"[A-Za-z][A-Za-z0-9_+-]*:", word):
                    # type:table - only Postfix can evaluate it; say so instead of guessing.
                    log.warning(
                        '%s: lookup table "%s" cannot be listed: its networks are not ignored',
                        where,
                        word,
                    )
                    return
                raise ConfigError(f'{where}: bad network "{word}"') from None

    expand(param("mynetworks"), "postconf parameter mynetworks", False, 0)
    return tuple(rules)

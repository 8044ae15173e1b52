"""Building blocks and declarations for pattern authors (files in ``patterns/``).

A pattern file describes one daemon family.  It defines one function::

    def pattern(options: Mapping[str, Any]) -> Pattern

that builds and returns a :class:`Pattern`: the syslog program tags it claims and its
:class:`Rule` s.  ``options`` is the ``[pattern.NAME]`` table of the configuration (empty when
absent); a pattern rejects unknown option keys by raising ``ValueError`` with a message.

Each rule is a pyparsing grammar for the *whole message* (the part after the syslog header).
The engine parses with ``parse_all=True``; a rule that matches only part of a message does not
match.  A LOGIN rule must name the client address result ``ip``; it may name ``user``.  The
address must be taken from the field the daemon itself writes, never found by searching the
message: user names, PTR host names and session ids are attacker-controlled text.

Where a daemon writes attacker-controlled free text before its own fields (a user name with
spaces, a quoted user), use :func:`text_before_last`: it takes everything up to the *last*
occurrence of a delimiter, and the daemon-written fields after it are then parsed strictly.
Since the daemon always writes its own fields after the user's text, the last delimiter is the
daemon's; an ambiguous or malformed line simply does not match (fail closed).

Rule kinds:

``LOGIN``    a successful login whose message carries the client address (``ip``).
``CONNECT``  a session start that carries the client address but is not a login (popa3d's
             ``Session from IP``, tcpd's ``connect from IP``, xinetd's ``START: ... pid=N
             from=IP``).  Remembered per (host, pid) - the rule may name a ``pid`` result to
             override the header's pid (xinetd logs the child's pid).
``AUTH``     a successful login without an address; completes the CONNECT of the same
             (host, pid) into a login event.
``END``      the session of this pid is over (forget its CONNECT).
``OTHER``    a recognized line that is not a login (failures, logouts, statistics): it is
             counted, and it keeps the line out of ``popwatch test``'s near misses.

``keywords`` is the cheap prefilter: the rule's grammar runs only on messages that contain
every keyword as a plain substring.  Give each rule at least one keyword that every line it
matches must contain; this is what keeps the daemon fast on a busy mail log.  A rule without
keywords runs on every claimed line that reaches it: acceptable for a last OTHER rule that
groups shapes with no word in common.

Rules are tried in order and the first whose grammar matches the whole message decides,
across all patterns that claim the program (in load order: shipped ones by name, then site
ones).  An OTHER rule that matches too much therefore hides a later LOGIN rule - of this
pattern or of another pattern sharing the tag (``imapd`` is UW-IMAP's, Courier's and Cyrus's):
keep every rule anchored to the daemon's own words.  The fixture harness runs every fixture
with all shipped patterns to catch exactly that.

Evidence: every shipped pattern has an annotated sample log ``fixtures/logs/NAME.log`` (format in
``fixtures/logs/README.md``); ``patterns/uw-imap.py`` and ``patterns/dovecot.py`` are the
reference examples.  Site patterns are tried with ``popwatch test --pattern FILE.py LOG``.

Example::

    from popwatch.grammar import LOGIN, OTHER, Pattern, Rule, bracketed_ip, lit, word

    def pattern(options):
        login = lit("Login user=") + word("user") + lit("host=") + bracketed_ip("ip")
        return Pattern(programs=("ipop3d",), rules=(Rule("login", login, LOGIN, ("Login",)),))

Two-line sessions (popa3d): ``Rule("session", lit("Session from") + ip_address("ip"), CONNECT,
("Session from",))`` and ``Rule("passed", lit("Authentication passed for") + word("user"), AUTH,
("Authentication passed",))``; the engine pairs them by (syslog host, pid), bounded in number
and age (:mod:`popwatch.sessions`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pyparsing as pp

from popwatch.address import normalize_host
from popwatch.errors import AddressError

LOGIN: Final = "login"
CONNECT: Final = "connect"
AUTH: Final = "auth"
END: Final = "end"
OTHER: Final = "other"
KINDS: Final = (LOGIN, CONNECT, AUTH, END, OTHER)

# Results a LOGIN/CONNECT rule must name, per kind.
REQUIRED_RESULTS: Final = {LOGIN: ("ip",), CONNECT: ("ip",), AUTH: (), END: (), OTHER: ()}


@dataclass(frozen=True)
class Rule:
    """One named alternative of a pattern."""

    name: str
    grammar: pp.ParserElement
    kind: str = LOGIN
    keywords: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f'rule "{self.name}": unknown kind "{self.kind}"')
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f'rule "{self.name}": name must be lowercase letters, digits, _')
        if isinstance(self.keywords, str):
            raise ValueError(f'rule "{self.name}": keywords must be a tuple of strings')


@dataclass(frozen=True)
class Pattern:
    """A daemon family: the program tags it claims and its rules, tried in order."""

    programs: tuple[str, ...]
    rules: tuple[Rule, ...]
    description: str = ""
    name: str = ""  # filled from the file name by the loader
    # Optional check of the syslog host name field, for sites that receive remote syslog:
    # when not empty, only lines whose host is in this set are considered.
    hosts: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.programs:
            raise ValueError("a pattern must claim at least one program tag")
        if not self.rules:
            raise ValueError("a pattern must have at least one rule")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique within a pattern")


def check_options(options: Mapping[str, Any], known: Mapping[str, type]) -> dict[str, Any]:
    """Validate a pattern's ``[pattern.NAME]`` table; raise ValueError naming the bad key."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ValueError(
                f'unknown option "{key}" (known: {", ".join(sorted(known)) or "none"})'
            )
        want = known[key]
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ValueError(f'option "{key}": expected {want.__name__}, got {value!r}')
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Building blocks.  Every function returns a fresh element, so patterns can name results freely.
# Whitespace: pyparsing skips spaces and tabs between tokens by default; blocks that must be
# adjacent (``key=value``) are single Regex tokens, so no space can sneak in between.
# ---------------------------------------------------------------------------------------------

_IPV4_RE: Final = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
# Text shaped like an IPv4 or IPv6 address, for a named group of a checked_regex (which
# validates and normalizes what it captures): the characters of both forms, 2 to 45 of them.
ADDRESS_TEXT: Final = r"[0-9A-Fa-f:.]{2,45}"
# Candidate IPv6 text (validated by ipaddress afterwards); must contain a colon.
_IPV6_RE: Final = r"(?=[0-9A-Fa-f:.]*:)" + ADDRESS_TEXT


def _validate_ip(s: str, loc: int, toks: pp.ParseResults) -> str:
    try:
        return normalize_host(toks[0])
    except AddressError:
        raise pp.ParseException(s, loc, "not a valid host address") from None


def ipv4(name: str | None = None) -> pp.ParserElement:
    """A dotted-quad IPv4 address, octets 0-255, not followed by another digit or dot-digit."""
    el = pp.Regex(_IPV4_RE + r"(?![0-9]|\.[0-9])").set_name("IPv4 address")
    el.add_parse_action(_validate_ip)
    return el(name) if name else el


def ipv6(name: str | None = None) -> pp.ParserElement:
    """An IPv6 address (compressed, full, or with embedded IPv4); ``::ffff:a.b.c.d`` comes out
    as ``a.b.c.d``.  Not followed by more address characters."""
    el = pp.Regex(_IPV6_RE + r"(?![0-9A-Fa-f:.])").set_name("IPv6 address")
    el.add_parse_action(_validate_ip)
    return el(name) if name else el


def ip_address(name: str | None = "ip") -> pp.ParserElement:
    """An IPv6 or IPv4 address, normalized (lowercase, compressed, mapped IPv4 unwrapped)."""
    el = (ipv6() | ipv4()).set_name("IP address")
    return el(name) if name else el


def bracketed_ip(name: str | None = "ip") -> pp.ParserElement:
    """``[192.0.2.10]`` or ``[2001:db8::5]`` (no spaces inside the brackets)."""
    el: pp.ParserElement = pp.Combine(
        pp.Suppress("[") + ip_address(None) + pp.Suppress("]"), adjacent=True
    )
    el = el.set_name("[IP address]")
    return el(name) if name else el


def lit(text: str) -> pp.ParserElement:
    """A literal string, suppressed from the results."""
    return pp.Suppress(pp.Literal(text))


def word(name: str | None = None, exclude: str = "") -> pp.ParserElement:
    """A run of non-space characters (minus ``exclude``): user names, mechanisms, ids."""
    chars = "".join(c for c in pp.printables if c not in exclude)
    extra = "".join(chr(c) for c in range(0x80, 0x250))  # Latin letters in user names
    el = pp.Word(chars + extra).set_name("word")
    return el(name) if name else el


def hostname(name: str | None = None) -> pp.ParserElement:
    """A DNS host name as a resolver returns it (letters, digits, ``.``, ``-``, ``_``).  A PTR
    name is attacker-controlled text: never take an address out of it."""
    el = pp.Regex(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,253})").set_name("host name")
    return el(name) if name else el


def number(name: str | None = None) -> pp.ParserElement:
    el = pp.Regex(r"\d+").set_name("number")
    return el(name) if name else el


def key_value(key: str, value: pp.ParserElement | None = None, sep: str = "=") -> pp.ParserElement:
    """``key=value`` as one adjacent token; ``value`` defaults to a run of characters other
    than space and comma.  The value is returned under the result name ``key``."""
    if value is None:
        value = pp.Regex(r"[^\s,]*")
    return pp.Combine(pp.Suppress(pp.Literal(key + sep)) + value, adjacent=True)(key)


def text_before_last(delimiter: str, name: str = "user") -> pp.ParserElement:
    """Free text up to the *last* ``delimiter`` on the line (the delimiter itself is left for
    the next element to match).  For attacker-controlled text that the daemon writes before
    its own fields; see the module docstring for why the last delimiter is the right one."""
    return pp.Regex(rf"(?P<{name}>.*)(?={re.escape(delimiter)})")


def quoted(name: str | None = None, quote: str = '"') -> pp.ParserElement:
    """A quoted string without escapes whose content has no quote character, e.g. ``"alice"``."""
    q = re.escape(quote)
    el = pp.Regex(rf"{q}(?P<_q>[^{q}]*){q}")
    el.add_parse_action(lambda t: t["_q"])
    return el(name) if name else el


def rest_of_line(name: str | None = None) -> pp.ParserElement:
    """Everything to the end of the message (for OTHER rules; never for an address)."""
    el = pp.Regex(r".*")
    return el(name) if name else el


def host_bracketed_ip(
    name: str | None = "ip", host: str | None = "client_host"
) -> pp.ParserElement:
    """``client.example.net [192.0.2.10]`` or ``[192.0.2.10]``: an optional host name (under
    the result name ``host``, default ``client_host``) then the bracketed address (under
    ``name``), the shape UW-IMAP,
    Cyrus and teapop write.  The name is a PTR record and may look like an address
    (``203.0.113.66.example.net``, ``203.0.113.66``): only the bracketed part is the address.
    A truncated field that lost its ``]`` does not match."""
    name_el = hostname(host) if host else hostname()
    return pp.Optional(name_el) + bracketed_ip(name)


def _walk(element: pp.ParserElement) -> list[pp.ParserElement]:
    out: list[pp.ParserElement] = []
    seen: set[int] = set()
    todo = [element]
    while todo:
        el = todo.pop()
        if id(el) in seen:
            continue
        seen.add(id(el))
        out.append(el)
        if isinstance(el, pp.ParseExpression):
            todo.extend(el.exprs)
        elif isinstance(el, pp.ParseElementEnhance) and el.expr is not None:
            todo.append(el.expr)
    return out


def result_names(element: pp.ParserElement) -> set[str]:
    """The result names a grammar declares: ``(name)`` on any sub-element and the named groups
    of its Regex elements.  (A parse action may add more; see :func:`may_name`.)"""
    names: set[str] = set()
    for el in _walk(element):
        if el.resultsName:
            names.add(el.resultsName)
        if isinstance(el, pp.Regex) and el.re is not None:
            names.update(el.re.groupindex)
    return names


# Parse actions of the building blocks above: they never add result names.
_PLAIN_ACTIONS: Final = frozenset({"_validate_ip", "<lambda>"})


def may_name(element: pp.ParserElement, name: str) -> bool:
    """False only when ``element`` certainly cannot produce the result ``name``: it declares
    no such name and has no parse action of the pattern author's that could add it.  The
    loader uses it to reject a LOGIN or CONNECT rule without ``ip`` (:data:`REQUIRED_RESULTS`)
    before any log line is read."""
    if name in result_names(element):
        return True
    return any(
        getattr(action, "__name__", "") not in _PLAIN_ACTIONS
        for el in _walk(element)
        for action in el.parseAction
    )


def checked_regex(regex: str, *, also_addresses: tuple[str, ...] = ()) -> pp.ParserElement:
    """One regex for the whole message whose named group ``ip`` must be one full host address
    (normalized in the results; anything else makes the rule not match).  Groups named in
    ``also_addresses`` must be host addresses too (checked, left as written).  For daemons
    whose line is simplest written as one anchored regex; the regex must still take the
    address only from the daemon's own field.  ``ADDRESS_TEXT`` is the usual body of the
    ``ip`` group: ``rf"from (?P<ip>{ADDRESS_TEXT})\\Z"``."""
    el = pp.Regex(regex)

    def check(s: str, loc: int, toks: pp.ParseResults) -> None:
        try:
            toks["ip"] = normalize_host(toks["ip"])
            for name in also_addresses:
                if name in toks:
                    normalize_host(toks[name])
        except (AddressError, KeyError):
            raise pp.ParseException(s, loc, "not a host address") from None

    el.add_parse_action(check)
    return el


def with_extra_programs(base: tuple[str, ...], options: Mapping[str, Any]) -> tuple[str, ...]:
    """``base`` plus the tags in the pattern's ``programs`` option (a list of program names a
    site's daemon logs under), without repeats; ValueError for anything but such a list."""
    extra = options.get("programs", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) and p for p in extra):
        raise ValueError('option "programs": expected a list of program names')
    return base + tuple(p for p in extra if p not in base)

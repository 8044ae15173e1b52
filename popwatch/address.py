"""Client address normalization: the one definition of a relay table key's address part.

``normalize_host(text)`` accepts exactly one full IPv4 or IPv6 host address and returns its
canonical text: IPv4 dotted quad; IPv6 lowercase and compressed; an IPv4-mapped IPv6 address
(``::ffff:192.0.2.10``) as the plain IPv4 address, because that is how Postfix and sendmail
present such a client.  Everything else raises :class:`popwatch.errors.AddressError`:
networks (``10.0.0.0/8``), truncated forms (``10.1`` - Postfix would also match it as a network
prefix, so such a key opens a whole network), out-of-range octets, zone ids, whitespace.

A canonical dotted quad (four decimal octets 0-255 without leading zeros, ASCII digits) takes
a fast path that gives the same answer as :mod:`ipaddress` (a property test compares them):
most addresses in a mail log are such quads, and :mod:`ipaddress` parses in pure Python.

It does not know about key prefixes, trailing NULs or the ``IPv6:`` form; those are the
store's business (:mod:`popwatch.store`).
"""

from __future__ import annotations

import ipaddress
import re

from popwatch.errors import AddressError

_MAX_LEN = 45  # longest textual IPv6 (with embedded IPv4) address
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
# Exactly the texts that are their own canonical IPv4 form; [0-9], not \d (Unicode digits).
_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def parse_host(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse one full host address, unwrapping IPv4-mapped IPv6; raise AddressError."""
    if isinstance(text, str):
        m = _QUAD.fullmatch(text)
        if m is not None:
            a, b, c, d = m.groups()
            return ipaddress.IPv4Address(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))
    if not isinstance(text, str) or not text or len(text) > _MAX_LEN:
        raise AddressError(f'bad address "{_shown(text)}": not a host address')
    if text != text.strip() or any(c.isspace() for c in text):
        raise AddressError(f'bad address "{_shown(text)}": contains white space')
    if "/" in text or "%" in text:
        raise AddressError(f'bad address "{_shown(text)}": a host address has no mask or zone')
    if ":" not in text and text.count(".") != 3:
        # ipaddress already refuses "10.1"; say why in words an admin understands.
        raise AddressError(
            f'bad address "{_shown(text)}": not a full IPv4 address '
            "(a truncated key would match a whole network)"
        )
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise AddressError(f'bad address "{_shown(text)}": not an IPv4 or IPv6 address') from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def quad_value(text: str) -> int | None:
    """The 32-bit value of a canonical dotted quad; None for any other text (use
    :func:`parse_host` for those)."""
    m = _QUAD.fullmatch(text)
    if m is None:
        return None
    a, b, c, d = m.groups()
    return int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)


def normalize_host(text: str) -> str:
    """Return the canonical text of one full host address; raise AddressError."""
    if isinstance(text, str) and _QUAD.fullmatch(text) is not None:
        return text  # already canonical
    return str(parse_host(text))


def _shown(text: object) -> str:
    s = repr(text)[1:-1] if isinstance(text, str) else repr(text)
    return s if len(s) <= 60 else s[:57] + "..."

"""Key and value forms of the relay table: the text the MTA looks up, and how it is stored.

NAME
    popwatch.store.keys - address <-> table key, stamp <-> table value

DESCRIPTION
    A key is ``key_prefix`` + (``ipv6_prefix`` for IPv6 clients) + the normalized address
    (:func:`popwatch.address.normalize_host`), all in lowercase: ``192.0.2.10``,
    ``pop:192.0.2.10``, ``ipv6:2001:db8::5``.  Lowercase because both MTAs fold the lookup
    key to lowercase unless the map was declared case-sensitive (Postfix hash tables by
    default, sendmail ``K`` maps without ``-f``), and ``makemap``/``postmap`` fold the keys
    they write the same way: ``IPv6:2001:db8::5`` in the file would never match.  A value is
    the ASCII decimal Unix time.  In the ``postfix`` form
    both key and value carry one trailing NUL byte, as ``postmap`` writes them; in the
    ``sendmail`` form neither does, as ``makemap`` writes them.

    :class:`KeyCodec` is shared by every store implementation so that they agree exactly on
    what is a key of ours.  It does no I/O.

    Speed: the expiry of 100,000 entries decodes every key and must take well under a
    second, so text that is already canonical is recognized without :mod:`ipaddress`: a
    dotted quad without leading zeros by one regular expression, an IPv6 address by the C
    library's ``inet_pton``/``inet_ntop`` round trip (same compression rules as Python's:
    lowercase, longest run of two or more zero groups, the first on a tie).  Anything else,
    dotted IPv6 forms included, takes the slow path through
    :func:`popwatch.address.normalize_host`, which is the definition; both agree by test.

    Decoding is strict on purpose: a key that is not exactly the canonical form of one full
    host address (``10.1``, ``10.0.0.0/8``, ``2001:DB8::5``, a key without our prefix) is not
    ours.  Postfix would match ``10.1`` as a *network*, so such an entry must be shown to the
    administrator, never silently used or rewritten.

ERRORS
    ``encode_key`` raises :class:`popwatch.errors.AddressError` for text that is not one full
    host address; ``encode_value`` raises ValueError for a stamp that is not a non-negative
    integer (a programming error, not an input error).  Decoding never raises: it returns
    None together with a reason.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable

from popwatch.address import normalize_host
from popwatch.errors import AddressError

NUL = b"\0"

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_V4_CANONICAL = re.compile(_V4)


def canonical_host(text: str) -> str:
    """``normalize_host(text)``, without its cost when ``text`` is canonical already."""
    if _is_canonical(text):
        return text
    return normalize_host(text)


def _no_match(raw: bytes) -> None:
    return None


def _is_canonical(text: str) -> bool:
    """True only when ``normalize_host(text) == text``; False means "ask normalize_host"."""
    if not isinstance(text, str):
        return False
    if ":" not in text:
        return _V4_CANONICAL.fullmatch(text) is not None
    if "." in text or len(text) > 39:
        return False  # inet_ntop writes some addresses dotted where Python does not
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)) == text
    except (OSError, ValueError):
        return False


class KeyCodec:
    """Address and stamp to key and value bytes, and back, for one set of store options."""

    def __init__(self, key_prefix: str = "", ipv6_prefix: str = "") -> None:
        self.key_prefix = key_prefix.lower()
        self.ipv6_prefix = ipv6_prefix.lower()
        # The common stored key, prefix + dotted quad (+ NUL), recognized in one match.
        self.quick_key: Callable[[bytes], re.Match[bytes] | None] = _no_match
        if self.key_prefix.isascii():
            prefix = re.escape(self.key_prefix.encode("ascii"))
            self.quick_key = re.compile(prefix + b"(" + _V4.encode("ascii") + b")\0?").fullmatch

    def map_key(self, ip: str) -> str:
        """The key text the MTA looks up for ``ip`` (no NUL); AddressError for a bad ip."""
        host = canonical_host(ip)
        if ":" in host:
            return f"{self.key_prefix}{self.ipv6_prefix}{host}"
        return f"{self.key_prefix}{host}"

    def encode_key(self, ip: str, nul: bool) -> bytes:
        raw = self.map_key(ip).encode("ascii")
        return raw + NUL if nul else raw

    @staticmethod
    def encode_value(stamp: int, nul: bool) -> bytes:
        if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0:
            raise ValueError(f"bad timestamp {stamp!r}: must be a non-negative integer")
        raw = str(stamp).encode("ascii")
        return raw + NUL if nul else raw

    def ip_of(self, key: str) -> tuple[str | None, str]:
        """``(address, "")`` for a key of ours in canonical form, else ``(None, reason)``."""
        text = key
        if self.key_prefix:
            if not text.startswith(self.key_prefix):
                return None, f'no "{self.key_prefix}" prefix'
            text = text[len(self.key_prefix) :]
        if self.ipv6_prefix and text.startswith(self.ipv6_prefix):
            text = text[len(self.ipv6_prefix) :]
            v6_form = True
        else:
            v6_form = False
        if _is_canonical(text):
            host = text
        else:
            try:
                host = normalize_host(text)
            except AddressError as err:
                return None, _reason(err)
        if host != text:
            return None, f'not in canonical form (would be "{self.map_key(host)}")'
        if self.ipv6_prefix and (":" in host) != v6_form:
            return None, f'not in canonical form (would be "{self.map_key(host)}")'
        return host, ""

    def decode_key(self, raw: bytes) -> tuple[str | None, str]:
        """Like :meth:`ip_of` for stored bytes (one trailing NUL allowed)."""
        match = self.quick_key(raw)
        if match is not None:
            return match[1].decode("ascii"), ""
        if raw.endswith(NUL):
            raw = raw[:-1]
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None, "not ASCII"
        return self.ip_of(text)

    @staticmethod
    def decode_value(raw: bytes) -> int | None:
        """The stamp of a stored value (one trailing NUL allowed), None when not all digits."""
        if raw.endswith(NUL):
            raw = raw[:-1]
        if not raw or not raw.isdigit() or len(raw) > 20:
            return None
        return int(raw)


def sort_key(ip: str) -> tuple[int, int]:
    """Numeric address order, IPv4 before IPv6 (the order ``list`` and ``dump`` print)."""
    addr = ipaddress.ip_address(ip)
    return addr.version, int(addr)


def _reason(err: AddressError) -> str:
    # AddressError texts start with 'bad address "...": '; keep only the why.
    text = str(err)
    return text.split('": ', 1)[1] if '": ' in text else text

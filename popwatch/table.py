"""The vsmtprelay semantics on top of any relay table: add, delete, expire, list, dump, load.

NAME
    popwatch.table - what the admin commands and the daemon's expiry do to a Store

DESCRIPTION
    "Old" means a timestamp not in the future (``stamp <= now``).  ``expire``/``select``
    without ``minutes`` cover every old entry; with ``minutes`` N they cover the entries at
    least N minutes old (``stamp <= now - 60 * N``), so ``expire 0`` is ``expire``.  A
    future timestamp *pins* an entry: only ``delete`` or ``load`` removes it.  ``now`` is
    always passed in (integer Unix seconds); this module never reads the clock.

    Listing format, as vsmtprelay printed it, valid ``makemap hash`` and ``postmap`` input::

        # timestamp (UTC): Tue Sep 22 22:15:27 1998
        10.11.12.13 906502527

    Entries are sorted by address, numerically, IPv4 before IPv6; the key is the store's
    :meth:`map_key` (``pop:10.11.12.13``, ``ipv6:2001:db8::5`` when so configured: keys are
    lowercase, see :mod:`popwatch.store.keys`).

    JSON (``--json``) is one array of objects, sorted the same way::

        [{"address": "10.11.12.13", "key": "10.11.12.13", "timestamp": 906502527,
          "utc": "1998-09-22T22:15:27Z", "pinned": false}]

    ``parse_listing`` reads that text back (``load``): blank lines and lines starting with
    ``#`` are skipped; every other line is ``KEY TICKS``; keys may carry the configured
    prefixes (in any case) or be plain addresses.  All bad lines are collected with their
    numbers so the caller can report them all and write nothing.  A repeated address: the
    last line wins.

ERRORS
    AddressError for a bad address given to ``add``/``delete``; StoreError from the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from popwatch.address import normalize_host
from popwatch.errors import AddressError
from popwatch.store import Store, TableView
from popwatch.store.keys import KeyCodec, sort_key


@dataclass(frozen=True)
class Entry:
    ip: str
    stamp: int


@dataclass(frozen=True)
class BadLine:
    lineno: int
    reason: str


def cutoff(now: int, minutes: int | None) -> int:
    """Entries with ``stamp <= cutoff`` are old enough to list or expire."""
    if minutes is not None and minutes < 0:
        raise ValueError("minutes must not be negative")
    return now if minutes is None else now - 60 * minutes


def add(store: Store | TableView, ip: str, stamp: int) -> None:
    store.put(normalize_host(ip), stamp)


def delete(store: Store, ips: Sequence[str]) -> list[str]:
    """Remove every address in one batch; return those that were not there, in order.

    All addresses are checked before anything is removed (AddressError).
    """
    hosts = [normalize_host(ip) for ip in ips]
    absent = []
    with store.batch() as view:
        for host, given in zip(hosts, ips, strict=True):
            if not view.delete(host):
                absent.append(given)
    return absent


def expire_view(view: TableView, now: int, minutes: int | None = None) -> int:
    """Remove old entries within an open batch; return how many were removed."""
    # cutoff() <= now: a future-stamped (pinned) entry never matches.  One pass over the
    # table, deleting as it goes (the store's expire), not a delete per address.
    return view.expire(min(cutoff(now, minutes), now))


def expire(store: Store, now: int, minutes: int | None = None) -> int:
    """Remove old entries (all, or at least ``minutes`` old) in one batch; return the count.

    Future-stamped (pinned) entries are never removed.  With nothing to remove the store
    takes no exclusive lock and does not touch the file (every change restarts Postfix's
    smtpd processes, and a nightly ``expire`` usually has little to do).
    """
    return store.expire(min(cutoff(now, minutes), now))


def select(store: Store | TableView, now: int, minutes: int | None = None) -> list[Entry]:
    """The old entries (all, or at least ``minutes`` old), sorted by address."""
    limit = cutoff(now, minutes)
    return sorted_entries(Entry(ip, t) for ip, t in store.items() if t <= limit)


def dump(store: Store | TableView) -> list[Entry]:
    """Every entry, pinned ones included, sorted by address."""
    return sorted_entries(Entry(ip, t) for ip, t in store.items())


def sorted_entries(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: sort_key(e.ip))


def asctime_utc(stamp: int) -> str:
    """``Tue Sep 22 22:15:27 1998``: C asctime of the UTC time, as vsmtprelay printed it."""
    try:
        return time.asctime(time.gmtime(stamp))
    except (OverflowError, OSError, ValueError):
        return "(out of range)"


def format_listing(entries: Iterable[Entry], store: Store) -> str:
    lines = []
    for e in entries:
        lines.append(f"# timestamp (UTC): {asctime_utc(e.stamp)}")
        lines.append(f"{store.map_key(e.ip)} {e.stamp}")
    return "".join(line + "\n" for line in lines)


def format_json(entries: Iterable[Entry], store: Store, now: int) -> str:
    rows = []
    for e in entries:
        try:
            utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.stamp))
        except (OverflowError, OSError, ValueError):
            utc = None
        rows.append(
            {
                "address": e.ip,
                "key": store.map_key(e.ip),
                "timestamp": e.stamp,
                "utc": utc,
                "pinned": e.stamp > now,
            }
        )
    return json.dumps(rows, indent=1) + "\n"


def parse_listing(
    text: str, key_prefix: str = "", ipv6_prefix: str = ""
) -> tuple[list[Entry], list[BadLine]]:
    """Entries of a list/dump text, and its bad lines (see the module documentation)."""
    codec = KeyCodec(key_prefix, ipv6_prefix)
    found: dict[str, Entry] = {}
    bad: list[BadLine] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        if len(fields) != 2:
            bad.append(BadLine(lineno, 'expected "ADDRESS TICKS"'))
            continue
        key, ticks = fields[0].lower(), fields[1]  # makemap and postmap fold keys too
        ip = _address_of(codec, key)
        if ip is None:
            bad.append(BadLine(lineno, _address_problem(codec, key)))
            continue
        stamp = parse_ticks(ticks)
        if stamp is None:
            bad.append(BadLine(lineno, f'bad TICKS "{_clip(ticks)}": expected Unix seconds'))
            continue
        found.pop(ip, None)  # the last line wins and takes its place in the order
        found[ip] = Entry(ip, stamp)
    return list(found.values()), bad


def load(store: Store, entries: Iterable[Entry], *, merge: bool = False) -> int:
    """Replace the table's contents with ``entries`` (or add them, with ``merge``) in one
    batch; return the number of entries written.  Replacing also removes entries that are
    not ours (``10.1`` added by hand), like rebuilding with makemap."""
    entries = list(entries)
    with store.batch() as view:
        if not merge:
            view.clear()
        for e in entries:
            view.put(e.ip, e.stamp)
    return len(entries)


def parse_ticks(text: str) -> int | None:
    """Unix seconds from ASCII digits only (no sign, no space); None otherwise."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 15:
        return None
    return int(text)


def _address_of(codec: KeyCodec, key: str) -> str | None:
    ip, _ = codec.ip_of(key)
    if ip is not None:
        return ip
    try:
        return normalize_host(key)  # a plain address, without the configured prefixes
    except AddressError:
        return None


def _address_problem(codec: KeyCodec, key: str) -> str:
    try:
        normalize_host(key)
    except AddressError as err:
        return str(err)
    _, why = codec.ip_of(key)  # pragma: no cover - a valid address is always accepted
    return f'bad key "{_clip(key)}": {why}'  # pragma: no cover


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."

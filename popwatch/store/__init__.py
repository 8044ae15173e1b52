"""The relay table: a small key/value interface in the spirit of Postfix's ``dict_*``.

Every MTA compatibility rule lives behind this interface and nowhere else: the key form
(normalized address, optional prefix such as ``POP:``, sendmail's ``IPv6:`` form, trailing NUL
or not), the value form (ASCII Unix seconds), locking (``flock`` on the .db file) and batching
(one lock and one sync per batch).  Callers speak normalized addresses
(:func:`popwatch.address.normalize_host`) and integer Unix seconds only.

Contract of every implementation:

``get(ip)``      the stamp, or None when the address is not in the table (a normal answer).
``put(ip, t)``   insert or replace.
``delete(ip)``   True when something was removed, False when it was not there.
``items()``      (ip, stamp) for every well-formed entry, in no particular order; entries whose
                 key or value is not ours are skipped with a warning, never raised.
``clear()``      remove every entry, malformed ones included (``load`` rebuilds the table
                 in place with it); returns how many keys were removed.
``expire(t)``    remove every entry of ours stamped ``<= t`` (one pass; entries that are not
                 ours stay); returns how many were removed.
``map_key(ip)``  the key text as the MTA sees it (prefix included, no NUL): what ``list`` and
                 ``dump`` print so that their output feeds ``makemap hash``/``postmap``.
``batch()``      context manager: one exclusive lock, many changes, one sync, one mtime step.
``close()``      and the context manager protocol.

A database that cannot be opened, locked, read or written raises
:class:`popwatch.errors.StoreError` - never a backend exception.

``open_store(path, options)`` returns the Berkeley DB implementation
(:mod:`popwatch.store.bdb`, the only module that imports ``berkeleydb``);
:mod:`popwatch.store.memory` and :mod:`popwatch.store.failing` hold the test doubles.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from popwatch.errors import StoreError

if TYPE_CHECKING:
    from popwatch.config import Config

KeyFormat = Literal["sendmail", "postfix"]

__all__ = ["KeyFormat", "Store", "StoreError", "StoreOptions", "TableView", "open_store"]


@dataclass(frozen=True)
class StoreOptions:
    """How keys are written.  ``key_format`` applies to new or empty files only: an existing
    file keeps the form it already holds (never mixed)."""

    key_format: KeyFormat = "sendmail"  # sendmail: no NUL (makemap); postfix: NUL (postmap)
    key_prefix: str = ""  # e.g. "POP:" for sendmail popauth-style rulesets (written lowercase)
    ipv6_prefix: str = ""  # "IPv6:" for sendmail, whose ${client_addr} has that form (lowercase)
    lock_timeout: float = 30.0  # seconds to wait for an MTA's shared lock before StoreError

    @classmethod
    def from_config(cls, cfg: Config) -> StoreOptions:
        fmt: KeyFormat = "postfix" if cfg.key_format == "postfix" else "sendmail"
        return cls(fmt, cfg.key_prefix, cfg.ipv6_prefix, cfg.lock_timeout)


class TableView(Protocol):
    """The operations available both on a store and inside one of its batches."""

    def get(self, ip: str) -> int | None: ...
    def put(self, ip: str, stamp: int) -> None: ...
    def delete(self, ip: str) -> bool: ...
    def items(self) -> Iterator[tuple[str, int]]: ...
    def clear(self) -> int: ...
    def expire(self, cutoff: int) -> int: ...


class Store(TableView, Protocol):
    path: Path | None

    def map_key(self, ip: str) -> str: ...
    def batch(self) -> AbstractContextManager[TableView]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> None: ...


def open_store(path: Path, options: StoreOptions | None = None, *, create: bool = True) -> Store:
    """The Berkeley DB hash table at ``path``; StoreError when it cannot be used.

    With ``create`` a missing or zero-length file becomes an empty table (the MTA can read it
    at once); without, a missing file is a StoreError.  An existing file is checked to be a
    Berkeley DB hash file before this returns.
    """
    from popwatch.store.bdb import BdbStore  # the backend is imported only when used

    return BdbStore(path, options or StoreOptions(), create=create)

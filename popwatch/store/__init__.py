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
``map_key(ip)``  the key text as the MTA sees it (prefix included, no NUL): what ``list`` and
                 ``dump`` print so that their output feeds ``makemap hash``/``postmap``.
``batch()``      context manager: one exclusive lock, many changes, one sync, one mtime step.
``close()``      and the context manager protocol.

A database that cannot be opened, locked, read or written raises
:class:`popwatch.errors.StoreError` - never a backend exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from popwatch.errors import StoreError

KeyFormat = Literal["sendmail", "postfix"]

__all__ = ["KeyFormat", "Store", "StoreError", "StoreOptions", "TableView"]


@dataclass(frozen=True)
class StoreOptions:
    """How keys are written.  ``key_format`` applies to new or empty files only: an existing
    file keeps the form it already holds (never mixed)."""

    key_format: KeyFormat = "sendmail"  # sendmail: no trailing NUL (makemap); postfix: NUL (postmap)
    key_prefix: str = ""  # e.g. "POP:" for sendmail popauth-style rulesets
    ipv6_prefix: str = ""  # "IPv6:" for sendmail, whose ${client_addr} has that form
    lock_timeout: float = 30.0  # seconds to wait for an MTA's shared lock before StoreError


class TableView(Protocol):
    """The operations available both on a store and inside one of its batches."""

    def get(self, ip: str) -> int | None: ...
    def put(self, ip: str, stamp: int) -> None: ...
    def delete(self, ip: str) -> bool: ...
    def items(self) -> Iterator[tuple[str, int]]: ...


class Store(TableView, Protocol):
    path: Path | None

    def map_key(self, ip: str) -> str: ...
    def batch(self) -> AbstractContextManager[TableView]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> None: ...

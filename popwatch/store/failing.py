"""A relay table that is always broken, to test every caller's error path.

NAME
    popwatch.store.failing - FailingStore

DESCRIPTION
    Every table operation (get, put, delete, items, clear, entering a batch) raises
    :class:`popwatch.errors.StoreError` with the given message, as a real table does when its
    file is corrupt, unreadable or locked by someone else for too long.  ``map_key`` still
    works: it is pure formatting, no table access.  ``calls`` counts the attempts, so a test
    can check that a caller retried (or did not).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NoReturn

from popwatch.errors import StoreError
from popwatch.store import StoreOptions, TableView
from popwatch.store.keys import KeyCodec


class FailingStore:
    """Raises StoreError(message) for every table operation."""

    def __init__(
        self,
        message: str = "/nonexistent/relayers.db: cannot open: simulated failure",
        options: StoreOptions | None = None,
        path: Path | None = None,
    ) -> None:
        self.message = message
        self.path = path
        options = options or StoreOptions()
        self._codec = KeyCodec(options.key_prefix, options.ipv6_prefix)
        self.calls = 0

    def _fail(self) -> NoReturn:
        self.calls += 1
        raise StoreError(self.message)

    def get(self, ip: str) -> int | None:
        self._fail()

    def put(self, ip: str, stamp: int) -> None:
        self._fail()

    def delete(self, ip: str) -> bool:
        self._fail()

    def items(self) -> Iterator[tuple[str, int]]:
        self._fail()

    def clear(self) -> int:
        self._fail()

    def expire(self, cutoff: int) -> int:
        self._fail()

    def batch(self) -> AbstractContextManager[TableView]:
        self._fail()

    def map_key(self, ip: str) -> str:
        return self._codec.map_key(ip)

    def close(self) -> None:
        pass

    def __enter__(self) -> FailingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

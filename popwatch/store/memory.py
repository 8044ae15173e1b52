"""An in-memory relay table with the same contract as the Berkeley DB store, for tests.

NAME
    popwatch.store.memory - MemoryStore

DESCRIPTION
    Keys are validated and normalized exactly as the Berkeley DB store does (same
    :class:`~popwatch.store.keys.KeyCodec`), so code tested against a MemoryStore behaves the
    same on a real table.  There is no file, no lock and no NUL form; ``path`` is None.

    ``flushes`` counts the batches (and single writes outside a batch) that changed
    something: the number of syncs a real store would have done.  Tests of callers use it to
    check that they batch.

ERRORS
    AddressError for a bad address, StoreError after ``close()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from popwatch.address import normalize_host
from popwatch.errors import StoreError
from popwatch.store import StoreOptions, TableView
from popwatch.store.keys import KeyCodec


class _View:
    """The operations of one batch; changes are counted, not synced (there is no disk)."""

    def __init__(self, data: dict[str, int]) -> None:
        self._data = data
        self.dirty = False

    def get(self, ip: str) -> int | None:
        return self._data.get(normalize_host(ip))

    def put(self, ip: str, stamp: int) -> None:
        KeyCodec.encode_value(stamp, False)  # same value check as the real store
        self._data[normalize_host(ip)] = stamp
        self.dirty = True

    def delete(self, ip: str) -> bool:
        host = normalize_host(ip)
        if host in self._data:
            del self._data[host]
            self.dirty = True
            return True
        return False

    def items(self) -> Iterator[tuple[str, int]]:
        return iter(list(self._data.items()))

    def clear(self) -> int:
        count = len(self._data)
        self._data.clear()
        self.dirty = self.dirty or count > 0
        return count

    def expire(self, cutoff: int) -> int:
        old = [ip for ip, stamp in self._data.items() if stamp <= cutoff]
        for ip in old:
            del self._data[ip]
        self.dirty = self.dirty or bool(old)
        return len(old)


class MemoryStore:
    """A dict behind the Store contract."""

    path: Path | None = None

    def __init__(self, options: StoreOptions | None = None) -> None:
        self.options = options or StoreOptions()
        self._codec = KeyCodec(self.options.key_prefix, self.options.ipv6_prefix)
        self._data: dict[str, int] = {}
        self._closed = False
        self.flushes = 0

    @contextmanager
    def batch(self) -> Iterator[TableView]:
        self._check()
        view = _View(self._data)
        try:
            yield view
        finally:
            if view.dirty:
                self.flushes += 1

    def get(self, ip: str) -> int | None:
        self._check()
        return _View(self._data).get(ip)

    def put(self, ip: str, stamp: int) -> None:
        with self.batch() as view:
            view.put(ip, stamp)

    def delete(self, ip: str) -> bool:
        with self.batch() as view:
            return view.delete(ip)

    def items(self) -> Iterator[tuple[str, int]]:
        self._check()
        return iter(list(self._data.items()))

    def clear(self) -> int:
        with self.batch() as view:
            return view.clear()

    def expire(self, cutoff: int) -> int:
        with self.batch() as view:
            return view.expire(cutoff)

    def map_key(self, ip: str) -> str:
        return self._codec.map_key(ip)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise StoreError("memory table: used after close")

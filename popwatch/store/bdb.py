"""The relay table as a Berkeley DB hash file that Postfix and sendmail read.

NAME
    popwatch.store.bdb - BdbStore, the only module that imports ``berkeleydb``

DESCRIPTION
    Every operation, or every batch of operations, is one *session*:

    1. open the .db file itself (``O_RDWR|O_CREAT`` for writers, ``O_RDONLY`` for readers) and
       take ``flock`` on it: ``LOCK_EX`` to write, ``LOCK_SH`` to read, as Postfix's
       ``dict_db`` and sendmail do.  The lock is polled without blocking for at most
       ``lock_timeout`` seconds.  If the path was replaced while we waited, start again on the
       new file;
    2. open a Berkeley DB (``DB_HASH``) handle on the path.  A zero-length file is a new table;
    3. read and change it in place; never write a new file and rename it over the old one,
       because sendmail only notices changes to the file it has open;
    4. if anything changed: sync, close, and make sure the file's modification time moved to
       a later *whole second* than it had before (both MTAs compare whole seconds; a second
       change within the same second could leave a freshly started smtpd on old contents);
    5. unlock.

    No handle is kept between sessions: an administrator's ``popwatch delete`` or a
    ``postmap`` may change the file in between, and a long-lived handle would keep stale
    cached pages.

    Key form.  ``key_format`` (``sendmail``: no trailing NUL, ``postfix``: NUL) applies to a
    new or empty file.  A file that holds entries keeps the form of its first key, so a table
    built by ``postmap`` stays NUL-keyed.  Lookups try that form first, then the other one;
    writes use that form and remove the other form of the same key, so a file is never made
    mixed (a mixed file made by someone else is reported once and healed key by key).

    Entries that are not ours (a truncated key such as ``10.1`` added with ``makemap``, a
    non-canonical address, a value that is not all digits) are skipped by ``items()`` with
    one warning per key on the ``popwatch.store`` logger.  ``10.1`` is dangerous: Postfix
    matches it as a network prefix.  ``clear()`` (``popwatch load``) removes them.

    The mtime rule puts the file's mtime ahead of the clock when many changes are flushed
    within one second: one second per flush (250 single ``put`` calls in 2 s leave it about
    four minutes ahead).  The daemon flushes at most once per ``flush_interval``, so it does
    not accumulate there; bulk changes should use one ``batch()`` (``popwatch load
    --merge``), not a loop of ``popwatch add``.  While the mtime is ahead, a change by
    another program (``postmap -d``) sets it back to the present, which an MTA that only
    looks for a *newer* mtime may not notice until popwatch's next flush.

ERRORS
    :class:`popwatch.errors.StoreError`, one line naming the path and the cause: no such file
    (``create=False``), permission denied, not a Berkeley DB hash file, lock held by another
    process for longer than ``lock_timeout``, a read or write error.  "Not found" is None or
    False, never an exception.  No ``berkeleydb`` exception escapes this module.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from berkeleydb import db

from popwatch.address import normalize_host
from popwatch.errors import StoreError
from popwatch.store import StoreOptions, TableView
from popwatch.store.keys import NUL, KeyCodec

log = logging.getLogger("popwatch.store")

_MODE = 0o644  # the MTA (user postfix, smmsp) reads it; only root writes
_NS = 1_000_000_000
_REOPEN_TRIES = 5


class _Session:
    """One open handle under one lock: the TableView handed out by ``batch()``."""

    def __init__(self, store: BdbStore, handle: Any, writable: bool) -> None:
        self._store = store
        self._db = handle
        self._writable = writable
        self.dirty = False
        first = self._first_key()
        if first is None:
            self.nul = store.options.key_format == "postfix"
        else:
            self.nul = first.endswith(NUL)

    # -- TableView ---------------------------------------------------------------------

    def get(self, ip: str) -> int | None:
        codec = self._store.codec
        for nul in (self.nul, not self.nul):
            raw = self._call("read", self._db.get, codec.encode_key(ip, nul))
            if raw is not None:
                stamp = codec.decode_value(raw)
                if stamp is None:
                    self._store.warn_once(codec.encode_key(ip, nul), "value is not Unix seconds")
                return stamp
        return None

    def put(self, ip: str, stamp: int) -> None:
        self._need_write()
        codec = self._store.codec
        value = codec.encode_value(stamp, self.nul)
        key = codec.encode_key(ip, self.nul)
        self._call("write", self._db.put, key, value)
        self.dirty = True
        self._drop_other_form(ip)

    def delete(self, ip: str) -> bool:
        self._need_write()
        found = False
        for nul in (self.nul, not self.nul):
            found = self._delete_raw(self._store.codec.encode_key(ip, nul)) or found
        return found

    def items(self) -> Iterator[tuple[str, int]]:
        codec = self._store.codec
        found: dict[str, int] = {}
        for raw_key, raw_value in self._raw_items():
            ip, why = codec.decode_key(raw_key)
            if ip is None:
                self._store.warn_once(raw_key, why)
                continue
            stamp = codec.decode_value(raw_value)
            if stamp is None:
                self._store.warn_once(raw_key, f'value "{_show(raw_value)}" is not Unix seconds')
                continue
            if raw_key.endswith(NUL) != self.nul and ip in found:
                continue  # both forms of one key: the file's own form wins, as in get()
            found[ip] = stamp
        return iter(list(found.items()))

    def clear(self) -> int:
        self._need_write()
        keys = [k for k, _ in self._raw_items()]
        for key in keys:
            self._delete_raw(key)
        return len(keys)

    # -- helpers -----------------------------------------------------------------------

    def _first_key(self) -> bytes | None:
        cursor = self._call("read", self._db.cursor)
        try:
            rec = self._call("read", cursor.first)
        finally:
            cursor.close()
        return None if rec is None else bytes(rec[0])

    def _raw_items(self) -> list[tuple[bytes, bytes]]:
        cursor = self._call("read", self._db.cursor)
        out = []
        try:
            rec = self._call("read", cursor.first)
            while rec is not None:
                out.append((bytes(rec[0]), bytes(rec[1])))
                rec = self._call("read", cursor.next)
        finally:
            cursor.close()
        return out

    def _drop_other_form(self, ip: str) -> None:
        other = self._store.codec.encode_key(ip, not self.nul)
        if self._delete_raw(other):
            self._store.warn_once(other, "the table mixed keys with and without NUL: removed")

    def _delete_raw(self, key: bytes) -> bool:
        try:
            self._db.delete(key)
        except db.DBNotFoundError:
            return False
        except db.DBError as err:
            raise self._store.error("write", err) from None
        self.dirty = True
        return True

    def _need_write(self) -> None:
        if not self._writable:  # pragma: no cover - the store only hands out writable batches
            raise StoreError(f"{self._store.path}: table opened read-only")

    def _call(self, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except db.DBError as err:
            raise self._store.error(action, err) from None


class BdbStore:
    """A Berkeley DB hash relay table at ``path`` (see the module documentation)."""

    def __init__(
        self,
        path: Path,
        options: StoreOptions | None = None,
        *,
        create: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path: Path | None = Path(path)
        self._path = Path(path)
        self.options = options or StoreOptions()
        self.codec = KeyCodec(self.options.key_prefix, self.options.ipv6_prefix)
        self._sleep = sleep
        self._monotonic = monotonic
        self._warned: set[bytes] = set()
        self._closed = False
        self.flushes = 0  # sessions that changed the file (each one sync and one mtime step)
        # Check the file now so that a broken table is reported at start-up.  An existing
        # table is checked under a shared lock only: an exclusive one would make opening
        # wait for every MTA lookup in progress, and needs write permission.
        if create and not _has_content(self._path):
            with self._session(write=True, create=True):
                pass  # creates an empty table the MTA can read at once
        else:
            with self._session(write=False):
                pass

    # -- Store -------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[TableView]:
        with self._session(write=True) as session:
            yield session

    def get(self, ip: str) -> int | None:
        normalize_host(ip)  # a bad address is the caller's error, found before any I/O
        with self._session(write=False) as session:
            return session.get(ip)

    def put(self, ip: str, stamp: int) -> None:
        normalize_host(ip)
        KeyCodec.encode_value(stamp, False)
        with self.batch() as session:
            session.put(ip, stamp)

    def delete(self, ip: str) -> bool:
        normalize_host(ip)
        with self.batch() as session:
            return session.delete(ip)

    def items(self) -> Iterator[tuple[str, int]]:
        with self._session(write=False) as session:
            return session.items()

    def clear(self) -> int:
        with self.batch() as session:
            return session.clear()

    def map_key(self, ip: str) -> str:
        return self.codec.map_key(ip)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> BdbStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions ----------------------------------------------------------------------

    @contextmanager
    def _session(self, *, write: bool, create: bool = False) -> Iterator[_Session]:
        if self._closed:
            raise StoreError(f"{self._path}: table used after close")
        fd = self._open_locked(write)
        try:
            before = os.fstat(fd)
            handle = self._open_db(write, new=before.st_size == 0)
            session = _Session(self, handle, write)
            try:
                yield session
            finally:
                # Sync even after an exception: without transactions nothing can be rolled
                # back, and a synced file is consistent for the MTA.
                self._close_db(handle, session.dirty)
            if session.dirty or (create and before.st_size == 0):
                self._step_mtime(fd, before)
                self.flushes += 1
        finally:
            os.close(fd)  # releases the flock

    def _open_locked(self, write: bool) -> int:
        flags = (os.O_RDWR | os.O_CREAT) if write else os.O_RDONLY
        for _ in range(_REOPEN_TRIES):
            try:
                fd = os.open(self._path, flags | os.O_CLOEXEC | os.O_NOCTTY, _MODE)
            except OSError as err:
                raise StoreError(f"{self._path}: cannot open: {_strerror(err)}") from None
            try:
                self._lock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                # Someone may have renamed a new file over the path while we waited: the
                # lock on the old inode protects nothing that the MTA reads.
                same = _same_file(fd, self._path)
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)
        raise StoreError(f"{self._path}: cannot open: the file keeps being replaced")

    def _lock(self, fd: int, op: int) -> None:
        timeout = max(self.options.lock_timeout, 0.0)
        deadline = self._monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as err:
                raise StoreError(f"{self._path}: cannot lock: {_strerror(err)}") from None
            left = deadline - self._monotonic()
            if left <= 0:
                raise StoreError(
                    f"{self._path}: cannot lock: held by another process for {timeout:g} s"
                )
            self._sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def _open_db(self, write: bool, new: bool) -> Any:
        if new and not write:
            # An empty file under a shared lock: someone is about to create the table.  Read
            # it as an empty table rather than asking Berkeley DB to open nothing.
            return _EmptyTable()
        handle = db.DB()
        flags = db.DB_CREATE if write else db.DB_RDONLY
        try:
            handle.open(str(self._path), dbtype=db.DB_HASH, flags=flags, mode=_MODE)
        except db.DBError as err:
            _quiet_close(handle)
            raise StoreError(f"{self._path}: cannot open: {_describe(err)}") from None
        return handle

    def _close_db(self, handle: Any, dirty: bool) -> None:
        try:
            if dirty:
                handle.sync()
            handle.close()
        except db.DBError as err:
            raise self.error("write", err) from None

    def _step_mtime(self, fd: int, before: os.stat_result) -> None:
        after = os.fstat(fd)
        previous = before.st_mtime_ns // _NS
        if before.st_size == 0 or after.st_mtime_ns // _NS > previous:
            return
        try:
            os.utime(fd, ns=(after.st_atime_ns, (previous + 1) * _NS))
        except OSError as err:
            raise StoreError(
                f"{self._path}: cannot set modification time: {_strerror(err)}"
            ) from None

    # -- reporting ---------------------------------------------------------------------

    def error(self, action: str, err: Exception) -> StoreError:
        return StoreError(f"{self._path}: cannot {action}: {_describe(err)}")

    def warn_once(self, raw_key: bytes, why: str) -> None:
        if raw_key in self._warned:
            return
        self._warned.add(raw_key)
        log.warning('%s: entry "%s": %s: skipped', self._path, _show(raw_key), why)


class _EmptyTable:
    """Stands in for a handle on a zero-length file opened for reading."""

    class _Cursor:
        def first(self) -> None:
            return None

        def next(self) -> None:
            return None

        def close(self) -> None:
            pass

    def cursor(self) -> _EmptyTable._Cursor:
        return self._Cursor()

    def get(self, key: bytes) -> None:
        return None

    def close(self) -> None:
        pass


def _has_content(path: Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False  # missing (we create it) or unreachable (the open reports why)


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise StoreError(f"{path}: cannot stat: {_strerror(err)}") from None
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _describe(err: Exception) -> str:
    """One line for a Berkeley DB error: the corrupt-file cases in words, else its text."""
    args: tuple[object, ...] = err.args
    code = args[0] if args and isinstance(args[0], int) else None
    text = str(args[1]) if len(args) > 1 else str(err)
    if isinstance(err, db.DBInvalidArgError | db.DBPageNotFoundError) or "checksum" in text:
        return "not a Berkeley DB hash file (or damaged)"
    if isinstance(err, db.DBRunRecoveryError):
        return "damaged Berkeley DB file"
    if code is not None and code > 0:
        return os.strerror(code).lower()
    return text.replace("\n", " ")


def _strerror(err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return "no such file or directory"
    return (err.strerror or str(err)).lower()


def _quiet_close(handle: Any) -> None:
    with suppress(db.DBError):
        handle.close()


def _show(raw: bytes) -> str:
    text = raw.decode("ascii", "backslashreplace").replace("\0", "\\0")
    return text if len(text) <= 60 else text[:57] + "..."


# -- added for popwatch.repair (issue 7, hostile input and faults): a read-only check ---------


def verify(path: Path, lock_timeout: float = 30.0) -> str | None:
    """None when Berkeley DB's own verifier (``DB->verify``, what ``db_verify`` runs) accepts
    the table at ``path``, else one line saying why not.  A missing or zero-length file is
    fine (a new table).  Runs under a shared lock, as an MTA lookup does, so that a batch
    another process is writing is not taken for damage; StoreError when the file cannot be
    opened or the lock is held longer than ``lock_timeout``.  Changes nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StoreError(f"{path}: cannot open: {_strerror(err)}") from None
    try:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"{path}: cannot lock: held by another process for {lock_timeout:g} s"
                    ) from None
                time.sleep(0.01)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: not a regular file")
        if st.st_size == 0:
            return None
        try:
            db.DB().verify(str(path))  # the handle is used up by verify, whatever it answers
        except db.DBVerifyBadError:
            return "Berkeley DB verification failed (damaged file)"
        except db.DBError as err:
            return _describe(err)
        return None
    finally:
        os.close(fd)

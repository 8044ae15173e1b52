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
    2. open a Berkeley DB (``DB_HASH``) handle on the path.  A zero-length file is a new table.
       A writer first reads the whole file into memory (one read; a table of 100,000
       entries is about 5 MB): the state to put back if the batch fails;
    3. read and change it in place; never write a new file and rename it over the old one,
       because sendmail only notices changes to the file it has open;
    4. if anything changed: write every changed page, sync the file once (one
       ``fdatasync``: the pages are written with ``memp_trickle``, not ``DB->sync``, and
       the close then syncs), and make sure the file's modification time moved to a later
       *whole second* than it had before (both MTAs compare whole seconds; a second change
       within the same second could leave a freshly started smtpd on old contents);
    5. unlock.

    A failed batch.  Without transactions a batch that fails half-way (the disk fills up,
    an I/O error) leaves some pages written and others not: a file neither the MTA nor the
    next batch can read ("damaged Berkeley DB file" for ever after).  So when a change or
    the flush fails with a StoreError, the file is put back, in place and still under the
    exclusive lock, to the bytes it held before the batch: only the blocks that differ are
    rewritten and what the batch appended is cut off, which needs no free space.  A failed
    flush is then tried once more on the restored file (the space may be back); if that
    fails too, the file is put back again and the StoreError says "table left as it was
    before this batch", so a batch is all or nothing and a caller that retries (the
    daemon's writer keeps its pending addresses) loses nothing.  If even putting back fails,
    the store remembers the old contents and puts them back at its next access (this is
    memory, not a journal: a process killed half-way through a batch leaves the damage to
    :mod:`popwatch.repair` at the next start).  An exception that is not a StoreError (a
    bug in the caller) keeps the changes made so far, synced.

    Expiry, ``expire(cutoff)``, is one cursor pass that deletes with the cursor, after a
    look under the shared lock that stops at the first old entry (no exclusive lock and no
    write when there is nothing to remove).

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
    four minutes ahead).  The daemon flushes once per ``flush_interval`` on average (at most
    ``flush_burst`` flushes closer together), so it keeps the mtime within a few seconds;
    bulk changes should use one ``batch()`` (``popwatch load --merge``), not a loop of
    ``popwatch add``.  While the mtime is ahead, a change by
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from berkeleydb import db

from popwatch.address import normalize_host
from popwatch.errors import StoreError
from popwatch.store import StoreOptions, TableView
from popwatch.store.keys import NUL, KeyCodec

log = logging.getLogger("popwatch.store")

_MODE = 0o644  # the MTA (user postfix, smmsp) reads it; only root writes
_NS = 1_000_000_000
_REOPEN_TRIES = 5
_BLOCK = 4096  # unit in which a failed batch's file is compared and put back
_CACHE_BYTES = 1 << 20  # Berkeley DB page cache of one write batch


@dataclass(frozen=True, slots=True)
class _Change:
    """One change a batch made, kept so that it can be made again after a failed flush."""

    kind: Literal["put", "delete", "expire"]
    key: bytes = b""
    value: bytes = b""
    cutoff: int = 0


class _Session:
    """One open handle under one lock: the TableView handed out by ``batch()``."""

    def __init__(self, store: BdbStore, handle: Any, writable: bool) -> None:
        self._store = store
        self._db = handle
        self._writable = writable
        self.dirty = False
        # What this batch changed, in order: made again on the restored file when the
        # flush fails (see BdbStore._commit).  None while replaying.
        self.changes: list[_Change] | None = [] if writable else None
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
        self._put_raw(key, value)
        self._drop_other_form(ip)

    def delete(self, ip: str) -> bool:
        self._need_write()
        found = False
        for nul in (self.nul, not self.nul):
            found = self._delete_raw(self._store.codec.encode_key(ip, nul)) or found
        return found

    def items(self) -> Iterator[tuple[str, int]]:
        # One cursor pass, decoding in place: this is half of every expiry, so it avoids
        # building an intermediate list and re-encoding anything.
        store = self._store
        quick_key = store.codec.quick_key
        decode_key = store.codec.decode_key
        decode_value = store.codec.decode_value
        own_nul = self.nul
        found: dict[str, int] = {}
        try:
            cursor = self._db.cursor()
            try:
                for raw_key, raw_value in iter(cursor.next, None):  # DB_NEXT starts at the first
                    match = quick_key(raw_key)
                    if match is not None:
                        ip = match[1].decode("ascii")
                    else:
                        decoded, why = decode_key(raw_key)
                        if decoded is None:
                            store.warn_once(raw_key, why)
                            continue
                        ip = decoded
                    stamp = decode_value(raw_value)
                    if stamp is None:
                        store.warn_once(raw_key, f'value "{_show(raw_value)}" is not Unix seconds')
                        continue
                    if raw_key[-1:] == NUL:
                        if not own_nul and ip in found:
                            continue  # both forms of one key: the file's own form wins
                    elif own_nul and ip in found:
                        continue
                    found[ip] = stamp
            finally:
                cursor.close()
        except db.DBError as err:
            raise store.error("read", err) from None
        return iter(list(found.items()))

    def clear(self) -> int:
        self._need_write()
        keys = [k for k, _ in self._raw_items()]
        for key in keys:
            self._delete_raw(key)
        return len(keys)

    def expire(self, cutoff: int) -> int:
        self._need_write()
        count = self._expire_raw(cutoff)
        if count:
            self._record(_Change("expire", cutoff=cutoff))
        return count

    def has_old(self, cutoff: int) -> bool:
        """Whether :meth:`expire` would remove anything; stops at the first such entry."""
        return self._scan_old(cutoff, delete=False) > 0

    # -- replay ------------------------------------------------------------------------

    def replay(self, changes: list[_Change]) -> None:
        """Make ``changes`` (another session's) in this one, byte for byte."""
        self.changes = None
        for change in changes:
            if change.kind == "put":
                self._put_raw(change.key, change.value)
            elif change.kind == "delete":
                self._delete_raw(change.key)
            else:
                self._expire_raw(change.cutoff)
        self.dirty = self.dirty or bool(changes)

    # -- helpers -----------------------------------------------------------------------

    def _record(self, change: _Change) -> None:
        self.dirty = True
        if self.changes is not None:
            self.changes.append(change)

    def _put_raw(self, key: bytes, value: bytes) -> None:
        self._call("write", self._db.put, key, value)
        self._record(_Change("put", key, value))

    def _expire_raw(self, cutoff: int) -> int:
        self._need_write()
        count = self._scan_old(cutoff, delete=True)
        if count:
            self.dirty = True
        return count

    def _scan_old(self, cutoff: int, *, delete: bool) -> int:
        """Entries of ours stamped ``<= cutoff``, in one cursor pass: deleted with the cursor
        and counted, or (not ``delete``) 1 at the first one found, else 0.

        The hot loop of expiry (100,000 entries well under a second): the value test is
        :meth:`KeyCodec.decode_value` written out, the key test is the codec's one-match
        test for a stored dotted quad before its full decoding.
        """
        quick_key = self._store.codec.quick_key
        decode_key = self._store.codec.decode_key
        count = 0
        try:
            cursor = self._db.cursor()
            try:
                for raw_key, raw_value in iter(cursor.next, None):  # DB_NEXT starts at the first
                    if raw_value[-1:] == NUL:
                        raw_value = raw_value[:-1]
                    # Entries that are not ours (``10.1``, bad values) are the
                    # administrator's to judge: items() reports them, expiry leaves them.
                    if (
                        raw_value.isdigit()
                        and len(raw_value) <= 20
                        and int(raw_value) <= cutoff
                        and (quick_key(raw_key) or decode_key(raw_key)[0])
                    ):
                        if not delete:
                            return 1
                        cursor.delete()
                        count += 1
            finally:
                cursor.close()
        except db.DBError as err:
            raise self._store.error("write" if delete else "read", err) from None
        return count

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
        self._record(_Change("delete", key))
        return True

    def _need_write(self) -> None:
        if not self._writable:  # pragma: no cover - the store only hands out writable batches
            raise StoreError(f"{self._store.path}: table opened read-only")

    def _call(self, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except db.DBError as err:
            raise self._store.error(action, err) from None


class _Connection:
    """A private Berkeley DB environment with one handle on the table: one write batch.

    Our own environment, rather than the one a bare ``DB()`` makes for itself, so that the
    batch is flushed with exactly one ``fdatasync``: ``memp_trickle(100)`` writes every dirty
    page without syncing, and closing the handle and the environment then syncs the file
    once, because the pool wrote to it.  ``DB->sync()`` followed by ``close()`` synced three
    times (sync, close's own sync, then that same file sync at close).
    """

    def __init__(self, store: BdbStore) -> None:
        path = store.path
        self.env: Any = db.DBEnv()
        self.db: Any = None
        try:
            self.env.set_cachesize(0, _CACHE_BYTES, 1)
            self.env.open(None, db.DB_CREATE | db.DB_INIT_MPOOL | db.DB_PRIVATE)
            self.db = db.DB(self.env)
            self.db.open(str(path), dbtype=db.DB_HASH, flags=db.DB_CREATE, mode=_MODE)
        except db.DBError as err:
            self.abandon()
            raise StoreError(f"{path}: cannot open: {_describe(err)}") from None

    def flush(self, dirty: bool) -> None:
        """Write what changed, sync once, close; DBError as it comes."""
        handle, self.db = self.db, None
        env, self.env = self.env, None
        try:
            if dirty:
                env.memp_trickle(100)
                if env.memp_stat()[0]["page_dirty"]:  # pragma: no cover - trickle wrote all
                    handle.sync()
        except BaseException:
            self.db, self.env = handle, env
            raise
        try:
            handle.close(db.DB_NOSYNC)  # nothing is dirty any more; the pool syncs at close
        finally:
            env.close()

    def abandon(self) -> None:
        """Close without caring what gets written: the caller puts the file back after."""
        handle, self.db = self.db, None
        env, self.env = self.env, None
        if handle is not None:
            with suppress(db.DBError):
                handle.close(db.DB_NOSYNC)
        if env is not None:
            with suppress(db.DBError):
                env.close()


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
        # (dev, inode, contents) of a table a failed batch left damaged and that could not
        # be put back at once: the next session puts it back before anything else.
        self._unrepaired: tuple[int, int, bytes] | None = None
        self.flushes = 0  # sessions that changed the file (each one sync and one mtime step)
        self.repairs = 0  # failed batches whose file was put back as it was before them
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

    def expire(self, cutoff: int) -> int:
        # Look first under a shared lock, stopping at the first old entry: with nothing to
        # remove, take no exclusive lock (it waits for every MTA lookup) and write nothing.
        with self._session(write=False) as session:
            if not session.has_old(cutoff):
                return 0
        with self.batch() as session:
            return session.expire(cutoff)

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
        # A damaged file we could not put back yet is put back first, even by a reader:
        # that needs the exclusive lock.
        if not write and self._unrepaired is not None:
            write = self._unrepaired[:2] == _identity(self._path)
        fd = self._open_locked(write)
        try:
            if write:
                with self._writing(fd, create) as session:
                    yield session
            else:
                handle = self._open_db(new=os.fstat(fd).st_size == 0)
                try:
                    session = _Session(self, handle, False)
                    yield session
                finally:
                    try:
                        handle.close()
                    except db.DBError as err:
                        raise self.error("read", err) from None
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def _writing(self, fd: int, create: bool) -> Iterator[_Session]:
        """One write batch under the exclusive lock held on ``fd``.

        The file's contents before the batch are kept in memory (one read; the table is a
        few MB at most).  When the batch fails with a StoreError, or its flush does, the
        file is put back exactly as it was, in place, before the lock is released: a disk
        that filled up half-way through a batch must not leave a file that neither the MTA
        nor the next batch can read.  A failed flush is then tried once more from the
        restored file; a failed change inside the batch is not (the caller's code stopped
        there), and the StoreError goes up with the table unchanged.
        """
        self._put_back_unrepaired(fd)
        before = os.fstat(fd)
        image = self._read_image(fd)
        try:
            conn = _Connection(self)
        except StoreError as err:  # a new file's first page may be written half
            self._roll_back(fd, image, err)
        try:
            session = _Session(self, conn.db, True)
        except StoreError as err:
            conn.abandon()
            self._roll_back(fd, image, err)
        try:
            yield session
        except StoreError as err:
            conn.abandon()
            self._roll_back(fd, image, err)
        except BaseException:
            # A bug or an interrupt in the caller: keep what it did, as a synced file, like
            # the changes it made before (nothing tells which part it wanted).
            self._commit(fd, before, image, conn, session, create)
            raise
        self._commit(fd, before, image, conn, session, create)

    def _commit(
        self,
        fd: int,
        before: os.stat_result,
        image: bytes,
        conn: _Connection,
        session: _Session,
        create: bool,
    ) -> None:
        try:
            conn.flush(session.dirty or before.st_size == 0)  # a new file: its first pages
        except db.DBError as err:
            conn.abandon()
            self._redo(fd, image, session.changes or [], self.error("write", err))
        if session.dirty or (create and before.st_size == 0):
            self._step_mtime(fd, before)
            self.flushes += 1

    def _redo(self, fd: int, image: bytes, changes: list[_Change], err: StoreError) -> None:
        """Put the file back as it was and make the batch's changes again; StoreError (the
        file put back again) if that fails too."""
        self._put_back(fd, image, err)
        conn = None
        try:
            conn = _Connection(self)
            session = _Session(self, conn.db, True)
            session.replay(changes)
            conn.flush(session.dirty or not image)
        except (StoreError, db.DBError) as again:
            if conn is not None:
                conn.abandon()
            if isinstance(again, db.DBError):
                again = self.error("write", again)
            self._roll_back(fd, image, again)
        log.warning("%s: written after all, on the file put back as it was", err)

    def _roll_back(self, fd: int, image: bytes, err: StoreError) -> NoReturn:
        """Put the file back as it was before the batch and raise ``err``."""
        self._put_back(fd, image, err)
        raise StoreError(f"{err} (table left as it was before this batch)") from None

    def _put_back(self, fd: int, image: bytes, err: StoreError) -> None:
        """Make the file hold ``image`` again (in place, same inode); when even that fails,
        remember it for the next session and raise a StoreError saying so."""
        self.repairs += 1
        try:
            _restore(fd, image)
        except OSError as oserr:
            st = os.fstat(fd)
            self._unrepaired = (st.st_dev, st.st_ino, image)
            raise StoreError(
                f"{err}; the table may be damaged and cannot be put back yet: "
                f"{_strerror(oserr)} (tried again at the next access)"
            ) from None

    def _put_back_unrepaired(self, fd: int) -> None:
        if self._unrepaired is None:
            return
        dev, ino, image = self._unrepaired
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (dev, ino):
            try:
                _restore(fd, image)
            except OSError as err:
                raise StoreError(
                    f"{self._path}: damaged by a failed write and cannot be put back yet: "
                    f"{_strerror(err)}"
                ) from None
            log.warning("%s: put back as it was before a failed write", self._path)
        self._unrepaired = None  # put back, or the file was replaced: not ours to restore

    def _read_image(self, fd: int) -> bytes:
        try:
            return _read_all(fd)
        except OSError as err:
            raise StoreError(f"{self._path}: cannot read: {_strerror(err)}") from None

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

    def _open_db(self, new: bool) -> Any:
        """A read-only handle (writers use a _Connection)."""
        if new:
            # An empty file under a shared lock: someone is about to create the table.  Read
            # it as an empty table rather than asking Berkeley DB to open nothing.
            return _EmptyTable()
        handle = db.DB()
        try:
            handle.open(str(self._path), dbtype=db.DB_HASH, flags=db.DB_RDONLY, mode=_MODE)
        except db.DBError as err:
            _quiet_close(handle)
            raise StoreError(f"{self._path}: cannot open: {_describe(err)}") from None
        return handle

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


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _restore(fd: int, image: bytes) -> None:
    """Make the open file hold exactly ``image``, in place, and sync it.

    Only the blocks that differ are written, over blocks the file already has, and what the
    failed batch appended is cut off first: this needs no free space on the usual file
    systems (ext4, xfs, tmpfs), which is the point when the disk is full.
    """
    os.ftruncate(fd, len(image))
    current = memoryview(_read_all(fd))
    wanted = memoryview(image)
    for offset in range(0, len(image), _BLOCK):
        block = wanted[offset : offset + _BLOCK]
        if current[offset : offset + _BLOCK] != block:
            while block:
                written = os.pwrite(fd, block, offset)
                block, offset = block[written:], offset + written
    os.fdatasync(fd)


def _has_content(path: Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False  # missing (we create it) or unreachable (the open reports why)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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

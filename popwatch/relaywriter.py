"""Batched relay-table writes and timed expiry: what the daemon does to ``relayers.db``.

DESCRIPTION
    Every change to the table makes Postfix's smtpd processes restart (they watch the file's
    mtime), so the daemon never writes one login at a time.  A :class:`RelayWriter` keeps the
    addresses to write in a pending map (address -> newest stamp) and flushes them in one
    ``store.batch()``: one exclusive lock, one sync.

    Timing (the caller drives it with :meth:`RelayWriter.tick` at :meth:`next_deadline`):

    * flush credits (a token bucket): the writer holds at most ``flush_burst`` credits, earns
      one back every ``flush_interval`` (continuously, up to that cap) and spends one on each
      flush that changes the table.  A flush is due at once while a credit is there, else at
      the moment the bucket is back to one credit; what arrives meanwhile waits and goes out
      in that flush.  So the first address after a quiet period is flushed at once (leading
      edge), and so is an isolated login soon after it; under a sustained stream flushes come
      one per ``flush_interval`` after at most ``flush_burst`` immediate ones, so a login
      waits at most about one interval.  The long-run rate stays one flush per
      ``flush_interval``: each flush moves the table's mtime to a later whole second (see
      :mod:`popwatch.store.bdb`), so the mtime never runs more than about ``flush_burst``
      seconds ahead with the default interval.  ``flush_burst = 1`` is the strict rule "at
      most one flush per ``flush_interval``, leading edge".  A flush that writes nothing
      (every address fresh) spends no credit; a flush asked for directly (:meth:`flush`:
      reload, stop, ``scan``) goes out whatever the credits and leaves none below zero.
      ``flush_interval = 0`` means every flush is due at once; an infinite one (``scan``)
      means never by time once the credits are spent;
    * expiry every ``expire_interval`` (and once at start): entries whose stamp is
      ``<= now - lifetime`` are removed in one batch; future-stamped (pinned) entries never
      match that test and stay.  Nothing is locked when there is nothing to remove.

    ``refresh``: an address whose stamp in the table, or in the cache of what this writer last
    wrote or read, is newer than ``stamp - refresh`` is not rewritten.  The cache is filled
    from the whole table at the first flush and refreshed by every expiry scan.  A re-login
    more than ``refresh`` seconds later does update it.  A pinned entry (future stamp) is
    never overwritten by a login.  When every pending address is fresh nothing is locked.

WHAT IT DOES NOT
    It knows nothing of key forms, locking or NULs (the store does), and nothing of log lines
    (the policy decided the stamp).  The cache learns of changes other tools make only at the
    next expiry scan: until then an address an admin deleted by hand is written again by a
    login only once its cached stamp is older than ``refresh``.

DIAGNOSTICS
    A :class:`popwatch.errors.StoreError` during a flush (disk full, directory read-only, a
    lock held too long) keeps every pending address in memory and retries on each later tick,
    one warning when the trouble starts, one every minute while it lasts, and one when a flush
    succeeds again.  Pending memory is bounded by ``max_pending`` addresses; beyond that the
    oldest stamps are dropped, each drop counted and logged as an error.  Expiry errors are
    logged and retried at the next expiry time.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from popwatch.errors import StoreError
from popwatch.store import Store

log = logging.getLogger("popwatch.writer")

Clock = Callable[[], float]

_WARN_EVERY = 60.0  # seconds between repeated warnings while the table stays unwritable
_MAX_RETRY = 30.0  # longest wait between retries of a failing flush


def _check_burst(flush_burst: int) -> None:
    if flush_burst < 1:
        raise ValueError(f"flush_burst must be at least 1, not {flush_burst}")


@dataclass
class WriterStats:
    """Counters for STATUS= and ``scan -v``."""

    queued: int = 0  # addresses accepted into the pending map
    fresh: int = 0  # logins not written because the table already had a fresh stamp
    written: int = 0  # entries put into the table
    flushes: int = 0  # batches that changed the table
    expired: int = 0  # entries removed by expiry
    errors: int = 0  # failed flushes and expiries
    dropped: int = 0  # pending addresses given up because memory was full


class RelayWriter:
    """Pending logins, batched flushes with a leading edge, and expiry, over one store."""

    def __init__(
        self,
        store: Store,
        *,
        lifetime: float,
        flush_interval: float = 1.0,
        flush_burst: int = 2,
        refresh: float = 60.0,
        expire_interval: float = 60.0,
        max_pending: int = 100_000,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        _check_burst(flush_burst)
        self.store = store
        self.lifetime = lifetime
        self.flush_interval = flush_interval
        self.flush_burst = flush_burst
        self.refresh = refresh
        self.expire_interval = expire_interval
        self.max_pending = max_pending
        self._clock = clock
        self._mono = monotonic
        self.stats = WriterStats()
        self._pending: dict[str, int] = {}
        self._known: dict[str, int] = {}  # stamps we wrote or saw in the table
        self._known_loaded = False  # _known was filled from the whole table
        self._table_id: tuple[int, int] | None = None  # (dev, inode) of the file we wrote
        # Flush credits as of monotonic time _credits_at; they grow by one per flush_interval
        # from then on, capped at flush_burst.  A full bucket at start: the first flush is due
        # at once.
        self._credits = float(flush_burst)
        self._credits_at = monotonic()
        self._next_expire: float = monotonic()  # expire once at start
        self._retry_at: float | None = None  # set while the store is failing
        self._retry_delay = flush_interval
        self._failing_since: float | None = None
        self._last_warning = 0.0

    # -- configuration -----------------------------------------------------------------------

    def configure(
        self,
        *,
        lifetime: float,
        flush_interval: float,
        refresh: float,
        expire_interval: float,
        flush_burst: int | None = None,
    ) -> None:
        """New timing after a reload; pending addresses, the cache and the flush credits
        are kept (credits earned so far at the old rate, clamped to the new ``flush_burst``;
        None keeps the current one)."""
        if flush_burst is not None:
            _check_burst(flush_burst)
        self._settle(self._mono())
        self.lifetime = lifetime
        self.flush_interval = flush_interval
        if flush_burst is not None:
            self.flush_burst = flush_burst
            self._credits = min(self._credits, float(flush_burst))
        self.refresh = refresh
        if expire_interval != self.expire_interval:
            self._next_expire = min(self._next_expire, self._mono() + expire_interval)
        self.expire_interval = expire_interval

    def replace_store(self, store: Store) -> Store:
        """Write to ``store`` from now on (pending addresses follow); return the old one."""
        old, self.store = self.store, store
        self._known.clear()  # it described the old table
        self._known_loaded = False
        self._table_id = None
        self._next_expire = self._mono()
        return old

    # -- input ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, ip: str, stamp: int) -> bool:
        """Queue ``ip`` with ``stamp``; False when it needs no write (fresh or already queued)."""
        known = self._known.get(ip)
        if known is not None and known > stamp - self.refresh:
            self.stats.fresh += 1
            return False
        queued = self._pending.get(ip)
        if queued is not None and queued >= stamp:
            return False
        if queued is None and len(self._pending) >= self.max_pending:
            self._drop_oldest()
        self._pending[ip] = stamp
        self.stats.queued += 1
        return True

    def _drop_oldest(self) -> None:
        victim = min(self._pending, key=self._pending.__getitem__)
        del self._pending[victim]
        self.stats.dropped += 1
        log.error(
            "relay table %s: %d addresses waiting to be written; giving up on %s "
            "(%d dropped so far)",
            self.store.path,
            self.max_pending,
            victim,
            self.stats.dropped,
        )

    # -- timers --------------------------------------------------------------------------------

    def flush_due(self) -> float | None:
        """Monotonic time of the next flush, None when nothing is pending."""
        if not self._pending:
            return None
        if self._retry_at is not None:
            return self._retry_at
        # Computed from the stored credits, not from a fresh clock reading: a time already
        # past is as good as "at once" to tick(), and the answer does not move between calls.
        if self._credits >= 1.0 or self.flush_interval <= 0:
            return -math.inf  # a credit is there: due at once
        if math.isinf(self.flush_interval):
            return math.inf  # scan: never by time
        return self._credits_at + (1.0 - self._credits) * self.flush_interval

    @property
    def credits(self) -> float:
        """Flush credits available now (between 0 and ``flush_burst``)."""
        return self._level(self._mono())

    def _level(self, now: float) -> float:
        if self.flush_interval <= 0:
            return float(self.flush_burst)
        earned = max(0.0, now - self._credits_at) / self.flush_interval  # 0 when infinite
        return min(float(self.flush_burst), self._credits + earned)

    def _settle(self, now: float) -> None:
        """Fold the credits earned up to ``now`` into the stored count."""
        self._credits = self._level(now)
        self._credits_at = now

    def next_deadline(self) -> float:
        """Monotonic time at which :meth:`tick` has work to do."""
        due = self.flush_due()
        return self._next_expire if due is None else min(due, self._next_expire)

    def tick(self) -> None:
        """Flush and expire when their time has come."""
        now = self._mono()
        due = self.flush_due()
        if due is not None and due <= now:
            self.flush()
        if self._next_expire <= now:
            self.expire()

    # -- the work ------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write every pending address now; True when nothing is left pending."""
        self._check_replaced()
        if not self._pending:
            return True
        try:
            changed = self._write(self._pending)
        except StoreError as err:
            self._failed(err)
            return False
        if self._failing_since is not None:
            log.warning(
                "relay table %s: writable again after %.0f s; %d pending addresses written",
                self.store.path,
                self._mono() - self._failing_since,
                changed,
            )
        self._pending.clear()
        self._retry_at = None
        self._retry_delay = self.flush_interval
        self._failing_since = None
        return True

    def _write(self, pending: dict[str, int]) -> int:
        # Reading first (no exclusive lock, no mtime step) keeps re-logins of fresh addresses
        # from restarting smtpd: a batch is opened only when something will change.  The
        # table is read whole once (one open, ~10 us an entry) instead of one open per
        # address; expiry refreshes the copy every expire_interval.
        if not self._known_loaded:
            # A deleted table is empty; the batch below creates the file again.
            missing = self._identity() == (0, 0)
            self._known = {} if missing else dict(self.store.items())
            self._known_loaded = True
        todo: dict[str, int] = {}
        for ip, stamp in pending.items():
            known = self._known.get(ip)
            if known is not None and known > stamp - self.refresh:
                self.stats.fresh += 1
                continue
            todo[ip] = stamp
        if not todo:
            return 0
        changed: dict[str, int] = {}
        started = self._mono()  # the interval runs from the start of a flush, not its end
        with self.store.batch() as table:
            for ip, stamp in todo.items():
                # Again under the lock: an admin may have pinned or refreshed it meanwhile.
                current = table.get(ip)
                if current is not None and current > stamp - self.refresh:
                    self._known[ip] = current
                    self.stats.fresh += 1
                    continue
                table.put(ip, stamp)
                changed[ip] = stamp
        self._known.update(changed)
        self._table_id = self._identity()  # the file we just wrote (perhaps just created)
        self.stats.written += len(changed)
        if changed:
            self.stats.flushes += 1
            # Only a flush that changed the table costs a credit (only it moves the mtime and
            # restarts smtpd).  Spent as of its start: the interval runs from the start of a
            # flush, not its end.  Never below zero: a flush asked for directly (reload,
            # stop) delays the next timed one by at most one interval, as the strict rule did.
            self._settle(started)
            self._credits = max(0.0, self._credits - 1.0)
        return len(changed)

    def _failed(self, err: StoreError) -> None:
        now = self._mono()
        self.stats.errors += 1
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(max(self._retry_delay * 2, 1.0), _MAX_RETRY)
        if self._failing_since is None or now - self._last_warning >= _WARN_EVERY:
            log.warning(
                "%s: keeping %d pending addresses in memory, retrying in %.0f s",
                err,
                len(self._pending),
                self._retry_at - now,
            )
            self._last_warning = now
        if self._failing_since is None:
            self._failing_since = now

    def _identity(self) -> tuple[int, int] | None:
        path = self.store.path
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return (0, 0)
        except OSError:
            return None  # cannot tell; the store will report real trouble
        return (st.st_dev, st.st_ino)

    def _check_replaced(self) -> None:
        """The table file was deleted or replaced (a new inode) since we last wrote it: put
        the authorizations still inside the lifetime back, so that users who logged in
        before keep relaying; what the new file already holds (an admin's pinned entries)
        stays as it is."""
        ident = self._identity()
        if ident is None:
            return
        if self._table_id is not None and ident != self._table_id:
            cutoff = int(self._clock() - self.lifetime)
            restore = {ip: t for ip, t in self._known.items() if t > cutoff}
            self._known = {}
            self._known_loaded = False
            for ip, stamp in restore.items():
                if self._pending.get(ip, -1) < stamp:
                    self._pending[ip] = stamp
            log.warning(
                "relay table %s was %s: writing the %d authorizations still valid again",
                self.store.path,
                "deleted" if ident == (0, 0) else "replaced",
                len(restore),
            )
            # Due at once, like a first flush: a new file, whose mtime our earlier flushes
            # did not move.  One credit, not a full bucket, which is all it needs.
            self._retry_at = None
            self._settle(self._mono())
            self._credits = max(self._credits, 1.0)
        self._table_id = ident

    def expire(self) -> int:
        """Remove entries older than the lifetime in one batch; return how many."""
        self._next_expire = self._mono() + self.expire_interval
        self._check_replaced()
        cutoff = int(self._clock() - self.lifetime)
        try:
            current = dict(self.store.items())
            # The table as it is now, changes by other tools included, is the new cache.
            self._known = {ip: t for ip, t in current.items() if t > cutoff}
            self._known_loaded = True
            if len(self._known) == len(current):
                return 0  # nothing old: no exclusive lock, no write
            # One cursor pass under the lock; it tests each stamp again, so an entry a
            # login refreshed since items() stays.
            removed = self.store.expire(cutoff)
        except StoreError as err:
            self.stats.errors += 1
            log.warning("%s: expiry skipped, next try in %.0f s", err, self.expire_interval)
            return 0
        self.stats.expired += removed
        if removed:
            log.info("relay table %s: expired %d entries", self.store.path, removed)
        return removed

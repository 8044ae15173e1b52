"""Batched writes, leading-edge flush, refresh, expiry and store failures of RelayWriter."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest

from popwatch.relaywriter import RelayWriter
from popwatch.store import StoreOptions, open_store
from popwatch.store.failing import FailingStore
from popwatch.store.memory import MemoryStore

T0 = 1_800_000_000


class Clock:
    """Injected time: the wall clock and a monotonic clock advanced together."""

    def __init__(self) -> None:
        self.wall = float(T0)
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


def make(store: object, clock: Clock, **kw: float) -> RelayWriter:
    opts: dict[str, float] = dict(lifetime=1800, flush_interval=1, refresh=60, expire_interval=60)
    opts.update(kw)
    return RelayWriter(store, clock=clock.time, monotonic=clock.monotonic, **opts)  # type: ignore[arg-type]


def test_leading_edge_then_credits_then_one_flush_per_interval() -> None:
    c, s = Clock(), MemoryStore()
    w = make(s, c)  # flush_burst 2 by default
    w.tick()  # start-up expiry: nothing to do, no batch
    assert s.flushes == 0
    assert w.add("192.0.2.1", T0)
    due = w.flush_due()
    assert due is not None and due <= c.mono  # first address after a quiet period: at once
    w.tick()
    assert s.get("192.0.2.1") == T0 and s.flushes == 1
    c.advance(0.2)
    w.add("192.0.2.2", int(c.wall))
    due = w.flush_due()
    assert due is not None and due <= c.mono  # the second credit: at once too
    w.tick()
    assert s.get("192.0.2.2") == T0 and s.flushes == 2
    assert w.credits == pytest.approx(0.2)  # earned since the first flush
    c.advance(0.2)
    w.add("192.0.2.3", int(c.wall))
    w.add("192.0.2.4", int(c.wall))
    assert w.flush_due() == pytest.approx(c.mono + 0.6)  # bucket back at one credit then
    w.tick()
    assert s.get("192.0.2.3") is None and s.flushes == 2
    c.advance(0.6)
    w.tick()
    assert s.get("192.0.2.3") == T0 and s.get("192.0.2.4") == T0
    assert s.flushes == 3  # both in one batch
    assert w.credits == pytest.approx(0.0)
    c.advance(5)  # quiet again: the bucket is full (capped at 2), leading edge again
    assert w.credits == pytest.approx(2.0)
    w.add("192.0.2.5", int(c.wall))
    due = w.flush_due()
    assert due is not None and due <= c.mono


def test_flush_burst_1_is_the_strict_old_rule() -> None:
    """At most one flush per flush_interval, leading edge: exactly the behaviour before
    flush credits existed."""
    c, s = Clock(), MemoryStore()
    w = make(s, c, flush_burst=1)
    assert w.add("192.0.2.1", T0)
    due = w.flush_due()
    assert due is not None and due <= c.mono
    w.tick()
    assert s.flushes == 1
    c.advance(0.2)
    w.add("192.0.2.2", int(c.wall))
    w.add("192.0.2.3", int(c.wall))
    assert w.flush_due() == pytest.approx(c.mono + 0.8)  # rate limited
    w.tick()
    assert s.get("192.0.2.2") is None and s.flushes == 1
    c.advance(0.8)
    w.tick()
    assert s.get("192.0.2.2") == T0 and s.get("192.0.2.3") == T0 and s.flushes == 2
    c.advance(5)  # a long quiet period earns no more than the one credit
    assert w.credits == pytest.approx(1.0)
    w.add("192.0.2.4", int(c.wall))
    w.tick()
    assert s.flushes == 3
    w.add("192.0.2.5", int(c.wall))
    assert w.flush_due() == pytest.approx(c.mono + 1.0)


def test_isolated_logins_half_a_second_apart_are_flushed_at_once() -> None:
    """Issue 6: isolated logins (one every 0.5-12 s) reach the table at once.  With the
    default two credits, three logins 0.5 s apart after a quiet period all go out at once,
    and so does a stream alternating 0.5 s and 1.5 s gaps (one a second on average)."""
    c, s = Clock(), MemoryStore()
    w = make(s, c)
    gaps = [0.0, 0.5, 0.5] + [1.5, 0.5] * 20
    for i, gap in enumerate(gaps):
        c.advance(gap)
        assert w.add(f"198.51.100.{i + 1}", int(c.wall))
        due = w.flush_due()
        assert due is not None and due <= c.mono, (i, gap, w.credits)
        w.tick()
        assert w.pending == 0
    assert s.flushes == len(gaps)
    # A fourth login 0.5 s after three such ones finds the bucket empty: it waits for the
    # credit coming back, the rest of an interval at most.
    c.advance(12)
    for i in range(3):
        c.advance(0.0 if i == 0 else 0.5)
        w.add(f"203.0.113.{i + 1}", int(c.wall))
        w.tick()
    c.advance(0.5)
    w.add("203.0.113.4", int(c.wall))
    assert w.flush_due() == pytest.approx(c.mono + 0.5)


def _stream(
    w: RelayWriter, c: Clock, s: MemoryStore, *, every: float, seconds: float
) -> tuple[list[float], list[float]]:
    """An address every ``every`` s for ``seconds`` of fake time, ticking whenever a flush
    comes due (as the daemon's loop does); then until nothing is pending.  Returns the times
    of the flushes (relative to the start) and each address's wait."""
    start = c.mono
    flushes: list[float] = []
    waits: list[float] = []
    waiting: list[float] = []  # add times of the addresses not yet written

    def run_until(t: float) -> None:
        while True:
            due = w.flush_due()
            if due is None or due > t:
                return
            c.advance(max(0.0, due - c.mono))
            before = s.flushes
            w.tick()
            assert s.flushes == before + 1 and w.pending == 0
            flushes.append(c.mono - start)
            waits.extend(c.mono - added for added in waiting)
            waiting.clear()

    n = round(seconds / every)
    for i in range(n):
        t = start + i * every
        run_until(t)
        c.advance(t - c.mono)
        assert w.add(f"198.18.{i // 250}.{i % 250 + 1}", int(c.wall))
        waiting.append(c.mono)
        run_until(c.mono)
    run_until(math.inf)
    assert not waiting and s.flushes == len(flushes)
    return flushes, waits


@pytest.mark.parametrize(("interval", "burst"), [(1.0, 2), (1.0, 1), (1.0, 4), (0.5, 2)])
def test_sustained_burst_one_flush_per_interval_after_the_credits(
    interval: float, burst: int
) -> None:
    """An address every 10 ms for 5 s: the first ``flush_burst`` flushes go out at once,
    then one per flush_interval; no address waits longer than flush_interval; and no window
    of T seconds holds more than flush_burst + T / flush_interval flushes."""
    c, s = Clock(), MemoryStore()
    w = make(s, c, flush_interval=interval, flush_burst=burst)
    seconds = 5.0
    flushes, waits = _stream(w, c, s, every=0.01, seconds=seconds)
    assert len(waits) == 500
    eps = 1e-6
    assert max(waits) <= interval + eps
    # the first `burst` flushes are each at the arrival of an address (10 ms apart)
    assert flushes[:burst] == pytest.approx([0.01 * i for i in range(burst)])
    # then one per interval, on the credits earned since the start: at interval, 2 * interval,
    # ... up to the flush that takes the last address (added at 4.99 s)
    steady = flushes[burst:]
    assert steady == pytest.approx([interval * (k + 1) for k in range(round(seconds / interval))])
    for i in range(len(flushes)):
        for j in range(i, len(flushes)):
            span = flushes[j] - flushes[i]
            assert j - i + 1 <= burst + span / interval + eps, (i, j, flushes)
    assert len([t for t in flushes if t <= seconds]) <= burst + seconds / interval


def test_flush_of_only_fresh_addresses_spends_no_credit() -> None:
    c, s = Clock(), MemoryStore()
    s.put("192.0.2.1", T0 - 10)
    w = make(s, c, flush_burst=1)
    assert w.add("192.0.2.1", T0)  # the cache is empty until the first flush: queued
    w.tick()
    assert w.pending == 0 and s.get("192.0.2.1") == T0 - 10  # fresh: nothing written
    assert w.credits == pytest.approx(1.0)
    s.put("192.0.2.2", T0)  # another tool writes it; our cache does not know
    assert w.add("192.0.2.2", T0)
    w.tick()  # a batch found it fresh under the lock: nothing changed
    assert w.credits == pytest.approx(1.0) and w.stats.written == 0
    w.add("192.0.2.3", T0)  # so a real change still goes out at once
    due = w.flush_due()
    assert due is not None and due <= c.mono
    w.tick()
    assert s.get("192.0.2.3") == T0 and w.credits == pytest.approx(0.0)


def test_direct_flush_spends_but_never_below_zero() -> None:
    """A flush asked for directly (reload, stop) goes out with no credit left, and the next
    timed one then waits one interval, not longer."""
    c, s = Clock(), MemoryStore()
    w = make(s, c, flush_burst=1)
    w.add("192.0.2.1", T0)
    w.tick()
    w.add("192.0.2.2", T0)
    assert w.flush()
    assert s.get("192.0.2.2") == T0 and w.credits == pytest.approx(0.0)
    w.add("192.0.2.3", T0)
    assert w.flush_due() == pytest.approx(c.mono + 1.0)


def test_reload_keeps_credits_and_clamps_them_to_the_new_burst() -> None:
    c, s = Clock(), MemoryStore()
    w = make(s, c, flush_burst=4)
    assert w.credits == pytest.approx(4.0)
    w.configure(lifetime=1800, flush_interval=1, refresh=60, expire_interval=60, flush_burst=2)
    assert w.flush_burst == 2 and w.credits == pytest.approx(2.0)  # clamped
    for i in range(2):
        w.add(f"192.0.2.{i + 1}", T0)
        w.tick()
    assert s.flushes == 2 and w.credits == pytest.approx(0.0)
    # a larger cap gives nothing at once: credits are earned, not granted by a reload
    w.configure(lifetime=1800, flush_interval=1, refresh=60, expire_interval=60, flush_burst=5)
    w.add("192.0.2.3", T0)
    assert w.flush_due() == pytest.approx(c.mono + 1.0)
    # credits earned at the old rate stay; the new interval applies from the reload on
    c.advance(0.5)
    w.configure(lifetime=1800, flush_interval=2, refresh=60, expire_interval=60)
    assert w.flush_burst == 5 and w.credits == pytest.approx(0.5)
    assert w.flush_due() == pytest.approx(c.mono + 1.0)  # half a credit at 2 s a credit
    with pytest.raises(ValueError):
        w.configure(lifetime=1800, flush_interval=1, refresh=60, expire_interval=60, flush_burst=0)


def test_zero_interval_is_always_at_once_and_infinite_never_by_time() -> None:
    c, s = Clock(), MemoryStore()
    w = make(s, c, flush_interval=0, flush_burst=1)
    for i in range(5):
        w.add(f"192.0.2.{i + 1}", T0)
        due = w.flush_due()
        assert due is not None and due <= c.mono
        w.tick()
    assert s.flushes == 5 and w.credits == 1.0
    w = make(s, c, flush_interval=math.inf)  # what `popwatch scan` sets
    for i in range(2):
        w.add(f"198.51.100.{i + 1}", T0)
        w.tick()
    w.add("198.51.100.3", T0)
    c.advance(1e6)
    assert w.flush_due() == math.inf and w.credits == 0.0
    assert w.next_deadline() < math.inf  # the expiry timer still runs
    w.tick()
    assert w.pending == 1
    assert w.flush() and s.get("198.51.100.3") == T0  # scan's own flushes still write


def test_replaced_table_is_flushed_at_once_even_without_credits(tmp_path: Path) -> None:
    c = Clock()
    c.wall = float(int(__import__("time").time()))
    path = tmp_path / "relayers.db"
    store = open_store(path)
    try:
        w = make(store, c, flush_burst=1)
        w.add("192.0.2.1", int(c.wall))
        w.tick()
        assert w.credits == pytest.approx(0.0)
        path.unlink()
        w.expire()  # notices the deletion: our entry is pending again, due at once
        assert w.pending == 1
        due = w.flush_due()
        assert due is not None and due <= c.mono
        w.tick()
        assert dict(store.items()) == {"192.0.2.1": int(c.wall)}
    finally:
        store.close()


def test_refresh_suppresses_rewrites_and_newer_login_updates() -> None:
    c, s = Clock(), MemoryStore()
    w = make(s, c)
    w.add("192.0.2.1", T0)
    w.flush()
    assert s.flushes == 1
    c.advance(30)
    assert not w.add("192.0.2.1", int(c.wall))  # fresh in our cache: not even queued
    assert w.pending == 0
    c.advance(31)  # now older than refresh
    assert w.add("192.0.2.1", int(c.wall))
    w.flush()
    assert s.get("192.0.2.1") == T0 + 61 and s.flushes == 2


def test_fresh_stamp_already_in_table_causes_no_batch() -> None:
    """A restarted daemon re-reading logins that the table already holds writes nothing."""
    c, s = Clock(), MemoryStore()
    s.put("192.0.2.1", T0 - 10)
    before = s.flushes
    w = make(s, c)
    assert w.add("192.0.2.1", T0)  # cache is empty: queued
    assert w.flush()
    assert s.flushes == before and s.get("192.0.2.1") == T0 - 10
    assert w.stats.fresh == 1 and w.stats.written == 0


def test_pinned_entry_is_never_overwritten() -> None:
    c, s = Clock(), MemoryStore()
    s.put("192.0.2.1", T0 + 10 * 365 * 86400)
    w = make(s, c)
    w.add("192.0.2.1", T0)
    w.flush()
    assert s.get("192.0.2.1") == T0 + 10 * 365 * 86400


def test_pending_keeps_newest_stamp() -> None:
    c, s = Clock(), MemoryStore()
    w = make(s, c)
    w.add("192.0.2.1", T0 - 100)
    w.add("192.0.2.1", T0 - 50)
    assert not w.add("192.0.2.1", T0 - 70)
    w.flush()
    assert s.get("192.0.2.1") == T0 - 50


def test_expiry_removes_old_keeps_fresh_and_pinned() -> None:
    c, s = Clock(), MemoryStore()
    for ip, stamp in [
        ("192.0.2.1", T0 - 1800),  # exactly lifetime old: expired
        ("192.0.2.2", T0 - 5000),
        ("192.0.2.3", T0 - 1799),
        ("192.0.2.4", T0 + 999_999),  # pinned
    ]:
        s.put(ip, stamp)
    before = s.flushes
    w = make(s, c)
    w.tick()  # expiry runs once at start
    assert dict(s.items()) == {"192.0.2.3": T0 - 1799, "192.0.2.4": T0 + 999_999}
    assert s.flushes == before + 1  # one batch
    assert w.stats.expired == 2
    # next expiry only after expire_interval; then the 1799 s one is due
    c.advance(30)
    w.tick()
    assert s.get("192.0.2.3") is not None
    assert w.next_deadline() == pytest.approx(c.mono + 30)
    c.advance(30)
    w.tick()
    assert s.get("192.0.2.3") is None and s.get("192.0.2.4") is not None


def test_expiry_with_nothing_to_do_takes_no_batch() -> None:
    c, s = Clock(), MemoryStore()
    s.put("192.0.2.3", T0)
    before = s.flushes
    w = make(s, c)
    assert w.expire() == 0
    assert s.flushes == before


def test_expired_entry_can_be_written_again() -> None:
    """After expiry the cache must not claim the address is still fresh."""
    c, s = Clock(), MemoryStore()
    w = make(s, c, lifetime=100, refresh=60, expire_interval=10)
    w.add("192.0.2.1", T0)
    w.flush()
    c.advance(100)
    w.tick()
    assert s.get("192.0.2.1") is None
    assert w.add("192.0.2.1", int(c.wall))
    w.flush()
    assert s.get("192.0.2.1") == T0 + 100


def test_store_failure_keeps_pending_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    c = Clock()
    failing = FailingStore("/srv/relayers.db: cannot lock: simulated")
    w = make(failing, c)
    w.add("192.0.2.1", T0)
    w.add("192.0.2.2", T0)
    with caplog.at_level(logging.WARNING, logger="popwatch"):
        w.tick()
    assert w.pending == 2 and w.stats.errors >= 1
    assert "keeping 2 pending addresses" in caplog.text
    due = w.flush_due()
    assert due is not None and due > c.mono  # retry later, not in a busy loop
    c.advance(due - c.mono)
    calls = failing.calls
    w.tick()
    assert failing.calls > calls  # retried
    # the store comes back: everything pending is written in one batch
    good = MemoryStore()
    w.replace_store(good)
    due = w.flush_due()
    assert due is not None
    c.advance(max(0.0, due - c.mono))
    w.tick()
    assert w.pending == 0
    assert dict(good.items()) == {"192.0.2.1": T0, "192.0.2.2": T0}
    assert good.flushes == 1


def test_pending_is_bounded_and_drops_loudly(caplog: pytest.LogCaptureFixture) -> None:
    c = Clock()
    w = make(FailingStore(), c)
    w.max_pending = 3
    with caplog.at_level(logging.ERROR, logger="popwatch"):
        for i in range(5):
            w.add(f"192.0.2.{i + 1}", T0 + i)
    assert w.pending == 3 and w.stats.dropped == 2
    assert "giving up on 192.0.2.1" in caplog.text


def test_expiry_failure_is_logged_and_rescheduled(caplog: pytest.LogCaptureFixture) -> None:
    c = Clock()
    w = make(FailingStore(), c)
    with caplog.at_level(logging.WARNING, logger="popwatch"):
        assert w.expire() == 0
    assert "expiry skipped" in caplog.text
    assert w.next_deadline() == pytest.approx(c.mono + 60)


def test_real_table_one_sync_per_flush_and_visible_to_postmap(tmp_path: Path) -> None:
    """With the Berkeley DB store: a flush of many addresses is one batch; mtime moves."""
    c = Clock()
    path = tmp_path / "relayers.db"
    store = open_store(path, StoreOptions("postfix"))
    try:
        w = make(store, c)
        for i in range(200):
            w.add(f"198.51.100.{i % 250}", T0)
        w.flush()
        got = dict(store.items())
        assert len(got) == 200 and set(got.values()) == {T0}
        mtime = path.stat().st_mtime
        c.advance(2)
        for i in range(200):  # all fresh: nothing written, file untouched
            w.add(f"198.51.100.{i % 250}", int(c.wall))
        w.flush()
        assert path.stat().st_mtime == mtime
    finally:
        store.close()


def test_cache_learns_of_hand_made_changes_at_the_expiry_scan() -> None:
    """An admin deletes a fresh entry by hand: the next expiry scan refreshes the cache, so
    the user's next login writes it again instead of being taken as still fresh."""
    c, s = Clock(), MemoryStore()
    w = make(s, c)
    w.add("192.0.2.1", T0)
    w.flush()
    s.delete("192.0.2.1")  # popwatch delete 192.0.2.1
    c.advance(10)
    assert not w.add("192.0.2.1", int(c.wall))  # before the scan: still fresh in the cache
    w.expire()
    assert w.add("192.0.2.1", int(c.wall))
    w.flush()
    assert s.get("192.0.2.1") == T0 + 10


def test_flush_due_comes_due_with_a_real_monotonic_clock() -> None:
    """Regression: "due now" must not be a time that is already past when tick() reads the
    clock again (a daemon that spun without ever flushing)."""
    import time

    s = MemoryStore()
    w = RelayWriter(s, lifetime=1800, flush_interval=1.0)
    w.add("192.0.2.1", int(time.time()))
    w.tick()
    assert w.pending == 0 and s.get("192.0.2.1") is not None


def test_deleted_table_is_recreated_with_valid_authorizations(tmp_path: Path) -> None:
    c = Clock()
    c.wall = time_now = float(int(__import__("time").time()))
    path = tmp_path / "relayers.db"
    store = open_store(path)
    try:
        w = make(store, c)
        w.add("192.0.2.1", int(time_now) - 100)
        w.add("192.0.2.9", int(time_now) - 5000)  # older than the lifetime: not restored
        w.flush()
        path.unlink()
        c.advance(2)
        w.add("192.0.2.2", int(c.wall))
        w.flush()
        assert dict(store.items()) == {"192.0.2.1": int(time_now) - 100, "192.0.2.2": int(c.wall)}
    finally:
        store.close()


def test_replaced_table_keeps_its_entries_and_gets_ours_back(tmp_path: Path) -> None:
    c = Clock()
    c.wall = float(int(__import__("time").time()))
    path = tmp_path / "relayers.db"
    store = open_store(path)
    try:
        w = make(store, c)
        w.add("192.0.2.1", int(c.wall))
        w.flush()
        new = tmp_path / "new.db"
        other = open_store(new)
        other.put("198.51.100.9", 4102444800)  # pinned by hand
        other.close()
        os.rename(new, path)
        c.advance(120)  # quiet: only the expiry timer runs
        w.tick()
        assert w.pending == 1
        w.tick()
        assert dict(store.items()) == {"198.51.100.9": 4102444800, "192.0.2.1": int(c.wall) - 120}
    finally:
        store.close()

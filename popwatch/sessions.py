"""Pending two-line sessions: the address from a connect line, waiting for its login line.

NAME
    popwatch.sessions - bounded (host, pid) -> client address memory

DESCRIPTION
    Some daemons log the client address and the successful login on different lines of the
    same process: popa3d ``Session from IP`` then ``Authentication passed for USER``, tcpd's
    ``connect from IP``, xinetd's ``START: pop3 pid=N from=IP`` for the child, GNU Mailutils,
    solid-pop3d without extended logging.  :class:`PendingSessions` remembers the address of
    each such connect per (syslog host, pid) until the login line of the same process claims it
    (:meth:`take`) or the session ends (:meth:`discard`).

    The memory is bounded two ways, because a mail log is attacker-fed and connects without a
    login are the normal case for scanners: at most ``max_size`` sessions (the oldest is
    dropped first), and none older than ``max_age`` seconds relative to the newest line time
    seen (a login line much later than its connect is more likely a recycled pid than the
    same session).  Interleaved sessions of different pids do not disturb each other; a new
    connect of the same (host, pid) replaces the old one (the pid was reused).

    It knows nothing about log text or patterns; it does not persist across restarts (a login
    whose connect line was read before a restart is missed, which fails closed).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Pending", "PendingSessions"]

SessionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Pending:
    ip: str  # normalized client address from the connect line
    time: float  # Unix seconds of the connect line
    pattern: str  # pattern whose CONNECT rule matched
    rule: str


class PendingSessions:
    """Bounded (host, pid) -> :class:`Pending` map; see the module docstring."""

    def __init__(self, max_size: int = 10000, max_age: float = 600.0) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._max_size = max_size
        self._max_age = max_age
        self._items: OrderedDict[SessionKey, Pending] = OrderedDict()
        self.dropped = 0  # sessions forgotten by a bound, not by a login or an end line

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def add(self, key: SessionKey, pending: Pending) -> None:
        """Remember a connect; replaces an older session of the same key."""
        self._items.pop(key, None)
        self._items[key] = pending
        self.expire(pending.time)
        while len(self._items) > self._max_size:
            self._items.popitem(last=False)
            self.dropped += 1

    def take(self, key: SessionKey, now: float) -> Pending | None:
        """The session of ``key`` if it is not too old at ``now``, forgetting it."""
        self.expire(now)
        pending = self._items.pop(key, None)
        if pending is not None and pending.time < now - self._max_age:
            self.dropped += 1
            return None
        return pending

    def discard(self, key: SessionKey) -> None:
        self._items.pop(key, None)

    def expire(self, now: float) -> None:
        """Forget sessions older than max_age at ``now``.  Insertion order is time order for
        a log read in order; an out-of-order line only delays expiry of those behind it."""
        limit = now - self._max_age
        items = self._items
        while items:
            key, oldest = next(iter(items.items()))
            if oldest.time >= limit:
                break
            del items[key]
            self.dropped += 1

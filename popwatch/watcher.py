"""Watcher: wake the daemon when anything happens in the directories of the followed logs.

NAME
    popwatch.watcher - watchdog observer on the tailer's directories

DESCRIPTION
    A :class:`Watcher` schedules one non-recursive watchdog watch per directory (directories,
    not files: a file watch dies with the file at the first rotation) and calls ``wake()`` for
    every change in them: a file written, created, deleted, renamed or closed after writing.
    It does not say which file changed; the caller polls the tailer, which looks at every
    followed file anyway.  ``wake`` runs in the observer thread, so it must be cheap and
    thread-safe (setting a ``threading.Event`` is the intended use).  Opens and read-only
    closes are not reported: the tailer's own opens would wake it for nothing.

    :meth:`Watcher.update` replaces the set of directories (when globs match new directories
    or a missing log directory appears); unchanged directories keep their watch.

    The observer thread is watchdog's; when it dies (an inotify failure), :meth:`is_alive`
    turns false and the daemon is expected to exit non-zero so that systemd restarts it.  An
    exception raised by ``wake`` is logged and swallowed so that it cannot kill the thread.

WHAT IT DOES NOT
    Read files, decide what changed, or replace polling on a timer: a directory that cannot be
    watched (it does not exist, or inotify watches are exhausted) is logged once and skipped;
    the daemon's own timer still polls.

DIAGNOSTICS
    Warnings on logger ``popwatch.watcher``; no exceptions from update().  start() raises
    watchdog's error when no observer thread can be started at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger("popwatch.watcher")

EVENTS: list[type[FileSystemEvent]] = [
    FileModifiedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
]


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._wake()
        except Exception:  # a dead observer thread would stop the daemon silently
            log.exception("wake-up callback failed (ignored)")


class Watcher:
    """Calls ``wake()`` on activity in ``directories``; see the module text."""

    def __init__(self, directories: Iterable[Path], wake: Callable[[], None]) -> None:
        self._handler = _Wake(wake)
        self._observer: Any = Observer()
        self._watches: dict[Path, Any] = {}
        self._wanted = {Path(d) for d in directories}
        self._failed: set[Path] = set()
        self._started = False

    def start(self) -> None:
        self._observer.start()
        self._started = True
        self.update(self._wanted)

    def stop(self) -> None:
        if self._started:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._started = False
        self._watches.clear()

    def is_alive(self) -> bool:
        return bool(self._observer.is_alive())

    def directories(self) -> set[Path]:
        """The directories watched now."""
        return set(self._watches)

    def update(self, directories: Iterable[Path]) -> None:
        """Watch exactly ``directories`` from now on (directories that fail are skipped)."""
        wanted = {Path(d) for d in directories}
        self._wanted = wanted
        if not self._started:
            return
        for d in list(self._watches):
            if d not in wanted:
                # KeyError/OSError: the watch already died with its directory.
                with contextlib.suppress(KeyError, OSError):
                    self._observer.unschedule(self._watches.pop(d))
        for d in sorted(wanted - set(self._watches)):
            try:
                self._watches[d] = self._observer.schedule(
                    self._handler, str(d), recursive=False, event_filter=EVENTS
                )
            except OSError as err:
                if d not in self._failed:
                    log.warning("%s: cannot watch: %s: polling it on the timer only", d, err)
                    self._failed.add(d)
                continue
            self._failed.discard(d)

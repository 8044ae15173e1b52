"""The daemon behind ``popwatch run``.

DESCRIPTION
    :class:`Daemon` runs the pipeline of :mod:`popwatch.pipeline` (the one path from a log
    line to the relay table, shared with ``popwatch scan``) over followed sources until told
    to stop.

    What it adds to the pipeline:

    * sources: the log files (:class:`popwatch.tailer.Tailer`, woken by the inotify-based
      :class:`popwatch.watcher.Watcher`) and, in journal mode, a ``journalctl --follow`` child
      (:mod:`popwatch.journal`).  The main thread sleeps in ``select()`` on a wake-up pipe
      (written by the watcher thread and by signal handlers) and the journal pipe, with a
      timeout set by the next timer: flush, expiry, watchdog ping, status update, checkpoint,
      and a slow safety poll (10 s) in case an inotify event was lost.  An idle daemon
      therefore does nothing between timers;
    * positions: the tailer's positions and the journal cursor are saved only when every
      login read so far is in the table (the writer has nothing pending), i.e. right after the
      flush that covered them.  A crash then re-reads at most some lines, and reading a line
      twice changes nothing;
    * supervision: when the watcher thread or the journal reader dies, the daemon logs why and
      exits 70 (EX_SOFTWARE), so that systemd (Restart=on-failure) starts it again instead of
      leaving a process that looks healthy and reads nothing;
    * signals: SIGTERM and SIGINT send STOPPING=1, flush, save positions and exit 0; SIGHUP
      sends RELOADING=1, reads the configuration and the patterns again and applies them; a
      bad new configuration is logged and the old one keeps running; then READY=1;
    * systemd: READY=1 once the table is open and the sources are attached; STATUS= with
      counters; WATCHDOG=1 every half WatchdogSec (:mod:`popwatch.sdnotify`);
    * it warns when started as root: it needs only read access to the logs (group adm on
      Debian) and write access to the table and the state directory.

WHAT IT DOES NOT
    It does not fork into the background or write a pid file (systemd supervises it; in a
    terminal it runs in the foreground).  It does not parse lines itself and knows no table
    format.  The configuration is read only at start and on SIGHUP.

DIAGNOSTICS
    Start-up problems raise: ConfigError / PatternError (exit 78), StoreError (74).  While
    running, table errors are the writer's (pending addresses kept, retried); a failed reload
    is an error message and nothing else; a dead source is exit 70.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from popwatch.config import Config
from popwatch.errors import ConfigError, PopwatchError, StoreError
from popwatch.exitcodes import EX_OK, EX_SOFTWARE
from popwatch.grammar import Pattern
from popwatch.journal import JournalSource, TrustPolicy
from popwatch.pipeline import (  # the parts, built as scan builds them
    Clock,
    Pipeline,
    load_patterns_for,
    make_matcher,
    make_policy,
    make_writer,
    open_table,
    programs_of,
    store_options,
)
from popwatch.policy import NetRule
from popwatch.relaywriter import RelayWriter
from popwatch.sdnotify import Notifier
from popwatch.store import Store
from popwatch.syslogline import from_journal
from popwatch.tailer import Tailer
from popwatch.watcher import Watcher

log = logging.getLogger("popwatch.daemon")


SAFETY_POLL = 10.0  # seconds: look at the files even without an inotify event
STATUS_EVERY = 1.0  # seconds between STATUS= updates while counters change
CHECKPOINT_EVERY = 5.0  # seconds between position saves when no flush forced one
MAX_BATCH_BYTES = 8 << 20  # bytes one tailer poll may read: bounds memory during catch-up


# -- the daemon ------------------------------------------------------------------------------


class _Waker:
    """A self-pipe: any thread (and the C-level signal handler) can interrupt select()."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        try:
            os.write(self.w, b"\0")
        except BlockingIOError:
            pass  # already awake: the pipe is full of wake-ups
        except OSError:
            pass  # closed during shutdown

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class SupervisionError(PopwatchError):
    """A source thread or process died: exit 70 so that systemd restarts the daemon."""


@dataclass
class _Parts:
    """What one configuration builds; replaced as a whole on reload."""

    cfg: Config
    patterns: list[Pattern]
    pipeline: Pipeline


class Daemon:
    """``popwatch run``: follow the sources, keep the table current, obey systemd."""

    def __init__(
        self,
        load: Callable[[], Config],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        journal_files: Sequence[Path] = (),
        start_at_end: bool = False,
        mynetworks: Callable[[], Iterable[NetRule]] | None = None,
        geteuid: Callable[[], int] = os.geteuid,
    ) -> None:
        self._load = load
        self._environ = dict(os.environ if environ is None else environ)
        self._clock = clock
        self._mono = monotonic
        self._journal_files = tuple(journal_files)
        self._start_at_end = start_at_end
        self._mynetworks = mynetworks
        self._geteuid = geteuid
        self.notifier = Notifier.from_environ(self._environ)
        self._waker = _Waker()
        self._stop = False
        self._reload = False
        self._parts: _Parts | None = None
        self._store: Store | None = None
        self._writer: RelayWriter | None = None
        self._tailer: Tailer | None = None
        self._watcher: Watcher | None = None
        self._journal: JournalSource | None = None
        self._selector = selectors.DefaultSelector()
        self._last_status = ""
        self._status_at = 0.0
        self._watchdog_at = 0.0
        self._checkpoint_at = 0.0
        self._poll_at = 0.0
        self._unsaved = False  # lines handed out since the last checkpoint
        self._flushes_at_checkpoint = 0
        self.reloads = 0
        self.failed_reloads = 0

    # -- start and stop --------------------------------------------------------------------

    def run(self) -> int:
        """Start, loop until SIGTERM/SIGINT (0) or a dead source (70)."""
        previous = self._install_signals()
        try:
            try:
                self._start()
                return self._loop()
            finally:
                # Also after a failed start: stop the watcher thread and the journalctl child
                # that were already running, or the process would not exit.
                self._shutdown()
        finally:
            self._restore_signals(previous)
            self._waker.close()
            self.notifier.close()

    def _start(self) -> None:
        cfg = self._load()
        if self._geteuid() == 0:
            log.warning(
                "running as root: popwatch needs only read access to the logs (group adm) and "
                "write access to %s and %s; run it as a dedicated user",
                cfg.database.parent,
                cfg.state_dir,
            )
        patterns = load_patterns_for(cfg)
        policy = make_policy(cfg, self._mynetworks)
        _make_state_dir(cfg)  # a configuration mistake: found before the table is touched
        # Issue 7: a table that fails Berkeley DB's verify is moved aside and rebuilt from
        # the logs (popwatch.repair); before open_table and before the tailer reads positions.
        from popwatch.repair import check_table

        check_table(cfg.database, cfg.state_dir, lock_timeout=cfg.lock_timeout, clock=self._clock)
        store = open_table(cfg)
        self._store = store
        self._writer = make_writer(cfg, store, self._clock, self._mono)
        pipeline = Pipeline(make_matcher(patterns, self._clock), policy, self._writer, self._clock)
        self._parts = _Parts(cfg, patterns, pipeline)
        self._open_sources(cfg, patterns)
        # Attach means restore: the first poll finds the saved positions (and files rotated
        # while popwatch was down) before systemd is told that the service is up.
        self._read_sources(once=True)
        if self._tailer is not None and not self._writer.pending:
            # Record which file instances we follow at once, even if nothing was read: a
            # SIGKILL after a rotation but before the first checkpoint would otherwise leave
            # no positions, and the restart could not find the renamed file's unread lines.
            self._tailer.checkpoint()
        log.info(
            "started: table %s, %d patterns, following %s%s",
            cfg.database,
            len(patterns),
            ", ".join(cfg.logs) or "no files",
            " and the journal" if self._journal is not None else "",
        )
        self.notifier.ready(self._status_text())

    def _open_sources(self, cfg: Config, patterns: Sequence[Pattern]) -> None:
        _make_state_dir(cfg)
        if cfg.logs:
            self._tailer = Tailer(
                list(cfg.logs),
                cfg.state_dir,
                max_line_length=cfg.max_line_length,
                start_at_end=self._start_at_end,
                max_batch_bytes=MAX_BATCH_BYTES,
            )
            self._watcher = Watcher(self._tailer.directories(), self._waker.wake)
            self._watcher.start()
        if cfg.journal or self._journal_files:
            self._start_journal(cfg, patterns)

    def _start_journal(self, cfg: Config, patterns: Sequence[Pattern]) -> None:
        source = JournalSource(
            TrustPolicy(cfg.journal_units, programs_of(patterns)),
            state_dir=cfg.state_dir,
            since=self._clock() - cfg.lifetime,
            files=self._journal_files,
            environ=Notifier.child_environ(self._environ),
            clock=self._clock,
        )
        source.start()
        self._journal = source
        self._selector.register(source.fileno(), selectors.EVENT_READ, "journal")

    def _stop_journal(self) -> None:
        if self._journal is not None:
            if self._journal.is_alive():
                self._selector.unregister(self._journal.fileno())
            self._journal.close()
            self._journal = None

    def _close_files(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._tailer is not None:
            self._tailer.close()
            self._tailer = None

    def _shutdown(self) -> None:
        writer = self._writer
        if writer is not None and self._store is not None and self._parts is not None:
            if writer.flush():
                self._checkpoint()
            elif writer.pending:
                log.error(
                    "stopping with %d addresses not written to %s (they will be read again "
                    "from the logs at the next start)",
                    writer.pending,
                    self._store.path,
                )
        self._stop_journal()
        self._close_files()
        if self._store is not None:
            try:
                self._store.close()
            except StoreError as err:
                log.error("%s", err)
            self._store = None
        self._selector.close()

    # -- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for sig, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_reload),
        ):
            previous[sig] = signal.signal(sig, handler)
        previous[-1] = signal.set_wakeup_fd(self._waker.w, warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: Mapping[int, Any]) -> None:
        signal.set_wakeup_fd(previous[-1])
        for sig, handler in previous.items():
            if sig >= 0:
                signal.signal(sig, handler)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True

    def request_stop(self) -> None:
        """Stop from another thread (tests, embedding); the same as SIGTERM."""
        self._stop = True
        self._waker.wake()

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> int:
        self._selector.register(self._waker.r, selectors.EVENT_READ, "wake")
        interval = self.notifier.watchdog_interval
        now = self._mono()
        self._watchdog_at = now
        self._poll_at = now
        while True:
            if self._stop:
                self.notifier.stopping("stopping: writing pending addresses")
                log.info("stopping on signal")
                return EX_OK
            if self._reload:
                self._reload = False
                self._do_reload()
            try:
                self._supervise()
            except SupervisionError as err:
                log.error("%s: exiting so that the service is restarted", err)
                return EX_SOFTWARE
            self._read_sources()
            assert self._writer is not None
            self._writer.tick()
            now = self._mono()
            if (
                self._unsaved
                and self._writer.pending == 0
                and (self._writer.flush_due() is None)
                and (self._flushed_since_checkpoint() or now >= self._checkpoint_at)
            ):
                self._checkpoint()
            if interval is not None and now >= self._watchdog_at:
                self.notifier.watchdog()
                self._watchdog_at = now + interval
            if now >= self._status_at:
                self._send_status(now)
            timeout = max(0.0, self._next_deadline(interval) - self._mono())
            for key, _ in self._selector.select(timeout):
                if key.data == "wake":
                    self._waker.drain()

    def _next_deadline(self, watchdog: float | None) -> float:
        assert self._writer is not None
        deadlines = [self._writer.next_deadline(), self._poll_at]
        if watchdog is not None:
            deadlines.append(self._watchdog_at)
        if self._status_text() != self._last_status:
            deadlines.append(self._status_at)
        if self._unsaved and self._writer.pending == 0:
            deadlines.append(self._checkpoint_at)
        return min(deadlines)

    def _flushed_since_checkpoint(self) -> bool:
        assert self._writer is not None
        return self._writer.stats.flushes != self._flushes_at_checkpoint

    def _read_sources(self, once: bool = False) -> None:
        """Hand every new line to the pipeline; ``once``: one bounded tailer poll only."""
        assert self._parts is not None and self._writer is not None
        pipeline = self._parts.pipeline
        if self._tailer is not None:
            now = self._mono()
            if now >= self._poll_at and self._watcher is not None:
                # A log directory that did not exist at start (or a glob's new directory)
                # gets its watch once it appears; until then the safety poll covers it.
                self._watcher.update(self._tailer.directories())
            self._poll_at = now + SAFETY_POLL
            while not self._stop:
                lines = self._tailer.poll()
                if lines:
                    self._unsaved = True
                for raw in lines:
                    pipeline.feed_bytes(raw.data, raw.source, raw.lineno)
                if once or not self._tailer.more:
                    break
                # A long catch-up still flushes (and checkpoints) on time.
                self._writer.tick()
                if self._writer.pending == 0 and self._flushed_since_checkpoint():
                    self._checkpoint()
        else:
            self._poll_at = self._mono() + 3600.0
        if self._journal is not None:
            for record in self._journal.read():
                self._unsaved = True
                line = from_journal(record)
                if line is not None:
                    pipeline.feed_logline(line, "journal")

    def _checkpoint(self) -> None:
        assert self._writer is not None
        if self._writer.pending:
            return  # never save positions past lines whose logins are not in the table
        if self._tailer is not None:
            self._tailer.checkpoint()
        if self._journal is not None:
            self._journal.checkpoint()
        self._unsaved = False
        self._flushes_at_checkpoint = self._writer.stats.flushes
        self._checkpoint_at = self._mono() + CHECKPOINT_EVERY

    def _supervise(self) -> None:
        if self._watcher is not None and not self._watcher.is_alive():
            raise SupervisionError("the log directory watcher thread died")
        journal = self._journal
        if journal is not None and not journal.is_alive():
            # Hand out what it wrote before it ended, then report it.
            if self._parts is not None:
                for record in journal.read():
                    line = from_journal(record)
                    if line is not None:
                        self._parts.pipeline.feed_logline(line, "journal")
            raise SupervisionError(f"the journal reader ended: {journal.exit_reason or 'EOF'}")

    # -- status -----------------------------------------------------------------------------

    def _status_text(self) -> str:
        if self._parts is None or self._writer is None:
            return "starting"
        c = self._parts.pipeline.counters
        w = self._writer.stats
        return (
            f"lines {c.lines}, logins {c.logins}, written {w.written}, "
            f"expired {w.expired}, pending {self._writer.pending}, errors {w.errors}"
        )

    def _send_status(self, now: float) -> None:
        text = self._status_text()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text
        self._status_at = now + STATUS_EVERY

    # -- reload -----------------------------------------------------------------------------

    def _do_reload(self) -> None:
        self.notifier.reloading()
        log.info("reloading the configuration and the patterns")
        try:
            self._apply(self._load())
        except PopwatchError as err:
            self.failed_reloads += 1
            log.error("reload failed, the previous configuration stays in use: %s", err)
        else:
            self.reloads += 1
            log.info("reloaded")
        self.notifier.ready(self._status_text())

    def _apply(self, cfg: Config) -> None:
        """Build everything the new configuration needs before touching the running parts."""
        assert self._parts is not None and self._writer is not None and self._store is not None
        old = self._parts.cfg
        patterns = load_patterns_for(cfg)
        matcher = make_matcher(patterns, self._clock)
        policy = make_policy(cfg, self._mynetworks)
        new_store: Store | None = None
        if (cfg.database, store_options(cfg)) != (old.database, store_options(old)):
            new_store = open_table(cfg)
        files_changed = (cfg.logs, cfg.state_dir, cfg.max_line_length) != (
            old.logs,
            old.state_dir,
            old.max_line_length,
        )
        journal_changed = (cfg.journal, cfg.journal_units, cfg.state_dir) != (
            old.journal,
            old.journal_units,
            old.state_dir,
        ) or programs_of(patterns) != programs_of(self._parts.patterns)
        if files_changed or journal_changed:
            _make_state_dir(cfg)
        # From here on nothing the administrator wrote can fail; only I/O can.
        changing = files_changed or journal_changed or new_store is not None
        if changing and self._writer.flush():
            self._checkpoint()
        if new_store is not None:
            self._writer.replace_store(new_store).close()
            self._store = new_store
        self._writer.configure(
            lifetime=cfg.lifetime,
            flush_interval=cfg.flush_interval,
            flush_burst=cfg.flush_burst,
            refresh=cfg.refresh,
            expire_interval=cfg.expire_interval,
        )
        pipeline = Pipeline(
            matcher, policy, self._writer, self._clock, self._parts.pipeline.counters
        )
        if files_changed:
            self._close_files()
        if journal_changed:
            self._stop_journal()
        self._parts = _Parts(cfg, patterns, pipeline)
        if files_changed and cfg.logs:
            self._tailer = Tailer(
                list(cfg.logs),
                cfg.state_dir,
                max_line_length=cfg.max_line_length,
                max_batch_bytes=MAX_BATCH_BYTES,
            )
            self._watcher = Watcher(self._tailer.directories(), self._waker.wake)
            self._watcher.start()
        if journal_changed and (cfg.journal or self._journal_files):
            self._start_journal(cfg, patterns)


def _make_state_dir(cfg: Config) -> None:
    path = cfg.state_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = ", ".join(cfg.sources) or "configuration"
        raise ConfigError(
            f'{where}: key "state_dir": {path}: cannot create: {err.strerror}'
        ) from None

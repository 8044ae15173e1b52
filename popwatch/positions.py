"""Positions: where the tailer stopped in every log file, kept safe across crashes.

NAME
    popwatch.positions - the tailer's state file (``STATE_DIR/positions.json``)

DESCRIPTION
    For every followed path the tailer records the file instance it is reading and, while a
    rotated-away instance is still being drained, that instance too.  A :class:`Position` names
    an instance by ``(dev, ino)`` and says how far it was handed out (``offset``, always just
    after a line feed), which line number that is, how big the file was, and a fingerprint of
    its first bytes: inode numbers are reused after a file is deleted, so ``(dev, ino)`` alone
    cannot tell "the same file" from "a new file that got the old number".  The file's mtime
    is kept too: when the instance is gone after a restart, rotated files modified later than
    it are the generations that followed it.  For the same reason a path with nothing at it
    keeps the instance that was there last (``previous``), until another one appears.

    The fingerprint is the SHA-256 of the first ``fp_len`` bytes (at most 256) of the file;
    ``fp_len`` is kept because a young file may be shorter than 256 bytes when it is recorded.

    :meth:`PositionFile.save` is atomic: the new state goes to ``positions.json.tmp``, is
    fsync'ed, renamed over ``positions.json`` and the directory is fsync'ed.  A crash at any
    point leaves either the old or the new state readable, never a mixture.  Saving the same
    state twice writes nothing, so a daemon may checkpoint after every flush.

    :class:`PositionFile` also holds an exclusive ``flock`` on ``positions.lock`` so that two
    daemons never share (and corrupt) one state directory; the kernel drops it when the process
    dies, however it dies.

    The format is JSON (``{"version": 1, "files": {PATH: {"current": {...}, "draining":
    [...]}}}``, and ``"previous": {...}`` when current is null and something was there before)
    so an administrator can read it, and delete it to start over.

DIAGNOSTICS
    A state directory that cannot be created or written at start: ConfigError (exit 78).
    Another process holds the lock: PopwatchError.  An unreadable or corrupt state file at
    start: one warning (logger ``popwatch.positions``), then the tailer starts without state.
    A failed save: one warning per change of the error (the positions of the previous save stay
    valid; at worst lines are read again, which changes nothing downstream), never an exception.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from popwatch.errors import ConfigError, PopwatchError

log = logging.getLogger("popwatch.positions")

FINGERPRINT_BYTES = 256
STATE_NAME = "positions.json"
LOCK_NAME = "positions.lock"
VERSION = 1


def fingerprint(head: bytes) -> str:
    """The fingerprint of a file whose first bytes are ``head`` (already cut to fp_len)."""
    return hashlib.sha256(head).hexdigest()


@dataclass(frozen=True, slots=True)
class Position:
    """One file instance and how far it was handed out (see the module text)."""

    dev: int
    ino: int
    offset: int  # just after the last line feed handed out
    lineno: int  # number of lines handed out before ``offset`` (0: unknown)
    size: int  # file size seen when the position was taken
    fp_len: int  # how many leading bytes the fingerprint covers (<= FINGERPRINT_BYTES)
    fingerprint: str  # SHA-256 hex of those bytes
    mtime_ns: int = 0  # the file's mtime when the position was taken (0: unknown)


@dataclass(frozen=True, slots=True)
class PathState:
    """The instance at a path now (None: nothing readable there), those still draining, and
    - while nothing is there - the instance that was there last."""

    current: Position | None
    draining: tuple[Position, ...] = ()
    previous: Position | None = None


def _position(raw: Any) -> Position:
    if not isinstance(raw, dict):
        raise ValueError("position is not an object")
    values: dict[str, Any] = {}
    for name in Position.__dataclass_fields__:
        if name == "mtime_ns" and name not in raw:
            continue
        value = raw[name]
        want = str if name == "fingerprint" else int
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"{name}: bad value {value!r}")
        values[name] = value
    return Position(**values)


def decode(text: bytes) -> dict[str, PathState]:
    """Parse a state file's bytes; ValueError (any kind of damage) when it cannot be used."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("unknown format version")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError('no "files" object')
    states = {}
    for path, raw in files.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("draining", []), list):
            raise ValueError(f"{path}: bad entry")
        current = None if raw.get("current") is None else _position(raw["current"])
        draining = tuple(_position(p) for p in raw.get("draining", []))
        previous = None if raw.get("previous") is None else _position(raw["previous"])
        states[path] = PathState(current, draining, previous)
    return states


def encode(states: Mapping[str, PathState]) -> bytes:
    files: dict[str, dict[str, Any]] = {}
    for path, st in sorted(states.items()):
        files[path] = {
            "current": None if st.current is None else asdict(st.current),
            "draining": [asdict(p) for p in st.draining],
        }
        if st.previous is not None:  # absent otherwise: files of older versions stay the same
            files[path]["previous"] = asdict(st.previous)
    return json.dumps({"version": VERSION, "files": files}, indent=1).encode() + b"\n"


class PositionFile:
    """The state file in one directory, locked for the lifetime of this object."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_NAME
        self._tmp = state_dir / (STATE_NAME + ".tmp")
        self._saved: bytes | None = None
        self._save_error: str | None = None
        try:
            state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            lock_fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as err:
            raise ConfigError(
                f"state_dir {state_dir}: cannot use it: {err.strerror or err}"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(lock_fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise PopwatchError(
                    f"state_dir {state_dir}: in use by another popwatch process"
                    f" ({LOCK_NAME} is locked)"
                ) from None
            raise ConfigError(f"state_dir {state_dir}: cannot lock: {err.strerror}") from None
        self._lock_fd: int | None = lock_fd

    def load(self) -> dict[str, PathState]:
        """The last saved state; empty (with a warning) when there is none that can be used."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            log.warning(
                "%s: cannot read: %s: starting without saved positions", self.path, err.strerror
            )
            return {}
        try:
            states = decode(text)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s: unusable (%s): starting without saved positions", self.path, err)
            return {}
        self._saved = text
        return states

    def save(self, states: Mapping[str, PathState]) -> bool:
        """Write atomically; True when the state on disk is now ``states``."""
        text = encode(states)
        if text == self._saved:
            return True
        try:
            self._write(text)
        except OSError as err:
            reason = f"{err.strerror or err}"
            if reason != self._save_error:
                log.warning(
                    "%s: cannot save positions: %s: keeping the previous ones", self.path, reason
                )
                self._save_error = reason
            return False
        if self._save_error is not None:
            log.info("%s: positions saved again", self.path)
            self._save_error = None
        self._saved = text
        return True

    def _write(self, text: bytes) -> None:
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        # The rename is only durable once the directory entry is on disk.
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

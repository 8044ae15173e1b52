"""The tailer's state file: round trip, damage, locking, and atomic replacement under a crash."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from popwatch.errors import ConfigError, PopwatchError
from popwatch.positions import PathState, Position, PositionFile, decode, encode, fingerprint

A = Position(dev=1, ino=2, offset=30, lineno=3, size=40, fp_len=30, fingerprint=fingerprint(b"x"))
B = Position(dev=1, ino=5, offset=0, lineno=0, size=0, fp_len=0, fingerprint=fingerprint(b""))
STATES = {
    "/var/log/mail.log": PathState(A, (B,)),
    "/var/log/other.log": PathState(None),
    "/var/log/gone.log": PathState(None, (), A),
}


def test_round_trip(tmp_path: Path) -> None:
    assert decode(encode(STATES)) == STATES
    pf = PositionFile(tmp_path)
    try:
        assert pf.load() == {}
        assert pf.save(STATES)
        assert pf.load() == STATES
    finally:
        pf.close()
    assert PositionFile(tmp_path).load() == STATES


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{not json",
        b'{"version": 2, "files": {}}',
        b'{"version": 1}',
        b'{"version": 1, "files": {"/x": {"current": {"dev": 1}}}}',
        b'{"version": 1, "files": {"/x": {"current": {"dev": 1, "ino": 2, "offset": "3",'
        b' "lineno": 0, "size": 0, "fp_len": 0, "fingerprint": ""}}}}',
        b'{"version": 1, "files": {"/x": {"current": null, "draining": {}}}}',
    ],
)
def test_damaged_state_is_ignored_with_one_warning(
    tmp_path: Path, text: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "positions.json").write_bytes(text)
    pf = PositionFile(tmp_path)
    try:
        assert pf.load() == {}
    finally:
        pf.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "unusable" in warnings[0] and "starting without saved positions" in warnings[0]


def test_state_directory_is_created_and_locked(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    pf = PositionFile(state)
    try:
        assert state.is_dir()
        with pytest.raises(PopwatchError, match=r"in use by another popwatch process"):
            PositionFile(state)
    finally:
        pf.close()
    PositionFile(state).close()  # released on close


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    code = (
        "from popwatch.positions import Path, PositionFile;"
        f" p = PositionFile(Path({str(tmp_path)!r}))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code + "; print('locked', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(PopwatchError):
            PositionFile(tmp_path)
    finally:
        child.kill()
        child.wait(10)
    PositionFile(tmp_path).close()


def test_unusable_state_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"state_dir .*/file/state: cannot use it"):
        PositionFile(tmp_path / "file" / "state")


def test_failed_save_warns_once_and_keeps_the_old_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pf = PositionFile(tmp_path)
    try:
        assert pf.save({"/x": PathState(A)})
        (tmp_path / "positions.json.tmp").mkdir()  # the temporary name is taken by a directory
        assert not pf.save(STATES)
        assert not pf.save(STATES)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "cannot save positions" in warnings[0]
        assert decode((tmp_path / "positions.json").read_bytes()) == {"/x": PathState(A)}
        (tmp_path / "positions.json.tmp").rmdir()
        assert pf.save(STATES)
        assert decode((tmp_path / "positions.json").read_bytes()) == STATES
    finally:
        pf.close()


@pytest.mark.parametrize("crash_at", ["fsync", "replace"])
def test_a_crash_before_the_rename_leaves_the_old_state_readable(
    tmp_path: Path, crash_at: str
) -> None:
    """A real process is SIGKILLed after writing the temporary file, at the fsync or at the
    rename; the state file it leaves must be the old one, whole."""
    old = {"/x": PathState(A)}
    pf = PositionFile(tmp_path)
    pf.save(old)
    pf.close()
    script = textwrap.dedent(f"""
        import os, signal
        from popwatch import positions
        from popwatch.positions import PathState, Position, PositionFile, fingerprint
        real = getattr(os, {crash_at!r})
        def crash(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(positions.os, {crash_at!r}, crash)
        p = Position(9, 9, 9, 9, 9, 0, fingerprint(b""))
        PositionFile(positions.Path({str(tmp_path)!r})).save({{"/new": PathState(p)}})
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert done.returncode == -9
    assert (tmp_path / "positions.json.tmp").exists()
    pf = PositionFile(tmp_path)
    try:
        assert pf.load() == old
        assert pf.save(STATES)  # the stale temporary file is simply replaced
        assert pf.load() == STATES
    finally:
        pf.close()


def test_state_file_is_readable_json_for_the_administrator(tmp_path: Path) -> None:
    pf = PositionFile(tmp_path)
    try:
        pf.save(STATES)
    finally:
        pf.close()
    doc = json.loads((tmp_path / "positions.json").read_text())
    assert doc["version"] == 1
    assert doc["files"]["/var/log/mail.log"]["current"]["offset"] == 30
    assert oct(os.stat(tmp_path / "positions.json").st_mode & 0o777) == "0o640"

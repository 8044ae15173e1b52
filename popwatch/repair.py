"""Check the relay table before the daemon opens it; move a damaged one aside.

NAME
    popwatch.repair - verify ``relayers.db`` at start, salvage or refuse

SYNOPSIS
    moved = check_table(cfg.database, cfg.state_dir, rebuild=True)

DESCRIPTION
    :func:`check_table` runs Berkeley DB's own verifier on the table
    (:func:`popwatch.store.bdb.verify`, the check ``db_verify`` makes, under a shared lock so
    that a batch in progress elsewhere is not mistaken for damage).  A table that verifies,
    a missing file and a zero-length file are left alone.

    A table that fails verification (a disk error, a copy cut short, a file that is not a
    Berkeley DB file at all) cannot be trusted to answer MTA lookups, and writing into it can
    make things worse.  With ``rebuild`` (the default) it is renamed to
    ``relayers.db.corrupt-YYYYmmddTHHMMSS`` in the same directory (kept for the administrator,
    never deleted) with a warning, and the saved log positions (``positions.json``) and journal
    cursor (``journal.cursor``) in ``state_dir`` are renamed to ``*.before-repair``: the
    daemon then creates an empty table and reads the logs from their start (the journal from
    one lifetime ago), and the address policy keeps only the logins still inside the
    lifetime, so the table is rebuilt with every address that should be in it and no other.
    Entries an administrator added by hand (pinned, future stamps) are not in the logs: the
    warning says to restore them from a ``popwatch dump`` saved earlier.

    Without ``rebuild`` the damaged file is left untouched and :class:`StoreError` is raised
    (exit 74): for sites that want a person to look first.

WHAT IT DOES NOT
    It does not try to salvage entries from the damaged file (``db_dump -r`` can, by hand:
    a salvaged entry may be garbage, and a garbage key can open the relay to a network), does
    not lock the table against a concurrent repair by another process (one daemon per table,
    enforced by the state directory lock), and knows nothing of key formats.  Logins from a
    log generation that was rotated away within the lifetime are not read again.

ERRORS
    :class:`popwatch.errors.StoreError` naming the path: the table is damaged and ``rebuild``
    is off, it cannot be renamed, or it cannot be opened or locked for the check.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from popwatch.errors import StoreError

log = logging.getLogger("popwatch.repair")

# State that says "these log lines are already in the table": wrong once the table is new.
# positions.json is popwatch.positions.STATE_NAME; journal.cursor is JournalSource's file.
STATE_FILES = ("positions.json", "journal.cursor")


def corrupt_name(path: Path, when: float) -> Path:
    """``relayers.db.corrupt-20261122T091502`` (UTC), with ``-N`` added if that exists."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return candidate


def check_table(
    path: Path,
    state_dir: Path | None,
    *,
    rebuild: bool = True,
    lock_timeout: float = 30.0,
    clock: Callable[[], float] = time.time,
) -> Path | None:
    """Verify the table; return where a damaged one was moved, None when it was fine."""
    from popwatch.store.bdb import verify  # the store is the only module that knows BDB

    problem = verify(path, lock_timeout)
    if problem is None:
        return None
    if not rebuild:
        raise StoreError(
            f"{path}: {problem}: refusing to start (move it aside or restore it from a "
            f"'popwatch dump' copy; popwatch rebuilds it from the logs when repair is on)"
        )
    aside = corrupt_name(path, clock())
    try:
        os.rename(path, aside)
    except OSError as err:
        raise StoreError(f"{path}: {problem}: cannot move it aside: {err.strerror}") from None
    log.warning(
        "relay table %s: %s: moved to %s; starting an empty table and reading the logs "
        "again to rebuild it (restore hand-made entries from a saved 'popwatch dump')",
        path,
        problem,
        aside,
    )
    if state_dir is not None:
        for name in STATE_FILES:
            saved = state_dir / name
            try:
                os.rename(saved, saved.with_name(name + ".before-repair"))
            except FileNotFoundError:
                continue
            except OSError as err:
                # Keeping the positions only means some logins wait for their next login.
                log.warning("%s: cannot move aside: %s", saved, err.strerror)
    return aside

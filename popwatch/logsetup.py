"""Logging for the daemon: stderr, with syslog priorities when stderr is the journal.

DESCRIPTION
    :func:`configure` gives the ``popwatch`` logger one stderr handler.  When systemd connected
    stderr to the journal (``$JOURNAL_STREAM`` is ``DEV:INODE`` of the file stderr is), every
    line starts with ``<N>``, the syslog priority, which journald strips and stores as
    PRIORITY= (so ``journalctl -p warning -u popwatch`` works), and no time stamp is written
    because the journal adds its own.  In a terminal lines read
    ``popwatch: warning: message``, the Postfix shape, with a time stamp when ``timestamps``.

WHAT IT DOES NOT
    It never runs at import time and never touches the root logger or other libraries' loggers.

DIAGNOSTICS
    None: a ``$JOURNAL_STREAM`` that does not parse or does not match simply means "not the
    journal".
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

# syslog(3) priorities for Python levels.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def priority(levelno: int) -> int:
    """The syslog priority for a Python level (levels between two map to the more severe)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>message``: journald's stream protocol for priorities."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        # A multi-line message would lose its priority after the first line.
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def configure(
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    timestamps: bool = False,
) -> logging.Handler:
    """Replace the ``popwatch`` logger's handlers with one for ``stream`` (stderr)."""
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    if isinstance(level, str):
        level = LEVELS[level]
    handler = logging.StreamHandler(out)
    if stream_is_journal(out, env):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        fmt = "popwatch: %(levelname_lower)s: %(message)s"
        if timestamps:
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(_PlainFormatter(fmt))
    logger = logging.getLogger("popwatch")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)

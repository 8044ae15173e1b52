"""``popwatch run``: the daemon (see :mod:`popwatch.daemon`).

Follows the configured logs (and the journal with ``--journal``), writes each login's client
address into the relay table, expires old entries, and obeys systemd's notify protocol.
Runs in the foreground until SIGTERM or SIGINT (exit 0); SIGHUP reloads the configuration and
the patterns.  Exit 78 for a configuration error, 74 when the table cannot be opened, 70 when a
source dies while running (systemd restarts it).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from popwatch import logsetup
from popwatch.commands.common import load
from popwatch.config import Config

HELP = "follow the logs and keep the relay table current (the daemon)"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help=HELP,
        description=HELP + ".  Signals: TERM/INT stop (final flush), HUP reloads.",
    )
    add_source_options(p)
    p.add_argument(
        "--journal",
        action="store_true",
        default=None,
        help="also read the systemd journal, trusting only _SYSTEMD_UNIT/_COMM (config: journal)",
    )
    p.add_argument(
        "--journal-file",
        metavar="FILE",
        action="append",
        default=[],
        help="read this journal file instead of the system journal (implies --journal)",
    )
    p.add_argument("--state-dir", metavar="DIR", help="where log positions are kept")
    p.add_argument(
        "--from-end",
        action="store_true",
        help="a log without a saved position is read from its end, not its start",
    )
    p.set_defaults(func=run)


def add_source_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by run and scan: they override the configuration file."""
    p.add_argument(
        "--log",
        metavar="FILE",
        action="append",
        help="log file or glob to follow (repeatable; replaces the configured logs)",
    )
    p.add_argument("--lifetime", metavar="DURATION", help="e.g. 30m (config: lifetime)")
    p.add_argument(
        "--ignore",
        metavar="CIDR",
        action="append",
        help="network never written (repeatable; replaces the configured list)",
    )
    p.add_argument(
        "--no-ignore", action="store_true", help="ignore no network at all, not even loopback"
    )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "log", None):
        out["logs"] = list(args.log)
    if getattr(args, "lifetime", None):
        out["lifetime"] = args.lifetime
    if getattr(args, "no_ignore", False):
        out["ignore"] = []
    elif getattr(args, "ignore", None):
        out["ignore"] = list(args.ignore)
    if getattr(args, "state_dir", None):
        out["state_dir"] = args.state_dir
    if getattr(args, "journal", None):
        out["journal"] = True
    return out


def log_level(args: argparse.Namespace, cfg: Config) -> int:
    if args.verbose >= 2:
        return logging.DEBUG
    if args.verbose == 1:
        return min(logging.INFO, logsetup.LEVELS[cfg.log_level])
    return logsetup.LEVELS[cfg.log_level]


def run(args: argparse.Namespace) -> int:
    from popwatch.daemon import Daemon

    extra = overrides(args)
    cfg = load(args, extra)  # a bad configuration stops here: exit 78, nothing started
    logsetup.configure(log_level(args, cfg))
    daemon = Daemon(
        lambda: load(args, extra),
        journal_files=[Path(f) for f in args.journal_file],
        start_at_end=args.from_end,
    )
    return daemon.run()

"""``vsmtprelay``: the classic relay-table admin tool's command line, on popwatch's store.

NAME
    vsmtprelay - add, delete, expire, list, dump and load POP-before-SMTP relay entries

SYNOPSIS
    vsmtprelay [-c CONFIG] [--db PATH] add IP [TICKS]
    vsmtprelay [-c CONFIG] [--db PATH] delete IP...
    vsmtprelay [-c CONFIG] [--db PATH] expire [N]
    vsmtprelay [-c CONFIG] [--db PATH] list [N] [--json]
    vsmtprelay [-c CONFIG] [--db PATH] dump [--json]
    vsmtprelay [-c CONFIG] [--db PATH] load [FILE|-] [--merge]

DESCRIPTION
    A drop-in for the old vsmtprelay so that existing crontab lines (``vsmtprelay expire
    1440``, ``vsmtprelay expire``, ``vsmtprelay list 10``, ``vsmtprelay dump > relayers``) keep
    working with the same semantics and output.  It runs exactly the code of ``popwatch add``
    and friends (:mod:`popwatch.commands.admin`) with the same configuration; only the
    program name in messages differs.

EXIT STATUS
    As ``popwatch``: 0, 1 (delete: not found), 64 usage, 66 input unreadable, 74 table
    cannot be opened or locked, 78 configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from popwatch import __version__
from popwatch.cli import CommandParser, add_global_options, run_command
from popwatch.commands import admin

PROG = "vsmtprelay"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG,
        description=(
            "Maintain the POP-before-SMTP relay table (relayers.db), as the classic "
            "vsmtprelay did; the same commands as popwatch's."
        ),
        epilog=admin.COMMANDS["expire"][2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} (popwatch) {__version__}")
    add_global_options(parser)
    parser.set_defaults(prog_name=PROG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    admin.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser, PROG, argv)


def main_entry() -> NoReturn:
    sys.exit(main())

"""The ``popwatch`` command line: global options, then one subcommand.

``main(argv) -> int`` never raises for a user mistake: errors are one line on stderr,
``popwatch: fatal: <reason>``, and a sysexits status (:mod:`popwatch.exitcodes`).  Each
subcommand lives in its own module under :mod:`popwatch.commands` and provides::

    register(subparsers) -> None      # adds its parser, with set_defaults(func=run)
    run(args: argparse.Namespace) -> int

Global options apply to every subcommand: ``-c FILE`` (configuration file instead of
/etc/popwatch/popwatch.toml and popwatch.d/), ``--db PATH``, ``--key-format``, ``-v``.
Use :func:`popwatch.commands.common.load` inside a command to get the effective
configuration (defaults < files < flags).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from popwatch import __version__
from popwatch.errors import ConfigError, PopwatchError, StoreError, UsageError
from popwatch.exitcodes import EX_CONFIG, EX_IOERR, EX_SOFTWARE, EX_USAGE

# Order is the order of --help.
COMMAND_MODULES = ("admin", "run", "scan", "test", "config")

DESCRIPTION = """\
popwatch gives a mail server POP-before-SMTP relaying: it follows the mail log, recognizes
successful POP3/IMAP logins with one grammar per daemon, and writes each client address with
a Unix timestamp into a Berkeley DB hash table (relayers.db) that Postfix
(check_client_access hash:...) and sendmail consult.  Entries expire after the lifetime.
"""

EPILOG = """\
exit status:
  0   success              1   address not found (delete)
  64  usage error          66  input file cannot be read
  70  internal error       74  database cannot be opened, locked or written
  78  configuration error (systemd: RestartPreventExitStatus=78)

files:
  /etc/popwatch/popwatch.toml, /etc/popwatch/popwatch.d/*.toml   configuration
  /etc/popwatch/patterns.d/*.py                                  site patterns
  /etc/mail/relayers.db                                          default relay table

See "popwatch COMMAND --help" for each command, and README.md for set-up with Postfix and
sendmail.
"""


class _Exit(Exception):
    """argparse finished on its own (--help, --version): return this status from main()."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class CommandParser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 64) instead of exiting with status 2, and never
    calls sys.exit itself, so that main() always returns."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="popwatch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"popwatch {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"popwatch.commands.{name}")
        module.register(sub)
    return parser


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="read FILE instead of /etc/popwatch/popwatch.toml and popwatch.d/*.toml",
    )
    parser.add_argument("--db", metavar="PATH", help="relay table path (config key: database)")
    parser.add_argument(
        "--key-format",
        choices=("sendmail", "postfix"),
        help="key form for a new table: sendmail (no NUL, as makemap) or postfix (NUL, as postmap)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser, "popwatch", argv)


def run_command(
    build: Callable[[], argparse.ArgumentParser], prog: str, argv: Sequence[str] | None
) -> int:
    """Parse ``argv`` with the parser ``build`` makes and run the chosen command, turning every
    popwatch error into one line on stderr and its exit status (shared by vsmtprelay)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build()
        args = parser.parse_args(args_list)
        if not getattr(args, "func", None):
            parser.print_usage(sys.stderr)
            return fatal(f"no command given (see {prog} --help)", EX_USAGE, prog)
        setup_logging(args.verbose)
        return int(args.func(args))
    except _Exit as done:
        return done.status
    except UsageError as err:
        return fatal(str(err), EX_USAGE, prog)
    except ConfigError as err:
        return fatal(str(err), EX_CONFIG, prog)
    except StoreError as err:
        return fatal(str(err), EX_IOERR, prog)
    except PopwatchError as err:
        return fatal(str(err), EX_SOFTWARE, prog)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `popwatch dump | head`: the reader went away; not an error worth a message.
        sys.stderr.close()
        return 0


def fatal(message: str, status: int, prog: str = "popwatch") -> int:
    print(f"{prog}: fatal: {message}", file=sys.stderr)
    return status


def setup_logging(verbosity: int) -> None:
    """Log to stderr; called by main(), never at import time."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger("popwatch")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("popwatch: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record, not at set-up time (tests
    and daemons replace sys.stderr)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def main_entry() -> NoReturn:
    sys.exit(main())

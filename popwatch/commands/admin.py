"""The relay-table admin commands: add, delete, expire, list, dump, load.

NAME
    popwatch add | delete | expire | list | dump | load  (also ``vsmtprelay ...``)

DESCRIPTION
    The vsmtprelay interface, run through the same store code as the daemon
    (:mod:`popwatch.table`, :mod:`popwatch.store`).  Mutating commands print nothing on
    success.  ``list``, ``dump`` and ``expire`` on a table file that does not exist treat it as
    empty and never create it; ``add`` and ``load`` create it (in ``key_format``).

    The clock is read here, at the edge, once per command (``time.time()``); everything below
    takes ``now`` as an argument.

EXIT STATUS
    0 done; 1 ``delete`` of an address that is not in the table (each one named on stderr);
    64 usage: a bad address, TICKS, N, or a bad line in ``load`` input (nothing written);
    66 the ``load`` input file cannot be read; 74 the table cannot be opened, locked, read or
    written; 78 configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from popwatch import table
from popwatch.address import normalize_host
from popwatch.commands.common import load as load_config
from popwatch.config import Config
from popwatch.errors import AddressError, StoreError, UsageError
from popwatch.exitcodes import EX_NOINPUT, EX_NOTFOUND, EX_OK
from popwatch.store import Store, StoreOptions, open_store
from popwatch.table import (
    dump,
    expire,
    format_json,
    format_listing,
    parse_listing,
    parse_ticks,
    select,
)

log = logging.getLogger("popwatch.admin")

Clock = Callable[[], float]

_CRON = """\
crontab examples (as with vsmtprelay):
  15 3 * * *    popwatch expire 1440    # nightly: drop entries older than a day
  */15 * * * *  popwatch expire 60      # strict: one hour after the last login
  0 0 * * *     popwatch expire         # lenient: everything not pinned, at midnight
"""

_FORMAT = """\
output format (valid "makemap hash" and "postmap" input), sorted by address:
  # timestamp (UTC): Tue Sep 22 22:15:27 1998
  10.11.12.13 906502527
The key carries the configured key_prefix / ipv6_prefix (e.g. POP:..., IPv6:...).
With --json: one JSON array of {"address", "key", "timestamp", "utc", "pinned"}.
"""

COMMANDS: dict[str, tuple[str, str, str]] = {
    "add": (
        "insert an address with the current time (or TICKS)",
        """\
Insert IP into the relay table with the current Unix time, or with TICKS (Unix seconds).
A TICKS in the future pins the entry: expire never removes it (a permanent exception).
Only full host addresses are accepted: 10.1 or 10.0.0.0/8 would open a whole network.
IPv6 is stored compressed and lowercase, ::ffff:192.0.2.10 as 192.0.2.10.""",
        """\
examples:
  popwatch add 192.0.2.10               # relay for 192.0.2.10 from now on
  popwatch add 2001:db8::5 4102444800   # pinned until 2100
""",
    ),
    "delete": (
        "remove addresses",
        """\
Remove each IP from the relay table, in one locked update.  An address that is not in the
table is named on stderr ("IP: not found") and the exit status is 1; the others are still
removed.""",
        "example:\n  popwatch delete 192.0.2.10 2001:db8::5\n",
    ),
    "expire": (
        "expire all old (or older than N minutes) entries",
        """\
Remove every entry whose timestamp is not in the future, or, with N, every entry at least
N minutes old.  Future-stamped (pinned) entries are never expired.  When nothing is old
enough the file is not touched, so the MTA does not reload it.""",
        _CRON,
    ),
    "list": (
        "list all old (or older than N minutes) entries",
        """\
Print the entries that "expire" would remove: every entry not in the future, or with N
those at least N minutes old.  Pinned entries are left out; use "dump" to see them.""",
        _FORMAT + 'examples:\n  popwatch list 60     # what "expire 60" would remove\n'
        "  popwatch list --json | jq -r '.[].address'\n",
    ),
    "dump": (
        "list every entry, including the future timestamped",
        """\
Print every entry of the relay table, pinned ones included.  Entries that are not
popwatch's (for example a truncated key "10.1" added by hand, which Postfix matches as a
whole network) are not printed but warned about on stderr; "load" removes them.""",
        _FORMAT + "example:\n  popwatch dump > relayers; vi relayers; popwatch load relayers\n",
    ),
    "load": (
        "rebuild the table from list/dump text (like makemap)",
        """\
Replace the contents of the relay table with the entries read from FILE (or standard input
when FILE is "-" or absent), in place and in one locked update, like "makemap hash
relayers.db < relayers".  Blank lines and lines starting with # are ignored; every other
line is "ADDRESS TICKS".  If any line is bad, every bad line is reported with its number and
nothing is written.  --merge adds the entries instead of replacing the table.""",
        "examples:\n  popwatch dump > relayers; vi relayers; popwatch load relayers\n"
        "  printf '192.0.2.10 4102444800\\n' | popwatch load --merge\n",
    ),
}


def register(sub: Any) -> None:
    """Add the six subcommands (this module keeps the name "admin" in cli.COMMAND_MODULES)."""
    for name, (summary, description, epilog) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _ARGUMENTS[name](p)
        p.set_defaults(func=_RUNNERS[name])


def _args_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("ip", metavar="IP", help="full IPv4 or IPv6 host address")
    p.add_argument("ticks", metavar="TICKS", nargs="?", help="Unix seconds (default: now)")


def _args_delete(p: argparse.ArgumentParser) -> None:
    p.add_argument("ips", metavar="IP", nargs="+", help="address to remove")


def _args_minutes(p: argparse.ArgumentParser) -> None:
    p.add_argument("minutes", metavar="N", nargs="?", help="minutes (default: all old entries)")


def _args_list(p: argparse.ArgumentParser) -> None:
    _args_minutes(p)
    p.add_argument("--json", action="store_true", help="print a JSON array")


def _args_dump(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON array")


def _args_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", nargs="?", default="-", help='input ("-": stdin)')
    p.add_argument("--merge", action="store_true", help="add to the table instead of replacing")


_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "add": _args_add,
    "delete": _args_delete,
    "expire": _args_minutes,
    "list": _args_list,
    "dump": _args_dump,
    "load": _args_load,
}


# -- the commands --------------------------------------------------------------------------


def run_add(args: argparse.Namespace, clock: Clock = time.time) -> int:
    cfg = load_config(args)
    ip = _address(args.ip)
    if args.ticks is None:
        stamp = int(clock())
    else:
        parsed = parse_ticks(args.ticks)
        if parsed is None:
            raise UsageError(f'bad TICKS "{_clip(args.ticks)}": expected Unix seconds (digits)')
        stamp = parsed
    with _open(cfg, create=True) as store:
        table.add(store, ip, stamp)
    return EX_OK


def run_delete(args: argparse.Namespace, clock: Clock = time.time) -> int:
    cfg = load_config(args)
    for ip in args.ips:
        _address(ip)  # every address is checked before anything is removed
    if not _exists(cfg.database):
        absent = list(args.ips)
    else:
        with _open(cfg, create=False) as store:
            absent = table.delete(store, args.ips)
    for ip in absent:
        print(f"{_prog(args)}: {ip}: not found", file=sys.stderr)
    return EX_NOTFOUND if absent else EX_OK


def run_expire(args: argparse.Namespace, clock: Clock = time.time) -> int:
    cfg = load_config(args)
    minutes = _minutes(args.minutes)
    if not _exists(cfg.database):
        return EX_OK
    with _open(cfg, create=False) as store:
        count = expire(store, int(clock()), minutes)
    log.info("%s: expired %d entries", cfg.database, count)
    return EX_OK


def run_list(args: argparse.Namespace, clock: Clock = time.time) -> int:
    cfg = load_config(args)
    minutes = _minutes(args.minutes)
    now = int(clock())
    return _show(args, cfg, now, lambda store: select(store, now, minutes))


def run_dump(args: argparse.Namespace, clock: Clock = time.time) -> int:
    cfg = load_config(args)
    return _show(args, cfg, int(clock()), dump)


def run_load(args: argparse.Namespace, clock: Clock = time.time) -> int:
    cfg = load_config(args)
    name = "standard input" if args.file == "-" else args.file
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        print(f"{_prog(args)}: fatal: {name}: cannot read: {reason}", file=sys.stderr)
        return EX_NOINPUT
    entries, bad = parse_listing(data.decode("utf-8", "replace"), cfg.key_prefix, cfg.ipv6_prefix)
    if bad:
        for b in bad:
            print(f"{_prog(args)}: {name}, line {b.lineno}: {b.reason}", file=sys.stderr)
        lines = "line" if len(bad) == 1 else "lines"
        raise UsageError(f"{name}: {len(bad)} bad {lines}: nothing written")
    with _open(cfg, create=True) as store:
        table.load(store, entries, merge=args.merge)
    return EX_OK


_RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "add": run_add,
    "delete": run_delete,
    "expire": run_expire,
    "list": run_list,
    "dump": run_dump,
    "load": run_load,
}


def run(args: argparse.Namespace) -> int:
    """Dispatch by ``args.command`` (for callers that build their own Namespace)."""
    return _RUNNERS[args.command](args)


# -- helpers -------------------------------------------------------------------------------


def _show(
    args: argparse.Namespace, cfg: Config, now: int, pick: Callable[[Store], list[table.Entry]]
) -> int:
    if _exists(cfg.database):
        with _open(cfg, create=False) as store:
            entries = pick(store)
            text = format_json(entries, store, now) if args.json else format_listing(entries, store)
    else:
        text = "[]\n" if args.json else ""
    sys.stdout.write(text)
    sys.stdout.flush()
    return EX_OK


def _open(cfg: Config, *, create: bool) -> Store:
    return open_store(cfg.database, StoreOptions.from_config(cfg), create=create)


def _exists(path: Path) -> bool:
    """False only when the file is certainly absent; other problems are for the store to
    report (permission denied on the directory, for example)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise StoreError(f"{path}: cannot open: a parent is not a directory") from None
    except OSError:
        return True
    return True


def _address(text: str) -> str:
    try:
        return normalize_host(text)
    except AddressError as err:
        raise UsageError(str(err)) from None


def _minutes(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise UsageError(f'bad N "{_clip(text)}": expected a whole number of minutes')
    return int(text)


def _prog(args: argparse.Namespace) -> str:
    return str(getattr(args, "prog_name", None) or "popwatch")


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["COMMANDS", "register", "run"]

"""``popwatch scan FILE...``: the daemon's pipeline over whole files, once.

For catch-up and recovery: every line of every FILE (``-`` for standard input) goes through
the same grammars, address policy and batched writer as ``popwatch run``; logins younger than
the lifetime are written, then the command exits.  It keeps no positions and expires nothing
(``popwatch expire`` does).  With ``-v`` it reports counts on stderr.

Exit 0 when done, 66 when a FILE cannot be read (checked before anything is written),
74 when the table cannot be opened or written, 78 for a configuration error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, BinaryIO

from popwatch.commands.common import load
from popwatch.commands.run import add_source_options, overrides
from popwatch.errors import StoreError
from popwatch.exitcodes import EX_NOINPUT, EX_OK

HELP = "read whole log files once through the daemon's pipeline (catch-up), then exit"
# Pending addresses that force a flush during a scan (bounds memory); tested after each read
# chunk, so at most one chunk's logins more are held.
FLUSH_EVERY = 50_000


def register(sub: Any) -> None:
    p = sub.add_parser("scan", help=HELP, description=HELP + ".")
    p.add_argument("files", nargs="+", metavar="FILE", help="log file, or - for standard input")
    add_source_options(p)
    p.set_defaults(func=run)


def _open(name: str) -> BinaryIO:
    if name == "-":
        return sys.stdin.buffer
    return open(name, "rb")


def run(args: argparse.Namespace) -> int:
    from popwatch import pipeline as d

    cfg = load(args, overrides(args))
    files: list[tuple[str, BinaryIO]] = []
    for name in args.files:
        try:
            files.append((name, _open(name)))
        except OSError as err:
            for _, f in files:
                f.close()
            print(f"popwatch: fatal: {name}: cannot read: {err.strerror}", file=sys.stderr)
            return EX_NOINPUT
    patterns = d.load_patterns_for(cfg)
    policy = d.make_policy(cfg)
    started = time.monotonic()
    store = d.open_table(cfg)
    try:
        writer = d.make_writer(cfg, store, time.time, time.monotonic)
        writer.flush_interval = float("inf")  # scan flushes by size and at the end only
        pipeline = d.Pipeline(d.make_matcher(patterns, time.time), policy, writer)
        for name, f in files:
            source = "(stdin)" if name == "-" else name
            before = pipeline.counters.lines, pipeline.counters.logins
            try:
                blocks = d.iter_blocks(f, source, cfg.max_line_length, pipeline.counters)
                for block in blocks:
                    pipeline.feed_block(block, source, cfg.max_line_length)
                    if writer.pending >= FLUSH_EVERY and not writer.flush():
                        raise StoreError(f"{store.path}: cannot write the relay table")
            except OSError as err:
                print(f"popwatch: fatal: {name}: cannot read: {err.strerror}", file=sys.stderr)
                return EX_NOINPUT
            finally:
                if f is not sys.stdin.buffer:
                    f.close()
            if args.verbose:
                c = pipeline.counters
                print(
                    f"popwatch: scan: {source}: {c.lines - before[0]} lines, "
                    f"{c.logins - before[1]} logins",
                    file=sys.stderr,
                )
        if not writer.flush():
            raise StoreError(f"{store.path}: cannot write the relay table")
    finally:
        store.close()
    if args.verbose:
        c, w = pipeline.counters, writer.stats
        elapsed = time.monotonic() - started
        print(
            f"popwatch: scan: total {c.lines} lines, {c.logins} logins, {c.ignored} ignored "
            f"(network or age), {w.written} written, {w.fresh} already fresh, "
            f"{c.too_long} too long, {elapsed:.2f} s",
            file=sys.stderr,
        )
    return EX_OK

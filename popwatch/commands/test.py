"""``popwatch test``: run the patterns over log files and show what they extract.

NAME
    popwatch test [--pattern NAME|FILE.py]... [--json] [--print-missed] FILE...|-

DESCRIPTION
    Like fail2ban-regex: reads each FILE (``-`` for standard input) through the same
    :class:`popwatch.syslogline.LineParser` and :class:`popwatch.matcher.Matcher` the daemon
    uses, with the patterns of the effective configuration (``pattern_dirs``, ``patterns``,
    ``[pattern.NAME]`` options), and prints the number of lines read, the login events per
    pattern and rule, the other rules' hits and the near misses: lines from a program some
    pattern claims that no rule matched.  ``--print-missed`` lists those lines.

    ``--pattern`` (repeatable) tries only the named patterns; a value ending in ``.py`` or
    containing ``/`` is a pattern file loaded by path, to try a new site pattern before
    installing it.

    ``--json`` writes one JSON object per login event to standard output and nothing else:
    ``file``, ``lineno`` (1-based, of the line that completed the login), ``ip``
    (normalized), ``pattern``, ``rule``, ``user``, ``time`` (Unix seconds), ``program``,
    ``pid``, ``host``.  The summary then goes to standard error.

    It reports what the grammars extract, before ignore lists, mynetworks and time windows,
    and it never opens the relay table.  Lines are read as bytes and decoded as UTF-8;
    undecodable bytes become U+FFFD, with one warning per file.  RFC 3164 times are read in
    the local time zone with the year inferred from the current date, as the daemon does.

EXIT STATUS
    0 the files were read (whether or not anything matched); 64 usage error (including an
    unknown pattern name); 66 a file cannot be read (nothing is processed); 78 configuration
    error or a pattern file that cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from popwatch.commands.common import load as load_config
from popwatch.errors import UsageError
from popwatch.event import LoginEvent
from popwatch.exitcodes import EX_NOINPUT, EX_OK
from popwatch.grammar import Pattern
from popwatch.matcher import Matcher
from popwatch.patternload import find_pattern_files, load_pattern_file, load_patterns
from popwatch.pipeline import Counters, iter_lines

MAX_MISSED_SHOWN = 10000  # --print-missed keeps at most this many lines (counts stay exact)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "test",
        help="run the patterns over log files and show what they match (like fail2ban-regex)",
        description=(
            "Run the configured patterns over log files with the daemon's own parser and "
            "show the login events per pattern and rule, and the near misses.  Nothing is "
            "written to the relay table."
        ),
    )
    p.add_argument(
        "--pattern",
        action="append",
        metavar="NAME",
        dest="only",
        help="use only this pattern (repeatable); NAME may be a pattern file path (*.py)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per login event on stdout, nothing else (summary to stderr)",
    )
    p.add_argument(
        "--print-missed",
        action="store_true",
        help="list the near misses: lines of a claimed program that no rule matched",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log file, or - for stdin")
    p.set_defaults(func=run)


@dataclass
class FileResult:
    name: str
    lines: int = 0
    undecodable: int = 0
    first_undecodable: int = 0


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    patterns = select_patterns(args.only, cfg.pattern_dirs, cfg.patterns, cfg.pattern_options)
    status = check_readable(args.files)
    if status != EX_OK:
        return status
    matcher = Matcher(
        patterns,
        clock=time.time,
        keep_missed=MAX_MISSED_SHOWN if args.print_missed else 0,
    )
    out = sys.stdout
    report = sys.stderr if args.json else sys.stdout
    results = []
    for name in args.files:
        with open_input(name) as stream:
            result = FileResult("-" if name == "-" else name)
            for lineno, text in decoded_lines(stream, result, cfg.max_line_length):
                event = matcher.feed_line(text, result.name, lineno)
                if event is not None and args.json:
                    out.write(event_json(event) + "\n")
            results.append(result)
        if result.undecodable:
            print(
                f"popwatch: warning: {result.name}, line {result.first_undecodable}: "
                f"undecodable bytes replaced by U+FFFD ({result.undecodable} line"
                f"{'s' if result.undecodable != 1 else ''} in this file)",
                file=sys.stderr,
            )
    out.flush()
    print_summary(report, matcher, patterns, results, args.print_missed)
    return EX_OK


def select_patterns(
    only: list[str] | None,
    dirs: tuple[Path, ...],
    enabled: tuple[str, ...] | None,
    options: Any,
) -> list[Pattern]:
    if not only:
        return load_patterns(list(dirs), enabled, options)
    known = find_pattern_files(list(dirs))
    chosen: list[Pattern] = []
    for item in dict.fromkeys(only):
        if item.endswith(".py") or "/" in item:
            path = Path(item)
            if not path.is_file():
                raise UsageError(f"test: --pattern {item}: no such pattern file")
            chosen.append(load_pattern_file(path, options.get(path.stem, {})))
        elif item in known:
            chosen.append(load_pattern_file(known[item], options.get(item, {})))
        else:
            raise UsageError(
                f'test: --pattern: unknown pattern "{item}" (known: {", ".join(sorted(known))})'
            )
    return chosen


def check_readable(files: list[str]) -> int:
    """Open every file once before reading any, so a typo gives no partial output."""
    for name in files:
        if name == "-":
            continue
        try:
            with open(name, "rb"):
                pass
        except IsADirectoryError:
            print(f"popwatch: fatal: {name}: is a directory", file=sys.stderr)
            return EX_NOINPUT
        except OSError as err:
            print(f"popwatch: fatal: {name}: cannot read: {err.strerror}", file=sys.stderr)
            return EX_NOINPUT
    return EX_OK


@contextmanager
def open_input(name: str) -> Iterator[IO[bytes]]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as f:
        yield f


def decoded_lines(
    stream: IO[bytes], result: FileResult, max_line_length: int
) -> Iterator[tuple[int, str]]:
    """The daemon's own line reader (bounded memory; over-long lines skipped with a warning
    naming file and line), then UTF-8 decoding with U+FFFD for undecodable bytes."""
    counters = Counters()
    for lineno, raw in iter_lines(stream, result.name, max_line_length, counters):
        result.lines = lineno
        raw = raw.rstrip(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            result.undecodable += 1
            if result.undecodable == 1:
                result.first_undecodable = lineno
        yield lineno, text


def event_json(event: LoginEvent) -> str:
    return json.dumps(
        {
            "file": event.source,
            "lineno": event.lineno,
            "ip": event.ip,
            "pattern": event.pattern,
            "rule": event.rule,
            "user": event.user,
            "time": event.time,
            "program": event.program,
            "pid": event.pid,
            "host": event.host,
        },
        ensure_ascii=False,
    )


def print_summary(
    out: IO[str],
    matcher: Matcher,
    patterns: list[Pattern],
    results: list[FileResult],
    print_missed: bool,
) -> None:
    st = matcher.stats
    w = out.write
    nfiles = len(results)
    w(f"Patterns:     {', '.join(p.name for p in patterns) or '(none)'}\n")
    w(f"Lines read:   {st.lines} ({nfiles} file{'s' if nfiles != 1 else ''})\n")
    w(f"Claimed:      {st.claimed} (lines from a program some pattern knows)\n")
    w(f"Login events: {st.total_events}\n")
    for (pattern, rule), n in sorted(st.events.items()):
        w(f"  {pattern:<16} {rule:<24} {n:>9}\n")
    w(f"Other rules:  {sum(st.hits.values())} (connects, failures, logouts, ...)\n")
    for (pattern, rule), n in sorted(st.hits.items()):
        w(f"  {pattern:<16} {rule:<24} {n:>9}\n")
    if st.rejected_ip:
        w(f"Bad address:  {st.rejected_ip} (a login rule matched, its ip is not a host address)\n")
    if st.unpaired_auth:
        w(f"Unpaired:     {st.unpaired_auth} (a login line without its connect line)\n")
    for (pattern, rule), n in sorted(st.errors.items()):
        w(f"Errors:       pattern {pattern} rule {rule} raised {n} time(s)\n")
    hint = "" if print_missed or not st.near_misses else " (show them with --print-missed)"
    w(f"Near misses:  {st.near_misses}{hint}\n")
    if print_missed and st.near_misses:
        for miss in st.missed:
            w(f"  {miss.source}:{miss.lineno}: {miss.program}: {miss.message}\n")
        if st.near_misses > len(st.missed):
            w(f"  ({st.near_misses - len(st.missed)} earlier ones not shown)\n")

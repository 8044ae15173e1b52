"""``popwatch config``: print the effective configuration, or check it.

Without options it prints the configuration popwatch would run with - embedded defaults,
then the files, then the flags - as TOML that popwatch reads back unchanged
(:func:`popwatch.config.to_toml`).  ``--check`` also loads every enabled pattern and, with
``ignore_mynetworks``, asks Postfix for mynetworks; it prints nothing when all is well (``-v``
says what was checked) and warns about logs that do not exist or cannot be read.  ``--keys``
lists every configuration key with a line of help.

Exit 0 when valid, 78 with file, key and reason when not.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Any

from popwatch.commands.common import load
from popwatch.config import KEYS, to_toml
from popwatch.exitcodes import EX_OK

HELP = "print the effective configuration (--check: validate it, patterns included)"


def register(sub: Any) -> None:
    p = sub.add_parser("config", help=HELP, description=HELP + ".")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--check", action="store_true", help="validate configuration and patterns; exit 0 or 78"
    )
    what.add_argument("--keys", action="store_true", help="list the configuration keys")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.keys:
        width = max(len(k) for k in KEYS)
        for key, text in KEYS.items():
            print(f"{key:<{width}}  {text}")
        return EX_OK
    cfg = load(args)
    if not args.check:
        sys.stdout.write(to_toml(cfg))
        return EX_OK
    from popwatch.pipeline import load_patterns_for, make_policy

    patterns = load_patterns_for(cfg)
    policy = make_policy(cfg)
    for log_glob in cfg.logs:
        matches = glob.glob(log_glob) if glob.has_magic(log_glob) else [log_glob]
        for path in matches:
            if not os.path.exists(path):
                print(f"popwatch: warning: log {path}: does not exist (yet)", file=sys.stderr)
            elif not os.access(path, os.R_OK):
                print(f"popwatch: warning: log {path}: not readable by this user", file=sys.stderr)
    if args.verbose:
        names = ", ".join(p.name for p in patterns)
        print(
            f"popwatch: configuration OK: {', '.join(cfg.sources) or 'embedded defaults'}; "
            f"{len(patterns)} patterns ({names}); {len(policy.rules)} ignored networks",
            file=sys.stderr,
        )
    return EX_OK

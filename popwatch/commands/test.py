"""Placeholder for the ``test`` subcommand (being written)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("test", help="(not yet available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("popwatch: test: not yet available")
    return 69

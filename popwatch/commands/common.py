"""What every subcommand needs: the effective configuration and the relay table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from popwatch.config import DEFAULT_CONFIG_DIR, Config, load_config


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Global flags as configuration keys (flags win over files)."""
    out: dict[str, Any] = {}
    if getattr(args, "db", None):
        out["database"] = args.db
    if getattr(args, "key_format", None):
        out["key_format"] = args.key_format
    return out


def load(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    overrides = overrides_from_args(args)
    overrides.update(extra or {})
    config_file = Path(args.config) if getattr(args, "config", None) else None
    config_dir = Path(getattr(args, "config_dir", None) or DEFAULT_CONFIG_DIR)
    return load_config(config_file, overrides, config_dir=config_dir)

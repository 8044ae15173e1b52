"""Configuration: TOML files and flags merged into one immutable :class:`Config`.

Precedence, lowest first: embedded defaults < ``/etc/popwatch/popwatch.toml`` <
``/etc/popwatch/popwatch.d/*.toml`` (in name order) < command-line flags.  With ``-c FILE``
only FILE is read instead of the two default places.  Configuration is data: it is parsed,
never executed.

Every top-level key is listed in :data:`KEYS`; an unknown key or a bad value raises
:class:`popwatch.errors.ConfigError` naming the file, the key and the reason (exit 78).

Durations are written as ``90s``, ``30m``, ``1h30m``, ``1d`` or a bare number of seconds.

Per-pattern options live in tables named after the pattern: ``[pattern.qpopper]``
``stats_line = true``.  Their keys are checked by the pattern itself.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from popwatch.errors import ConfigError

DEFAULT_CONFIG_DIR = Path("/etc/popwatch")
DEFAULT_MAIL_LOGS = ("/var/log/mail.log", "/var/log/maillog")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Config:
    database: Path = Path("/etc/mail/relayers.db")
    key_format: str = "sendmail"
    key_prefix: str = ""
    ipv6_prefix: str = ""
    lock_timeout: float = 30.0
    logs: tuple[str, ...] = ()  # load_config() fills in default_logs() when the key is absent
    journal: bool = False
    journal_units: tuple[str, ...] = ()  # trusted _SYSTEMD_UNIT values to accept in journal mode
    lifetime: float = 1800.0
    expire_interval: float = 60.0
    flush_interval: float = 1.0
    flush_burst: int = 2
    refresh: float = 60.0
    ignore: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    ignore_mynetworks: bool = False
    state_dir: Path = Path("/var/lib/popwatch")
    pattern_dirs: tuple[Path, ...] = (Path("/etc/popwatch/patterns.d"),)
    patterns: tuple[str, ...] | None = None  # None: every pattern found
    pattern_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    max_line_length: int = 16384
    log_level: str = "info"
    sources: tuple[str, ...] = ()  # files that were read, for `popwatch config`


KEYS: dict[str, str] = {
    "database": "path of the relay table (.db file)",
    "key_format": '"sendmail" (keys without trailing NUL) or "postfix" (with NUL)',
    "key_prefix": 'text put before every key, e.g. "POP:" for popauth-style rulesets',
    "ipv6_prefix": 'text put before IPv6 keys: "IPv6:" for sendmail',
    "lock_timeout": "how long a writer waits for the database lock",
    "logs": "list of log files or globs to follow",
    "journal": "also read the systemd journal (true/false)",
    "journal_units": "systemd units whose journal records are trusted",
    "lifetime": "how long a login authorizes relaying",
    "expire_interval": "how often expired entries are removed",
    "flush_interval": "pending logins are written once per interval on average",
    "flush_burst": "how many writes may follow each other at once after a quiet time (1: strict)",
    "refresh": "an address stamped more recently than this is not rewritten",
    "ignore": "list of networks (CIDR) never written to the table",
    "ignore_mynetworks": "also ignore Postfix's mynetworks (true/false)",
    "state_dir": "where log positions are kept",
    "pattern_dirs": "directories of site patterns (same name overrides a shipped one)",
    "patterns": "names of the patterns to enable (all when absent)",
    "pattern": "tables of per-pattern options: [pattern.NAME]",
    "max_line_length": "longer log lines are skipped with a warning",
    "log_level": "debug, info, warning or error",
}

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)\s*([smhd]))", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, where: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``1h30m`` or ``1d``; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f'{where}: bad duration "{value}"')
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f'{where}: bad duration "{value}": must not be negative')
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text and re.fullmatch(rf"(?:{_DURATION.pattern}\s*)+", text, re.IGNORECASE):
            return sum(float(n) * _UNIT[u.lower()] for n, u in _DURATION.findall(text))
    raise ConfigError(
        f'{where}: bad duration "{value}" (use a number followed by s, m, h or d, e.g. 30m)'
    )


def format_duration(seconds: float) -> str:
    s = int(seconds)
    if s != seconds:
        return f"{seconds}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def default_logs(exists: Any = os.path.exists) -> tuple[str, ...]:
    """The distribution's mail log: the first of DEFAULT_MAIL_LOGS that exists."""
    for path in DEFAULT_MAIL_LOGS:
        if exists(path):
            return (path,)
    return (DEFAULT_MAIL_LOGS[0],)


def _want(kind: type | tuple[type, ...], value: object, where: str, what: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")


def _str_list(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    _want(list, value, where, "a list of strings")
    assert isinstance(value, list)
    for item in value:
        _want(str, item, where, "a list of strings")
    return tuple(value)


def _networks(value: object, where: str) -> tuple[Network, ...]:
    nets = []
    for item in _str_list(value, where):
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f'{where}: bad network "{item}" (use CIDR, e.g. 192.0.2.0/24)'
            ) from None
    return tuple(nets)


_MINIMUM: dict[str, int] = {"flush_burst": 1, "max_line_length": 256}  # whole-number keys


def _convert(key: str, value: object, where: str) -> Any:
    """Check one key's value and turn it into the Config field's type."""
    if key in ("database", "state_dir"):
        _want(str, value, where, "a path")
        assert isinstance(value, str)
        if not value:
            raise ConfigError(f"{where}: must not be empty")
        return Path(value)
    if key == "key_format":
        if value not in ("sendmail", "postfix"):
            raise ConfigError(f'{where}: bad value {value!r} (use "sendmail" or "postfix")')
        return value
    if key in ("key_prefix", "ipv6_prefix"):
        _want(str, value, where, "a string")
        assert isinstance(value, str)
        if any(c.isspace() or c == "\0" for c in value):
            raise ConfigError(f"{where}: must not contain white space or NUL")
        return value
    if key in ("lifetime", "expire_interval", "flush_interval", "refresh", "lock_timeout"):
        seconds = parse_duration(value, where)
        if key in ("lifetime", "expire_interval") and seconds <= 0:
            raise ConfigError(f"{where}: must be greater than zero")
        return seconds
    if key in ("logs", "journal_units"):
        return _str_list(value, where)
    if key == "patterns":
        return _str_list(value, where)
    if key == "pattern_dirs":
        return tuple(Path(p) for p in _str_list(value, where))
    if key == "ignore":
        return _networks(value, where)
    if key in ("journal", "ignore_mynetworks"):
        _want(bool, value, where, "true or false")
        return value
    if key in _MINIMUM:
        _want(int, value, where, "a whole number")
        assert isinstance(value, int)
        if value < _MINIMUM[key]:
            raise ConfigError(f"{where}: must be at least {_MINIMUM[key]}")
        return value
    if key == "log_level":
        if value not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"{where}: bad value {value!r} (debug, info, warning or error)")
        return value
    raise ConfigError(f"{where}: unknown key")  # pragma: no cover - KEYS guards this


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: bad TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None


def apply_table(cfg: Config, table: Mapping[str, Any], origin: str) -> Config:
    """Return ``cfg`` with the keys of one parsed TOML table (or flag set) applied."""
    changes: dict[str, Any] = {}
    options = {k: dict(v) for k, v in cfg.pattern_options.items()}
    for key, value in table.items():
        where = f'{origin}: key "{key}"'
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key")
        if key == "pattern":
            _want(dict, value, where, "tables [pattern.NAME]")
            for name, opts in value.items():
                _want(dict, opts, f"{where}.{name}", "a table of options")
                options.setdefault(name, {}).update(opts)
            continue
        changes[key] = _convert(key, value, where)
    changes["pattern_options"] = options
    return replace(cfg, **changes)


def config_files(config_file: Path | None, config_dir: Path) -> list[Path]:
    """The files to read, in order; a missing default file is not an error."""
    if config_file is not None:
        return [config_file]
    files = []
    main = config_dir / "popwatch.toml"
    if main.exists():
        files.append(main)
    dropins = config_dir / "popwatch.d"
    if dropins.is_dir():
        files.extend(sorted(dropins.glob("*.toml")))
    return files


def load_config(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    exists: Any = os.path.exists,
) -> Config:
    """Defaults < files < ``overrides`` (flags, same key names and value forms as TOML)."""
    cfg = Config()
    read = []
    logs_set = False  # `logs = []` is a choice (journal only), not "use the default"
    for path in config_files(config_file, config_dir):
        table = read_toml(path)
        cfg = apply_table(cfg, table, str(path))
        logs_set = logs_set or "logs" in table
        read.append(str(path))
    if overrides:
        flags = {k: v for k, v in overrides.items() if v is not None}
        cfg = apply_table(cfg, flags, "command line")
        logs_set = logs_set or "logs" in flags
    if not logs_set:
        cfg = replace(cfg, logs=default_logs(exists))
    if cfg.flush_interval > cfg.lifetime:
        raise ConfigError(
            f'{read[-1] if read else "configuration"}: key "flush_interval": '
            "must not be longer than lifetime"
        )
    return replace(cfg, sources=tuple(read))


def to_toml(cfg: Config) -> str:
    """The effective configuration as TOML that load_config reads back unchanged."""
    lines = []
    if cfg.sources:
        lines.append("# read from: " + ", ".join(cfg.sources))
    else:
        lines.append("# no configuration file read: embedded defaults")
    for f in fields(cfg):
        if f.name in ("pattern_options", "sources"):
            continue
        value = getattr(cfg, f.name)
        if value is None:
            lines.append(f"# {f.name} = (all)")
            continue
        lines.append(f"{f.name} = {_toml_value(f.name, value)}")
    for name in sorted(cfg.pattern_options):
        lines.append("")
        lines.append(f"[pattern.{_toml_key(name)}]")
        for k, v in sorted(cfg.pattern_options[name].items()):
            lines.append(f"{_toml_key(k)} = {_toml_value(k, v)}")
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def _toml_value(name: str, value: Any) -> str:
    if name in ("lifetime", "expire_interval", "flush_interval", "refresh", "lock_timeout"):
        return _toml_str(format_duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Path | str | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return _toml_str(str(value))
    if isinstance(value, Iterable):
        return "[" + ", ".join(_toml_value("", v) for v in value) + "]"
    return _toml_str(str(value))

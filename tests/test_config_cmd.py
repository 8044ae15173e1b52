"""``popwatch config``: the effective configuration as TOML, ``--check``, ``--keys``."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from popwatch.config import KEYS, load_config


def popwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popwatch", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "popwatch.toml"
    path.write_text(
        f'database = "{tmp_path}/relayers.db"\n'
        'key_format = "postfix"\n'
        f'logs = ["{tmp_path}/mail.log"]\n'
        'lifetime = "1h"\n'
        'ignore = ["127.0.0.0/8", "2001:db8::/32"]\n'
        f'state_dir = "{tmp_path}/state"\n'
        f'pattern_dirs = ["{tmp_path}/patterns"]\n'
    )
    return path


def test_prints_effective_configuration_that_reads_back(cfg: Path, tmp_path: Path) -> None:
    r = popwatch("-c", str(cfg), "config")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"# read from: {cfg}")
    data = tomllib.loads(r.stdout)
    assert data["database"] == f"{tmp_path}/relayers.db"
    assert data["lifetime"] == "1h" and data["key_format"] == "postfix"
    assert data["ignore"] == ["127.0.0.0/8", "2001:db8::/32"]
    assert data["flush_interval"] == "1s"  # a default shows too
    again = tmp_path / "again.toml"
    again.write_text(r.stdout)
    assert load_config(again).lifetime == load_config(cfg).lifetime == 3600


def test_flags_override_the_file(cfg: Path) -> None:
    r = popwatch("-c", str(cfg), "--db", "/srv/other.db", "config")
    assert r.returncode == 0
    assert tomllib.loads(r.stdout)["database"] == "/srv/other.db"


def test_check_valid_is_silent_exit_0(cfg: Path) -> None:
    r = popwatch("-c", str(cfg), "config", "--check")
    assert (r.returncode, r.stdout) == (0, "")
    assert "Traceback" not in r.stderr
    verbose = popwatch("-c", str(cfg), "-v", "config", "--check")
    assert verbose.returncode == 0 and "configuration OK" in verbose.stderr


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('lifetme = "30m"', 'key "lifetme": unknown key'),
        ('lifetime = "soon"', 'key "lifetime": bad duration "soon"'),
        ('key_format = "exim"', 'key "key_format": bad value'),
        ('ignore = ["10.0.0.0/33"]', 'key "ignore": bad network "10.0.0.0/33"'),
        ("journal = 1", 'key "journal": expected true or false'),
        ('flush_interval = "2h"', 'key "flush_interval": must not be longer than lifetime'),
        ("lifetime = [", "bad TOML"),
    ],
)
def test_bad_configuration_is_78_with_file_key_reason(cfg: Path, line: str, reason: str) -> None:
    # Only keys the bad line does not repeat (TOML forbids a key twice).
    base = [x for x in cfg.read_text().splitlines() if x.split(" =")[0] in ("database", "logs")]
    cfg.write_text("\n".join([*base, line]) + "\n")
    for args in (["config"], ["config", "--check"]):
        r = popwatch("-c", str(cfg), *args)
        assert r.returncode == 78, r.stderr
        assert r.stderr.startswith(f"popwatch: fatal: {cfg}"), r.stderr
        assert reason in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


def test_check_loads_patterns(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "patterns").mkdir()
    broken = tmp_path / "patterns" / "broken.py"
    broken.write_text("def pattern(options):\n    return 42\n")
    r = popwatch("-c", str(cfg), "config", "--check")
    assert r.returncode == 78 and str(broken) in r.stderr, r.stderr
    # printing the configuration does not load patterns
    assert popwatch("-c", str(cfg), "config").returncode == 0


def test_check_unknown_pattern_name(cfg: Path) -> None:
    cfg.write_text(cfg.read_text() + 'patterns = ["no-such-daemon"]\n')
    r = popwatch("-c", str(cfg), "config", "--check")
    assert r.returncode == 78 and "no-such-daemon" in r.stderr


def test_check_warns_about_missing_log(cfg: Path, tmp_path: Path) -> None:
    r = popwatch("-c", str(cfg), "config", "--check")
    assert r.returncode == 0
    assert f"log {tmp_path}/mail.log: does not exist" in r.stderr


def test_missing_config_file_is_78(tmp_path: Path) -> None:
    r = popwatch("-c", str(tmp_path / "absent.toml"), "config")
    assert r.returncode == 78 and "no such file" in r.stderr


def test_keys_lists_every_key() -> None:
    r = popwatch("config", "--keys")
    assert r.returncode == 0
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert listed == list(KEYS)
    for key in (
        "database",
        "key_format",
        "logs",
        "lifetime",
        "expire_interval",
        "flush_interval",
        "refresh",
        "ignore",
        "state_dir",
        "pattern_dirs",
        "patterns",
    ):
        assert key in listed


def test_shipped_example_configuration_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "contrib" / "popwatch.toml"
    r = popwatch("-c", str(example), "config")
    assert r.returncode == 0, r.stderr
    text = example.read_text()
    for key in KEYS:  # every key is documented in the example
        assert f"{key} =" in text or f"[{key}." in text, key

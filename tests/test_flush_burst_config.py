"""The ``flush_burst`` key: default, good values, refusals (exit 78), ``popwatch config``."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from popwatch.config import load_config
from popwatch.errors import ConfigError


def popwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popwatch", *args], capture_output=True, text=True, timeout=60
    )


def write(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "popwatch.toml"
    path.write_text(
        f'database = "{tmp_path}/relayers.db"\nlogs = ["{tmp_path}/mail.log"]\n{line}\n'
    )
    return path


def test_default_is_2_and_shown_by_config(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path).flush_burst == 2
    r = popwatch("-c", str(path), "config")
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(r.stdout)["flush_burst"] == 2


def test_good_value_is_read_and_reads_back(tmp_path: Path) -> None:
    path = write(tmp_path, "flush_burst = 5")
    assert load_config(path).flush_burst == 5
    r = popwatch("-c", str(path), "config")
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.toml"
    again.write_text(r.stdout)
    assert load_config(again).flush_burst == 5


def test_one_is_allowed_the_strict_rule(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "flush_burst = 1")).flush_burst == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("flush_burst = 0", 'key "flush_burst": must be at least 1'),
        ("flush_burst = -3", 'key "flush_burst": must be at least 1'),
        ('flush_burst = "x"', "key \"flush_burst\": expected a whole number, got str 'x'"),
        ("flush_burst = 2.5", 'key "flush_burst": expected a whole number, got float 2.5'),
        ("flush_burst = true", 'key "flush_burst": expected a whole number, got bool True'),
    ],
)
def test_bad_value_is_78_naming_file_key_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, line)
    with pytest.raises(ConfigError, match="flush_burst"):
        load_config(path)
    r = popwatch("-c", str(path), "config")
    assert r.returncode == 78
    assert str(path) in r.stderr and reason in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1

"""A wheel built from the tree ships the patterns as popwatch/patterns, and nothing named
``patterns`` at the top level; the installed copy finds and loads them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Build from a copy: setuptools writes build/ and *.egg-info into the source tree, and
    # other people's runs must not see half-written ones.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "popwatch", src / "popwatch", ignore=ignore)
    shutil.copytree(ROOT / "patterns", src / "patterns", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [whl] = out.glob("popwatch-*.whl")
    return whl


def test_wheel_ships_patterns_under_popwatch(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "patterns").glob("*.py"))
    in_wheel = sorted(n.split("/")[-1] for n in names if n.startswith("popwatch/patterns/"))
    assert "uw-imap.py" in in_wheel and "dovecot.py" in in_wheel
    assert set(shipped) <= set(in_wheel)
    assert not [n for n in names if n.startswith("patterns/")]
    top = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top).decode().split() == ["popwatch"]


def test_installed_wheel_loads_its_patterns(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # what an installer puts on sys.path
    code = (
        "import popwatch, popwatch.patternload as pl\n"
        "print(popwatch.__file__)\n"
        "print(pl.shipped_dir())\n"
        "print(' '.join(p.name for p in pl.load_patterns()))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    module_file, shipped, names = proc.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert shipped == str(target / "popwatch" / "patterns")
    assert {"uw-imap", "dovecot"} <= set(names.split())

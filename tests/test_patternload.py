"""Pattern loading: shipped and site directories, overrides, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from popwatch.cli import main
from popwatch.errors import PatternError
from popwatch.grammar import Pattern
from popwatch.patternload import (
    find_pattern_files,
    load_pattern_file,
    load_patterns,
    shipped_dir,
)

SITE_PATTERN = """
from popwatch.grammar import LOGIN, Pattern, Rule, bracketed_ip, check_options, lit, word

def pattern(options):
    opts = check_options(options, {"tag": str})
    grammar = lit("ok user=") + word("user") + bracketed_ip("ip")
    return Pattern(programs=(opts.get("tag", "sitepop"),),
                   rules=(Rule("login", grammar, LOGIN, ("ok user=",)),))
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_shipped_dir_holds_the_reference_patterns() -> None:
    d = shipped_dir()
    assert (d / "uw-imap.py").is_file() and (d / "dovecot.py").is_file()
    assert (d / "__init__.py").is_file()  # skipped: starts with "_"
    assert "__init__" not in find_pattern_files(())


def test_load_all_shipped() -> None:
    patterns = load_patterns()
    names = [p.name for p in patterns]
    assert {"uw-imap", "dovecot"} <= set(names)
    assert names == sorted(names)
    assert all(isinstance(p, Pattern) for p in patterns)
    assert not [m for m in sys.modules if m.startswith("popwatch._loaded_pattern_")]


def test_site_dir_adds_and_overrides(tmp_path: Path) -> None:
    site = tmp_path / "patterns.d"
    write(site, "sitepop.py", SITE_PATTERN)
    write(site, "dovecot.py", SITE_PATTERN)  # same name: replaces the shipped one
    write(site, "_helper.py", "raise SystemExit('must not be loaded')")
    write(site, "notes.txt", "not a pattern")
    patterns = {p.name: p for p in load_patterns([tmp_path / "missing", site])}
    assert patterns["sitepop"].programs == ("sitepop",)
    assert patterns["dovecot"].programs == ("sitepop",)
    assert patterns["uw-imap"].programs[0] == "ipop3d"
    assert "_helper" not in patterns


def test_later_dir_wins(tmp_path: Path) -> None:
    write(tmp_path / "a", "x.py", SITE_PATTERN.replace('"sitepop"', '"from_a"'))
    write(tmp_path / "b", "x.py", SITE_PATTERN.replace('"sitepop"', '"from_b"'))
    [p] = load_patterns([tmp_path / "a", tmp_path / "b"], enabled=["x"])
    assert p.programs == ("from_b",)


def test_enabled_and_options(tmp_path: Path) -> None:
    write(tmp_path, "sitepop.py", SITE_PATTERN)
    patterns = load_patterns([tmp_path], ["sitepop", "uw-imap"], {"sitepop": {"tag": "pop9"}})
    assert [p.name for p in patterns] == ["uw-imap", "sitepop"]  # found order
    assert patterns[1].programs == ("pop9",)


@pytest.mark.parametrize(
    ("enabled", "options", "message"),
    [
        (["nosuch"], None, 'unknown pattern "nosuch"'),
        (None, {"nosuch": {}}, "[pattern.nosuch]: no such pattern"),
        (None, {"sitepop": {"bogus": 1}}, 'options [pattern.sitepop]: unknown option "bogus"'),
        (None, {"sitepop": {"tag": 5}}, 'option "tag": expected str'),
        (None, {"uw-imap": {"x": True}}, "uw-imap.py: options [pattern.uw-imap]"),
    ],
)
def test_config_errors(
    tmp_path: Path,
    enabled: list[str] | None,
    options: dict[str, dict[str, object]] | None,
    message: str,
) -> None:
    write(tmp_path, "sitepop.py", SITE_PATTERN)
    with pytest.raises(PatternError) as err:
        load_patterns([tmp_path], enabled, options)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def pattern(options)\n    return 1\n", "bad.py, line 1: syntax error"),
        ("import os\nx = 1 / 0\n", "bad.py, line 2: ZeroDivisionError: division by zero"),
        ("import no_such_module_xyz\n", "bad.py, line 1: ModuleNotFoundError"),
        ("x = 1\n", "bad.py: defines no pattern(options) function"),
        ("def pattern(options):\n    return 42\n", "pattern() returned int, not a Pattern"),
        (
            "def pattern(options):\n    return helper()\n\n"
            "def helper():\n    raise KeyError('k')\n",
            "bad.py, line 5: pattern() failed: KeyError",
        ),
        (
            "from popwatch.grammar import Pattern\n"
            "def pattern(options):\n    return Pattern(programs=('x',), rules=())\n",
            "bad.py, line 3: a pattern must have at least one rule",
        ),
        (
            "from popwatch.grammar import Pattern, Rule, rest_of_line\n"
            "def pattern(options):\n"
            "    return Pattern(programs='x', rules=(Rule('a', rest_of_line()),))\n",
            "programs must be a tuple",
        ),
        ("raise SystemExit(3)\n", "bad.py, line 1: SystemExit"),
        (
            "from popwatch.grammar import Pattern, Rule, lit, word\n"
            "def pattern(options):\n"
            "    g = lit('ok') + word('user')\n"
            "    return Pattern(programs=('x',), rules=(Rule('ok', g, 'login'),))\n",
            'rule "ok": a LOGIN rule must name its address result "ip"',
        ),
        (
            "from popwatch.grammar import Pattern, Rule, bracketed_ip, lit\n"
            "def pattern(options):\n"
            "    g = lit('from') + bracketed_ip(None)\n"
            "    return Pattern(programs=('x',), rules=(Rule('c', g, 'connect'),))\n",
            'rule "c": a CONNECT rule must name its address result "ip"',
        ),
    ],
)
def test_broken_pattern_file(tmp_path: Path, source: str, message: str) -> None:
    path = write(tmp_path, "bad.py", source)
    with pytest.raises(PatternError) as err:
        load_pattern_file(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_unreadable_pattern_dir(tmp_path: Path) -> None:
    not_a_dir = write(tmp_path, "file", "")
    with pytest.raises(PatternError, match="not a directory"):
        load_patterns([not_a_dir])


def test_broken_site_pattern_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "patterns.d"
    write(site, "broken.py", "def pattern(options):\n    return None +\n")
    cfg = write(tmp_path, "popwatch.toml", f'pattern_dirs = ["{site}"]\n')
    log = write(tmp_path, "mail.log", "Nov 22 09:15:02 mx ipop3d[1]: x\n")
    status = main(["-c", str(cfg), "test", str(log)])
    _, err = capsys.readouterr()
    assert status == 78
    assert err.startswith("popwatch: fatal: pattern file ")
    assert "broken.py, line 2: syntax error" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_ip_from_a_parse_action_is_allowed(tmp_path: Path) -> None:
    """A grammar whose own parse action supplies ``ip`` (like Cyrus's logfmt rule) loads."""
    path = write(
        tmp_path,
        "viaaction.py",
        "import pyparsing as pp\n"
        "from popwatch.grammar import Pattern, Rule\n"
        "def to_ip(toks):\n"
        "    return pp.ParseResults.from_dict({'ip': toks[0]})\n"
        "def pattern(options):\n"
        "    g = pp.Regex(r'\\S+').add_parse_action(to_ip)\n"
        "    return Pattern(programs=('x',), rules=(Rule('l', g, 'login'),))\n",
    )
    assert load_pattern_file(path).name == "viaaction"

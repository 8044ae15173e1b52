"""The evidence harness: every fixtures/logs/NAME.log against every shipped pattern.

The fixture format and what fails are documented in fixtures/logs/README.md.  In short:
each log line is preceded by ``#> null`` or ``#> {"ip": ..., "user": ..., "rule": ...}``;
the lines of one fixture go, in order, through ONE Matcher with ALL shipped patterns
(so a pattern that claims another daemon's lines shows up), a fixed clock and tz=UTC.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from popwatch.errors import PatternError
from popwatch.grammar import Pattern
from popwatch.matcher import Matcher
from popwatch.patternload import find_pattern_files, load_pattern_file
from popwatch.syslogline import LineParser

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "fixtures" / "logs"
CLOCK = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
LINE_BUDGET = 0.050  # seconds per line, including 4 KB attacker-stretched variants
STRETCH_TO = 4096
MAX_TOKEN_VARIANTS = 24

SHIPPED = find_pattern_files(())
FIXTURES = {p.stem: p for p in sorted(FIXTURE_DIR.glob("*.log"))}


# ---------------------------------------------------------------------------------------
# Fixture reader
# ---------------------------------------------------------------------------------------


class FixtureFormatError(Exception):
    pass


@dataclass
class Entry:
    lineno: int
    text: str
    expected: dict[str, Any] | None


@dataclass
class Section:
    options: dict[str, Any]
    lineno: int
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Fixture:
    name: str
    path: Path
    sections: list[Section]
    comments: list[str]

    @property
    def entries(self) -> Iterator[Entry]:
        for s in self.sections:
            yield from s.entries


def read_fixture(path: Path) -> Fixture:
    sections = [Section({}, 0)]
    comments: list[str] = []
    expected: tuple[int, dict[str, Any] | None] | None = None
    where = path.name
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        if raw == "#" or raw.startswith("# "):
            comments.append(raw)
            continue
        if raw.startswith("#! options:"):
            if expected is not None:
                raise FixtureFormatError(f"{where}:{lineno}: options between #> and its line")
            opts = _json(raw[len("#! options:") :], where, lineno)
            if not isinstance(opts, dict):
                raise FixtureFormatError(f"{where}:{lineno}: options must be a JSON object")
            sections.append(Section(opts, lineno))
            continue
        if raw.startswith("#>"):
            if expected is not None:
                raise FixtureFormatError(f"{where}:{lineno}: two #> lines in a row")
            value = _json(raw[2:], where, lineno)
            if value is not None:
                if not isinstance(value, dict) or not isinstance(value.get("ip"), str):
                    raise FixtureFormatError(
                        f'{where}:{lineno}: expected null or an object with "ip"'
                    )
                unknown = set(value) - {"ip", "user", "rule", "pattern", "time"}
                if unknown:
                    raise FixtureFormatError(f"{where}:{lineno}: unknown keys {sorted(unknown)}")
            expected = (lineno, value)
            continue
        if raw.startswith("#"):
            raise FixtureFormatError(f'{where}:{lineno}: unknown "#" line (use "# " comments)')
        if expected is None:
            raise FixtureFormatError(f"{where}:{lineno}: log line without a #> line before it")
        sections[-1].entries.append(Entry(lineno, raw, expected[1]))
        expected = None
    if expected is not None:
        raise FixtureFormatError(f"{where}:{expected[0]}: #> at the end without a log line")
    return Fixture(path.stem, path, [s for s in sections if s.entries or s.lineno], comments)


def _json(text: str, where: str, lineno: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FixtureFormatError(f"{where}:{lineno}: bad JSON: {err}") from None


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def load_all(own: str, own_options: Mapping[str, Any]) -> list[Pattern]:
    """All shipped patterns that load; a broken *other* pattern fails its own test only."""
    out = []
    for name, path in SHIPPED.items():
        try:
            out.append(load_pattern_file(path, own_options if name == own else {}))
        except PatternError:
            if name == own:
                raise
    return out


def make_matcher(patterns: list[Pattern]) -> Matcher:
    return Matcher(
        patterns,
        clock=lambda: CLOCK,
        parser=LineParser(clock=lambda: CLOCK, tz=datetime.UTC),
    )


def timed_feed(matcher: Matcher, text: str, source: str, lineno: int) -> tuple[Any, float]:
    start = time.perf_counter()
    event = matcher.feed_line(text, source, lineno)
    return event, time.perf_counter() - start


def compare(fx: Fixture, entry: Entry, event: Any) -> str | None:
    want = entry.expected
    where = f"{fx.path.name}:{entry.lineno}"
    if want is None:
        if event is not None:
            return f"{where}: expected no event, got {event.pattern}/{event.rule} ip={event.ip}"
        return None
    if event is None:
        return f"{where}: expected an event with ip={want['ip']}, got none"
    checks = {
        "ip": event.ip,
        "pattern": event.pattern,
        "rule": event.rule,
        "user": event.user,
    }
    wanted = {"pattern": fx.name, **want}
    for key, got in checks.items():
        if key in wanted and wanted[key] != got:
            return f"{where}: {key}: expected {wanted[key]!r}, got {got!r}"
    if "time" in want and abs(float(want["time"]) - event.time) > 1e-6:
        return f"{where}: time: expected {want['time']}, got {event.time}"
    return None


def stretched(text: str, message: str) -> Iterator[str]:
    """Variants of one log line with attacker-controllable text grown to ~4 KB: the whole
    message repeated, and each token of the message repeated in place."""
    head = text[: len(text) - len(message)] if message and text.endswith(message) else ""
    if not head:
        return
    yield head + (message + " ") * (STRETCH_TO // (len(message) + 1) + 1)
    tokens = message.split(" ")
    for i, tok in enumerate(tokens[:MAX_TOKEN_VARIANTS]):
        if not tok:
            continue
        grown = tok * (STRETCH_TO // len(tok) + 1)
        yield head + " ".join([*tokens[:i], grown, *tokens[i + 1 :]])


def run_fixture(fx: Fixture) -> tuple[list[str], set[str], list[str]]:
    """(failures, rules exercised, slow lines) for one fixture."""
    failures: list[str] = []
    exercised: set[str] = set()
    slow: list[str] = []
    for section in fx.sections:
        patterns = load_all(fx.name, section.options)
        matcher = make_matcher(patterns)
        stress = make_matcher(patterns)
        for entry in section.entries:
            event, took = timed_feed(matcher, entry.text, fx.path.name, entry.lineno)
            if took > LINE_BUDGET:  # re-measure before blaming: the machine is shared
                took = min(took, *(timed_feed(stress, entry.text, "", 0)[1] for _ in range(3)))
            if took > LINE_BUDGET:
                slow.append(f"{fx.path.name}:{entry.lineno}: {took * 1000:.1f} ms")
            problem = compare(fx, entry, event)
            if problem:
                failures.append(problem)
            if event is not None and event.pattern == fx.name and entry.expected is not None:
                exercised.add(event.rule)
            line = matcher.parser.parse(entry.text)
            for variant in stretched(entry.text, line.message if line else ""):
                _, took = timed_feed(stress, variant, "", 0)
                if took > LINE_BUDGET:
                    took = min(timed_feed(stress, variant, "", 0)[1] for _ in range(3))
                if took > LINE_BUDGET:
                    slow.append(
                        f"{fx.path.name}:{entry.lineno} stretched to {len(variant)} chars: "
                        f"{took * 1000:.1f} ms ({variant[:100]!r}...)"
                    )
        for (pattern, rule), _n in (matcher.stats.hits + matcher.stats.events).items():
            if pattern == fx.name:
                exercised.add(rule)
        for stats in (matcher.stats, stress.stats):
            for (pattern, rule), n in stats.errors.items():
                failures.append(f"{fx.path.name}: pattern {pattern} rule {rule} raised {n}x")
    return failures, exercised, slow


def all_rules(fx: Fixture) -> dict[str, str]:
    """rule name -> kind, over the default and every options section."""
    rules: dict[str, str] = {}
    for section in [Section({}, 0), *fx.sections]:
        p = load_pattern_file(SHIPPED[fx.name], section.options)
        rules.update({r.name: r.kind for r in p.rules})
    return rules


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_every_shipped_pattern_has_a_fixture() -> None:
    missing = sorted(set(SHIPPED) - set(FIXTURES))
    assert not missing, f"patterns without fixtures/logs/NAME.log: {missing}"


def test_every_fixture_has_a_pattern() -> None:
    orphans = sorted(set(FIXTURES) - set(SHIPPED))
    assert not orphans, f"fixtures without patterns/NAME.py: {orphans}"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_pattern_loads(name: str) -> None:
    pattern = load_pattern_file(SHIPPED[name], {})
    assert pattern.name == name
    assert pattern.rules


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture(name: str) -> None:
    if name not in SHIPPED:
        pytest.fail(f"fixture {name}.log has no pattern")
    fx = read_fixture(FIXTURES[name])
    entries = list(fx.entries)
    assert any(e.expected is None for e in entries), f"{name}.log: no line expecting null"
    assert any(e.expected is not None for e in entries), f"{name}.log: no line with an event"
    assert any("injection" in c.lower() for c in fx.comments), (
        f"{name}.log: no comment marks an injection attempt"
    )
    failures, exercised, slow = run_fixture(fx)
    assert not failures, "\n".join(failures)
    assert not slow, "too slow (pathological backtracking?):\n" + "\n".join(slow)
    rules = all_rules(fx)
    expected_rules = {e.expected["rule"] for e in entries if e.expected and "rule" in e.expected}
    unknown = expected_rules - set(rules)
    assert not unknown, f"{name}.log names rules the pattern lacks: {sorted(unknown)}"
    never = sorted(r for r in rules if r not in exercised)
    assert not never, f"{name}: rules never exercised by {name}.log: {never}"


# ---------------------------------------------------------------------------------------
# The harness itself
# ---------------------------------------------------------------------------------------


def test_reader_rejects_malformed_fixtures(tmp_path: Path) -> None:
    cases = {
        "no_expect.log": "Nov 22 09:15:02 h ipop3d[1]: x\n",
        "double.log": "#> null\n#> null\nNov 22 09:15:02 h ipop3d[1]: x\n",
        "dangling.log": "#> null\n",
        "badjson.log": "#> {ip: 1}\nNov 22 09:15:02 h ipop3d[1]: x\n",
        "noip.log": '#> {"user": "a"}\nNov 22 09:15:02 h ipop3d[1]: x\n',
        "hash.log": "#comment without space\n",
        "unknownkey.log": '#> {"ip": "192.0.2.1", "usr": "a"}\nNov 22 09:15:02 h x: y\n',
    }
    for fname, text in cases.items():
        path = tmp_path / fname
        path.write_text(text)
        with pytest.raises(FixtureFormatError):
            read_fixture(path)


def test_reader_sections_and_expectations(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text(
        "# an injection comment\n\n"
        '#> {"ip": "192.0.2.10", "user": "alice"}\n'
        "Nov 22 09:15:02 h ipop3d[1]: a\n"
        '#! options: {"stats_line": true}\n'
        "# comment between\n#> null\nNov 22 09:15:03 h ipop3d[1]: b\n"
    )
    fx = read_fixture(path)
    assert [s.options for s in fx.sections] == [{}, {"stats_line": True}]
    assert [e.expected for e in fx.entries] == [{"ip": "192.0.2.10", "user": "alice"}, None]
    assert [e.lineno for e in fx.entries] == [4, 8]


def test_stretched_variants_grow_the_message() -> None:
    text = "Nov 22 09:15:02 h ipop3d[1]: Login user=alice host=[192.0.2.1]"
    variants = list(stretched(text, "Login user=alice host=[192.0.2.1]"))
    assert len(variants) == 4
    assert all(v.startswith("Nov 22 09:15:02 h ipop3d[1]: ") for v in variants)
    assert all(len(v) >= STRETCH_TO for v in variants)


def test_clock_puts_fixture_lines_in_2026() -> None:
    parser = LineParser(clock=lambda: CLOCK, tz=datetime.UTC)
    line = parser.parse("Nov 22 09:15:02 mailhost ipop3d[4242]: x")
    assert line is not None and line.time == 1795338902.0


def test_harness_catches_wrong_expectations(tmp_path: Path) -> None:
    """The harness must fail on a wrong address, a missing event and an unexpected one."""
    path = tmp_path / "uw-imap.log"
    path.write_text(
        '#> {"ip": "192.0.2.99"}\n'
        "Nov 22 09:15:02 h ipop3d[1]: Login user=a host=[192.0.2.10] nmsgs=1/1\n"
        '#> {"ip": "192.0.2.11"}\n'
        "Nov 22 09:15:02 h ipop3d[2]: Login failed user=a auth=a host=[192.0.2.11]\n"
        "#> null\n"
        "Nov 22 09:15:02 h ipop3d[3]: Login user=a host=[192.0.2.12] nmsgs=1/1\n"
        '#> {"ip": "192.0.2.13", "user": "b", "rule": "auth"}\n'
        "Nov 22 09:15:02 h ipop3d[4]: Login user=a host=[192.0.2.13] nmsgs=1/1\n"
    )
    failures, exercised, slow = run_fixture(read_fixture(path))
    assert [f.split(": ", 1)[0] for f in failures] == [
        "uw-imap.log:2",
        "uw-imap.log:4",
        "uw-imap.log:6",
        "uw-imap.log:8",
    ]
    assert "ip: expected '192.0.2.99', got '192.0.2.10'" in failures[0]
    assert "user: expected 'b'" in failures[3] or "rule: expected 'auth'" in failures[3]
    assert exercised == {"login", "failure"}
    assert not slow

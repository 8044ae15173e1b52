"""``popwatch scan``'s block path gives exactly what the line-by-line path gives.

The scan reads whole blocks (:func:`popwatch.pipeline.iter_blocks`) and lets one regex pass over
the lines no pattern claims (:meth:`popwatch.pipeline.Pipeline.feed_block`); the daemon and
``popwatch test`` read line by line (:func:`popwatch.pipeline.iter_lines` and ``feed_bytes``).
Over the same bytes both must leave the same table, the same counters and the same warnings
(with the same line numbers), whatever the read size: lines split across reads, CRLF,
invalid UTF-8, lines longer than max_line_length inside a block and across reads, a last line
without LF.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import pytest

from popwatch import pipeline as pipeline_module
from popwatch.grammar import Pattern
from popwatch.matcher import Matcher
from popwatch.patternload import find_pattern_files, load_pattern_file
from popwatch.pipeline import Pipeline, iter_blocks, iter_lines
from popwatch.policy import Policy
from popwatch.relaywriter import RelayWriter
from popwatch.store.memory import MemoryStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "logs"
LIFETIME = 10 * 365 * 86400  # the fixtures' logins all count, whatever their date
NOW = 1_795_000_000.0  # one fixed clock for both paths: future stamps are clamped to it

NOISE = [
    b"Nov 22 09:15:02 mailhost postfix/smtpd[3069]: connect from unknown[192.0.2.1]",
    b"Nov  2 09:15:02 mailhost postfix/qmgr[42752]: 4F2A1: removed",
    b"2026-11-22T09:15:02.123456+01:00 mailhost sshd[1]: Accepted publickey for x",
    b"Nov 22 09:15:02 mailhost postfix/smtpd[3069]: NOQUEUE: reject: RCPT from x[203.0.113.5]: "
    b"<a@b>: Relay access denied; from=<user rip=203.0.113.9> to=<c@d>",
    b"",
    b"\r",
    b"Nov 22 09:15:02 mailhost ipop3d[1]: Login user=\xff\xfe host=[203.0.113.66]",
    "Nov 22 09:15:02 mailhost postfix/smtpd[1]: from=<jos\u00e9@example.org>".encode(),
    b"short",
    b"Nov 22 09:15:02 mailhost ipop3d[1]: Login user=" + b"u" * 300 + b" host=[203.0.113.70]",
]


@pytest.fixture(scope="module")
def patterns() -> list[Pattern]:
    return [load_pattern_file(p) for p in find_pattern_files(()).values()]


def pipeline(patterns: list[Pattern]) -> tuple[Pipeline, MemoryStore]:
    store = MemoryStore()
    writer = RelayWriter(store, lifetime=LIFETIME, clock=lambda: NOW)
    matcher = Matcher(patterns, report=False, clock=lambda: NOW)
    return Pipeline(matcher, Policy((), LIFETIME), writer, clock=lambda: NOW), store


def mixed_log(seed: int, crlf: bool) -> bytes:
    rng = random.Random(seed)
    logins = [line for p in sorted(FIXTURES.glob("*.log")) for line in p.read_bytes().splitlines()]
    lines = [rng.choice(logins if rng.random() < 0.3 else NOISE) for _ in range(400)]
    end = b"\r\n" if crlf else b"\n"
    data = end.join(lines)
    return data if rng.random() < 0.5 else data + end  # sometimes no final LF


def by_lines(patterns: list[Pattern], data: bytes, max_len: int) -> tuple[object, ...]:
    pipe, store = pipeline(patterns)
    for lineno, raw in iter_lines(io.BytesIO(data), "t.log", max_len, pipe.counters):
        pipe.feed_bytes(raw, "t.log", lineno)
    assert pipe.writer.flush()
    return dict(store.items()), vars(pipe.counters), pipe.matcher.stats.lines


def by_blocks(patterns: list[Pattern], data: bytes, max_len: int) -> tuple[object, ...]:
    pipe, store = pipeline(patterns)
    for block in iter_blocks(io.BytesIO(data), "t.log", max_len, pipe.counters):
        pipe.feed_block(block, "t.log", max_len)
    assert pipe.writer.flush()
    return dict(store.items()), vars(pipe.counters), pipe.matcher.stats.lines


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    got = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    return got


@pytest.mark.parametrize("chunk", [7, 100, 4096, 1 << 20])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("max_len", [200, 16384])
def test_blocks_and_lines_agree(
    patterns: list[Pattern],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    chunk: int,
    seed: int,
    crlf: bool,
    max_len: int,
) -> None:
    monkeypatch.setattr(pipeline_module, "READ_CHUNK", chunk)
    data = mixed_log(seed, crlf)
    caplog.set_level(logging.WARNING)
    want = by_lines(patterns, data, max_len)
    want_warnings = warnings(caplog)
    got = by_blocks(patterns, data, max_len)
    assert got == want
    assert warnings(caplog) == want_warnings
    table, counters, _ = got
    assert table  # the fixtures' logins landed: the comparison is not of two empty tables
    assert isinstance(counters, dict) and counters["lines"] > 300
    if max_len == 200:
        assert counters["too_long"] > 0


def test_a_line_longer_than_max_len_across_reads(
    patterns: list[Pattern], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pipeline_module, "READ_CHUNK", 64)
    login = (FIXTURES / "uw-imap.log").read_bytes().splitlines()[0]
    data = login + b"\n" + b"x" * 1000 + b"\n" + login.replace(b"ipop3d", b"imapd") + b"\n"
    caplog.set_level(logging.WARNING)
    want = by_lines(patterns, data, 300)
    assert any("line 2: longer than max_line_length" in w for w in warnings(caplog))
    assert by_blocks(patterns, data, 300) == want
    assert any("line 2: longer than max_line_length" in w for w in warnings(caplog))


def test_block_numbers_and_shape() -> None:
    counters = pipeline_module.Counters()
    data = b"a\nbb\n\nccc\nlast"
    blocks = list(iter_blocks(io.BytesIO(data), "t", 100, counters))
    assert b"".join(b.data for b in blocks) == b"\n" + data
    assert sum(b.count() for b in blocks) == 5
    assert blocks[0].first == 1
    numbered = [
        (b.first + i, line) for b in blocks for i, line in enumerate(b.data[1:].split(b"\n"))
    ]
    assert numbered == [(1, b"a"), (2, b"bb"), (3, b""), (4, b"ccc"), (5, b"last")]

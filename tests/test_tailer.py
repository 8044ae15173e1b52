"""The tailer and the watcher on real files: rotation of every kind, partial and over-long lines,
files that come and go, checkpoint and resume, and watchdog wake-ups."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import wait_until

from popwatch.tailer import RawLine, Tailer
from popwatch.watcher import Watcher

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def datas(lines: list[RawLine]) -> list[bytes]:
    return [line.data for line in lines]


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "mail.log"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@contextlib.contextmanager
def tailer(*args: object, **kw: object) -> Iterator[Tailer]:
    t = Tailer(*args, **kw)  # type: ignore[arg-type]
    try:
        yield t
    finally:
        t.close()


def open_fds_to(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                n += 1
    return n


# -- lines ---------------------------------------------------------------------------------------


def test_lines_in_file_order_with_numbers_and_cr_kept(log: Path) -> None:
    log.write_bytes(b"one\r\ntwo\n\nfour\n")
    with tailer([str(log)], None) as t:
        lines = t.poll()
        assert lines == [
            RawLine(str(log), b"one\r", 1),
            RawLine(str(log), b"two", 2),
            RawLine(str(log), b"", 3),
            RawLine(str(log), b"four", 4),
        ]
        assert t.poll() == []
        append(log, b"five\n")
        assert t.poll() == [RawLine(str(log), b"five", 5)]


def test_rawline_is_a_real_frozen_rawline(log: Path) -> None:
    log.write_bytes(b"x\n")
    with tailer([str(log)], None) as t:
        (line,) = t.poll()
    assert type(line) is RawLine
    with pytest.raises(dataclasses.FrozenInstanceError):
        line.data = b"y"  # type: ignore[misc]
    assert hash(line) == hash(RawLine(str(log), b"x", 1))


def test_partial_line_in_two_halves_is_held_and_not_checkpointed(log: Path, state: Path) -> None:
    log.write_bytes(b"first\nLogin user=al")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"first"]
        t.checkpoint()
        assert t.poll() == []
        append(log, b"ice host=[192.0.2.10]\n")
        assert t.poll() == [RawLine(str(log), b"Login user=alice host=[192.0.2.10]", 2)]
    # A restart after the checkpoint taken while the half line was held reads it whole.
    with tailer([str(log)], state) as t:
        assert t.poll() == [RawLine(str(log), b"Login user=alice host=[192.0.2.10]", 2)]


def test_over_long_lines_are_skipped_with_one_warning_each(
    log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    huge = b"x" * (3 * 1024 * 1024 + 7)  # spans several read chunks
    log.write_bytes(b"a\n" + b"y" * 300 + b"\nb\n" + huge + b"\nc\n")
    with tailer([str(log)], None, max_line_length=256) as t:
        lines = t.poll()
    assert [(x.data, x.lineno) for x in lines] == [(b"a", 1), (b"b", 3), (b"c", 5)]
    warnings = messages(caplog)
    assert warnings == [
        f"{log}: line at offset 2 is longer than 256 bytes: skipping it",
        f"{log}: line at offset 305 is longer than 256 bytes: skipping it",
    ]


def test_over_long_unfinished_line_keeps_memory_bounded(
    log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log.write_bytes(b"ok\n")
    with tailer([str(log)], None, max_line_length=1000) as t:
        assert datas(t.poll()) == [b"ok"]
        for _ in range(5):  # a writer that never ends its line
            append(log, b"z" * 400_000)
            assert t.poll() == []
        held = max(len(i.partial) for p in t._paths.values() for i in p.instances())
        assert held <= 1000
        append(log, b"zz\nnext\n")
        assert t.poll() == [RawLine(str(log), b"next", 3)]
    assert len(messages(caplog)) == 1
    assert "offset 3 is longer than 1000 bytes" in messages(caplog)[0]


def test_max_batch_bytes_bounds_a_poll_and_says_more(log: Path) -> None:
    log.write_bytes(b"".join(b"%07d\n" % i for i in range(600_000)))  # 4.8 MB
    with tailer([str(log)], None, max_batch_bytes=1 << 20) as t:
        got: list[bytes] = []
        polls = 0
        while True:
            got += datas(t.poll())
            polls += 1
            if not t.more:
                break
        assert polls >= 4
        assert got == [b"%07d" % i for i in range(600_000)]


# -- rotation while running ----------------------------------------------------------------------


def test_rename_create_drains_the_old_file_first_including_late_lines(log: Path) -> None:
    clock = Clock()
    log.write_bytes(b"a\nb\n")
    with tailer([str(log)], None, rotated_grace=300, clock=clock) as t:
        assert datas(t.poll()) == [b"a", b"b"]
        append(log, b"c\n")
        log.rename(log.with_name("mail.log.1"))
        log.write_bytes(b"new1\n")
        append(log.with_name("mail.log.1"), b"late\n")  # syslog not yet HUPed
        lines = t.poll()
        assert lines == [
            RawLine(str(log), b"c", 3),
            RawLine(str(log), b"late", 4),
            RawLine(str(log), b"new1", 1),
        ]
        clock.now += 299
        append(log.with_name("mail.log.1"), b"later\n")
        assert datas(t.poll()) == [b"later"]
        assert open_fds_to(log.with_name("mail.log.1")) == 1
        clock.now += 299  # quiet for 299 s since the last line: still open
        assert t.poll() == []
        assert open_fds_to(log.with_name("mail.log.1")) == 1
        clock.now += 2
        assert t.poll() == []
        assert open_fds_to(log.with_name("mail.log.1")) == 0
        append(log, b"new2\n")
        assert datas(t.poll()) == [b"new2"]


def test_rotated_file_is_closed_once_deleted(log: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t:
        t.poll()
        log.rename(log.with_name("mail.log.1"))
        log.write_bytes(b"b\n")
        assert datas(t.poll()) == [b"b"]
        append(log.with_name("mail.log.1"), b"last\n")
        log.with_name("mail.log.1").unlink()
        assert datas(t.poll()) == [b"last"]  # still drained through the open descriptor
        t.poll()
        assert all(not p.draining for p in t._paths.values())


def test_delete_and_recreate(log: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a"]
        append(log, b"b\n")
        log.unlink()
        log.write_bytes(b"c\n")
        assert datas(t.poll()) == [b"b", b"c"]
        append(log, b"d\n")
        assert datas(t.poll()) == [b"d"]


def test_copytruncate_reads_again_from_the_start(log: Path) -> None:
    log.write_bytes(b"a\nb\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a", b"b"]
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        assert t.poll() == []
        append(log, b"c\n")
        assert t.poll() == [RawLine(str(log), b"c", 1)]


def test_copytruncate_recovers_unread_lines_from_the_copy(log: Path) -> None:
    log.write_bytes(b"a\nb\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a", b"b"]
        append(log, b"c\nd\n")  # written before the copy, never read from the original
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        append(log, b"e\n")
        assert [(x.data, x.lineno) for x in t.poll()] == [(b"c", 3), (b"d", 4), (b"e", 1)]


def test_truncated_and_rewritten_longer_between_two_polls(log: Path) -> None:
    log.write_bytes(b"aaaa\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"aaaa"]
        with open(log, "r+b") as f:  # same inode, now longer, other first bytes
            f.truncate(0)
            f.write(b"b\nccccccc\n")
        assert datas(t.poll()) == [b"b", b"ccccccc"]


# -- files that come and go ----------------------------------------------------------------------


def test_file_appearing_later_is_read_whole_even_with_start_at_end(
    log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tailer([str(log)], None, start_at_end=True) as t:
        assert t.poll() == []
        assert t.poll() == []
        assert messages(caplog) == [f"{log}: does not exist: waiting for it to appear: will retry"]
        log.write_bytes(b"a\nb\n")
        assert datas(t.poll()) == [b"a", b"b"]
        assert len(messages(caplog)) == 1


def test_start_at_end_skips_what_is_there_but_keeps_a_partial_last_line(log: Path) -> None:
    log.write_bytes(b"old1\nold2\nhal")
    with tailer([str(log)], None, start_at_end=True) as t:
        assert t.poll() == []
        append(log, b"f\nnew\n")
        assert t.poll() == [RawLine(str(log), b"half", 0), RawLine(str(log), b"new", 0)]


def test_file_disappearing_for_a_while_and_returning(
    log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="popwatch.tailer")
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a"]
        append(log, b"b\n")
        log.unlink()
        assert datas(t.poll()) == [b"b"]
        for _ in range(3):
            assert t.poll() == []
        assert messages(caplog) == [f"{log}: does not exist: waiting for it to appear: will retry"]
        log.write_bytes(b"c\n")
        assert datas(t.poll()) == [b"c"]
        assert f"{log}: usable again: following it from the start" in messages(caplog, logging.INFO)


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Root reads any file; drop the effective uid so that file modes count."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_file_warns_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    top = Path(tempfile.mkdtemp(prefix="popwatch-perm-"))  # traversable by nobody, unlike tmp_path
    try:
        top.chmod(0o755)
        log = top / "mail.log"
        log.write_bytes(b"a\n")
        log.chmod(0o644)
        with tailer([str(log)], None) as t:
            with as_nobody():
                assert datas(t.poll()) == [b"a"]
            log.rename(top / "mail.log.1")
            log.write_bytes(b"secret\n")
            log.chmod(0o600)
            with as_nobody():
                assert t.poll() == []
                assert t.poll() == []
            assert messages(caplog) == [f"{log}: cannot open: Permission denied: will retry"]
            log.chmod(0o644)
            with as_nobody():
                assert datas(t.poll()) == [b"secret"]
            assert len(messages(caplog)) == 1
    finally:
        shutil.rmtree(top)


def test_directory_in_place_of_the_file_warns_once_and_recovers(
    log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a"]
        append(log, b"b\n")
        log.rename(log.with_name("mail.log.1"))
        log.mkdir()
        assert datas(t.poll()) == [b"b"]
        assert t.poll() == []
        assert messages(caplog) == [f"{log}: is a directory, not a log file: will retry"]
        log.rmdir()
        log.write_bytes(b"c\n")
        assert datas(t.poll()) == [b"c"]
        assert len(messages(caplog)) == 1


def test_missing_directory_never_raises_and_is_watched_through_its_parent(tmp_path: Path) -> None:
    log = tmp_path / "not" / "yet" / "mail.log"
    with tailer([str(log)], None) as t:
        assert t.poll() == []
        assert t.directories() == {tmp_path}
        log.parent.mkdir(parents=True)
        log.write_bytes(b"a\n")
        assert datas(t.poll()) == [b"a"]
        assert t.directories() == {log.parent}


def test_glob_follows_files_that_appear_and_skips_rotated_names(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"a1\n")
    (tmp_path / "a.log.1").write_bytes(b"old\n")
    (tmp_path / "a.log-20261122").write_bytes(b"old\n")
    (tmp_path / "b.log.gz").write_bytes(b"old\n")
    pattern = str(tmp_path / "*.log*")
    with tailer([pattern], None) as t:
        assert t.poll() == [RawLine(str(tmp_path / "a.log"), b"a1", 1)]
        (tmp_path / "b.log").write_bytes(b"b1\n")
        assert t.poll() == [RawLine(str(tmp_path / "b.log"), b"b1", 1)]
        # Rotating a.log: the renamed generation is drained once, never followed again.
        (tmp_path / "a.log").rename(tmp_path / "a.log.2")
        append(tmp_path / "a.log.2", b"a2\n")
        assert datas(t.poll()) == [b"a2"]
        (tmp_path / "a.log").write_bytes(b"a3\n")
        assert datas(t.poll()) == [b"a3"]
        assert t.directories() == {tmp_path}


def test_the_same_file_under_two_names_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "mail.log").write_bytes(b"a\n")
    (tmp_path / "link.log").symlink_to(tmp_path / "mail.log")
    with tailer([str(tmp_path / "mail.log"), str(tmp_path / "link.log")], None) as t:
        assert datas(t.poll()) == [b"a"]
        append(tmp_path / "mail.log", b"b\n")
        assert datas(t.poll()) == [b"b"]


# -- checkpoint and resume -----------------------------------------------------------------------


def test_resume_continues_where_the_last_checkpoint_was(log: Path, state: Path) -> None:
    log.write_bytes(b"a\nb\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"a", b"b"]
        t.checkpoint()
        append(log, b"c\n")
        assert datas(t.poll()) == [b"c"]  # handed out, but no checkpoint: a crash follows
    append(log, b"d\n")
    with tailer([str(log)], state, start_at_end=True) as t:
        assert [(x.data, x.lineno) for x in t.poll()] == [(b"c", 3), (b"d", 4)]


def test_resume_finishes_a_file_renamed_away_while_down(log: Path, state: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    append(log, b"b\n")
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"c\n")
    with tailer([str(log)], state) as t:
        assert [(x.data, x.lineno) for x in t.poll()] == [(b"b", 2), (b"c", 1)]
        t.checkpoint()
        append(log.with_name("mail.log.1"), b"late\n")
        assert datas(t.poll()) == [b"late"]
        t.checkpoint()
    # The old instance was still draining at the last checkpoint: it is resumed too.
    append(log.with_name("mail.log.1"), b"later\n")
    append(log, b"d\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"later", b"d"]


def test_resume_finishes_two_generations_rotated_while_down(log: Path, state: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    append(log, b"b\n")
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"c\n")
    os.utime(log.with_name("mail.log.1"), ns=(1, 1_000_000_000))
    log.with_name("mail.log.1").rename(log.with_name("mail.log.2"))
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"d\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"b", b"c", b"d"]


def test_resume_when_the_old_file_is_gone_warns_and_reads_the_new_one(
    log: Path, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"new\n")
    log.with_name("mail.log.1").unlink()  # compressed away
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"new"]
    assert len(messages(caplog)) == 1
    assert "is gone (compressed or deleted?)" in messages(caplog)[0]


def test_resume_on_a_shorter_file_reads_from_the_start(log: Path, state: Path) -> None:
    log.write_bytes(b"aaaa\nbbbb\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    os.truncate(log, 0)
    append(log, b"c\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"c"]


def test_resume_on_the_same_inode_with_other_first_bytes_reads_from_the_start(
    log: Path, state: Path
) -> None:
    log.write_bytes(b"aaaa\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    with open(log, "r+b") as f:  # as if the inode had been reused by a new file
        f.write(b"x\nyyyyyy\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"x", b"yyyyyy"]


def test_resume_after_copytruncate_while_down_reads_the_rest_from_the_copy(
    log: Path, state: Path
) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    append(log, b"b\n")
    shutil.copyfile(log, log.with_name("mail.log.1"))
    os.truncate(log, 0)
    append(log, b"c\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"b", b"c"]


def test_empty_file_copied_and_truncated_between_two_polls(log: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a"]
        log.rename(log.with_name("mail.log.1"))
        log.write_bytes(b"")
        assert t.poll() == []  # the new file, seen empty
        append(log, b"b\nc\n")
        shutil.copyfile(log, log.with_name("mail.log.2"))
        os.truncate(log, 0)
        append(log, b"d\n")
        assert sorted(datas(t.poll())) == [b"b", b"c", b"d"]


def test_copytruncate_before_anything_was_read_and_nothing_written_after(
    log: Path, state: Path
) -> None:
    # The file stays empty after the truncation: only its mtime tells that it was written.
    log.write_bytes(b"")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()  # saved at offset 0, nothing read
    with tailer([str(log)], state) as t:
        assert t.poll() == []  # resumed, seen empty
        append(log, b"a\nb\n")
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        assert datas(t.poll()) == [b"a", b"b"]
        assert t.poll() == []


def test_copytruncate_after_only_a_partial_first_line_was_read(log: Path) -> None:
    log.write_bytes(b"par")
    with tailer([str(log)], None) as t:
        assert t.poll() == []  # read, but no whole line handed out
        append(log, b"tial\nb\n")
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        assert [(x.data, x.lineno) for x in t.poll()] == [(b"partial", 1), (b"b", 2)]


def test_two_copytruncates_with_nothing_read_in_between(log: Path) -> None:
    log.write_bytes(b"a\nb\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a", b"b"]
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        assert t.poll() == []  # truncated, seen empty
        append(log, b"c\nd\n")
        log.with_name("mail.log.1").rename(log.with_name("mail.log.2"))
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        assert datas(t.poll()) == [b"c", b"d"]  # and not a, b again from mail.log.2
        append(log, b"e\n")
        assert datas(t.poll()) == [b"e"]


def test_a_file_created_and_rotated_away_between_two_polls(log: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t:
        assert datas(t.poll()) == [b"a"]
        log.unlink()
        assert t.poll() == []  # seen missing
        log.write_bytes(b"b\nc\n")  # never seen at the path
        log.rename(log.with_name("mail.log.1"))
        log.write_bytes(b"")
        assert datas(t.poll()) == [b"b", b"c"]
        append(log, b"d\n")
        assert datas(t.poll()) == [b"d"]


def test_resume_with_nothing_at_the_path_finds_a_file_rotated_unseen(
    log: Path, state: Path
) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"a"]
        log.rename(log.with_name("mail.log.1"))
        assert t.poll() == []  # renamed away, nothing new at the path yet
        t.checkpoint()
    log.write_bytes(b"b\n")  # created, copied and truncated while down
    shutil.copyfile(log, log.with_name("mail.log.2"))
    os.truncate(log, 0)
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"b"]
        assert t.poll() == []


def test_resume_with_the_last_file_deleted_finds_one_rotated_unseen(log: Path, state: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"a"]
        log.unlink()
        assert t.poll() == []  # seen missing; the deleted file is finished
        t.checkpoint()
    log.write_bytes(b"b\n")  # created and rotated away while down
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"b"]


def test_checkpoint_of_a_file_seen_empty_keeps_when_it_was_seen_empty(
    log: Path, state: Path
) -> None:
    log.write_bytes(b"")
    with tailer([str(log)], state) as t:
        assert t.poll() == []
        append(log, b"a\n")
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        append(log, b"b\n")
        t.checkpoint()  # stopped before polling again
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"a", b"b"]


def test_copytruncate_of_a_file_whose_first_read_was_put_off(tmp_path: Path, log: Path) -> None:
    big = tmp_path / "big.log"
    big.write_bytes(b"x\n")
    log.write_bytes(b"a\n")
    with tailer([str(big), str(log)], None, max_batch_bytes=1) as t:
        assert datas(t.poll()) == [b"x"] and t.more  # mail.log opened, its read put off
        shutil.copyfile(log, log.with_name("mail.log.1"))
        os.truncate(log, 0)
        append(log, b"b\n")
        got = datas(t.poll())
        while t.more:
            got += datas(t.poll())
        assert got == [b"a", b"b"]


def test_resume_of_an_empty_file_copied_and_truncated_while_down(log: Path, state: Path) -> None:
    log.write_bytes(b"")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    append(log, b"a\nb\n")
    shutil.copyfile(log, log.with_name("mail.log.1"))
    os.truncate(log, 0)
    append(log, b"c\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"a", b"b", b"c"]


def test_a_file_that_appears_while_down_is_read_whole(log: Path, state: Path) -> None:
    with tailer([str(log)], state, start_at_end=True) as t:
        t.poll()
        t.checkpoint()
    log.write_bytes(b"a\n")
    with tailer([str(log)], state, start_at_end=True) as t:
        assert datas(t.poll()) == [b"a"]


def test_checkpoint_before_the_first_poll_keeps_the_saved_state(log: Path, state: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
    with tailer([str(log)], state) as t:
        t.checkpoint()
    append(log, b"b\n")
    with tailer([str(log)], state) as t:
        assert datas(t.poll()) == [b"b"]


def test_two_tailers_cannot_share_a_state_directory(log: Path, state: Path) -> None:
    from popwatch.errors import PopwatchError

    with tailer([str(log)], state), pytest.raises(PopwatchError, match="in use by another"):
        Tailer([str(log)], state)


def test_state_file_is_written_only_when_positions_change(log: Path, state: Path) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], state) as t:
        t.poll()
        t.checkpoint()
        before = os.stat(state / "positions.json")
        t.poll()
        t.checkpoint()
        assert os.stat(state / "positions.json").st_ino == before.st_ino
        append(log, b"b\n")
        t.poll()
        t.checkpoint()
        assert os.stat(state / "positions.json").st_ino != before.st_ino


# -- watcher -------------------------------------------------------------------------------------


@pytest.fixture
def woken() -> Iterator[threading.Event]:
    yield threading.Event()


@contextlib.contextmanager
def watching(dirs: set[Path], event: threading.Event) -> Iterator[Watcher]:
    w = Watcher(dirs, event.set)
    w.start()
    try:
        yield w
    finally:
        w.stop()
    assert not w.is_alive()


def test_watcher_wakes_on_append_rename_and_create(log: Path, woken: threading.Event) -> None:
    log.write_bytes(b"a\n")
    with watching({log.parent}, woken) as w:
        assert w.is_alive()
        for change in (
            lambda: append(log, b"b\n"),
            lambda: log.rename(log.with_name("mail.log.1")),
            lambda: log.write_bytes(b"c\n"),
            lambda: log.with_name("mail.log.1").unlink(),
        ):
            woken.clear()
            change()
            assert woken.wait(10), "no wake-up"


def test_watcher_update_moves_the_watches(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    seen: list[str] = []
    w = Watcher({one}, lambda: seen.append("wake"))
    w.start()
    try:
        assert w.directories() == {one}
        w.update({two})
        assert w.directories() == {two}
        (two / "x.log").write_bytes(b"x\n")
        wait_until(lambda: seen, message="a wake-up from the new directory")
    finally:
        w.stop()


def test_watcher_survives_a_failing_callback_and_skips_missing_directories(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def wake() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    w = Watcher({tmp_path, tmp_path / "missing"}, wake)
    w.start()
    try:
        assert w.directories() == {tmp_path}
        assert any("missing: cannot watch" in m for m in messages(caplog))
        (tmp_path / "a").write_bytes(b"a\n")
        wait_until(lambda: calls, message="first wake-up")
        n = len(calls)
        (tmp_path / "b").write_bytes(b"b\n")
        wait_until(lambda: len(calls) > n, message="a wake-up after the failure")
        assert w.is_alive()
    finally:
        w.stop()


def test_tailer_and_watcher_together_follow_a_rotation(log: Path, woken: threading.Event) -> None:
    log.write_bytes(b"a\n")
    with tailer([str(log)], None) as t, watching(t.directories(), woken):
        got = datas(t.poll())

        def collect() -> bool:
            if woken.wait(0.5):
                woken.clear()
            got.extend(datas(t.poll()))
            return got[-1:] == [b"c"]

        append(log, b"b\n")
        log.rename(log.with_name("mail.log.1"))
        log.write_bytes(b"c\n")
        wait_until(collect, message="all lines")
        assert got == [b"a", b"b", b"c"]

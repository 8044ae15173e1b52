"""Rotation torture: a writer process, a rotating test, and a consumer process that is killed.

A writer PROCESS appends lines with unique sequence numbers (some in two halves).  The test
rotates the file every few hundred lines by rename+create (the writer keeps writing to the
renamed file for a while before it is told to reopen, like syslog before its HUP), by
copytruncate and by delete+recreate.  Around copy+truncate and around delete+recreate the
writer is paused at a line boundary, exactly like logrotate's copytruncate window; before a
delete the test also waits until everything written so far was delivered, since a deleted
file cannot be finished by a consumer that is down.  Rotated files get unique names
(``mail.log.N``, like logrotate's dateext), so a rotation never renames a file twice.

A consumer PROCESS runs the Tailer with a Watcher, appends every delivered line to an output
file, fsyncs it, then calls checkpoint() and marks that in the output.  It is SIGTERMed or
SIGKILLed at random points and restarted from the state directory, sometimes only after more
rotations happened.

Afterwards: every written sequence number was delivered at least once, nothing was delivered
that was not written (every delivered line is compared byte for byte), a SIGTERMed consumer
left nothing unsaved, and a line delivered twice was always in the window between the last
checkpoint and the SIGKILL that preceded its second delivery.
"""

from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TypeVar

import pytest
from helpers import wait_until

T = TypeVar("T")

WRITE_SECONDS = float(os.environ.get("POPWATCH_TORTURE_SECONDS", "20"))

WRITER = r"""
import os, random, sys, time
path, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)

def line(seq):
    return b"%010d %s\n" % (seq, b"abcdefghij"[seq % 10:] * (1 + seq % 7))

def say(msg):
    os.write(1, msg.encode() + b"\n")

buf = b""
def command(block):
    global buf
    while b"\n" not in buf:
        import select
        if not select.select([0], [], [], None if block else 0)[0]:
            return None
        data = os.read(0, 4096)
        if not data:
            sys.exit(0)
        buf += data
    cmd, buf = buf.split(b"\n", 1)
    return cmd.decode()

fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
seq = 0
paused = False
while True:
    while True:  # commands only between whole lines
        cmd = command(block=paused)
        if cmd is None:
            break
        if cmd == "pause":
            paused = True
            say(f"paused {seq}")
        elif cmd == "resume":
            paused = False
        elif cmd == "reopen":
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            say(f"reopened {seq}")
        elif cmd == "stop":
            say(f"stopped {seq}")
            sys.exit(0)
    data = line(seq)
    if seq % 41 == 0:  # a line written in two halves
        cut = rng.randrange(1, len(data))
        os.write(fd, data[:cut])
        time.sleep(0.0003)
        os.write(fd, data[cut:])
    else:
        os.write(fd, data)
    seq += 1
    if seq % 50 == 0:
        say(f"at {seq}")
        time.sleep(0.012)  # pacing: about 3000 lines a second
"""

CONSUMER = r"""
import logging, os, signal, sys, threading
from pathlib import Path
from popwatch.tailer import Tailer
from popwatch.watcher import Watcher

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format=f"consumer {os.getpid()}: %(name)s: %(message)s")
log, state, out_path = sys.argv[1:4]
wake = threading.Event()
stopping = []

def term(*_):
    stopping.append(1)
    wake.set()

signal.signal(signal.SIGTERM, term)
out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(out, b"\nS %d\n" % os.getpid())
os.fsync(out)
if os.environ.get("POPWATCH_TORTURE_DEBUG"):
    try:
        print(open(os.path.join(state, "positions.json")).read(), file=sys.stderr)
    except OSError:
        pass
    for e in sorted(os.scandir(os.path.dirname(log)), key=lambda e: e.name):
        st = e.stat()
        print(f"  {e.name} ino={st.st_ino} size={st.st_size} mtime={st.st_mtime_ns}",
              file=sys.stderr)
tailer = Tailer([log], Path(state), rotated_grace=1.0, max_batch_bytes=256 << 10)
watcher = Watcher(tailer.directories(), wake.set)
watcher.start()
while True:
    wake.clear()
    lines = tailer.poll()
    if lines:
        os.write(out, b"".join([b"D " + x.data + b"\n" for x in lines]))
        os.fsync(out)
    tailer.checkpoint()
    if lines:
        os.write(out, b"C\n")
    if stopping:
        break
    if not tailer.more:
        wake.wait(0.5)
watcher.stop()
tailer.close()
os.write(out, b"E %d\n" % os.getpid())
"""


def expected(seq: int) -> bytes:
    return b"%010d %s" % (seq, b"abcdefghij"[seq % 10 :] * (1 + seq % 7))


class Delivered:
    """Follows the consumer's output file: the set of correctly delivered sequence numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.rest = b""
        self.seqs: set[int] = set()

    def refresh(self) -> set[int]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.seqs
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for rec in lines:
            if rec.startswith(b"D ") and len(rec) >= 12 and rec[2:12].isdigit():
                seq = int(rec[2:12])
                if rec[2:] == expected(seq):
                    self.seqs.add(seq)
        return self.seqs

    def has_all(self, n: int) -> bool:
        seqs = self.refresh()
        return len(seqs) >= n and all(s in seqs for s in range(n))


class Writer:
    def __init__(self, log: Path, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(log), str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.messages: queue.Queue[str] = queue.Queue()
        self.written = 0
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.messages.put(raw.decode().strip())

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float = 30.0) -> int:
        """Wait for the reply ``word N`` (progress reports on the way are noted)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            kind, n = msg.split()
            self.written = max(self.written, int(n))
            if kind == word:
                return int(n)

    def wait_written(self, n: int) -> None:
        while self.written < n:
            self.expect("at")


class Consumers:
    """Starts, kills and restarts the consumer; remembers how each process ended."""

    def __init__(self, log: Path, state: Path, out: Path, stderr: IO[bytes]) -> None:
        self.args = [sys.executable, "-c", CONSUMER, str(log), str(state), str(out)]
        self.stderr = stderr
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ended: dict[int, int] = {}  # pid -> signal sent (0: none) ...
        self.returncodes: dict[int, int] = {}
        self.rotated_while_down = 0
        self.start()

    def start(self) -> None:
        with self.lock:
            self.proc = subprocess.Popen(self.args, stderr=self.stderr)

    def stop(self, sig: int) -> None:
        with self.lock:
            proc, self.proc = self.proc, None
        assert proc is not None
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        self.ended[proc.pid] = sig
        self.returncodes[proc.pid] = code

    def running(self) -> bool:
        with self.lock:
            return self.proc is not None


def rotate(kind: str, log: Path, generation: int, writer: Writer, delivered: Delivered) -> None:
    old = log.with_name(f"mail.log.{generation}")
    if kind == "rename":
        os.rename(log, old)
        log.touch()
        # The writer has not been told yet (no HUP): it goes on in the renamed file.
        writer.wait_written(writer.written + random.choice((0, 0, 10, 60)))
        writer.send("reopen")
        writer.expect("reopened")
    elif kind == "copytruncate":
        writer.send("pause")
        writer.expect("paused")
        shutil.copyfile(log, old)
        os.truncate(log, 0)
        writer.send("resume")
    else:  # delete+recreate
        writer.send("pause")
        n = writer.expect("paused")
        wait_until(
            lambda: delivered.has_all(n),
            20,
            message=lambda: (
                f"delivery of {n} lines before the delete; missing"
                f" {sorted(set(range(n)) - delivered.seqs)[:20]}"
            ),
        )
        os.unlink(log)
        log.touch()
        writer.send("reopen")
        writer.expect("reopened")
        writer.send("resume")


def analyse(out: Path, consumers: Consumers, n: int) -> dict[str, int]:
    """Check the output against the rules in the module text; return counts."""
    records = out.read_bytes().split(b"\n")
    delivered: set[int] = set()
    since_checkpoint: set[int] = set()
    window: set[int] = set()
    in_run: set[int] = set()
    runs = duplicates = torn = 0
    previous_pid: int | None = None
    for i, rec in enumerate(records):
        if not rec:
            continue
        if rec.startswith(b"S "):
            if previous_pid is not None and consumers.ended.get(previous_pid) == signal.SIGTERM:
                assert not since_checkpoint, "a SIGTERMed consumer left lines unsaved"
            previous_pid = int(rec[2:])
            runs += 1
            window = set(since_checkpoint)
            in_run = set()
            continue
        if rec == b"C":
            since_checkpoint.clear()
            continue
        if rec.startswith(b"E "):
            continue
        assert rec.startswith(b"D "), rec
        seq = int(rec[2:12]) if rec[2:12].isdigit() else -1
        if rec[2:] != expected(seq):
            # Only the last record of a SIGKILLed consumer may be torn (its write was cut).
            nxt = next((r for r in records[i + 1 :] if r), b"S ")
            assert (
                nxt.startswith(b"S ") and consumers.ended.get(previous_pid or 0) == signal.SIGKILL
            ), f"delivered a line that was never written: {rec!r}"
            torn += 1
            continue
        assert seq not in in_run, f"line {seq} delivered twice by one consumer"
        in_run.add(seq)
        if seq in delivered:
            assert seq in window, f"line {seq} delivered again outside the post-checkpoint window"
            duplicates += 1
        delivered.add(seq)
        since_checkpoint.add(seq)
    missing = sorted(set(range(n)) - delivered)
    assert not missing, f"{len(missing)} lines never delivered, first {missing[:10]}"
    assert delivered == set(range(n))
    return {"runs": runs, "duplicates": duplicates, "torn_output_records": torn}


@pytest.mark.slow
def test_rotation_torture(tmp_path: Path) -> None:
    seed = int(os.environ.get("POPWATCH_TORTURE_SEED", str(random.randrange(1 << 30))))
    print(f"seed {seed} (POPWATCH_TORTURE_SEED to repeat)")
    rng = random.Random(seed)
    random.seed(seed)
    logdir = tmp_path / "log"
    logdir.mkdir()
    log = logdir / "mail.log"
    log.touch()
    out = tmp_path / "delivered"
    stderr_path = tmp_path / "consumer.stderr"
    stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in finally
    writer = Writer(log, seed)
    consumers = Consumers(log, tmp_path / "state", out, stderr)
    delivered = Delivered(out)
    rotations = {"rename": 0, "copytruncate": 0, "delete": 0}
    rotation_count = [0]
    stop_killing = threading.Event()
    failure: list[BaseException] = []

    kinds_all = (signal.SIGTERM, signal.SIGKILL)

    def killer() -> None:
        try:
            kinds = [signal.SIGKILL, signal.SIGTERM]  # at least one of each, then at random
            while not stop_killing.wait(rng.uniform(0.2, 1.2)):
                consumers.stop(kinds.pop() if kinds else rng.choice(kinds_all))
                before = rotation_count[0]
                if rng.random() < 0.5:  # stay down across some rotations
                    deadline = time.monotonic() + 2
                    while rotation_count[0] < before + rng.randint(1, 3):
                        if time.monotonic() > deadline or stop_killing.is_set():
                            break
                        time.sleep(0.02)
                if rotation_count[0] > before:
                    consumers.rotated_while_down += 1
                consumers.start()
        except BaseException as err:  # reported by the main thread
            failure.append(err)

    # Without any saved state a consumer cannot know about files rotated before it ever ran:
    # the torture starts once the first positions are on disk.
    wait_until((tmp_path / "state" / "positions.json").exists, 30, message="the first checkpoint")
    kill_thread = threading.Thread(target=killer, daemon=True)
    kill_thread.start()
    try:
        end = time.monotonic() + WRITE_SECONDS
        generation = 0
        while time.monotonic() < end and not failure:
            writer.wait_written(writer.written + rng.randint(150, 600))
            kind = rng.choice(tuple(rotations))
            generation += 1
            rotate(kind, log, generation, writer, delivered)
            rotations[kind] += 1
            rotation_count[0] += 1
        writer.send("stop")
        n = writer.expect("stopped")
        stop_killing.set()
        kill_thread.join(60)
        assert not failure, failure
        if not consumers.running():
            consumers.start()
        wait_until(lambda: delivered.has_all(n), 90, message=f"delivery of all {n} lines")
        consumers.stop(signal.SIGTERM)
        counts = analyse(out, consumers, n)
    finally:
        stop_killing.set()
        if consumers.proc is not None:
            consumers.proc.kill()
            consumers.proc.wait()
        writer.proc.kill()
        writer.proc.wait()
        stderr.close()
    # A SIGTERMed consumer that had installed its handler shuts down cleanly.
    started = {int(r[2:]) for r in out.read_bytes().split(b"\n") if r.startswith(b"S ")}
    for pid, sig in consumers.ended.items():
        if sig == signal.SIGTERM and pid in started:
            assert consumers.returncodes[pid] == 0, stderr_path.read_text()[-3000:]
    kills = list(consumers.ended.values())
    report = {
        "lines": n,
        **{f"rotations_{k}": v for k, v in rotations.items()},
        "sigterm": kills.count(signal.SIGTERM),
        "sigkill": kills.count(signal.SIGKILL),
        "restarts_after_rotations_while_down": consumers.rotated_while_down,
        **counts,
    }
    print("torture:", " ".join(f"{k}={v}" for k, v in report.items()))
    assert sum(rotations.values()) >= 10
    assert kills.count(signal.SIGKILL) >= 1 and kills.count(signal.SIGTERM) >= 1

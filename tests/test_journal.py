"""Journal mode: only trusted fields open the relay; a forged syslog tag does not.

Real journal files are built with ``systemd-journal-remote`` from the journal export format
and read back with ``journalctl --file``, the way the daemon reads the system journal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers import wait_until
from test_daemon import Popwatch

from popwatch.journal import JournalSource, TrustPolicy, comm_names, field_text
from popwatch.store import open_store

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
needs_journal = pytest.mark.skipif(
    not (os.path.exists(JOURNAL_REMOTE) and shutil.which("journalctl")),
    reason="systemd-journal-remote and journalctl (packages systemd-journal-remote, systemd)",
)
BOOT = "0123456789abcdef0123456789abcdef"
PROGRAMS = {"uw": ("ipop3d", "imapd"), "cyrus": ("cyrus/pop3",), "dovecot": ("dovecot",)}


def export_record(fields: Mapping[str, str], usec: int, seq: int) -> bytes:
    head = {
        "__CURSOR": f"s=1;i={seq}",
        "__REALTIME_TIMESTAMP": str(usec),
        "__MONOTONIC_TIMESTAMP": str(seq),
        "_BOOT_ID": BOOT,
        "_HOSTNAME": "mail",
        "_TRANSPORT": "syslog",
    }
    return b"".join(f"{k}={v}\n".encode() for k, v in {**head, **fields}.items()) + b"\n"


def build_journal(path: Path, records: list[dict[str, str]]) -> None:
    now = int(time.time() * 1e6)
    data = b"".join(export_record(r, now + i, i + 1) for i, r in enumerate(records))
    subprocess.run(
        [JOURNAL_REMOTE, "-o", str(path), "-"],
        input=data,
        check=True,
        capture_output=True,
        timeout=30,
    )


REAL = {
    "MESSAGE": "Login user=bob host=[192.0.2.10]",
    "SYSLOG_IDENTIFIER": "ipop3d",
    "_COMM": "ipop3d",
    "_UID": "0",
    "_PID": "42",
    "_SYSTEMD_UNIT": "inetd.service",
}
FORGED_LOGGER = {
    "MESSAGE": "Login user=eve host=[203.0.113.66]",
    "SYSLOG_IDENTIFIER": "ipop3d",
    "_COMM": "logger",
    "_UID": "1000",
    "_PID": "43",
    "_SYSTEMD_UNIT": "session-3.scope",
}
FORGED_COPY = {
    "MESSAGE": "Login user=eve host=[203.0.113.67]",
    "SYSLOG_IDENTIFIER": "ipop3d",
    "_COMM": "ipop3d",
    "_UID": "1000",
    "_PID": "44",
    "_SYSTEMD_UNIT": "user@1000.service",
}
UNIT = {
    "MESSAGE": "Login user=carol host=[192.0.2.11]",
    "SYSLOG_IDENTIFIER": "testpop",
    "_COMM": "log",
    "_UID": "0",
    "_PID": "45",
    "_SYSTEMD_UNIT": "testpop.service",
}
FORGED_ROOT_OTHER_TAG = {
    "MESSAGE": "Login user=x host=[203.0.113.68]",
    "SYSLOG_IDENTIFIER": "testpop",
    "_COMM": "cron",
    "_UID": "0",
    "_PID": "46",
    "_SYSTEMD_UNIT": "cron.service",
}


# -- the trust rules -------------------------------------------------------------------------


def test_comm_names_follow_kernel_truncation() -> None:
    assert comm_names("cyrus/pop3") == {"cyrus/pop3", "pop3"}
    assert comm_names("a-very-long-daemon-name") == {"a-very-long-dae"}


def test_field_text_decodes_journal_json_forms() -> None:
    assert field_text("x") == "x"
    assert field_text([104, 105, 255]) == "hi\ufffd"
    assert field_text(["first", "second"]) == "first"
    assert field_text(None) is None


def test_trust_policy() -> None:
    t = TrustPolicy(["dovecot.service", "ipop3d@*.service"], PROGRAMS)
    assert t.trusted(REAL)
    assert "logger" in (t.why_rejected(FORGED_LOGGER) or "")
    assert "uid 1000" in (t.why_rejected(FORGED_COPY) or "")
    # A unit in journal_units is trusted whatever its _COMM (Dovecot's log process is "log").
    assert t.trusted(
        {
            "SYSLOG_IDENTIFIER": "dovecot",
            "_COMM": "log",
            "_UID": "0",
            "_SYSTEMD_UNIT": "dovecot.service",
            "MESSAGE": "m",
        }
    )
    assert t.trusted(
        {
            "SYSLOG_IDENTIFIER": "ipop3d",
            "_COMM": "x",
            "_UID": "0",
            "_SYSTEMD_UNIT": "ipop3d@7-192.0.2.1:110.service",
            "MESSAGE": "m",
        }
    )
    # The tag must be claimed by a pattern at all.
    assert t.why_rejected({**REAL, "SYSLOG_IDENTIFIER": "sshd"})
    # A trusted program may not speak with another pattern's tag.
    assert "may not log as" in (t.why_rejected({**REAL, "SYSLOG_IDENTIFIER": "dovecot"}) or "")
    # Cyrus: tag cyrus/pop3, process pop3.
    assert t.trusted(
        {"SYSLOG_IDENTIFIER": "cyrus/pop3", "_COMM": "pop3", "_UID": "97", "MESSAGE": "m"}
    )
    # No _UID at all (not a trusted record): rejected.
    assert t.why_rejected({"SYSLOG_IDENTIFIER": "ipop3d", "_COMM": "ipop3d", "MESSAGE": "m"})


def test_journalctl_matches_narrow_the_stream() -> None:
    t = TrustPolicy(["dovecot.service"], {"uw": ("ipop3d",)})
    assert t.matches() == ["_SYSTEMD_UNIT=dovecot.service", "+", "_COMM=ipop3d"]
    assert TrustPolicy(["x@*.service"], {"uw": ("ipop3d",)}).matches() == []


# -- real journal files ----------------------------------------------------------------------


@pytest.fixture
def journal_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.journal"
    build_journal(path, [REAL, FORGED_LOGGER, FORGED_COPY, UNIT, FORGED_ROOT_OTHER_TAG])
    return path


@needs_journal
def test_journal_source_reads_a_real_file_and_rejects_forgeries(
    tmp_path: Path, journal_file: Path
) -> None:
    trust = TrustPolicy(["testpop.service"], {"uw": ("ipop3d",), "testpop": ("testpop",)})
    src = JournalSource(
        trust, state_dir=tmp_path, files=[journal_file], follow=False, since=time.time() - 600
    )
    src.start()
    got: list[dict[str, object]] = []
    wait_until(lambda: got.extend(src.read()) or not src.is_alive(), 10)
    got.extend(src.read())
    assert [r["MESSAGE"] for r in got] == [REAL["MESSAGE"], UNIT["MESSAGE"]]
    # journalctl's own matches dropped the logger and cron records; the copied binary has
    # _COMM=ipop3d and reaches the policy, which rejects its UID.
    assert src.records == 3 and src.rejected == 1
    src.checkpoint()
    assert (tmp_path / "journal.cursor").read_text().startswith("s=")
    # Started again, it continues after the saved cursor: nothing new.
    again = JournalSource(trust, state_dir=tmp_path, files=[journal_file], follow=False)
    assert any(a.startswith("--after-cursor=") for a in again.argv())
    again.start()
    more: list[dict[str, object]] = []
    wait_until(lambda: more.extend(again.read()) or not again.is_alive(), 10)
    assert more == []
    src.close()
    again.close()


@needs_journal
def test_trust_is_checked_even_without_journalctl_matches(
    tmp_path: Path, journal_file: Path
) -> None:
    """With a globbed unit journalctl cannot filter; the policy alone must reject."""
    trust = TrustPolicy(["testpop*.service"], {"uw": ("ipop3d",), "testpop": ("testpop",)})
    src = JournalSource(trust, state_dir=None, files=[journal_file], follow=False)
    src.start()
    got: list[dict[str, object]] = []
    wait_until(lambda: got.extend(src.read()) or not src.is_alive(), 10)
    got.extend(src.read())
    assert src.records == 5 and src.rejected == 3
    assert sorted(str(r["MESSAGE"]) for r in got) == sorted([REAL["MESSAGE"], UNIT["MESSAGE"]])
    src.close()


@pytest.fixture
def pw(tmp_path: Path) -> Iterator[Popwatch]:
    p = Popwatch(tmp_path, journal_units=["testpop.service"])
    yield p
    p.stop()
    p.notify.close()


@needs_journal
def test_daemon_in_journal_mode_rejects_a_forged_tag(pw: Popwatch, journal_file: Path) -> None:
    pw.start("--journal-file", str(journal_file))
    wait_until(lambda: {"192.0.2.10", "192.0.2.11"} <= set(pw.table()), 10)
    wait_until(lambda: pw.notify.status().get("lines") == 2, 5, message="two records read")
    table = pw.table()
    assert "203.0.113.66" not in table  # logger -t ipop3d
    assert "203.0.113.67" not in table  # a copied binary named ipop3d, run by a user
    assert "203.0.113.68" not in table  # a root process of another unit using the tag
    assert set(table) == {"192.0.2.10", "192.0.2.11"}


@needs_journal
def test_daemon_exits_70_when_the_journal_reader_dies(pw: Popwatch, journal_file: Path) -> None:
    pw.start("--journal-file", str(journal_file))
    assert pw.proc is not None
    children = Path(f"/proc/{pw.proc.pid}/task/{pw.proc.pid}/children")
    pids = wait_until(lambda: children.read_text().split(), 5, message="journalctl child")
    os.kill(int(pids[0]), signal.SIGKILL)
    assert pw.wait_exit() == 70
    assert "journal reader ended" in pw.stderr()


@needs_journal
def test_daemon_saves_the_journal_cursor_and_resumes_after_it(
    pw: Popwatch, journal_file: Path
) -> None:
    pw.start("--journal-file", str(journal_file))
    wait_until(lambda: {"192.0.2.10", "192.0.2.11"} <= set(pw.table()), 10)
    cursor_file = pw.state / "journal.cursor"
    wait_until(cursor_file.exists, 10, message="journal.cursor saved")
    pw.signal(signal.SIGTERM)
    assert pw.wait_exit() == 0
    last = subprocess.run(
        # the last record journalctl hands the daemon (its matches: the unit, or _COMM)
        [
            "journalctl",
            f"--file={journal_file}",
            "-o",
            "json",
            "-n",
            "1",
            "--no-pager",
            "_SYSTEMD_UNIT=testpop.service",
            "+",
            "_COMM=ipop3d",
            "_COMM=testpop",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert cursor_file.read_text().strip() == json.loads(last)["__CURSOR"]
    # Restarted after an admin emptied the table: records before the cursor are not read
    # again, so nothing comes back.
    store = open_store(pw.db)
    store.clear()
    store.close()
    pw.start("--journal-file", str(journal_file))
    assert pw.proc is not None
    children = Path(f"/proc/{pw.proc.pid}/task/{pw.proc.pid}/children")
    pid = wait_until(lambda: children.read_text().split(), 5, message="journalctl child")[0]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert f"--after-cursor={json.loads(last)['__CURSOR']}".encode() in argv
    assert pw.table() == {}

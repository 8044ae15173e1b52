"""The admin commands through ``popwatch.cli.main`` and the installed console scripts:
every command, every exit status, bad input of every kind."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from berkeleydb import db

from popwatch import __version__
from popwatch.cli import main

BIN = Path(sys.executable).parent
FUTURE = 4102444800  # 2100-01-01: pinned
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def dbpath(tmp_path: Path) -> Path:
    return tmp_path / "relayers.db"


@pytest.fixture
def config(tmp_path: Path, dbpath: Path) -> Path:
    cfg = tmp_path / "popwatch.toml"
    cfg.write_text(f'database = "{dbpath}"\nlock_timeout = "0.3s"\n')
    return cfg


@pytest.fixture
def run(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """popwatch -c CONFIG ARGS...; returns (status, stdout, stderr)."""

    # cli.setup_logging binds its handler to the sys.stderr of its first call; under capsys
    # that stream is gone by the next test, so start each test without it.
    monkeypatch.setattr(logging.getLogger("popwatch"), "handlers", [])

    def call(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        status = main(["-c", str(config), *argv])
        out, err = capsys.readouterr()
        return status, out, err

    return call


def raw_keys(path: Path) -> list[bytes]:
    h = db.DB()
    h.open(str(path), dbtype=db.DB_HASH, flags=db.DB_RDONLY)
    try:
        return sorted(h.keys())
    finally:
        h.close()


def one_fatal_line(err: str, prog: str = "popwatch") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: fatal: "), err
    assert "Traceback" not in err
    return lines[0]


# -- add / delete --------------------------------------------------------------------------


def test_add_then_dump(run: Run, dbpath: Path) -> None:
    before = int(time.time())
    assert run("add", "192.0.2.10") == (0, "", "")
    assert run("add", "2001:DB8::5", str(FUTURE)) == (0, "", "")
    assert run("add", "::ffff:198.51.100.7", "906502527") == (0, "", "")
    status, out, err = run("dump")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("# timestamp (UTC): ")
    key, ticks = lines[1].split()
    assert key == "192.0.2.10" and before <= int(ticks) <= int(time.time())
    assert lines[2:] == [
        "# timestamp (UTC): Tue Sep 22 22:15:27 1998",
        "198.51.100.7 906502527",
        "# timestamp (UTC): Fri Jan  1 00:00:00 2100",
        f"2001:db8::5 {FUTURE}",
    ]


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("10.1", "truncated key"),
        ("10.0.0.0/8", "no mask"),
        ("999.1.1.1", "not an IPv4 or IPv6 address"),
        ("", "not a host address"),
        ("192.0.2.1 ", "white space"),
        (" ", "white space"),
    ],
)
def test_add_bad_address_is_usage_error(run: Run, dbpath: Path, ip: str, why: str) -> None:
    status, out, err = run("add", ip)
    assert status == 64 and out == ""
    assert why in one_fatal_line(err)
    assert not dbpath.exists()


@pytest.mark.parametrize("ticks", ["abc", "-5", "1.5", "", " 5", "1e9", "٣"])
def test_add_bad_ticks_is_usage_error(run: Run, dbpath: Path, ticks: str) -> None:
    status, _, err = run("add", "192.0.2.1", ticks)
    assert status == 64
    assert "bad TICKS" in one_fatal_line(err)
    assert not dbpath.exists()


def test_add_key_format_flag_and_prefix_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pf.db"
    assert (
        main(
            [
                "--db",
                str(path),
                "-c",
                "/dev/null",
                "--key-format",
                "postfix",
                "add",
                "192.0.2.1",
                "5",
            ]
        )
        == 0
    )
    assert raw_keys(path) == [b"192.0.2.1\0"]
    cfg = tmp_path / "sm.toml"
    cfg.write_text(
        f'database = "{tmp_path / "sm.db"}"\nkey_prefix = "POP:"\nipv6_prefix = "IPv6:"\n'
    )
    assert main(["-c", str(cfg), "add", "2001:db8::5", "5"]) == 0
    assert raw_keys(tmp_path / "sm.db") == [b"pop:ipv6:2001:db8::5"]
    capsys.readouterr()
    assert main(["-c", str(cfg), "dump"]) == 0
    assert "pop:ipv6:2001:db8::5 5\n" in capsys.readouterr().out


def test_delete(run: Run) -> None:
    run("add", "192.0.2.1", "1")
    run("add", "192.0.2.2", "2")
    assert run("delete", "192.0.2.1") == (0, "", "")
    status, out, err = run("delete", "192.0.2.9", "192.0.2.2", "192.0.2.8")
    assert status == 1 and out == ""
    assert err == "popwatch: 192.0.2.9: not found\npopwatch: 192.0.2.8: not found\n"
    assert run("dump") == (0, "", "")


def test_delete_bad_address_removes_nothing(run: Run) -> None:
    run("add", "192.0.2.1", "1")
    status, _, err = run("delete", "192.0.2.1", "10.1")
    assert status == 64 and "10.1" in one_fatal_line(err)
    assert "192.0.2.1 1" in run("dump")[1]


def test_delete_on_missing_table(run: Run, dbpath: Path) -> None:
    status, _, err = run("delete", "192.0.2.1")
    assert status == 1 and err == "popwatch: 192.0.2.1: not found\n"
    assert not dbpath.exists()


# -- expire / list / dump --------------------------------------------------------------------


def test_expire_and_list_semantics(run: Run) -> None:
    now = int(time.time())
    run("add", "192.0.2.1", str(now - 7200))  # 2 h old
    run("add", "192.0.2.2", str(now - 600))  # 10 min old
    run("add", "192.0.2.3", str(FUTURE))  # pinned

    def listed(*a: str) -> list[str]:
        return [ln.split()[0] for ln in run("list", *a)[1].splitlines() if ln[0] != "#"]

    assert listed() == ["192.0.2.1", "192.0.2.2"]
    assert listed("60") == ["192.0.2.1"]
    assert listed("1440") == []
    assert run("expire", "60") == (0, "", "")
    assert listed() == ["192.0.2.2"]
    assert run("expire") == (0, "", "")
    assert listed() == []
    assert "192.0.2.3" in run("dump")[1]  # pinned entries survive


@pytest.mark.parametrize("n", ["x", "-1", "1.5", "10m"])
def test_bad_minutes_is_usage_error(run: Run, n: str) -> None:
    for cmd in ("expire", "list"):
        status, _, err = run(cmd, n)
        assert status == 64 and "bad N" in one_fatal_line(err)


def test_missing_table_lists_nothing_and_is_not_created(run: Run, dbpath: Path) -> None:
    assert run("list") == (0, "", "")
    assert run("list", "10") == (0, "", "")
    assert run("dump") == (0, "", "")
    assert run("dump", "--json") == (0, "[]\n", "")
    assert run("expire") == (0, "", "")
    assert not dbpath.exists()


def test_json_outputs(run: Run) -> None:
    run("add", "192.0.2.1", "906502527")
    run("add", "2001:db8::5", str(FUTURE))
    status, out, _ = run("dump", "--json")
    rows = json.loads(out)
    assert status == 0 and [r["address"] for r in rows] == ["192.0.2.1", "2001:db8::5"]
    assert rows[0] == {
        "address": "192.0.2.1",
        "key": "192.0.2.1",
        "timestamp": 906502527,
        "utc": "1998-09-22T22:15:27Z",
        "pinned": False,
    }
    assert rows[1]["pinned"] is True
    assert [r["address"] for r in json.loads(run("list", "--json")[1])] == ["192.0.2.1"]


def test_dump_warns_about_foreign_entries(run: Run, dbpath: Path) -> None:
    run("add", "192.0.2.1", "5")
    h = db.DB()
    h.open(str(dbpath), dbtype=db.DB_HASH)
    h.put(b"10.1", b"5")  # added by hand: Postfix matches all of 10.1.0.0/16
    h.close()
    status, out, err = run("dump")
    assert status == 0 and out.endswith("192.0.2.1 5\n") and "10.1" not in out
    assert 'entry "10.1": not a full IPv4 address' in err
    assert err.startswith("popwatch: WARNING: ")


# -- load ---------------------------------------------------------------------------------


def test_load_rebuilds_from_dump(run: Run, tmp_path: Path) -> None:
    run("add", "192.0.2.1", "1")
    run("add", "2001:db8::5", str(FUTURE))
    dump = run("dump")[1]
    run("delete", "192.0.2.1")
    run("add", "198.51.100.1", "3")
    saved = tmp_path / "relayers"
    saved.write_text(dump)
    assert run("load", str(saved)) == (0, "", "")
    assert run("dump")[1] == dump


def test_load_from_stdin_and_merge(run: Run) -> None:
    run("add", "192.0.2.1", "1")
    assert run("load", "--merge", stdin=b"# c\n\n192.0.2.2 2\n") == (0, "", "")
    assert [ln for ln in run("dump")[1].splitlines() if ln[0] != "#"] == [
        "192.0.2.1 1",
        "192.0.2.2 2",
    ]
    assert run("load", "-", stdin=b"192.0.2.3 3\n") == (0, "", "")
    assert [ln for ln in run("dump")[1].splitlines() if ln[0] != "#"] == ["192.0.2.3 3"]


def test_load_bad_lines_write_nothing(run: Run, tmp_path: Path) -> None:
    run("add", "192.0.2.1", "1")
    src = tmp_path / "in"
    src.write_text("192.0.2.5 5\n10.1 7\n\n192.0.2.6 abc\n")
    status, out, err = run("load", str(src))
    assert status == 64 and out == ""
    assert err.splitlines() == [
        f'popwatch: {src}, line 2: bad address "10.1": not a full IPv4 address '
        "(a truncated key would match a whole network)",
        f'popwatch: {src}, line 4: bad TICKS "abc": expected Unix seconds',
        f"popwatch: fatal: {src}: 2 bad lines: nothing written",
    ]
    assert [ln for ln in run("dump")[1].splitlines() if ln[0] != "#"] == ["192.0.2.1 1"]


def test_load_missing_file(run: Run, tmp_path: Path, dbpath: Path) -> None:
    status, _, err = run("load", str(tmp_path / "nope"))
    assert status == 66
    assert one_fatal_line(err).endswith("nope: cannot read: no such file or directory")
    assert not dbpath.exists()


# -- broken tables, locks, configuration -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("add", "192.0.2.1"),
        ("delete", "192.0.2.1"),
        ("expire",),
        ("list",),
        ("dump",),
        ("load", "-"),
    ],
)
def test_corrupt_table_is_exit_74(run: Run, dbpath: Path, argv: tuple[str, ...]) -> None:
    dbpath.write_bytes(b"not a database\n" * 300)
    status, out, err = run(*argv, stdin=b"192.0.2.1 1\n")
    assert status == 74 and out == ""
    assert one_fatal_line(err) == (
        f"popwatch: fatal: {dbpath}: cannot open: not a Berkeley DB hash file (or damaged)"
    )
    assert dbpath.read_bytes() == b"not a database\n" * 300


def test_table_under_a_plain_file_is_exit_74(run: Run, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    status, _, err = run("--db", str(tmp_path / "plain" / "r.db"), "add", "192.0.2.1")
    assert status == 74 and "not a directory" in one_fatal_line(err)


def test_locked_table_is_exit_74(run: Run, dbpath: Path) -> None:
    import fcntl

    run("add", "192.0.2.1", "1")
    with open(dbpath, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)  # as a Postfix lookup would, but for too long
        status, _, err = run("add", "192.0.2.2")
    assert status == 74
    assert one_fatal_line(err) == (
        f"popwatch: fatal: {dbpath}: cannot lock: held by another process for 0.3 s"
    )


def test_config_errors_are_exit_78(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('databse = "/x"\n')
    assert main(["-c", str(bad), "list"]) == 78
    assert 'key "databse": unknown key' in one_fatal_line(capsys.readouterr().err)
    assert main(["-c", str(tmp_path / "missing.toml"), "list"]) == 78
    assert "no such file" in one_fatal_line(capsys.readouterr().err)


def test_help_reads_like_a_manual(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["expire", "--help"]) == 0  # main() returns; it never calls sys.exit
    out = capsys.readouterr().out
    assert "15 3 * * *    popwatch expire 1440" in out
    assert "pinned" in out
    for cmd in ("add", "delete", "list", "dump", "load"):
        assert main([cmd, "--help"]) == 0
        assert "example" in capsys.readouterr().out


# -- the installed console scripts ---------------------------------------------------------


def script(name: str, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    exe = BIN / name
    if not exe.exists():  # pragma: no cover - the venv is installed with the project
        pytest.skip(f"{exe} not installed")
    return subprocess.run(
        [str(exe), *argv], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_version() -> None:
    out = script("popwatch", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"popwatch {__version__}"
    out = script("vsmtprelay", "--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_vsmtprelay_crontab_lines(tmp_path: Path, config: Path, dbpath: Path) -> None:
    now = int(time.time())
    c = ["-c", str(config)]
    assert script("vsmtprelay", *c, "add", "192.0.2.1", str(now - 2 * 86400)).returncode == 0
    assert script("vsmtprelay", *c, "add", "192.0.2.2", str(now - 1200)).returncode == 0
    assert script("vsmtprelay", *c, "add", "192.0.2.3", str(FUTURE)).returncode == 0
    listed = script("vsmtprelay", *c, "list", "10")
    assert listed.returncode == 0 and listed.stderr == ""
    assert [ln for ln in listed.stdout.splitlines() if ln[0] != "#"] == [
        f"192.0.2.1 {now - 2 * 86400}",
        f"192.0.2.2 {now - 1200}",
    ]
    assert script("vsmtprelay", *c, "expire", "1440").stdout == ""
    dump = script("vsmtprelay", *c, "dump")
    assert "192.0.2.1" not in dump.stdout and "192.0.2.2" in dump.stdout
    assert script("vsmtprelay", *c, "expire").returncode == 0
    dump = script("vsmtprelay", *c, "dump")
    assert [ln for ln in dump.stdout.splitlines() if ln[0] != "#"] == [f"192.0.2.3 {FUTURE}"]
    # the same table through popwatch: one code path
    assert script("popwatch", *c, "dump").stdout == dump.stdout


def test_vsmtprelay_messages_name_vsmtprelay(config: Path) -> None:
    out = script("vsmtprelay", "-c", str(config), "delete", "192.0.2.9")
    assert out.returncode == 1 and out.stderr == "vsmtprelay: 192.0.2.9: not found\n"
    out = script("vsmtprelay", "-c", str(config), "add", "10.1")
    assert out.returncode == 64
    assert one_fatal_line(out.stderr, "vsmtprelay").startswith(
        'vsmtprelay: fatal: bad address "10.1"'
    )
    out = script("vsmtprelay", "-c", str(config))
    assert out.returncode == 64 and "no command given" in out.stderr


def test_unwritable_and_unreadable_table_without_root_powers(
    tmp_path: Path, config: Path, dbpath: Path
) -> None:
    """Root ignores permissions; drop the capabilities that let it (setpriv, util-linux)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    exe = str(BIN / "popwatch")
    assert (
        subprocess.run([exe, "-c", str(config), "add", "192.0.2.1", "1"], check=False).returncode
        == 0
    )
    dbpath.chmod(0o000)
    out = subprocess.run(
        [*prefix, exe, "-c", str(config), "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 74
    assert (
        one_fatal_line(out.stderr) == f"popwatch: fatal: {dbpath}: cannot open: permission denied"
    )
    dbpath.chmod(0o644)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out = subprocess.run(
        [*prefix, exe, "-c", str(config), "--db", str(ro / "r.db"), "add", "192.0.2.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 74
    assert one_fatal_line(out.stderr).endswith("r.db: cannot open: permission denied")

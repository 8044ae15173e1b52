"""Demo driver for ``sh scripts/demo``: the daemon on the bundled sample logs.

Replays every log line of fixtures/logs/*.log into demo/mail.log, re-stamped with the current
time in the traditional syslog format, while ``popwatch run`` follows that file with a short
lifetime.  Prints the relay table as logins land and again after they expire, then stops the
daemon with SIGTERM.  Exit status 0 when entries appeared and expired as expected.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from popwatch.syslogline import LineParser

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent
LIFETIME = 15


def sample_lines() -> list[str]:
    parser = LineParser(clock=time.time)
    out = []
    for fixture in sorted((ROOT / "fixtures" / "logs").glob("*.log")):
        for raw in fixture.read_text(encoding="utf-8", errors="replace").splitlines():
            if not raw.strip() or raw.startswith("#"):
                continue
            line = parser.parse(raw)
            if line is None:
                continue
            stamp = time.strftime("%b %e %H:%M:%S", time.localtime())
            tag = line.program + (f"[{line.pid}]" if line.pid is not None else "")
            out.append(f"{stamp} {line.host or 'mailhost'} {tag}: {line.message}\n")
    return out


def dump(config: Path) -> list[str]:
    res = subprocess.run(
        [str(BIN / "popwatch"), "-c", str(config), "dump"], capture_output=True, text=True
    )
    return [ln for ln in res.stdout.splitlines() if ln and not ln.startswith("#")]


def wait_for(predicate, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "state").mkdir(parents=True)
    config = DEMO / "popwatch.toml"
    config.write_text(
        f'database = "{DEMO}/relayers.db"\n'
        f'logs = ["{DEMO}/mail.log"]\n'
        f'state_dir = "{DEMO}/state"\n'
        f'lifetime = "{LIFETIME}s"\n'
        'expire_interval = "1s"\n'
        "flush_interval = 0.5\n"
        "pattern_dirs = []\n"
    )
    (DEMO / "mail.log").touch()
    print(f"popwatch demo: daemon following {DEMO}/mail.log, lifetime {LIFETIME}s")
    daemon = subprocess.Popen([str(BIN / "popwatch"), "-c", str(config), "-v", "run"])
    try:
        lines = sample_lines()
        with open(DEMO / "mail.log", "a", encoding="utf-8") as log:
            for text in lines:
                log.write(text)
                log.flush()
        print(f"popwatch demo: replayed {len(lines)} sample lines (logins, failures, noise, attacks)")
        # The daemon flushes at least every flush_interval: wait until the table stops growing.
        entries: list[str] = []
        def settled() -> bool:
            nonlocal entries
            now = dump(config)
            done = bool(now) and now == entries
            entries = now
            return done
        wait_for(settled, timeout=15, interval=1.0)
        print(f"popwatch demo: relayers.db now holds {len(entries)} addresses:")
        subprocess.run([str(BIN / "vsmtprelay"), "-c", str(config), "dump"], check=False)
        print(f"popwatch demo: waiting for the {LIFETIME}s lifetime to pass ...")
        left = wait_for(lambda: not dump(config), timeout=LIFETIME + 20, interval=0.5)
        print("popwatch demo: all entries expired" if left else "popwatch demo: entries remain!")
        ok = bool(entries) and bool(left)
    finally:
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(timeout=20)
    print(f"popwatch demo: daemon stopped with exit status {status}")
    return 0 if ok and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

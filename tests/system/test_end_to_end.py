"""End to end with real servers: a Dovecot login opens Postfix relaying, and only that (issue 5).

rsyslogd, Dovecot and Postfix run on loopback (:mod:`tests.system.daemons`); ``popwatch run``
follows rsyslog's mail log and writes the table Postfix's ``check_client_access`` reads.
Each client binds its own 127.0.0.N source address, so each is a different client:

    127.0.0.2  POP3 login, relays, later expires          127.0.0.3  never logs in
    127.0.0.4  IMAP login                                  127.0.0.5  wrong password
    127.0.0.7  IMAP login after 127.0.0.5's failure: once it relays, popwatch has read the
               failure line too, so "127.0.0.5 opens nothing" is checked, not hoped
    127.0.0.8  POP3 login between logrotate's rename and rsyslogd's HUP (written to the
               renamed file)
    127.0.0.6  POP3 login after the rotation (written to the new file)

Measured figures (login to the first accepted RCPT, expiry lateness) appear in pytest's
summary under "popwatch end-to-end figures".
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from helpers import wait_until

from .daemons import MailLab, PopwatchRun, ReportFigure, run_admin

pytestmark = pytest.mark.system

LIFETIME = 8.0  # seconds a login authorizes relaying
EXPIRE_INTERVAL = 1.0
FLUSH_INTERVAL = 0.2
LOGIN_TO_RELAY = 2.0  # the promise: relaying opens within 2 s of a login
POLL = 0.02  # RCPT every 20 ms while waiting for relaying to open

POP3_CLIENT, NEVER, IMAP_CLIENT, WRONG_PASSWORD = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
BARRIER, DURING_ROTATION, AFTER_ROTATION = "127.0.0.7", "127.0.0.8", "127.0.0.6"

# Postfix complaining about its lookup tables: any fatal or error, a warning naming a table,
# a temporary lookup failure answered to a client.
POSTFIX_TABLE_TROUBLE = re.compile(
    r"postfix/\S+\[\d+\]: (?:fatal|error|panic): "
    r"|postfix/\S+\[\d+\]: warning: .*(?:hash:|\.db|database|table|dict_)"
    r"|451 4\.3\.0|Temporary lookup failure",
    re.IGNORECASE,
)


def test_postfix_relays_only_for_addresses_in_the_table(mail_lab: MailLab) -> None:
    """The harness alone, without popwatch: postmap's table decides who relays."""
    mail_lab.write_table({"127.0.0.9": int(time.time())})
    assert mail_lab.query_table("127.0.0.9") is not None
    wait_until(
        lambda: mail_lab.rcpt("127.0.0.9")[0] == 250,
        10.0,
        message="Postfix to accept RCPT from 127.0.0.9 (in the table)",
    )
    assert_denied(mail_lab, NEVER)

    mail_lab.write_table({})
    wait_until(
        lambda: mail_lab.rcpt("127.0.0.9")[0] == 554,
        10.0,
        message="Postfix to refuse 127.0.0.9 once it left the table",
    )
    assert_denied(mail_lab, "127.0.0.9")


@pytest.fixture
def popwatch_run(mail_lab: MailLab) -> Iterator[PopwatchRun]:
    settings: dict[str, object] = {
        "database": str(mail_lab.table_db),
        "key_format": "postfix",  # the table was made by postmap, as an admin would
        "logs": [str(mail_lab.rsyslog.log)],
        "lifetime": f"{LIFETIME:g}s",
        "expire_interval": f"{EXPIRE_INTERVAL:g}s",
        "flush_interval": f"{FLUSH_INTERVAL:g}s",
        "refresh": "1s",
        "ignore": [],  # every test client is a loopback address
        "state_dir": str(mail_lab.root / "popwatch" / "state"),
        "pattern_dirs": [],  # shipped patterns only, nothing from this host's /etc
        "log_level": "info",
    }
    mail_lab.write_table({})
    daemon = PopwatchRun(mail_lab.root, settings)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def test_a_login_opens_relaying_for_that_client_only(
    mail_lab: MailLab, popwatch_run: PopwatchRun, report_figure: ReportFigure
) -> None:
    lab, conf = mail_lab, popwatch_run.conf

    def entries() -> dict[str, int]:
        """Step 7, throughout: both admin tools agree on what the table holds.

        Expiry may remove an entry between the two commands: they must agree within a
        few tries, and the listing of the agreeing pair is returned.
        """

        def agreeing() -> dict[str, dict[str, int]] | None:
            listed = run_admin("popwatch", conf, "list")
            dumped = run_admin("vsmtprelay", conf, "dump")
            seen.append((listed, dumped))
            return {"listing": listed} if listed == dumped else None

        seen: list[tuple[dict[str, int], dict[str, int]]] = []
        try:
            found = wait_until(agreeing, 5.0, message="popwatch list == vsmtprelay dump")
        except AssertionError:
            listed, dumped = seen[-1]
            raise AssertionError(f"popwatch list {listed} != vsmtprelay dump {dumped}") from None
        assert found is not None
        return found["listing"]

    # 1. Before any login, relaying is refused.
    assert_denied(lab, POP3_CLIENT)
    assert entries() == {}

    # 2. A POP3 login opens relaying for that address, within 2 s; others stay refused.
    wall = time.time()
    assert lab.pop3_login(POP3_CLIENT), "Dovecot refused the test user's POP3 login"
    delay = wait_relay(lab, POP3_CLIENT)
    report_figure("POP3 login to accepted RCPT", delay, "s")
    assert delay <= LOGIN_TO_RELAY, f"relaying opened {delay:.2f} s after the POP3 login"
    assert_denied(lab, NEVER)
    table = entries()
    assert set(table) == {POP3_CLIENT}
    stamp = table[POP3_CLIENT]
    assert int(wall) - 1 <= stamp <= time.time() + 1, "timestamp is not the login's time"
    assert lab.query_table(POP3_CLIENT) == str(stamp), "Postfix's lookup disagrees with list"

    # 3. An IMAP login opens its address the same way.
    assert lab.imap_login(IMAP_CLIENT), "Dovecot refused the test user's IMAP login"
    delay = wait_relay(lab, IMAP_CLIENT)
    report_figure("IMAP login to accepted RCPT", delay, "s")
    assert delay <= LOGIN_TO_RELAY, f"relaying opened {delay:.2f} s after the IMAP login"
    assert set(entries()) == {POP3_CLIENT, IMAP_CLIENT}

    # 4. A failed login opens nothing.  The failure line is in the log first; then a good
    # login from another address relays, so popwatch has read past the failure.
    assert not lab.pop3_login(WRONG_PASSWORD, password="wrong"), "a wrong password logged in"
    wait_until(
        lambda: re.search(rf"auth failed.*rip={re.escape(WRONG_PASSWORD)},", lab.mail_log_text()),
        10.0,
        message=f"Dovecot's auth-failed line for {WRONG_PASSWORD}",
    )
    assert lab.imap_login(BARRIER)
    wait_relay(lab, BARRIER)
    assert_denied(lab, WRONG_PASSWORD)
    assert WRONG_PASSWORD not in entries()

    # 5. After the lifetime, the first client is refused again, and not much later.
    refused_at = wait_until(
        lambda: lab.rcpt(POP3_CLIENT)[0] == 554 and time.time(),
        LIFETIME + EXPIRE_INTERVAL + 10.0,
        interval=0.1,
        message=f"{POP3_CLIENT} to be refused after the lifetime",
    )
    lateness = refused_at - (stamp + LIFETIME)
    report_figure("refused after lifetime, late by", lateness, "s")
    # Timestamps are whole seconds: an entry may go up to one second before stamp + lifetime.
    assert lateness >= -1.0, f"{POP3_CLIENT} was refused {-lateness:.1f} s before its lifetime"
    assert lateness <= EXPIRE_INTERVAL + 3.0, f"expired {lateness:.1f} s after its lifetime"
    assert_denied(lab, POP3_CLIENT)
    assert POP3_CLIENT not in entries()

    # 6. Rotation as logrotate does it.  A login between the rename and the HUP lands in the
    # renamed file; one after the HUP in the new file: both open relaying.
    logged_in: list[float] = []

    def login_before_hup() -> None:
        assert lab.pop3_login(DURING_ROTATION)
        logged_in.append(time.monotonic())
        wait_until(
            lambda: f"rip={DURING_ROTATION}," in old_text(),
            10.0,
            message=f"{DURING_ROTATION}'s login in the renamed log",
        )

    def old_text() -> str:
        return rotated.read_text(errors="replace")

    rotated = lab.rsyslog.log.with_name(lab.rsyslog.log.name + ".1")
    lab.rsyslog.rotate(between=login_before_hup)
    lab.rsyslog.mark("after rotation")  # rsyslogd writes the new file now
    delay = wait_relay(lab, DURING_ROTATION, since=logged_in[0])
    report_figure("login during rotation to accepted RCPT", delay, "s")
    assert delay <= LOGIN_TO_RELAY + 1.0, f"{DURING_ROTATION} relayed only after {delay:.2f} s"

    assert lab.pop3_login(AFTER_ROTATION)
    delay = wait_relay(lab, AFTER_ROTATION)
    report_figure("login after rotation to accepted RCPT", delay, "s")
    assert delay <= LOGIN_TO_RELAY, f"relaying opened {delay:.2f} s after the login"
    assert f"rip={AFTER_ROTATION}," in lab.rsyslog.read()
    assert {DURING_ROTATION, AFTER_ROTATION} <= set(entries())

    # 7. Postfix never had trouble with the table; popwatch ran cleanly and stops cleanly.
    trouble = [
        line for line in lab.mail_log_text().splitlines() if POSTFIX_TABLE_TROUBLE.search(line)
    ]
    assert trouble == [], "Postfix logged table trouble:\n" + "\n".join(trouble)
    lab.check_alive()
    popwatch_run.check_alive()
    popwatch_run.stop()
    output = popwatch_run.output()
    assert popwatch_run.proc is not None
    assert popwatch_run.proc.returncode == 0, f"popwatch run did not stop cleanly:\n{output}"
    assert "Traceback" not in output, output


def wait_relay(
    lab: MailLab, source: str, timeout: float = 10.0, since: float | None = None
) -> float:
    """Seconds until an RCPT from ``source`` is accepted, polling every 20 ms.

    Counted from ``since`` (a ``time.monotonic()`` value, the login) or from the call.
    """
    start = time.monotonic() if since is None else since
    wait_until(
        lambda: lab.rcpt(source)[0] == 250,
        timeout,
        interval=POLL,
        message=f"Postfix to accept RCPT TO from {source}",
    )
    return time.monotonic() - start


def assert_denied(lab: MailLab, source: str) -> None:
    code, message = lab.rcpt(source)
    assert (code, "Relay access denied" in message) == (554, True), (
        f"RCPT from {source}: {code} {message}"
    )

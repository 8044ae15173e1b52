"""Fixtures of the system tests: a running mail lab (see :mod:`tests.system.daemons`).

``mail_lab`` starts rsyslogd, Dovecot and Postfix once per module and stops them afterwards,
also when a test fails or the start-up itself fails half-way.  The tests are skipped, with
the reason in pytest's summary, when not run as root or when a daemon is not installed
(``sh scripts/setup --test`` installs them).

Measured figures: a test calls ``report_figure(name, value, unit)``; the figure is stored
as a ``record_property`` (so it lands in JUnit XML) and printed in pytest's terminal summary
under "popwatch end-to-end figures", with or without ``-s``.  When a test fails, the tail of
the mail log (without smtpd's lines) and of each daemon's output are attached to its report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator

import pytest

from .daemons import Daemon, MailLab, ReportFigure, missing_programs, reap_stale, tail

FIGURE_PREFIX = "figure:"


@pytest.fixture(scope="module")
def mail_lab() -> Iterator[MailLab]:
    if os.geteuid() != 0:
        pytest.skip("system test needs root (mount namespace, Dovecot, Postfix)")
    missing = missing_programs()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run: sh scripts/setup --test)")
    reap_stale()
    with MailLab.running() as lab:
        yield lab


@pytest.fixture
def report_figure(record_property: Callable[[str, object], None]) -> ReportFigure:
    def report(name: str, value: float, unit: str) -> None:
        record_property(f"{FIGURE_PREFIX}{name}", f"{value:.3f} {unit}")

    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.failed:
        return report
    funcargs = getattr(item, "funcargs", {})
    lab = funcargs.get("mail_lab")
    daemons = [d for d in funcargs.values() if isinstance(d, Daemon)]
    if isinstance(lab, MailLab):
        report.sections.append(("mail log without smtpd lines (tail)", _mail_log(lab)))
        daemons = lab.daemons + daemons
    for daemon in daemons:
        report.sections.append((f"{daemon.name} output (tail)", tail(daemon.out_path)))
    return report


def _mail_log(lab: MailLab, lines: int = 60) -> str:
    # The RCPT polling writes three smtpd lines every 20 ms: they would hide everything else.
    text = lab.mail_log_text().splitlines()
    return "\n".join([line for line in text if "postfix/smtpd[" not in line][-lines:])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", []):
                if str(name).startswith(FIGURE_PREFIX):
                    lines.append(f"{report.nodeid}: {name[len(FIGURE_PREFIX) :]} = {value}")
    if lines:
        terminalreporter.write_sep("-", "popwatch end-to-end figures")
        for line in lines:
            terminalreporter.write_line(line)

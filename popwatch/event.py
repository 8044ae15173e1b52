"""LoginEvent: the one contract between the grammars and everything downstream.

A grammar that recognizes a successful POP/IMAP login produces exactly one LoginEvent; the
address policy and the store never see log text.  ``ip`` is already normalized
(:func:`popwatch.address.normalize_host`); ``time`` is the log line's own time in Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoginEvent:
    ip: str  # normalized client address, as the daemon wrote it in its own IP field
    time: float  # Unix seconds of the log line that completed the login
    pattern: str  # pattern (daemon family) name, e.g. "dovecot"
    rule: str  # the pattern's rule that matched, e.g. "login"
    user: str | None = None  # user name as logged (attacker-controlled text: display only)
    program: str = ""  # syslog tag program name
    pid: int | None = None
    host: str = ""  # syslog host name field ("" when the source has none)
    source: str = ""  # file name or "journal" or "-"
    lineno: int = 0  # 1-based line number in ``source`` of the completing line

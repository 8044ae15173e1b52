"""popwatch - POP-before-SMTP relay authorization from mail logs.

A pipeline of small stages: a source of log lines (file tailer, journal, stdin) -> the syslog
header split (:mod:`popwatch.syslogline`) -> a per-daemon grammar (:mod:`popwatch.grammar`,
files in ``patterns/``) -> a :class:`popwatch.event.LoginEvent` -> the address policy
(:mod:`popwatch.policy`) -> the relay table store (:mod:`popwatch.store`).
"""

__version__ = "0.1.0"

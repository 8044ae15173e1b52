"""The systemd notify protocol (sd_notify(3)), without libsystemd.

DESCRIPTION
    A :class:`Notifier` sends ``KEY=VALUE`` lines as one datagram to the AF_UNIX socket named
    by ``$NOTIFY_SOCKET``: a path, or an abstract socket written ``@name``.  systemd sets it
    for ``Type=notify`` services.  What popwatch sends:

    ``READY=1``                         once the table is open and the sources are attached,
                                        and again after a reload;
    ``STATUS=...``                      live counters (lines, logins, written, expired, errors);
    ``WATCHDOG=1``                      every half ``WatchdogSec``, from ``$WATCHDOG_USEC``
                                        (ignored when ``$WATCHDOG_PID`` names another process);
    ``RELOADING=1`` + ``MONOTONIC_USEC`` when a SIGHUP reload starts (Type=notify-reload wants
                                        the timestamp);
    ``STOPPING=1``                      when a SIGTERM shutdown starts.

WHAT IT DOES NOT
    Without ``$NOTIFY_SOCKET`` every call is a no-op, so ``popwatch run`` behaves the same in a
    terminal.  It does not unset the variables: child processes popwatch starts get an
    environment from :meth:`Notifier.child_environ` instead, without them, so that a
    ``journalctl`` child cannot speak for the service.  No file descriptor passing.

DIAGNOSTICS
    A malformed ``$NOTIFY_SOCKET`` or ``$WATCHDOG_USEC`` is a :class:`ValueError` from
    :meth:`Notifier.from_environ`.  A failed send (systemd gone, socket full) is logged once as
    a warning and otherwise ignored: the service keeps working without its supervisor.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("popwatch.sdnotify")

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """One service's connection to its supervisor; no-op when ``address`` is None."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False
        if address is not None:
            if not address or not (address.startswith("/") or address.startswith("@")):
                raise ValueError(f'NOTIFY_SOCKET "{address}": not an absolute path or @name')
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the main loop on a supervisor that does not read: a full queue
            # drops the message (a warning), the next STATUS/WATCHDOG will say the same.
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier:
        """The notifier systemd's environment describes (``os.environ`` in production)."""
        address = environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = environ.get("WATCHDOG_USEC")
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                raise ValueError(f'WATCHDOG_USEC "{raw}": not a number') from None
            if usec <= 0:
                usec = None
            owner = environ.get("WATCHDOG_PID")
            if owner and owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
                usec = None  # meant for another process of the same service
        return cls(address, usec)

    @staticmethod
    def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` without the notify variables, for processes popwatch starts."""
        return {k: v for k, v in environ.items() if k not in _ENV}

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half WatchdogSec), None when not requested."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            self._sock.sendto(message, target)
        except OSError as err:
            if not self._warned:
                log.warning("NOTIFY_SOCKET %s: cannot notify systemd: %s", self.address, err)
                self._warned = True
            return False
        self._warned = False  # working again: a later failure is worth a new warning
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(
            "RELOADING=1", f"MONOTONIC_USEC={usec if monotonic_usec is None else monotonic_usec}"
        )

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""Small helpers shared by the test files: waiting on a condition, never on a bare sleep.

``wait_until(predicate, timeout=10.0, interval=0.02, message="")`` calls ``predicate`` until it
returns a truthy value and returns that value; after ``timeout`` seconds it raises
AssertionError with ``message`` (and the last value seen), so a test fails with a reason
instead of hanging.  Import it as ``from helpers import wait_until`` (pytest puts tests/ on
sys.path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> T:
    """The first truthy result of ``predicate()``; AssertionError after ``timeout`` seconds.
    ``message`` may be a callable, called only on time-out (for a costly description)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            what = what or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({value!r})")
        time.sleep(interval)

"""Fixtures shared by every test file.  Keep this generic: feature-specific fixtures live in
the test file that needs them."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest's default import mode already puts tests/ on sys.path; this keeps
# `from helpers import wait_until` working under --import-mode=importlib too.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

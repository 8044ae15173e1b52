"""Exception types that cross module boundaries, each mapped to one exit status by the CLI.

Errors are for things that are broken; normal answers ("not found", "no match") are never
exceptions.  Messages are written for the administrator: they name the object, the place and
the reason, like Postfix's ``cidr map access.cidr, line 6: bad mask length``.
"""

from __future__ import annotations


class PopwatchError(Exception):
    """Base class: ``str(err)`` is one line fit to print after ``popwatch: fatal: ``."""


class AddressError(PopwatchError, ValueError):
    """Text that is not a single full host address (IPv4 or IPv6)."""


class ConfigError(PopwatchError):
    """Bad configuration: file, key and reason.  Exit status 78 (EX_CONFIG)."""


class PatternError(ConfigError):
    """A pattern file that cannot be loaded; names the file.  Exit status 78."""


class StoreError(PopwatchError):
    """The relay table cannot be opened, locked, read or written.  Exit status 74 (EX_IOERR)."""


class UsageError(PopwatchError):
    """Bad command-line usage.  Exit status 64 (EX_USAGE)."""

"""Subcommands of the ``popwatch`` command line, one module each (see :mod:`popwatch.cli`)."""

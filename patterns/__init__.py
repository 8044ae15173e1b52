"""Shipped popwatch patterns: one file per daemon family (see popwatch.grammar).

This folder is installed as ``popwatch/patterns``.  Files here are loaded by path by
:mod:`popwatch.patternload`, not imported as modules; names starting with ``_`` are skipped.
"""

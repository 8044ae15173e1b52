"""Find, load and check pattern files: the shipped ones and the site's.

NAME
    popwatch.patternload - pattern files to :class:`popwatch.grammar.Pattern` objects

DESCRIPTION
    ``load_patterns(dirs, enabled, options)`` reads every ``*.py`` file of the shipped pattern
    folder (:func:`shipped_dir`, installed as ``popwatch/patterns``) and then of each directory
    in ``dirs``, in that order.  A file's stem is the pattern's name; a later file with the same
    name replaces an earlier one, so a site overrides a shipped pattern by dropping a file of
    the same name into its pattern directory (``/etc/popwatch/patterns.d``), without touching
    the installation.  Files whose name starts with ``_`` are skipped (helpers, disabled
    patterns).  A directory in ``dirs`` that does not exist is skipped: the default one is
    optional.

    Each file is executed by path under a private module name (never imported as a package, so
    nothing called ``patterns`` needs to be importable), and its ``pattern(options)`` function is
    called with the ``[pattern.NAME]`` table of the configuration (empty when absent).  The
    result must be a Pattern; its ``name`` is set to the file's stem.

    ``enabled`` (the ``patterns`` configuration key) keeps only the named patterns, in the
    order found; None keeps all.

    It does not compile or run the grammars on any input and does not judge their quality:
    the fixture tests (``tests/test_pattern_fixtures.py``) do that for shipped patterns and
    ``popwatch test`` lets an administrator try a site pattern on a real log.

ERRORS
    :class:`popwatch.errors.PatternError` (a ConfigError: exit status 78) naming the file and
    the reason: a syntax error (with its line), an exception while executing the file (with the
    line in that file), no ``pattern`` function, ``pattern()`` raising ValueError for a bad
    option, a result that is not a Pattern, a LOGIN or CONNECT rule whose grammar cannot
    produce an ``ip`` result, an unreadable directory or file, an ``enabled``
    name or an options table for a pattern that does not exist.  Loading is all or nothing:
    a daemon must not start with some of its patterns silently missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import pyparsing as pp

from popwatch.errors import PatternError
from popwatch.grammar import REQUIRED_RESULTS, Pattern, Rule, may_name

__all__ = ["find_pattern_files", "load_pattern_file", "load_patterns", "shipped_dir"]

_MODULE_PREFIX = "popwatch._loaded_pattern_"


def shipped_dir() -> Path:
    """The folder of the shipped patterns, wherever the package is installed (an editable
    install maps ``popwatch.patterns`` to the source tree's ``patterns/``)."""
    try:
        spec = importlib.util.find_spec("popwatch.patterns")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent / "patterns"


def find_pattern_files(dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Pattern name -> file, shipped first, later directories overriding earlier ones."""
    found: dict[str, Path] = {}
    for index, directory in enumerate([shipped_dir(), *dirs]):
        if index > 0 and not directory.exists():
            continue
        if not directory.is_dir():
            raise PatternError(f"pattern directory {directory}: not a directory")
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix == ".py")
        except OSError as err:
            raise PatternError(
                f"pattern directory {directory}: cannot read: {err.strerror}"
            ) from None
        for path in files:
            if path.name.startswith("_") or not path.is_file():
                continue
            found[path.stem] = path
    return found


def load_patterns(
    dirs: Sequence[Path] = (),
    enabled: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Pattern]:
    """Load the enabled patterns (all when ``enabled`` is None); see the module docstring."""
    files = find_pattern_files(dirs)
    options = options or {}
    for name in options:
        if name not in files:
            raise PatternError(
                f"configuration table [pattern.{name}]: no such pattern "
                f"(known: {', '.join(sorted(files)) or 'none'})"
            )
    if enabled is None:
        names = list(files)
    else:
        for name in enabled:
            if name not in files:
                raise PatternError(
                    f'configuration key "patterns": unknown pattern "{name}" '
                    f"(known: {', '.join(sorted(files)) or 'none'})"
                )
        wanted = set(enabled)
        names = [n for n in files if n in wanted]
    return [load_pattern_file(files[n], options.get(n, {})) for n in names]


def load_pattern_file(path: Path, options: Mapping[str, Any] | None = None) -> Pattern:
    """Execute one pattern file and call its ``pattern(options)``; PatternError on failure."""
    name = path.stem
    where = f"pattern file {path}"
    module = _execute(path, where)
    factory = getattr(module, "pattern", None)
    if not callable(factory):
        raise PatternError(f"{where}: defines no pattern(options) function")
    frozen_options = MappingProxyType(dict(options or {}))
    try:
        result = factory(frozen_options)
    except ValueError as err:
        # The documented way to refuse an option; with no options it is a Rule or Pattern
        # the file built wrongly, so point at the line instead.
        place = f": options [pattern.{name}]" if frozen_options else _line_in(err, path)
        raise PatternError(f"{where}{place}: {err}") from None
    except (Exception, SystemExit) as err:
        raise PatternError(
            f"{where}{_line_in(err, path)}: pattern() failed: {_describe(err)}"
        ) from None
    if not isinstance(result, Pattern):
        raise PatternError(f"{where}: pattern() returned {type(result).__name__}, not a Pattern")
    _check(result, where)
    return dataclasses.replace(result, name=name)


def _execute(path: Path, where: str) -> ModuleType:
    try:
        source = path.read_bytes()
    except OSError as err:
        raise PatternError(f"{where}: cannot read: {err.strerror}") from None
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as err:
        raise PatternError(f"{where}, line {err.lineno}: syntax error: {err.msg}") from None
    except ValueError as err:  # NUL bytes
        raise PatternError(f"{where}: cannot compile: {err}") from None
    safe = re.sub(r"\W", "_", path.stem)
    module_name = f"{_MODULE_PREFIX}{safe}_{abs(hash(str(path.resolve()))):x}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None:
        raise PatternError(f"{where}: cannot be loaded as Python source")
    module = importlib.util.module_from_spec(spec)
    # Registered only while the file runs: dataclasses and typing look the module up by name.
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as err:  # sys.exit() in a site file must not end us
        raise PatternError(f"{where}{_line_in(err, path)}: {_describe(err)}") from None
    finally:
        sys.modules.pop(module_name, None)
    return module


def _check(p: Pattern, where: str) -> None:
    """Shape checks the dataclass cannot do itself (a pattern author's typing slip)."""
    if isinstance(p.programs, str) or not all(isinstance(s, str) and s for s in p.programs):
        raise PatternError(f"{where}: programs must be a tuple of program names")
    for rule in p.rules:
        if not isinstance(rule, Rule):
            raise PatternError(f"{where}: rules must be Rule objects, got {type(rule).__name__}")
        if not all(isinstance(k, str) and k for k in rule.keywords):
            raise PatternError(f'{where}: rule "{rule.name}": keywords must be non-empty strings')
        if not isinstance(rule.grammar, pp.ParserElement):
            raise PatternError(f'{where}: rule "{rule.name}": grammar is not a pyparsing element')
        for result in REQUIRED_RESULTS[rule.kind]:
            if not may_name(rule.grammar, result):
                raise PatternError(
                    f'{where}: rule "{rule.name}": a {rule.kind.upper()} rule must name its '
                    f'address result "{result}" (e.g. bracketed_ip("{result}"))'
                )


def _line_in(err: BaseException, path: Path) -> str:
    """``, line N`` of the innermost traceback frame in ``path``, or ``""``."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return f", line {line}" if line else ""


def _describe(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

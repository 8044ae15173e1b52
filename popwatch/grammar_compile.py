"""Compile a rule's pyparsing grammar to one equivalent regular expression.

NAME
    popwatch.grammar_compile - pyparsing element trees to atomic-group regexes

DESCRIPTION
    ``compile_rule(whole)`` takes a rule's grammar as the matcher runs it (the rule's grammar
    followed by ``StringEnd()``, streamlined) and returns a :class:`CompiledRule`: one compiled
    :mod:`re` pattern that matches a message exactly when pyparsing's ``parse_string`` of that
    grammar succeeds, and a function that extracts the results the engine uses (``ip``,
    ``user``, ``pid``) from the match, with the values pyparsing would give.

    Why it can be exact: pyparsing never backtracks into an element once it has matched.  Every
    element is therefore translated inside an atomic group ``(?>...)``: a MatchFirst is
    ``(?>a|b)`` (the first alternative that matches wins for good), an Opt is ``(?>(?:x)?)``, a
    Regex is ``(?>pattern)`` (the first match Python's engine finds, as ``re.match`` gives
    pyparsing), a Word is its own regex atomically.  Whitespace skipping before an element is
    ``[chars]*+`` with that element's own characters, only where pyparsing's ``preParse`` runs
    (not for the first element of an And, not inside Combine/leave_whitespace).  The message is
    tab-expanded first, as ``parse_string`` does.

    Translated: And, MatchFirst, Opt (without a default), ZeroOrMore/OneOrMore (without stop_on
    and without results inside), Literal, Empty, Word (when pyparsing itself uses a regex for
    it), Regex (flags i/m/s/x; its named groups become results, renamed to avoid clashes;
    no back references), Suppress, Combine, StringEnd at the end.  Results names become
    sites evaluated after the match in pyparsing's order (the last assignment wins; a Regex's
    named groups before the element's own name; Suppress drops names; a parse action that
    returns text drops the Regex's group names).

    Parse actions: the known ones of :mod:`popwatch.grammar` are applied exactly -
    ``_validate_ip`` on the ``ipv4``/``ipv6`` building blocks (IPv4: the pattern admits only
    valid addresses; IPv6: a lookahead admits exactly the texts :func:`normalize_host`
    accepts, so a failed validation makes the element fail and a MatchFirst goes on to the
    next alternative, as in pyparsing) and ``quoted``'s group extraction.  Any other parse
    action (a pattern author's ``check``) on an element whose failure fails the whole rule
    (on the "spine": not inside an Opt, MatchFirst or repetition) makes the rule a *confirm*
    rule: the regex decides every non-match exactly (a parse action can only make pyparsing
    fail, never match more), and a line the regex accepts is parsed by pyparsing for the
    authoritative results.

    Anything else (Or, Each, Group, Keyword, White, Forward, ignore expressions, a named And,
    unknown actions off the spine, a Regex that does not compile inside a larger pattern...)
    raises :class:`Untranslatable` with the reason; the matcher then keeps pyparsing for that
    rule and logs the reason at debug level.

    It does not decide anything about log lines itself and keeps no state; the equivalence is
    proved by ``tests/test_grammar_compile.py`` (every shipped rule against pyparsing on every
    fixture line, stretched lines and random variants).

    Cost.  ``compile_rule(whole, cache, lazy=True)`` is what a matcher uses: the Regex patterns'
    checks are kept in ``cache`` for the next rule, and ``re.compile`` waits for the first
    match.  Normalized IPv6 texts are remembered per rule (bounded).

ERRORS
    :class:`Untranslatable` from :func:`compile_rule`, and from the first match of a lazy rule
    whose combined regex does not compile.  :meth:`CompiledRule.results` returns
    None when an extracted address that the regex admitted is still refused (it cannot
    happen for the building blocks; it is the fail-closed answer if it did).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import pyparsing as pp

from popwatch import grammar as _grammar
from popwatch.address import normalize_host
from popwatch.errors import AddressError

__all__ = ["IPV6_VALID", "NEEDED", "CompiledRule", "Untranslatable", "compile_rule"]

# The results the matcher reads; sites of other names are not evaluated.
NEEDED: Final = frozenset({"ip", "user", "pid"})

_NO: Final = object()  # a site that did not assign its name on this match
_V6_MEMO: Final = 4096  # normalized IPv6 texts remembered per rule
# ::ffff:a.b.c.d with a canonical quad (what Courier and Dovecot log for IPv4 clients)
_MAPPED_V4: Final = re.compile(rf"::[fF]{{4}}:({_grammar._IPV4_RE})")

# --- exact IPv6 validity over the candidate alphabet [0-9A-Fa-f:.] -----------------------------
# Python's ipaddress.IPv6Address: 8 hextets of 1-4 hex digits, at most one "::" standing for at
# least one zero hextet, an optional dotted-quad tail (octets 0-255, no leading zeros) counting
# as two hextets.  The "::" forms check their shape with backtracking and their size with a
# lookahead that counts the runs of hex digits possessively (linear time, whatever the text);
# an enumeration of every (left, right) split is the same language but costs ~7 ms of
# re.compile per rule that contains it.
_H: Final = r"[0-9A-Fa-f]{1,4}"
_V4: Final = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"


def _ipv6_forms() -> str:
    def at_most(runs: int, tail: str) -> str:
        # at most ``runs`` hex-digit runs (one not followed by "." is a hextet), then ``tail``,
        # then the end of the candidate
        return rf"(?=(?::*+[0-9A-Fa-f]++(?![.])){{0,{runs}}}+:*+{tail}(?![0-9A-Fa-f:.]))"

    side = rf"(?:{_H}(?::{_H})*)?"
    forms = [
        rf"(?:{_H}:){{7}}{_H}",
        rf"(?:{_H}:){{6}}{_V4}",
        at_most(7, "") + rf"{side}::{side}",  # "::" stands for 1-8 zero hextets
        at_most(5, _V4) + rf"{side}::(?:{_H}:)*{_V4}",
    ]
    return "(?:" + "|".join(forms) + ")"


IPV6_VALID: Final = _ipv6_forms()
_ADDR_CHARS: Final = "[0-9A-Fa-f:.]"

# The building blocks' address patterns (popwatch.grammar.ipv4/ipv6) and what they need.
_KNOWN_V4: Final = _grammar._IPV4_RE + r"(?![0-9]|\.[0-9])"
_KNOWN_V6: Final = _grammar._IPV6_RE + r"(?![0-9A-Fa-f:.])"


class Untranslatable(Exception):
    """The grammar uses something this compiler cannot reproduce exactly."""


class CompiledRule:
    """A rule's grammar as one regex; see the module docstring.

    ``pattern`` is the regex's text; it is compiled on the first :meth:`match` (or
    :attr:`regex`) when :func:`compile_rule` was asked to be ``lazy``: a matcher then pays
    ``re.compile`` only for the rules its log reaches.  A lazy rule whose regex does not
    compile raises :class:`Untranslatable` from that first call.
    """

    __slots__ = ("_regex", "confirm", "extract", "pattern")

    def __init__(
        self,
        pattern: str,
        extract: Callable[[re.Match[str]], dict[str, str | None] | None],
        confirm: bool,
        regex: re.Pattern[str] | None = None,
    ) -> None:
        self.pattern = pattern
        # Results from a match: name -> text (None when pyparsing would give None); None when
        # the match must count as no match after all (fail closed).
        self.extract = extract
        # True: a match only says "maybe"; pyparsing gives the answer (unknown parse actions).
        self.confirm = confirm
        self._regex = regex

    @property
    def regex(self) -> re.Pattern[str]:
        regex = self._regex
        if regex is None:
            regex = self._regex = _compile_whole(self.pattern)
        return regex

    def match(self, message: str) -> re.Match[str] | None:
        if "\t" in message:
            message = message.expandtabs()
        regex = self._regex
        if regex is None:
            regex = self.regex
        return regex.match(message)

    def results(self, message: str) -> dict[str, str | None] | None:
        """Match and extract; None for no match."""
        m = self.match(message)
        if m is None:
            return None
        return self.extract(m)


# --- translation ------------------------------------------------------------------------------

Tokens = Callable[[re.Match[str]], list[str]]
Value = Callable[[re.Match[str]], Any]  # a value, or _NO


@dataclass
class _Frag:
    pat: str
    toks: Tokens | None = None  # None: not computable (or not asked for)
    sites: list[tuple[str, Value]] = field(default_factory=list)
    names: bool = False  # may set any result name at all (needed or not)
    maybe_empty: bool = True


class _Compiler:
    def __init__(self, cache: RenameCache | None = None) -> None:
        self.cache: RenameCache = {} if cache is None else cache
        self.groups = 0
        self.confirm = False
        self.all_names = False  # sites for every name (inside an emulated action's element)
        # The one element whose own parse actions are run on emulated tokens: (element,
        # start group, tokens, sites); see compile_rule.
        self.emulated: tuple[Any, str, Tokens, list[tuple[str, Value]]] | None = None
        self._v6_code = _grammar._validate_ip.__code__
        self._quoted_code = _action_funcs(_grammar.quoted())[0].__code__

    def new_group(self) -> str:
        self.groups += 1
        return f"g{self.groups}"

    # whitespace preParse of ``el`` when called with callPreParse=``pre``
    @staticmethod
    def _ws(el: Any, pre: bool) -> str:
        if el.ignoreExprs:
            raise Untranslatable(f"{el}: ignore expressions")
        if not (pre and el.callPreparse and el.skipWhitespace):
            return ""
        chars = sorted(el.whiteChars)
        if not chars:
            return ""
        return "[" + "".join(re.escape(c) for c in chars) + "]*+"

    def tr(self, el: Any, pre: bool, need: bool, spine: Any) -> _Frag:
        if el.debug or el.failAction is not None:
            raise Untranslatable(f"{el}: debug or fail action")
        if not el.modalResults:
            raise Untranslatable(f"{el}: list_all_matches results name")
        name = el.resultsName or ""
        want_name = bool(name) and (self.all_names or name in NEEDED)
        if name and el.saveAsList:
            raise Untranslatable(f"{el}: results name on a list-valued element")
        actions = _action_funcs(el.parseAction) if el.parseAction else []
        known = self._classify_actions(el, actions)
        if known is None:  # unknown parse actions
            if not spine:
                raise Untranslatable(f"{el}: parse action off the spine")
            if spine == "top" and self.emulated is None and not self.all_names:
                return self._emulate(el, pre)
            self.confirm = True
        inner_need = need or want_name
        frag = self.body(el, inner_need, spine, known)
        if known is None:
            frag.toks, frag.sites, frag.names = None, [], True
        if name:
            frag.names = True
            if want_name:
                toks = frag.toks
                if toks is None:
                    if not self.confirm:
                        raise Untranslatable(f"{el}: value of {name!r} not computable")
                else:
                    frag.sites.append((name, _first_token(toks)))
        frag.pat = self._ws(el, pre) + frag.pat
        return frag

    def _emulate(self, el: Any, pre: bool) -> _Frag:
        """An element whose results are the rule's results and that has parse actions of the
        pattern author's: translate it with every token and name, and remember it so that
        extraction can call its actions the way pyparsing does."""
        self.all_names = True
        try:
            frag = self.body(el, True, "spine", "")
        finally:
            self.all_names = False
        if frag.toks is None:
            raise Untranslatable(f"{el}: tokens not computable for its parse action")
        start = self.new_group()
        self.emulated = (el, start, frag.toks, frag.sites)
        return _Frag(self._ws(el, pre) + f"(?P<{start}>)" + frag.pat, None, [], True, False)

    def _classify_actions(self, el: Any, actions: list[Any]) -> str | None:
        """ "" for none, "v4"/"v6"/"quoted" for a known building block, None otherwise."""
        if not actions:
            return ""
        if len(actions) != 1 or not isinstance(el, pp.Regex) or type(el) is not pp.Regex:
            return None
        fn = actions[0]
        code = getattr(fn, "__code__", None)
        pattern = el.re.pattern if isinstance(el.re.pattern, str) else ""
        if fn is _grammar._validate_ip:
            if pattern == _KNOWN_V4:
                return "v4"
            if pattern == _KNOWN_V6:
                return "v6"
            return None
        if code is self._quoted_code and getattr(fn, "__closure__", None) is None:
            head = pattern.split("(?P<_q>", 1)[0]
            if head and pattern == f"{head}(?P<_q>[^{head}]*){head}":
                return "quoted"
        return None

    def body(self, el: Any, need: bool, spine: Any, known: str | None) -> _Frag:
        kind = type(el)
        if kind is pp.And:
            return self._and(el, need, spine)
        if kind is pp.MatchFirst:
            return self._match_first(el, need)
        if kind is pp.Opt:
            return self._opt(el, need)
        if kind in (pp.ZeroOrMore, pp.OneOrMore):
            return self._repeat(el, need)
        if kind is pp.Suppress:
            inner = self.tr(el.expr, False, False, spine and "spine")
            return _Frag(f"(?:{inner.pat})", lambda m: [], [], False, inner.maybe_empty)
        if kind is pp.Combine:
            return self._combine(el, need, spine)
        if kind is pp.Empty:
            return _Frag("", lambda m: [], [], False, True)
        if kind in (pp.Literal, getattr(pp.core, "_SingleCharLiteral", pp.Literal)):
            text = el.match
            return _Frag(re.escape(text), lambda m: [text], [], False, False)
        if kind is pp.Word:
            if "parseImpl" not in el.__dict__ or el.re is None:
                raise Untranslatable(f"{el}: Word without a regex")
            return self._leaf_regex(el.re.pattern, el.re.flags, need, {}, "")
        if kind is pp.Regex:
            if "parseImpl" in el.__dict__:
                raise Untranslatable(f"{el}: Regex as_group_list/as_match")
            return self._regex(el, need, known)
        if kind is pp.StringEnd:
            return _Frag(r"\Z", lambda m: [], [], False, True)
        raise Untranslatable(f"{el}: {kind.__name__} not translated")

    def _and(self, el: Any, need: bool, spine: Any) -> _Frag:
        exprs = el.exprs
        if any(type(e).__name__ == "_ErrorStop" for e in exprs):
            raise Untranslatable(f"{el}: '-' error stop")
        for i, e in enumerate(exprs):
            if type(e) is pp.StringEnd and not all(type(x) is pp.StringEnd for x in exprs[i:]):
                raise Untranslatable(f"{el}: StringEnd before other elements")
        top_child = (
            spine == "root" and len(exprs) >= 2 and all(type(x) is pp.StringEnd for x in exprs[1:])
        )
        frags = [
            self.tr(e, i > 0, need, "top" if top_child and i == 0 else (spine and "spine"))
            for i, e in enumerate(exprs)
        ]
        toks: Tokens | None = None
        if need and all(f.toks is not None for f in frags):
            parts = [f.toks for f in frags if f.toks is not None]

            def toks(m: re.Match[str]) -> list[str]:
                out: list[str] = []
                for t in parts:
                    out += t(m)
                return out

        sites = [s for f in frags for s in f.sites]
        return _Frag(
            "".join(f.pat for f in frags),
            toks,
            sites,
            any(f.names for f in frags),
            all(f.maybe_empty for f in frags),
        )

    def _guarded(self, frag: _Frag, group: str) -> tuple[Tokens | None, list[tuple[str, Value]]]:
        """Tokens and sites of ``frag`` that count only when ``group`` took part."""
        toks = frag.toks
        g_toks: Tokens | None = None
        if toks is not None:
            inner = toks

            def g_toks(m: re.Match[str]) -> list[str]:
                return inner(m) if m.start(group) >= 0 else []

        sites = [(site_name, _guard(value, group)) for site_name, value in frag.sites]
        return g_toks, sites

    def _match_first(self, el: Any, need: bool) -> _Frag:
        frags = [self.tr(e, True, need, False) for e in el.exprs]
        if not frags:
            raise Untranslatable(f"{el}: no alternatives")
        tracked = need or any(f.sites for f in frags)
        if not tracked:
            pat = "(?>" + "|".join(f.pat for f in frags) + ")"
            return _Frag(
                pat, None, [], any(f.names for f in frags), any(f.maybe_empty for f in frags)
            )
        alts = []
        tok_fns: list[Tokens | None] = []
        sites: list[tuple[str, Value]] = []
        for f in frags:
            g = self.new_group()
            alts.append(f"(?P<{g}>{f.pat})")
            t, s = self._guarded(f, g)
            tok_fns.append(t)
            sites += s
        toks: Tokens | None = None
        if all(t is not None for t in tok_fns):
            fns = [t for t in tok_fns if t is not None]

            def toks(m: re.Match[str]) -> list[str]:
                out: list[str] = []
                for t in fns:
                    out += t(m)
                return out

        return _Frag(
            "(?>" + "|".join(alts) + ")",
            toks,
            sites,
            any(f.names for f in frags),
            any(f.maybe_empty for f in frags),
        )

    def _opt(self, el: Any, need: bool) -> _Frag:
        default = getattr(pp.Opt, "_Opt__optionalNotMatched", None)
        if default is None or el.defaultValue is not default:
            raise Untranslatable(f"{el}: Opt with a default value")
        inner = self.tr(el.expr, False, need, False)
        if not (need or inner.sites):
            return _Frag(f"(?>(?:{inner.pat})?)", None, [], inner.names, True)
        g = self.new_group()
        toks, sites = self._guarded(inner, g)
        return _Frag(f"(?>(?P<{g}>{inner.pat})?)", toks, sites, inner.names, True)

    def _repeat(self, el: Any, need: bool) -> _Frag:
        if el.not_ender is not None:
            raise Untranslatable(f"{el}: stop_on")
        inner = self.tr(el.expr, True, False, False)
        if need or inner.names:
            raise Untranslatable(f"{el}: results inside a repetition")
        if inner.maybe_empty or el.expr.mayReturnEmpty:
            raise Untranslatable(f"{el}: repetition of something that may match empty")
        more = "*+" if el.max_count is None else f"{{0,{el.max_count - 1}}}+"
        pat = f"(?:{inner.pat})(?:{inner.pat}){more}"
        if type(el) is pp.ZeroOrMore:
            return _Frag(f"(?>(?:{pat})?)", None, [], False, True)
        return _Frag(f"(?>{pat})", None, [], False, False)

    def _combine(self, el: Any, need: bool, spine: Any) -> _Frag:
        inner = self.tr(el.expr, False, need, spine and "spine")
        if el.resultsName and inner.names:
            raise Untranslatable(f"{el}: named Combine with named contents")
        toks: Tokens | None = None
        if need and inner.toks is not None:
            join, t = el.joinString, inner.toks

            def toks(m: re.Match[str]) -> list[str]:
                return [join.join(t(m))]

        return _Frag(f"(?:{inner.pat})", toks, inner.sites, inner.names, False)

    def _regex(self, el: Any, need: bool, known: str | None) -> _Frag:
        compiled = el.re
        if not isinstance(compiled.pattern, str):
            raise Untranslatable(f"{el}: bytes pattern")
        groups = list(compiled.groupindex)
        if known == "v6":
            frag = self._leaf_regex(compiled.pattern, compiled.flags, need, {}, "v6")
            frag.pat = f"(?={IPV6_VALID}(?!{_ADDR_CHARS})){frag.pat}"
            return frag
        if known == "v4":
            return self._leaf_regex(compiled.pattern, compiled.flags, need, {}, "v4")
        wanted = {n: self.all_names or n in NEEDED for n in groups}
        if known == "quoted":
            return self._leaf_regex(compiled.pattern, compiled.flags, need, {"_q": True}, "quoted")
        frag = self._leaf_regex(compiled.pattern, compiled.flags, need, wanted, "")
        frag.names = frag.names or bool(groups)
        return frag

    def _leaf_regex(
        self, pattern: str, flags: int, need: bool, groups: dict[str, bool], known: str
    ) -> _Frag:
        scoped = flags & ~re.UNICODE
        if scoped & ~(re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE):
            raise Untranslatable(f"pattern {pattern!r}: unsupported flags")
        renamed, mapping = _rename_groups(pattern, flags, self.new_group, self.cache)
        letters = "".join(
            c for c, f in (("i", re.I), ("m", re.M), ("s", re.S), ("x", re.X)) if scoped & f
        )
        inner = f"(?{letters}:{renamed})" if letters else f"(?:{renamed})"
        whole = self.new_group() if (need or known == "quoted") else ""
        pat = f"(?>(?P<{whole}>{inner}))" if whole else f"(?>{inner})"
        toks: Tokens | None = None
        sites: list[tuple[str, Value]] = []
        if known == "quoted":
            q = mapping["_q"]

            def toks(m: re.Match[str]) -> list[str]:
                v = m.group(q)
                return [v] if v is not None else []

        elif whole:
            if known == "v6":
                # ipaddress is slow (~15 us) and a log repeats its clients (::ffff:a.b.c.d);
                # bounded, cleared when full.  A refused text is not kept: it raises again.
                memo: dict[str, str] = {}

                def toks(m: re.Match[str]) -> list[str]:
                    text = m.group(whole)
                    value = memo.get(text)
                    if value is None:
                        mapped = _MAPPED_V4.fullmatch(text)
                        # normalize_host unwraps a mapped address: its canonical dotted quad
                        value = mapped.group(1) if mapped else normalize_host(text)
                        if len(memo) >= _V6_MEMO:
                            memo.clear()
                        memo[text] = value
                    return [value]

            elif known == "v4":
                # The pattern admits only canonical dotted quads (octets 0-255, no leading
                # zeros): normalize_host returns them unchanged (tested).
                def toks(m: re.Match[str]) -> list[str]:
                    return [m.group(whole)]

            else:

                def toks(m: re.Match[str]) -> list[str]:
                    return [m.group(whole)]

        if not known:
            for gname, needed in groups.items():
                if needed:
                    g = mapping[gname]
                    sites.append((gname, _group_value(g)))
        return _Frag(pat, toks, sites, bool(groups) and not known, False)


def _guard(value: Value, group: str) -> Value:
    def guarded(m: re.Match[str]) -> Any:
        return value(m) if m.start(group) >= 0 else _NO

    return guarded


def _group_value(group: str) -> Value:
    def value(m: re.Match[str]) -> Any:
        return m.group(group)

    return value


def _first_token(toks: Tokens) -> Value:
    def value(m: re.Match[str]) -> Any:
        t = toks(m)
        return t[0] if t else _NO

    return value


def _action_funcs(actions: Sequence[Any] | pp.ParserElement) -> list[Any]:
    """The pattern author's functions behind pyparsing's arity-trimming wrappers."""
    if isinstance(actions, pp.ParserElement):
        actions = actions.parseAction
    out = []
    for fn in actions:
        code = getattr(fn, "__code__", None)
        closure = getattr(fn, "__closure__", None)
        if (
            code is not None
            and closure
            and "func" in code.co_freevars
            and code.co_name
            in (
                "wrapper",
                "<lambda>",
            )
        ):
            fn = closure[code.co_freevars.index("func")].cell_contents
        out.append(fn)
    return out


# Text that might be a named group, a back reference or inline flags; an escaped backslash or a
# character class makes it a false alarm at worst (the full check runs).
_MAYBE_SPECIAL = re.compile(r"\\[1-9gk]|\(\?[^:=!<>]|\(\?<[^=!]")
_NAMED_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>")


# (pattern, flags) -> the pattern split at its named groups' names, and those names: what
# _rename_groups checked once (the check does not depend on the fresh names).
RenameCache = dict[tuple[str, int], tuple[tuple[str, ...], tuple[str, ...]]]


def _rename_groups(
    pattern: str, flags: int, new_group: Callable[[], str], cache: RenameCache | None = None
) -> tuple[str, dict[str, str]]:
    """Rename a Regex's named groups to fresh names; refuse back references and anything whose
    renamed parse differs from the original's (the check that the rewrite changed names only)."""
    key = (pattern, flags)
    template = cache.get(key) if cache is not None else None
    if template is None:
        template = _rename_template(pattern, flags)
        if cache is not None:
            cache[key] = template
    parts, names = template
    mapping: dict[str, str] = {}
    out = [parts[0]]
    for name, part in zip(names, parts[1:], strict=True):
        fresh = mapping[name] = new_group()
        out += ("(?P<", fresh, ">", part)
    return "".join(out), mapping


def _rename_template(pattern: str, flags: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``pattern`` split before and after each named group's name (``(?P<`` and ``>`` left
    out), checked: no back references, and renaming changes nothing but names."""
    if not flags & re.VERBOSE and _MAYBE_SPECIAL.search(pattern) is None:
        # No group names, back references or inline flags can hide in it (most Word and
        # building-block patterns): nothing to rename or check.
        return (pattern,), ()
    try:
        # the stdlib's own regex parser: the check that the rewrite changed names only
        sre_parse: Any = importlib.import_module("re._parser")
    except ImportError:  # pragma: no cover - other Python versions
        raise Untranslatable("no re._parser to check a rewrite") from None
    try:
        original = sre_parse.parse(pattern, flags)
    except re.error as err:
        raise Untranslatable(f"pattern {pattern!r}: {err}") from None
    if _has_backrefs(original):
        raise Untranslatable(f"pattern {pattern!r}: back references")
    names: list[str] = []
    parts: list[str] = []
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    verbose = bool(flags & re.VERBOSE)
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            # a "]" right after "[" or "[^" is a literal
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("]")
                i += 1
            continue
        if verbose and c == "#":
            raise Untranslatable(f"pattern {pattern!r}: verbose comments")
        m = _NAMED_GROUP.match(pattern, i)
        if m is not None:
            names.append(m.group(1))
            parts.append("".join(out))
            out = []
            i = m.end()
            continue
        out.append(c)
        i += 1
    parts.append("".join(out))
    renamed = parts[0] + "".join(f"(?P<g{k}>{part}" for k, part in enumerate(parts[1:], 1))
    try:
        again = sre_parse.parse(renamed, flags)
    except re.error as err:
        raise Untranslatable(f"pattern {pattern!r}: rewrite failed: {err}") from None
    if _dump(again) != _dump(original) or set(names) != set(original.state.groupdict):
        raise Untranslatable(f"pattern {pattern!r}: rewrite changed its meaning")
    if original.state.flags & ~flags & ~re.UNICODE:
        raise Untranslatable(f"pattern {pattern!r}: inline global flags")
    return tuple(parts), tuple(names)


def _dump(sub: Any) -> Any:
    """A comparable form of an sre parse tree (group numbers, no names)."""
    if isinstance(sub, list | tuple):
        return tuple(_dump(x) for x in sub)
    if hasattr(sub, "data"):
        return ("sub", _dump(sub.data))
    return sub


def _has_backrefs(sub: Any) -> bool:
    c: Any = importlib.import_module("re._constants")

    refs = {
        c.GROUPREF,
        c.GROUPREF_EXISTS,
        c.GROUPREF_IGNORE,
        c.GROUPREF_LOC_IGNORE,
        c.GROUPREF_UNI_IGNORE,
    }
    stack = [sub]
    while stack:
        x = stack.pop()
        if hasattr(x, "data"):
            stack.extend(x.data)
        elif isinstance(x, list | tuple):
            if x and x[0] in refs:
                return True
            stack.extend(x)
    return False


def _compile_whole(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as err:
        raise Untranslatable(f"combined pattern does not compile: {err}") from None


def compile_rule(
    whole: pp.ParserElement, cache: RenameCache | None = None, *, lazy: bool = False
) -> CompiledRule:
    """Compile a streamlined ``grammar + StringEnd()``; raise Untranslatable.  ``cache`` (an
    empty dict to start with, shared by the rules of one matcher) saves checking the same
    Regex pattern again.  ``lazy``: leave ``re.compile`` to the first match (see
    :class:`CompiledRule`)."""
    c = _Compiler(cache)
    frag = c.tr(whole, True, False, "root")
    regex = None if lazy else _compile_whole(frag.pat)
    sites = [s for s in frag.sites if s[0] in NEEDED]
    if c.confirm:
        return CompiledRule(frag.pat, lambda m: {}, True, regex)
    if c.emulated is not None:
        return CompiledRule(frag.pat, _emulated_extract(*c.emulated), False, regex)

    def extract(m: re.Match[str]) -> dict[str, str | None] | None:
        out: dict[str, str | None] = {}
        try:
            for name, value in reversed(sites):
                if name in out:
                    continue
                v = value(m)
                if v is not _NO:
                    out[name] = v
        except AddressError:
            return None
        return out

    return CompiledRule(frag.pat, extract, False, regex)


def _emulated_extract(
    el: Any, start: str, toks: Tokens, sites: list[tuple[str, Value]]
) -> Callable[[re.Match[str]], dict[str, str | None] | None]:
    """Run ``el``'s parse actions as pyparsing's ``_parseNoCache`` does: on the element's
    tokens with its result names assigned in order, at the element's start, replacing the
    tokens when an action returns something else.  A ParseException means no match."""
    actions: list[Any] = list(el.parseAction)
    name, as_list, modal = el.resultsName, el.saveAsList, el.modalResults

    def extract(m: re.Match[str]) -> dict[str, str | None] | None:
        try:
            tokens = pp.ParseResults(toks(m))
            for site_name, value in sites:
                v = value(m)
                if v is not _NO:
                    tokens[site_name] = v
        except AddressError:
            return None
        ret = pp.ParseResults(tokens, name, aslist=as_list, modal=modal)
        s, loc = m.string, m.start(start)
        try:
            for fn in actions:
                new = fn(s, loc, ret)
                if new is not None and new is not ret:
                    ret = pp.ParseResults(
                        new,
                        name,
                        aslist=as_list and isinstance(new, pp.ParseResults | list),
                        modal=modal,
                    )
        except (pp.ParseBaseException, IndexError):  # pyparsing turns IndexError into a failure
            return None
        return {n: _result_text(ret, n) for n in NEEDED}

    return extract


def _result_text(results: pp.ParseResults, name: str) -> str | None:
    """A result as the matcher reads it (a list-valued result is joined)."""
    value: Any = results.get(name)  # type: ignore[no-untyped-call]
    if value is None:
        return None
    if isinstance(value, pp.ParseResults):
        value = "".join(str(v) for v in value)
    return str(value)

"""Route patterns -> tags -> TTL rules.

`compile_pattern` turns a route pattern into a regex once, at config load. `RouteTable` maps a
request path to the first `RouteRule` whose pattern matches it, and `TtlRules` maps an entry's
tags to the first `TtlRule` whose tag pairs it all carries. Both are first-match-wins, in the
order the configuration lists them, like Starlette's router and Varnish's `vcl_recv` chains.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, TypeVar

from starlette.convertors import CONVERTOR_TYPES

from tiercache_mw.store.entry import Tags

if TYPE_CHECKING:
    from tiercache_mw.config import Config, RouteRule, TtlRule

__all__ = ["MEMO_SIZE", "RouteTable", "TtlRules", "compile_pattern"]

# How many distinct paths (or tag sets) a table remembers before it starts over.
MEMO_SIZE: Final = 4096
_K = TypeVar("_K")
_V = TypeVar("_V")

# A parameter as Starlette writes it: {name} or {name:convertor}.
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}")
_ONE_SEGMENT: Final = "[^/]+"  # a whole-segment `*`: one non-empty segment
_IN_SEGMENT: Final = "[^/]*"  # a `*` inside a segment, as in `*.png`
_ANY_SEGMENTS: Final = "(?:/.*)?"  # `/**`: nothing, or a slash and anything after it


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a route pattern: Starlette path syntax plus `*` and `**` globs.

    `{id}` is one segment, `{id:int}` / `{x:float}` / `{u:uuid}` / `{p:path}` use Starlette's
    convertors; `*` matches within one segment (a whole `*` segment needs one character or
    more), `**` as a whole segment matches any number of segments including none, so
    `/account/**` matches `/account`, `/account/` and `/account/a/b`. Everything else is
    literal, and a trailing slash is significant, as in Starlette's router.

    Raises ValueError with the reason when the pattern is not one.
    """
    # starlette.routing.compile_path knows no globs and rejects a bad convertor with an
    # assert, so we walk the pattern ourselves and reuse only its convertors' regexes.
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a pattern is a non-empty string")
    if not pattern.startswith("/"):
        raise ValueError("a pattern starts with '/'")
    parts: list[str] = []
    names: set[str] = set()
    segments = pattern.split("/")[1:]
    for segment in segments:
        if segment == "**":
            parts.append(_ANY_SEGMENTS)
            continue
        parts.append("/")
        if segment == "*":
            parts.append(_ONE_SEGMENT)
            continue
        if "**" in segment:
            raise ValueError(f"'**' must be a whole path segment, not part of {segment!r}")
        parts.append(_compile_segment(segment, names))
    return re.compile("^" + "".join(parts) + r"\Z")


def _compile_segment(segment: str, names: set[str]) -> str:
    out: list[str] = []
    index = 0
    for match in _PARAM.finditer(segment):
        out.append(_literal(segment[index : match.start()]))
        name, kind = match.group(1), match.group(2) or "str"
        if kind not in CONVERTOR_TYPES:
            allowed = ", ".join(sorted(CONVERTOR_TYPES))
            raise ValueError(f"unknown convertor {kind!r} in {{{name}:{kind}}}; known: {allowed}")
        if name in names:
            raise ValueError(f"parameter {name!r} appears twice")
        names.add(name)
        out.append(f"(?P<{name}>{CONVERTOR_TYPES[kind].regex})")
        index = match.end()
    out.append(_literal(segment[index:]))
    return "".join(out)


def _literal(text: str) -> str:
    if "{" in text or "}" in text:
        raise ValueError(
            f"{text!r} holds a brace that is not a parameter such as {{id}} or {{id:int}}"
        )
    return _IN_SEGMENT.join(re.escape(piece) for piece in text.split("*"))


class RouteTable:
    """The configured routes, matched against request paths; the first match wins."""

    __slots__ = ("_memo", "_routes")

    def __init__(self, routes: tuple[RouteRule, ...]) -> None:
        # A RouteRule built by hand (not by load_config) has no regex yet: compile it here.
        self._routes = tuple(
            (rule.regex if rule.regex is not None else compile_pattern(rule.pattern), rule)
            for rule in routes
        )
        self._memo: dict[str, RouteRule | None] = {}

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        return cls(config.routes)

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, path: str) -> RouteRule | None:
        """The first route whose pattern matches `path`, or None.

        Runs on every hot hit, so a table without routes answers at once and a path seen
        before costs one dict lookup.
        """
        if not self._routes:
            return None
        memo = self._memo
        try:
            return memo[path]  # one lookup on a hit; try is free in 3.11 when nothing raises
        except KeyError:
            pass
        found = None
        for regex, rule in self._routes:
            if regex.match(path) is not None:
                found = rule
                break
        return _remember(memo, path, found)


class TtlRules:
    """The configured TTL rules, matched against an entry's tags; the first match wins.

    A rule matches when every (name, value) pair of its `tag` is among the entry's tags;
    the entry may carry more. A rule with an empty `tag` matches every entry, so it belongs
    last, as the default.
    """

    __slots__ = ("_memo", "_rules")

    def __init__(self, rules: tuple[TtlRule, ...]) -> None:
        self._rules = rules
        self._memo: dict[Tags, TtlRule | None] = {}

    @classmethod
    def from_config(cls, config: Config) -> TtlRules:
        return cls(config.ttl_rules)

    def __len__(self) -> int:
        return len(self._rules)

    def for_tags(self, tags: Tags) -> TtlRule | None:
        """The first rule whose tag pairs are all in `tags`, or None."""
        if not self._rules:
            return None
        memo = self._memo
        try:
            return memo[tags]
        except KeyError:
            pass
        have = set(tags)
        found = None
        for rule in self._rules:
            if have.issuperset(rule.tag):
                found = rule
                break
        return _remember(memo, tags, found)


def _remember(memo: dict[_K, _V], key: _K, value: _V) -> _V:
    # Safe to forget at any time: routes and rules are frozen, so an answer depends on the
    # key alone; clearing when full only bounds memory against endless distinct URLs.
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value
    return value

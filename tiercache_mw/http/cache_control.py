"""Cache-Control for requests and responses (RFC 9111 §5.2), targeted fields (RFC 9213) and
Pragma (RFC 9111 §5.4), parsed into frozen objects.

Parsing is tolerant in the ways RFC 9111 §5.2 asks: directive names are case-insensitive,
arguments may be quoted, whitespace and empty list members are ignored. What the RFC says about
broken input is applied here, once, so that the rest of the policy only reads typed fields:
a duplicated or invalid freshness directive makes the response stale (§4.2.1, §1.2.2).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from werkzeug.http import parse_list_header, unquote_header_value

from tiercache_mw.http.headers import Headers, get_all, get_list, split_list

__all__ = [
    "CDN_CACHE_CONTROL",
    "RequestCacheControl",
    "ResponseCacheControl",
    "parse_directives",
    "request_cache_control",
    "response_cache_control",
]

CDN_CACHE_CONTROL = b"cdn-cache-control"
# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
DELTA_SECONDS_MAX = 2**31
_FRESHNESS_DIRECTIVES = ("max-age", "s-maxage")


@dataclass(frozen=True, slots=True)
class RequestCacheControl:
    """Request directives (RFC 9111 §5.2.1). Numbers are seconds; None = directive absent."""

    max_age: int | None = None  # §5.2.1.1
    max_stale: float | None = None  # §5.2.1.2; math.inf for a bare max-stale
    min_fresh: int | None = None  # §5.2.1.3
    no_cache: bool = False  # §5.2.1.4, also Pragma: no-cache (§5.4)
    no_store: bool = False  # §5.2.1.5
    only_if_cached: bool = False  # §5.2.1.7
    stale_if_error: int | None = None  # RFC 5861 §4, the client's own allowance


@dataclass(frozen=True, slots=True)
class ResponseCacheControl:
    """Response directives (RFC 9111 §5.2.2) as the shared cache applies them."""

    max_age: int | None = None  # §5.2.2.1
    s_maxage: int | None = None  # §5.2.2.10
    # §4.2.1 / §1.2.2: a duplicated or malformed max-age / s-maxage: the response is stale.
    invalid_freshness: bool = False
    no_cache: bool = False  # §5.2.2.4, unqualified: store, but validate before each use
    no_cache_fields: tuple[str, ...] = ()  # qualified no-cache: reuse without these fields
    no_store: bool = False  # §5.2.2.5
    private: bool = False  # §5.2.2.7, unqualified: a shared cache must not store
    private_fields: tuple[str, ...] = ()  # qualified private: store without these fields
    public: bool = False  # §5.2.2.9
    must_revalidate: bool = False  # §5.2.2.2
    proxy_revalidate: bool = False  # §5.2.2.8
    must_understand: bool = False  # §5.2.2.3
    no_transform: bool = False  # §5.2.2.6
    immutable: bool = False  # RFC 8246
    stale_while_revalidate: int | None = None  # RFC 5861 §3
    stale_if_error: int | None = None  # RFC 5861 §4
    targeted: bool = False  # RFC 9213 §2.2: from a targeted field; Expires is then ignored

    @property
    def has_explicit_freshness(self) -> bool:
        """max-age or s-maxage present, valid or not (§4.2.1)."""
        return self.max_age is not None or self.s_maxage is not None or self.invalid_freshness


_EMPTY_RESPONSE = ResponseCacheControl()


def parse_directives(value: str) -> list[tuple[str, str | None]]:
    """Directives in order, names lowercased, arguments unquoted, duplicates kept (§5.2)."""
    # Not werkzeug's parse_cache_control_header: its names are case-sensitive, a duplicate
    # keeps the last value and a bad number becomes None, where §4.2.1 wants "stale".
    directives: list[tuple[str, str | None]] = []
    for item in parse_list_header(value):
        name, sep, argument = item.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not sep:
            directives.append((name, None))
            continue
        argument = argument.strip()
        if len(argument) >= 2 and argument[0] == argument[-1] == '"':
            argument = unquote_header_value(argument)
        directives.append((name, argument))
    return directives


def _delta_seconds(argument: str | None) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds: digits only; None when missing or malformed."""
    if argument is None or not argument.isascii() or not argument.isdigit():
        return None
    return min(int(argument), DELTA_SECONDS_MAX)


def _field_names(argument: str | None) -> tuple[str, ...]:
    if argument is None:
        return ()
    return tuple(name.lower() for name in split_list(argument))


@functools.lru_cache(maxsize=1024)
def _parse_response(value: str, targeted: bool) -> ResponseCacheControl:
    # Cached: responses repeat a few Cache-Control values; the result is immutable.
    seen: dict[str, int] = {}
    fields: dict[str, object] = {"targeted": targeted}
    invalid = False
    no_cache = private = False
    no_cache_fields: list[str] = []
    private_fields: list[str] = []
    for name, argument in parse_directives(value):
        seen[name] = seen.get(name, 0) + 1
        if name in _FRESHNESS_DIRECTIVES:
            seconds = _delta_seconds(argument)
            if seconds is None or seen[name] > 1:
                invalid = True
            fields[name.replace("-", "_")] = seconds if seconds is not None else 0
        elif name == "no-cache":
            if argument:
                no_cache_fields += _field_names(argument)
            else:
                no_cache = True
        elif name == "private":
            if argument:
                private_fields += _field_names(argument)
            else:
                private = True
        elif name in ("no-store", "public", "must-revalidate", "proxy-revalidate",
                      "must-understand", "no-transform", "immutable"):  # fmt: skip
            fields[name.replace("-", "_")] = True
        elif name in ("stale-while-revalidate", "stale-if-error"):
            # RFC 5861 gives no rule for bad values: ignoring the directive is the safe reading.
            seconds = _delta_seconds(argument)
            if seconds is not None:
                fields[name.replace("-", "_")] = seconds
    return ResponseCacheControl(
        invalid_freshness=invalid,
        no_cache=no_cache,
        no_cache_fields=tuple(dict.fromkeys(no_cache_fields)),
        private=private,
        private_fields=tuple(dict.fromkeys(private_fields)),
        **fields,  # type: ignore[arg-type]
    )


def response_cache_control(
    headers: Headers, *, targeted_field: str | bytes | None = None
) -> ResponseCacheControl:
    """The directives that govern this cache (RFC 9213 §2.2).

    The first non-empty field of: the configured targeted field, CDN-Cache-Control, then
    Cache-Control. When a targeted field is used, Cache-Control (and Expires, see
    `ResponseCacheControl.targeted`) are ignored.
    """
    for name in _targeted_names(targeted_field):
        value = get_list(headers, name)
        if value is not None and value.strip():
            parsed = _parse_response(value.decode("latin-1"), True)
            if parsed != _TARGETED_EMPTY:  # an unusable targeted value falls through (§2.1)
                return parsed
    value = get_list(headers, b"cache-control")
    if value is None:
        return _EMPTY_RESPONSE
    return _parse_response(value.decode("latin-1"), False)


_TARGETED_EMPTY = ResponseCacheControl(targeted=True)


@functools.lru_cache(maxsize=64)
def _targeted_names(targeted_field: str | bytes | None) -> tuple[bytes, ...]:
    if targeted_field is None:
        return (CDN_CACHE_CONTROL,)
    name = targeted_field.encode("latin-1") if isinstance(targeted_field, str) else targeted_field
    name = name.strip().lower()
    if not name or name == CDN_CACHE_CONTROL:
        return (CDN_CACHE_CONTROL,)
    return (name, CDN_CACHE_CONTROL)


@functools.lru_cache(maxsize=256)
def _parse_request(value: str) -> RequestCacheControl:
    fields: dict[str, object] = {}
    for name, argument in parse_directives(value):
        if name == "max-age":
            # A malformed max-age asks for nothing older than... unknown: validate (age 0).
            fields["max_age"] = _delta_seconds(argument) or 0
        elif name == "max-stale":
            if argument is None:
                fields["max_stale"] = math.inf  # §5.2.1.2: any staleness
            else:
                seconds = _delta_seconds(argument)
                if seconds is not None:  # a malformed limit grants nothing
                    fields["max_stale"] = seconds
        elif name == "min-fresh":
            seconds = _delta_seconds(argument)
            if seconds is not None:
                fields["min_fresh"] = seconds
        elif name == "stale-if-error":
            seconds = _delta_seconds(argument)
            if seconds is not None:
                fields["stale_if_error"] = seconds
        elif name in ("no-cache", "no-store", "only-if-cached"):
            fields[name.replace("-", "_")] = True
    return RequestCacheControl(**fields)  # type: ignore[arg-type]


_EMPTY_REQUEST = RequestCacheControl()
_PRAGMA_NO_CACHE = RequestCacheControl(no_cache=True)


def request_cache_control(headers: Headers) -> RequestCacheControl:
    """Request directives (RFC 9111 §5.2.1); `Pragma: no-cache` counts as `no-cache` only when
    the request has no Cache-Control field (§5.4)."""
    value = get_list(headers, b"cache-control")
    if value is not None:
        return _parse_request(value.decode("latin-1"))
    for pragma in get_all(headers, b"pragma"):
        if any(item.lower() == "no-cache" for item in split_list(pragma)):
            return _PRAGMA_NO_CACHE
    return _EMPTY_REQUEST

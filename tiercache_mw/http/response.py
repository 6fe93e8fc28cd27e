"""A response as the cache keeps it (RFC 9111 §3): headers cleaned once, freshness derived once,
so that a hit only compares numbers and appends Age and Cache-Status."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkzeug.http import http_date

from tiercache_mw.http.cache_control import ResponseCacheControl
from tiercache_mw.http.freshness import (
    HEURISTICALLY_CACHEABLE,
    explicit_lifetime,
    heuristic_lifetime,
    initial_age,
)
from tiercache_mw.http.headers import Headers, connection_fields, get_header, get_list, split_list
from tiercache_mw.store.entry import StoredResponse, Tags

if TYPE_CHECKING:
    from tiercache_mw.config import HttpConfig, TtlRule

__all__ = [
    "SURROGATE_FIELDS",
    "SURROGATE_TAG",
    "StorePolicy",
    "build_stored_response",
    "client_headers",
    "date_field",
    "lifetime_for",
    "surrogate_tags",
    "vary_names",
]

SURROGATE_TAG = "surrogate-key"  # purge(tags={"surrogate-key": "prod-1"})
SURROGATE_FIELDS = frozenset({b"surrogate-key", b"cache-tag"})
# Fields the cache owns on the way out (RFC 9111 §5.1): never stored, always ours. Not
# Cache-Status: an upstream's members are kept, stored and sent, and ours is appended after
# them (RFC 9211 §2: the list runs from the origin to the client).
OWNED_FIELDS = frozenset({b"age"})


@dataclass(frozen=True, slots=True)
class StorePolicy:
    """What the operator adds to a response's own freshness (RFC 9111 §4.2.1, §4.2.2 and
    RFC 5861 leave it to the cache): the http config and the matching TTL rule's values."""

    http: HttpConfig
    rule_ttl: float | None = None
    override_origin: bool = False
    rule_swr: float | None = None
    rule_sie: float | None = None

    @classmethod
    def for_rule(cls, http: HttpConfig, rule: TtlRule | None) -> StorePolicy:
        if rule is None:
            return cls(http)
        return cls(
            http,
            rule_ttl=rule.ttl_seconds,
            override_origin=rule.override_origin,
            rule_swr=rule.stale_while_revalidate_seconds,
            rule_sie=rule.stale_if_error_seconds,
        )


def surrogate_tags(headers: Headers) -> Tags:
    """Tags from `Surrogate-Key` (space-separated, Fastly) and `Cache-Tag` (comma-separated,
    Cloudflare), each as ("surrogate-key", key), in order, without duplicates."""
    keys: dict[str, None] = {}
    for name, value in headers:
        if name == b"surrogate-key":
            keys.update(dict.fromkeys(value.decode("latin-1").split()))
        elif name == b"cache-tag":
            keys.update(dict.fromkeys(split_list(value)))
    return tuple((SURROGATE_TAG, key) for key in keys)


def client_headers(headers: Headers, http: HttpConfig) -> Headers:
    """The app's headers as the client gets them on a forward: the cache's own fields (Age,
    its Cache-Status member, after any upstream's) are added by the caller, surrogate keys
    stay private unless exposed."""
    if http.expose_surrogate_keys:
        return [(name, value) for name, value in headers if name not in OWNED_FIELDS]
    return [
        (name, value)
        for name, value in headers
        if name not in OWNED_FIELDS and name not in SURROGATE_FIELDS
    ]


def vary_names(headers: Headers) -> tuple[str, ...]:
    """Vary's field names lowercased, sorted and deduplicated, so that responses listing the
    same fields in another order share their variants (RFC 9111 §4.1); ("*",) for Vary: *."""
    value = get_list(headers, b"vary")
    if value is None:
        return ()
    names = {name.lower() for name in split_list(value)}
    if "*" in names:
        return ("*",)
    return tuple(sorted(names))


def _stored_headers(headers: Headers, cc: ResponseCacheControl, http: HttpConfig) -> Headers:
    """RFC 9111 §3.1: hop-by-hop and Connection-named fields are not stored; neither are the
    fields a qualified private (§5.2.2.7) or no-cache (§5.2.2.4) names, which makes the rest
    of the response reusable."""
    dropped = connection_fields(headers) | OWNED_FIELDS
    if not http.expose_surrogate_keys:
        dropped |= SURROGATE_FIELDS
    named = (*cc.private_fields, *cc.no_cache_fields)
    if named:
        dropped |= {name.encode("latin-1") for name in named}
    return [(name, value) for name, value in headers if name not in dropped]


@functools.lru_cache(maxsize=4)
def date_field(second: int) -> tuple[bytes, bytes]:
    """The Date field for a second, shared by every response dated within it: one tuple
    instead of ~125 B per entry, and no http_date (~10 µs) each time."""
    return (b"date", http_date(second).encode("ascii"))


def lifetime_for(
    status: int,
    headers: Headers,
    cc: ResponseCacheControl,
    *,
    response_time: float,
    policy: StorePolicy,
) -> float:
    """Freshness lifetime with the operator's rules folded in (RFC 9111 §4.2.1, §4.2.2).

    A rule's ttl with override_origin wins over everything; otherwise the response's own
    lifetime, then the rule's ttl, then http.default_ttl_seconds, then the heuristic. The
    configured defaults, like the heuristic, only apply to heuristically cacheable statuses.
    """
    rule_ttl, http = policy.rule_ttl, policy.http
    if policy.override_origin and rule_ttl is not None:
        return float(rule_ttl)
    explicit = explicit_lifetime(headers, cc, response_time=response_time)
    if explicit is not None:
        return explicit
    if status in HEURISTICALLY_CACHEABLE or cc.public:
        if rule_ttl is not None:
            return float(rule_ttl)
        if http.default_ttl_seconds > 0:
            return float(http.default_ttl_seconds)
    return heuristic_lifetime(
        status, headers, cc, response_time=response_time,
        fraction=http.heuristic_fraction, max_seconds=http.heuristic_max_seconds,
    )  # fmt: skip


def build_stored_response(
    status: int,
    headers: Headers,
    body: bytes,
    *,
    request_time: float,
    response_time: float,
    cc: ResponseCacheControl,
    policy: StorePolicy,
) -> StoredResponse:
    """The StoredResponse for a response (headers with lowercase names), everything a hit
    needs derived here once: lifetime (§4.2.1), corrected initial age (§4.2.3), the stale
    allowances (RFC 5861, the response's own directive before the rule's), validators."""
    lifetime = lifetime_for(status, headers, cc, response_time=response_time, policy=policy)
    swr = cc.stale_while_revalidate if cc.stale_while_revalidate is not None else policy.rule_swr
    sie = cc.stale_if_error if cc.stale_if_error is not None else policy.rule_sie
    # A response without Date is stored without one: the ASGI/WSGI server dates every
    # response it sends (RFC 9110 §6.6.1), uvicorn and gunicorn even when the app already
    # did, so a Date added here would go out as a second Date line on every hit.
    return StoredResponse(
        status=status,
        headers=_stored_headers(headers, cc, policy.http),
        body=body,
        response_time=response_time,
        freshness_lifetime=lifetime,
        initial_age=initial_age(headers, request_time=request_time, response_time=response_time),
        stale_while_revalidate=float(swr or 0),
        stale_if_error=float(sie or 0),
        requires_validation=cc.no_cache,
        # §4.2.4: must-revalidate, proxy-revalidate and s-maxage (§5.2.2.10) forbid stale use.
        must_revalidate=cc.must_revalidate or cc.proxy_revalidate or cc.s_maxage is not None,
        etag=get_header(headers, b"etag"),
        last_modified=get_header(headers, b"last-modified"),
        vary=vary_names(headers),
    )

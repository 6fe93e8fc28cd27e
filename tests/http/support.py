"""Builders shared by the policy unit tests: header lists and stored responses."""

from __future__ import annotations

from werkzeug.http import http_date

from tiercache_mw.config import HttpConfig
from tiercache_mw.http.cache_control import response_cache_control
from tiercache_mw.http.headers import Headers
from tiercache_mw.http.response import StorePolicy, build_stored_response
from tiercache_mw.store.entry import StoredResponse

NOW = 1_700_000_000.0
HTTP = HttpConfig()


def hdrs(**fields: str) -> Headers:
    """Header list from keyword arguments: cache_control="x" → (b"cache-control", b"x")."""
    return [(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()]


def date(offset: float = 0.0) -> str:
    return http_date(NOW + offset)


def stored(
    status: int = 200,
    fields: dict[str, str] | None = None,
    *,
    at: float = NOW,
    rule_ttl: float | None = None,
    rule_swr: float | None = None,
    rule_sie: float | None = None,
    http: HttpConfig = HTTP,
    **more: str,
) -> StoredResponse:
    headers = hdrs(**(fields or {}), **more)
    return build_stored_response(
        status,
        headers,
        b"body",
        request_time=at,
        response_time=at,
        cc=response_cache_control(headers, targeted_field=http.targeted_cache_control),
        policy=StorePolicy(http, rule_ttl=rule_ttl, rule_swr=rule_swr, rule_sie=rule_sie),
    )

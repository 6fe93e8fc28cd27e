"""Which responses a shared cache stores (RFC 9111 §3)."""

from __future__ import annotations

import pytest

from tests.http.support import date, hdrs
from tiercache_mw.http.cache_control import RequestCacheControl, response_cache_control
from tiercache_mw.http.storability import decide_store

FRESH = {"cache_control": "max-age=60"}


@pytest.mark.parametrize(
    ("method", "status", "request_fields", "fields", "set_cookie_ok", "expect"),
    [
        ("GET", 200, {}, FRESH, False, "ok"),
        ("POST", 200, {}, FRESH, False, "method"),
        ("HEAD", 200, {}, FRESH, False, "method"),  # a HEAD only updates (§4.3.5)
        ("GET", 206, {}, FRESH, False, "partial"),  # §3.3: ranges are not combined here
        ("GET", 304, {}, FRESH, False, "status"),
        # §3: a status this cache does not know is stored with explicit freshness or public
        ("GET", 599, {}, FRESH, False, "ok"),
        ("GET", 299, {}, {"expires": "Thu, 01 Jan 2099 00:00:00 GMT"}, False, "ok"),
        ("GET", 299, {}, {"cache_control": "public"}, False, "ok"),
        ("GET", 299, {}, {"last_modified": date(-36000)}, False, "not-cacheable"),
        ("GET", 299, {}, {"cache_control": "no-store, max-age=60"}, False, "no-store"),
        ("GET", 299, {}, {"cache_control": "must-understand, max-age=60"}, False, "status"),
        ("GET", 600, {}, FRESH, False, "status"),  # RFC 9110 §15: not a status code
        ("GET", 103, {}, FRESH, False, "status"),  # not final
        ("GET", 200, {}, {"cache_control": "no-store, max-age=60"}, False, "no-store"),
        ("GET", 200, {"cache_control": "no-store"}, FRESH, False, "request-no-store"),
        ("GET", 200, {}, {"cache_control": "private, max-age=60"}, False, "private"),
        ("GET", 200, {}, {"cache_control": 'private="x-user", max-age=60'}, False, "ok"),
        # §5.2.2.3: must-understand overrides no-store for an understood status only
        ("GET", 200, {}, {"cache_control": "must-understand, no-store, max-age=6"}, False, "ok"),
        (
            "GET",
            299,
            {},
            {"cache_control": "must-understand, no-store, max-age=6"},
            False,
            "status",
        ),
        # §3.5: Authorization needs must-revalidate, public or s-maxage
        ("GET", 200, {"authorization": "Bearer x"}, FRESH, False, "authorization"),
        ("GET", 200, {"authorization": "x"}, {"cache_control": "public, max-age=6"}, False, "ok"),
        ("GET", 200, {"authorization": "x"}, {"cache_control": "s-maxage=6"}, False, "ok"),
        ("GET", 200, {"authorization": "x"}, {"cache_control": "must-revalidate"}, False, "ok"),
        ("GET", 200, {}, {**FRESH, "set_cookie": "a=b"}, False, "set-cookie"),
        ("GET", 200, {}, {**FRESH, "set_cookie": "a=b"}, True, "ok"),
        (
            "GET",
            200,
            {},
            {"cache_control": 'max-age=6, private="Set-Cookie"', "set_cookie": "a"},
            False,
            "ok",
        ),
        ("GET", 200, {}, {**FRESH, "vary": "Accept, *"}, False, "vary-star"),
        ("GET", 302, {}, {}, False, "not-cacheable"),  # §3: no explicit freshness, not heuristic
        ("GET", 302, {}, {"cache_control": "max-age=6"}, False, "ok"),
        ("GET", 500, {}, {"cache_control": "max-age=6"}, False, "ok"),
    ],
)
def test_decide_store(
    method: str,
    status: int,
    request_fields: dict[str, str],
    fields: dict[str, str],
    set_cookie_ok: bool,
    expect: str,
) -> None:
    headers = hdrs(**fields)
    verdict = decide_store(
        method,
        status,
        hdrs(**request_fields),
        headers,
        response_cache_control(headers),
        req_cc=RequestCacheControl(no_store="no-store" in request_fields.get("cache_control", "")),
        store_set_cookie=set_cookie_ok,
        has_freshness=True,
    )
    assert verdict.reason == expect
    assert verdict.store is (expect == "ok")


def test_nothing_to_reuse_is_not_stored() -> None:
    """No freshness and no validator: storing it could never save the app a call."""
    headers = hdrs()
    verdict = decide_store(
        "GET", 200, [], headers, response_cache_control(headers),
        req_cc=RequestCacheControl(), store_set_cookie=False, has_freshness=False,
    )  # fmt: skip
    assert (verdict.store, verdict.reason) == (False, "no-freshness")

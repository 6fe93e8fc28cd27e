"""Cache-Control parsing (RFC 9111 §5.2, §4.2.1, §5.4; RFC 9213)."""

from __future__ import annotations

import math

import pytest

from tests.http.support import hdrs
from tiercache_mw.http.cache_control import (
    RequestCacheControl,
    ResponseCacheControl,
    parse_directives,
    request_cache_control,
    response_cache_control,
)


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("max-age=60", {"max_age": 60}),
        ("MAX-AGE=60", {"max_age": 60}),  # §5.2: names are case-insensitive
        ("  max-age = 60 ,,public", {"max_age": 60, "public": True}),  # whitespace, empty member
        ('max-age="60"', {"max_age": 60}),  # §5.2: quoted-string form accepted
        ("s-maxage=10, max-age=5", {"s_maxage": 10, "max_age": 5}),
        ("max-age=60, max-age=60", {"max_age": 60, "invalid_freshness": True}),  # §4.2.1
        ("max-age=60, max-age=10", {"max_age": 10, "invalid_freshness": True}),
        ("max-age=abc", {"max_age": 0, "invalid_freshness": True}),  # §4.2.1: treat as stale
        ("max-age=-1", {"max_age": 0, "invalid_freshness": True}),
        ("max-age=1.5", {"max_age": 0, "invalid_freshness": True}),
        ("max-age", {"max_age": 0, "invalid_freshness": True}),
        ("max-age=99999999999", {"max_age": 2**31}),  # §1.2.2: cap at 2^31
        ("no-cache", {"no_cache": True}),
        ('no-cache="Set-Cookie, X-Foo"', {"no_cache_fields": ("set-cookie", "x-foo")}),
        ('private="x-user"', {"private_fields": ("x-user",)}),
        ("private", {"private": True}),
        ("no-store, must-revalidate", {"no_store": True, "must_revalidate": True}),
        ("proxy-revalidate, must-understand", {"proxy_revalidate": True, "must_understand": True}),
        ("stale-while-revalidate=30, stale-if-error=x", {"stale_while_revalidate": 30}),
        ("immutable, no-transform, foo=bar", {"immutable": True, "no_transform": True}),
    ],
)
def test_response_directives(value: str, expect: dict[str, object]) -> None:
    cc = response_cache_control(hdrs(cache_control=value))
    assert cc == ResponseCacheControl(**expect)  # type: ignore[arg-type]


def test_duplicate_field_lines_are_one_list() -> None:
    """RFC 9110 §5.3: several Cache-Control lines combine into one list."""
    headers = [(b"cache-control", b"public"), (b"cache-control", b"max-age=5")]
    assert response_cache_control(headers) == ResponseCacheControl(public=True, max_age=5)


def test_quoted_commas_stay_inside_the_argument() -> None:
    assert parse_directives('no-cache="a, b", max-age=3') == [
        ("no-cache", "a, b"),
        ("max-age", "3"),
    ]


@pytest.mark.parametrize(
    ("fields", "targeted", "expect"),
    [
        ({"cache_control": "max-age=1"}, None, ResponseCacheControl(max_age=1)),
        (
            {"cache_control": "no-store", "cdn_cache_control": "max-age=9"},
            None,
            ResponseCacheControl(max_age=9, targeted=True),
        ),  # RFC 9213 §2.2: CDN-Cache-Control instead of Cache-Control
        (
            {"cdn_cache_control": "max-age=9", "edge_cc": "no-store"},
            "Edge-CC",
            ResponseCacheControl(no_store=True, targeted=True),
        ),  # a configured targeted field first
        (
            {"cache_control": "max-age=1", "cdn_cache_control": "  "},
            None,
            ResponseCacheControl(max_age=1),
        ),  # RFC 9213 §2.2: an empty targeted field is ignored
        (
            {"cache_control": "max-age=1", "cdn_cache_control": "x-unknown"},
            None,
            ResponseCacheControl(max_age=1),
        ),  # nothing this cache can use in it: fall through
    ],
)
def test_targeted_fields(
    fields: dict[str, str], targeted: str | None, expect: ResponseCacheControl
) -> None:
    assert response_cache_control(hdrs(**fields), targeted_field=targeted) == expect


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ({}, RequestCacheControl()),
        ({"cache_control": "max-age=0"}, RequestCacheControl(max_age=0)),
        ({"cache_control": "max-age=bad"}, RequestCacheControl(max_age=0)),
        ({"cache_control": "max-stale"}, RequestCacheControl(max_stale=math.inf)),
        ({"cache_control": "max-stale=30"}, RequestCacheControl(max_stale=30)),
        ({"cache_control": "max-stale=x"}, RequestCacheControl()),
        ({"cache_control": "min-fresh=5"}, RequestCacheControl(min_fresh=5)),
        (
            {"cache_control": "No-Cache, NO-STORE"},
            RequestCacheControl(no_cache=True, no_store=True),
        ),
        ({"cache_control": "only-if-cached"}, RequestCacheControl(only_if_cached=True)),
        ({"cache_control": "stale-if-error=60"}, RequestCacheControl(stale_if_error=60)),
        ({"pragma": "no-cache"}, RequestCacheControl(no_cache=True)),  # §5.4
        ({"pragma": "foo, No-Cache"}, RequestCacheControl(no_cache=True)),
        ({"pragma": "no-cache", "cache_control": "max-age=5"}, RequestCacheControl(max_age=5)),
    ],
)
def test_request_directives(fields: dict[str, str], expect: RequestCacheControl) -> None:
    """RFC 9111 §5.2.1; Pragma only counts without Cache-Control (§5.4)."""
    assert request_cache_control(hdrs(**fields)) == expect

"""Invalidation after unsafe methods (RFC 9111 §4.4)."""

from __future__ import annotations

import pytest

from tests.http.support import hdrs
from tiercache_mw.http.invalidation import UNSAFE_METHODS, invalidation_urls

URL = "http://example.com/items/1"


@pytest.mark.parametrize(
    ("method", "unsafe"),
    [("POST", True), ("PUT", True), ("DELETE", True), ("PATCH", True), ("PROPPATCH", True),
     ("GET", False), ("HEAD", False), ("OPTIONS", False), ("TRACE", False)],
)  # fmt: skip
def test_unsafe_methods(method: str, unsafe: bool) -> None:
    """RFC 9110 §9.2.1: everything not known to be safe is unsafe, unknown methods included."""
    assert (method in UNSAFE_METHODS) is unsafe


@pytest.mark.parametrize(
    ("method", "status", "fields", "expect"),
    [
        ("POST", 200, {}, [URL]),
        ("POST", 303, {}, [URL]),
        ("POST", 404, {}, []),  # §4.4: only a non-error status
        ("POST", 500, {}, []),
        ("GET", 200, {}, []),
        ("POST", 201, {"location": "/items/2"}, [URL, "http://example.com/items/2"]),
        (
            "PUT",
            200,
            {"content_location": "2?b=1&a=2"},
            [URL, "http://example.com/items/2?a=2&b=1"],
        ),
        ("POST", 201, {"location": "http://EXAMPLE.com:80/x"}, [URL, "http://example.com/x"]),
        ("POST", 201, {"location": "http://other.example/x"}, [URL]),  # another origin
        ("POST", 201, {"location": "https://example.com/x"}, [URL]),  # another scheme
        ("POST", 201, {"location": "/items/1"}, [URL]),  # no duplicates
        ("POST", 201, {"location": "http://[bad"}, [URL]),
    ],
)
def test_invalidation_urls(
    method: str, status: int, fields: dict[str, str], expect: list[str]
) -> None:
    assert invalidation_urls(method, status, URL, hdrs(**fields)) == expect

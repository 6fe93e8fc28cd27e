"""Cache-Status (RFC 9211) in Structured Field syntax (RFC 8941)."""

from __future__ import annotations

from typing import Any

import pytest

from tiercache_mw.http.cache_status import cache_status


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        ({"hit": True, "ttl": 117.9, "detail": "hot"}, "tiercache; hit; ttl=117; detail=hot"),
        ({"hit": True, "ttl": -10.0, "detail": "cold"}, "tiercache; hit; ttl=-10; detail=cold"),
        ({"fwd": "uri-miss", "stored": True}, "tiercache; fwd=uri-miss; stored"),
        ({"fwd": "vary-miss", "stored": True}, "tiercache; fwd=vary-miss; stored"),
        ({"fwd": "stale", "fwd_status": 304}, "tiercache; fwd=stale; fwd-status=304"),
        (
            {"fwd": "request", "fwd_status": 200, "stored": True},
            "tiercache; fwd=request; fwd-status=200; stored",
        ),
        ({"fwd": "bypass"}, "tiercache; fwd=bypass"),
        ({"fwd": "method"}, "tiercache; fwd=method"),
        ({"fwd": "miss"}, "tiercache; fwd=miss"),
        (
            {"fwd": "uri-miss", "fwd_status": 200, "collapsed": True},
            "tiercache; fwd=uri-miss; fwd-status=200; collapsed",
        ),
        (
            {"fwd": "stale", "fwd_status": 503, "detail": "stale-if-error"},
            "tiercache; fwd=stale; fwd-status=503; detail=stale-if-error",
        ),
        (
            {"fwd": "uri-miss", "key": 'http://e/p?q="x"'},
            'tiercache; fwd=uri-miss; key="http://e/p?q=\\"x\\""',
        ),  # §2.7: an sf-string
        ({"hit": True, "ttl": 1, "key": "a\nb\\"}, 'tiercache; hit; ttl=1; key="a%0Ab\\\\"'),
        ({"fwd": "uri-miss", "detail": "two words"}, 'tiercache; fwd=uri-miss; detail="two words"'),
    ],
)
def test_forms(kwargs: dict[str, Any], expect: str) -> None:
    assert cache_status("tiercache", **kwargs) == expect.encode()


@pytest.mark.parametrize(
    ("ttl", "expect"),
    [(117.9, 117), (0.4, 0), (0.0, 0), (-0.4, -1), (-1.0, -1), (-10.5, -11)],
)
def test_ttl_is_rounded_down(ttl: float, expect: int) -> None:
    """§2.4: ttl is negative once the response is stale, so a fraction past it is -1."""
    assert cache_status("c", hit=True, ttl=ttl) == f"c; hit; ttl={expect}".encode()


def test_a_name_that_is_not_a_token_is_a_string() -> None:
    """RFC 9211 §2: the member is an sf-token or sf-string naming the cache."""
    assert cache_status("my cache", fwd="miss") == b'"my cache"; fwd=miss'
    assert cache_status("edge", hit=True, ttl=0) == b"edge; hit; ttl=0"

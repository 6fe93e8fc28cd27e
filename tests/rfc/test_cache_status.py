"""RFC 9211 Cache-Status end to end: an upstream's members come first, ours last (§2), and
the parameters say what happened (§2.1-§2.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rfc.origin import Answer, Harness, wsgi_client
from tiercache_mw.wsgi import StartResponse, WSGIEnviron

UPSTREAM = "varnish; hit; ttl=30"
UPSTREAM_PAGE = {"cache-control": "max-age=60", "etag": '"u"', "cache-status": UPSTREAM}


@pytest.mark.parametrize(
    ("request_fields", "ours"),
    [
        ({}, "tiercache; hit; ttl=60; detail=hot"),  # the hot path
        ({"cache-control": "max-stale=0"}, "tiercache; hit; ttl=60; detail=hot"),  # full path
        ({"if-none-match": '"u"'}, "tiercache; hit; ttl=60; detail=hot"),  # 304 from the cache
        ({"range": "bytes=0-1"}, "tiercache; hit; ttl=60; detail=hot"),  # 206 from the cache
        ({"cache-control": "no-store"}, "tiercache; fwd=request; fwd-status=200"),
    ],
    ids=["hot-hit", "full-path-hit", "304", "206", "forwarded"],
)
async def test_upstream_cache_status_is_kept_and_ours_comes_last(
    cache: Harness, request_fields: dict[str, str], ours: str
) -> None:
    cache.script("/u", Answer(headers=UPSTREAM_PAGE))
    miss = await cache.get("/u")
    assert miss.headers.get_list("cache-status") == [UPSTREAM, "tiercache; fwd=uri-miss; stored"]
    answer = await cache.get("/u", **{k.replace("-", "_"): v for k, v in request_fields.items()})
    assert answer.headers.get_list("cache-status") == [UPSTREAM, ours]


async def test_pass_keeps_the_upstream_member(cache: Harness) -> None:
    cache.script("/p", Answer(headers={"cache-control": "no-store", "cache-status": UPSTREAM}))
    response = await cache.get("/p")
    assert response.headers.get_list("cache-status") == [UPSTREAM, "tiercache; fwd=uri-miss"]


async def test_a_304_update_replaces_the_stored_upstream_member(cache: Harness) -> None:
    """RFC 9111 §3.2: a field in the 304 replaces the stored one, Cache-Status included."""
    cache.script("/r", Answer(headers={**UPSTREAM_PAGE, "cache-control": "max-age=10"}))
    await cache.get("/r")
    cache.clock.advance(20)
    renewed = "varnish; fwd=stale; fwd-status=304"
    cache.script("/r", Answer(304, {"etag": '"u"', "cache-status": renewed}))
    validated = await cache.get("/r")
    assert validated.headers.get_list("cache-status") == [
        renewed,
        "tiercache; fwd=stale; fwd-status=304",
    ]
    hit = await cache.get("/r")
    assert hit.headers.get_list("cache-status")[0] == renewed


def test_wsgi_keeps_the_upstream_member(tmp_path: Path) -> None:
    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("cache-control", "max-age=60"), ("cache-status", UPSTREAM)])
        return [b"x"]

    with wsgi_client(app, tmp_path) as client:
        for ours in ("tiercache; fwd=uri-miss; stored", "tiercache; hit; ttl="):
            upstream, last = client.get("/w").headers.getlist("cache-status")
            assert upstream == UPSTREAM
            assert last.startswith(ours)

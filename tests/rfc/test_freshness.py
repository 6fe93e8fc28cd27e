"""RFC 9111 §4.2: freshness from each source, and Age (§4.2.3, §5.1), end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from werkzeug.http import http_date, parse_date

from tests.live import asgi_server
from tests.rfc.origin import Answer, Harness, is_hit, local_config, status_of, wsgi_client
from tiercache_mw import CacheMiddleware, TierCache
from tiercache_mw.wsgi import StartResponse, WSGIEnviron


@pytest.mark.parametrize(
    ("headers", "fresh_at", "stale_at"),
    [
        ({"cache-control": "max-age=100"}, 90, 110),
        ({"cache-control": "s-maxage=100, max-age=5"}, 90, 110),  # §4.2.1: s-maxage first
        ({"cache-control": "MAX-AGE=100"}, 90, 110),  # §5.2: directive names are case-insensitive
        ({"cache-control": 'max-age="100"'}, 90, 110),  # §5.2: quoted form accepted
    ],
    ids=["max-age", "s-maxage-over-max-age", "uppercase", "quoted"],
)
async def test_freshness_from_cache_control(
    cache: Harness, headers: dict[str, str], fresh_at: float, stale_at: float
) -> None:
    """§4.2.1: the freshness lifetime comes from s-maxage, then max-age."""
    cache.script("/r", Answer(headers=headers))
    await cache.get("/r")
    cache.clock.advance(fresh_at)
    assert is_hit(await cache.get("/r"))
    cache.clock.advance(stale_at - fresh_at)
    assert not is_hit(await cache.get("/r"))
    assert cache.origin.calls["/r"] == 2


async def test_freshness_from_expires_minus_date(cache: Harness) -> None:
    """§4.2.1: without max-age, Expires - Date is the lifetime."""
    cache.script(
        "/e",
        lambda _: Answer(headers={"date": cache.clock.date(), "expires": cache.clock.date(100)}),
    )
    await cache.get("/e")
    cache.clock.advance(90)
    assert is_hit(await cache.get("/e"))
    cache.clock.advance(20)
    assert not is_hit(await cache.get("/e"))


async def test_invalid_expires_means_already_expired(cache: Harness) -> None:
    """§5.3: an invalid Expires (e.g. "0") is a time in the past."""
    cache.script("/x", Answer(headers={"expires": "0", "etag": '"v"'}))
    await cache.get("/x")
    assert not is_hit(await cache.get("/x"))


async def test_heuristic_freshness_from_last_modified(cache: Harness) -> None:
    """§4.2.2: 10 % of (Date - Last-Modified) for a heuristically cacheable status."""
    cache.script(
        "/h",
        lambda _: Answer(
            headers={"date": cache.clock.date(), "last-modified": cache.clock.date(-1000)}
        ),
    )
    await cache.get("/h")
    cache.clock.advance(90)
    assert is_hit(await cache.get("/h"))
    cache.clock.advance(20)
    assert not is_hit(await cache.get("/h"))


async def test_rule_ttl_applies_when_the_response_sets_none(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        routes=[{"pattern": "/ruled", "tags": {"type": "ruled"}}],
        ttl_rules=[{"tag": {"type": "ruled"}, "ttl_seconds": 50}],
    )
    try:
        harness.script("/ruled", Answer())
        await harness.get("/ruled")
        harness.clock.advance(40)
        assert is_hit(await harness.get("/ruled"))
        harness.clock.advance(20)
        assert not is_hit(await harness.get("/ruled"))
    finally:
        await harness.close()


async def test_override_origin_rule_wins_over_max_age(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        routes=[{"pattern": "/o", "tags": {"type": "o"}}],
        ttl_rules=[{"tag": {"type": "o"}, "ttl_seconds": 500, "override_origin": True}],
    )
    try:
        harness.script("/o", Answer(headers={"cache-control": "max-age=10"}))
        await harness.get("/o")
        harness.clock.advance(300)
        assert is_hit(await harness.get("/o"))
    finally:
        await harness.close()


async def test_age_counts_upstream_age_and_residence(cache: Harness) -> None:
    """§4.2.3: Age = the Age the upstream sent + time resident here; ttl shrinks with it."""
    cache.script("/aged", lambda _: Answer(headers={"cache-control": "max-age=100", "age": "30"}))
    await cache.get("/aged")
    cache.clock.advance(10)
    hit = await cache.get("/aged")
    assert hit.headers["age"] == "40"
    assert "ttl=60" in status_of(hit)


async def test_response_with_upstream_age_past_lifetime_is_stale(cache: Harness) -> None:
    """§4.2.3: an Age over max-age makes the response stale on arrival."""
    cache.script(
        "/old", Answer(headers={"cache-control": "max-age=10", "age": "20", "etag": '"o"'})
    )
    await cache.get("/old")
    assert not is_hit(await cache.get("/old"))


async def test_hits_add_no_date_to_a_response_stored_without_one(cache: Harness) -> None:
    """The server dates every response it sends; the cache adds no Date of its own on a hit
    (hot path or full path), which behind uvicorn or gunicorn would be a second Date line."""
    cache.script("/d", lambda _: Answer(headers={"expires": cache.clock.date(10)}))
    await cache.get("/d")
    cache.clock.advance(6)
    hot = await cache.get("/d")
    full = await cache.get("/d", cache_control="max-stale=0")  # not the hot path's request
    for hit in (hot, full):
        assert is_hit(hit)
        assert "date" not in hit.headers
        assert hit.headers["age"] == "6"


def test_wsgi_hits_add_no_date(tmp_path: Path) -> None:
    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("expires", http_date(time.time() + 60))])
        return [b"x"]

    with wsgi_client(app, tmp_path) as client:
        client.get("/w")
        hits = [client.get("/w"), client.get("/w", headers={"cache-control": "max-stale=0"})]
        for hit in hits:
            assert hit.headers["cache-status"].startswith("tiercache; hit;")
            assert hit.headers.getlist("date") == []


async def test_uvicorn_hit_carries_one_date(tmp_path: Path) -> None:
    """Behind a real uvicorn with its defaults: the server dates the hit, and it is the only
    Date line; Age says how old the stored response is."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"expires", http_date(time.time() + 60).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    middleware = CacheMiddleware(app, cache=TierCache.from_dict(local_config(tmp_path)))
    try:
        # uvicorn serves from a socket bound before it starts (no free-port race) and the
        # context raises if it does not start.
        with asgi_server(middleware) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await client.get("/u")
                await asyncio.sleep(1.1)
                hit = await client.get("/u")
        assert hit.headers["cache-status"].startswith("tiercache; hit;")
        [date] = hit.headers.get_list("date")
        assert parse_date(date) is not None
        assert int(hit.headers["age"]) >= 1
    finally:
        await middleware.close()

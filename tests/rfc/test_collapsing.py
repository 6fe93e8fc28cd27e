"""Request collapsing: concurrent misses for one key make one call to the app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tests.rfc.origin import Answer, FakeClock, Harness, local_config, status_of
from tiercache_mw import CacheMiddleware, TierCache
from tiercache_mw.engine import RequestView


class GatedApp:
    """Answers only once the test opens the gate, so that requests pile up meanwhile."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"shared"})


async def run_concurrently(tmp_path: Path, headers: list[tuple[bytes, bytes]], count: int) -> Any:
    harness_config = local_config(tmp_path)
    app = GatedApp(headers)
    middleware = CacheMiddleware(app, cache=TierCache.from_dict(harness_config))
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://origin.test") as client:
        requests = [asyncio.create_task(client.get("/same")) for _ in range(count)]
        for _ in range(100):
            if app.calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        app.gate.set()
        responses = await asyncio.gather(*requests)
    await middleware.close()
    return app, responses


async def test_twenty_concurrent_misses_make_one_app_call(tmp_path: Path) -> None:
    app, responses = await run_concurrently(
        tmp_path, [(b"cache-control", b"max-age=60"), (b"content-length", b"6")], 20
    )
    assert app.calls == 1
    assert all(response.content == b"shared" for response in responses)
    statuses = [status_of(response) for response in responses]
    assert statuses.count("tiercache; fwd=uri-miss; stored") == 1
    collapsed = [status for status in statuses if "collapsed" in status]
    assert len(collapsed) == 19
    assert all(status.startswith("tiercache; fwd=uri-miss") for status in collapsed)


async def test_uncacheable_answer_sends_the_waiters_to_the_app(tmp_path: Path) -> None:
    app, responses = await run_concurrently(
        tmp_path, [(b"cache-control", b"no-store"), (b"content-length", b"6")], 5
    )
    assert app.calls == 5
    assert all(response.content == b"shared" for response in responses)
    assert not any("collapsed" in status_of(response) for response in responses)


async def test_revalidations_collapse_too(cache: Harness) -> None:
    from tests.rfc.origin import Answer

    cache.script("/r", Answer(headers={"cache-control": "max-age=10", "etag": '"r"'}))
    await cache.get("/r")
    cache.clock.advance(20)
    cache.script("/r", Answer(304, {"cache-control": "max-age=100", "etag": '"r"'}))
    responses = await asyncio.gather(*(cache.get("/r") for _ in range(5)))
    assert all(response.content == b"hello" for response in responses)
    assert cache.origin.calls["/r"] <= 2


class GatedValidatingApp:
    """Stores a 200 with an ETag; answers the cache's validators with a 304, once the gate
    opens, so that concurrent revalidations pile up behind the first."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.gate.wait()
        headers = [(b"cache-control", b"max-age=10"), (b"etag", b'"g"')]
        validating = any(name == b"if-none-match" for name, _ in scope["headers"])
        status, body = (304, b"") if validating else (200, b"shared")
        if status == 200:
            headers.append((b"content-length", b"6"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_followers_of_a_304_revalidation_do_not_report_fwd_status_200(
    tmp_path: Path,
) -> None:
    """RFC 9211 §2.3: fwd-status is what the next hop answered: the leader's 304, never the
    stored 200: the adapter passes the leader's received status to its followers."""
    app = GatedValidatingApp()
    middleware = CacheMiddleware(
        app,
        cache=TierCache.from_dict(local_config(tmp_path)),
    )
    clock = FakeClock()
    middleware.engine.clock = clock
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://origin.test") as client:
        await client.get("/g")
        clock.advance(20)
        app.gate.clear()
        requests = [asyncio.create_task(client.get("/g")) for _ in range(3)]
        for _ in range(100):
            if app.calls == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        app.gate.set()
        statuses = [status_of(response) for response in await asyncio.gather(*requests)]
    await middleware.close()
    assert app.calls == 2
    leader, *followers = sorted(statuses, key=lambda status: "collapsed" in status)
    assert leader == "tiercache; fwd=stale; fwd-status=304"
    assert followers == ["tiercache; fwd=stale; fwd-status=304; collapsed"] * 2


async def test_collapsed_reply_reports_the_status_the_leader_received(cache: Harness) -> None:
    """The engine's side of it: given the leader's status, a follower of a validation says
    it; a follower of a plain miss carries it only when it gets another status (a 304 from
    the stored 200), never to repeat the status line."""
    cache.script("/s", Answer(headers={"cache-control": "max-age=10", "etag": '"s"'}))
    await cache.get("/s")
    engine = cache.middleware.engine
    request = RequestView("GET", "http", "origin.test", "/s", "/s", "", [])
    follower = engine.plan(request)
    engine.resolve(follower, await cache.cache.lookup(follower.key))
    assert follower.entry is not None
    follower.fwd = "stale"
    reply = engine.collapsed_reply(follower, cache.clock(), fwd_status=304)
    assert (
        dict(reply.headers)[b"cache-status"] == b"tiercache; fwd=stale; fwd-status=304; collapsed"
    )
    follower.fwd = "uri-miss"
    reply = engine.collapsed_reply(follower, cache.clock(), fwd_status=200)
    assert dict(reply.headers)[b"cache-status"] == b"tiercache; fwd=uri-miss; collapsed"
    follower.request.headers = [(b"if-none-match", b'"s"')]
    reply = engine.collapsed_reply(follower, cache.clock(), fwd_status=200)
    assert reply.status == 304
    assert (
        dict(reply.headers)[b"cache-status"]
        == b"tiercache; fwd=uri-miss; fwd-status=200; collapsed"
    )


async def test_plain_miss_followers_carry_no_fwd_status(tmp_path: Path) -> None:
    """docs/http-semantics.md: a plain miss sending the app's own status carries no
    fwd-status (it would repeat the status line), collapsed ones included."""
    _, responses = await run_concurrently(
        tmp_path, [(b"cache-control", b"max-age=60"), (b"content-length", b"6")], 3
    )
    statuses = sorted(status_of(response) for response in responses)
    assert statuses == [
        "tiercache; fwd=uri-miss; collapsed",
        "tiercache; fwd=uri-miss; collapsed",
        "tiercache; fwd=uri-miss; stored",
    ]

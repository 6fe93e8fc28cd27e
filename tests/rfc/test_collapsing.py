"""Request collapsing: concurrent misses for one key make one call to the app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from tests.rfc.origin import Harness, status_of
from tiercache_mw import CacheMiddleware, TierCache


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
    harness_config: dict[str, Any] = {
        "dry_cache": {"backend": "local", "path": str(tmp_path / "dry")},
        "tracking": {"backend": "sqlite", "path": str(tmp_path / "index.db")},
    }
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

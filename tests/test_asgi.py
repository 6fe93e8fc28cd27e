"""CacheMiddleware end to end: a real Starlette app, driven over httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from tests.apps import BIG_CHUNK, BIG_CHUNKS, cache_config, make_starlette_app
from tests.live import asgi_server
from tiercache_mw import CacheMiddleware, ConfigError, TierCache

Calls = collections.Counter[str]


class Harness:
    def __init__(self, tmp_path: Path, **sections: Any) -> None:
        self.config = cache_config(tmp_path, **sections)
        self.calls: Calls = collections.Counter()
        self.middleware = CacheMiddleware(
            make_starlette_app(self.calls), cache=TierCache.from_dict(self.config)
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.middleware), base_url="http://testserver"
        )

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, **kwargs)

    async def close(self) -> None:
        await self.client.aclose()
        await self.middleware.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.close()


def is_hit(response: httpx.Response, tier: str | None = None) -> bool:
    status = response.headers["cache-status"]
    if not status.startswith("tiercache; hit; ttl="):
        return False
    return tier is None or status.endswith(f"detail={tier}")


async def test_miss_then_hot_hit_calls_app_once(harness: Harness) -> None:
    first = await harness.get("/products/1")
    second = await harness.get("/products/1")
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert is_hit(second, "hot")
    assert second.json() == first.json() == {"id": "1"}
    assert second.headers["etag"] == '"p1"'
    assert int(second.headers["age"]) >= 0
    assert harness.calls["/products/1"] == 1


async def test_head_is_served_from_the_get_entry(harness: Harness) -> None:
    get = await harness.get("/products/7")
    head = await harness.client.head("/products/7")
    assert is_hit(head, "hot")
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert harness.calls["/products/7"] == 1


async def test_route_rule_ttl_expires(harness: Harness) -> None:
    """ttl_rules[type=ruled] gives 1 s of freshness to a response that sets none."""
    assert "stored" in (await harness.get("/ruled/a")).headers["cache-status"]
    assert is_hit(await harness.get("/ruled/a"))
    await asyncio.sleep(1.2)
    expired = await harness.get("/ruled/a")
    assert not is_hit(expired)
    assert harness.calls["/ruled/a"] == 2


async def test_response_without_freshness_or_rule_is_not_reused(harness: Harness) -> None:
    await harness.get("/plain/x")
    second = await harness.get("/plain/x")
    assert not is_hit(second)
    assert harness.calls["/plain/x"] == 2


async def test_bypass_route_never_uses_the_cache(harness: Harness) -> None:
    for _ in range(2):
        response = await harness.get("/account/me")
        assert response.headers["cache-status"] == "tiercache; fwd=bypass"
    assert harness.calls["/account/me"] == 2


@pytest.mark.parametrize(
    ("path", "request_headers"),
    [
        ("/nostore", {}),
        ("/private", {}),
        ("/cookie", {}),
        ("/auth", {"authorization": "Bearer secret"}),
    ],
    ids=["no-store", "private", "set-cookie", "authorization"],
)
async def test_responses_a_shared_cache_must_not_reuse(
    harness: Harness, path: str, request_headers: dict[str, str]
) -> None:
    first = await harness.get(path, headers=request_headers)
    second = await harness.get(path, headers=request_headers)
    assert "stored" not in first.headers["cache-status"]
    assert not is_hit(second)
    assert harness.calls[path] == 2
    if path == "/cookie":
        assert second.headers["set-cookie"] == "session=abc"


async def test_oversize_body_streams_whole_and_is_not_stored(harness: Harness) -> None:
    for _ in range(2):
        response = await harness.get("/big")
        assert response.content == BIG_CHUNK * BIG_CHUNKS
        assert not is_hit(response)
    assert harness.calls["/big"] == 2


async def wait_until_settled(cache: TierCache, expected_entries: int) -> dict[str, Any]:
    """Demotion runs in the background: wait (bounded) until every entry sits in some tier."""
    stats: dict[str, Any] = {}
    for _ in range(200):
        stats = await cache.stats()
        total = stats["hot_entries"] + stats["cold_entries"] + stats["dry_entries"]
        if total >= expected_entries:
            return stats
        await asyncio.sleep(0.025)
    raise AssertionError(f"entries never settled: {stats}")


async def test_entries_flow_down_to_dry_and_come_back_up(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        hot_cache={"backend": "ram", "max_size_bytes": 6000},
        cold_cache={"backend": "ram", "max_size_bytes": 12000},
    )
    paths = [f"/items/{n}" for n in range(40)]
    try:
        for path in paths:
            assert "stored" in (await harness.get(path)).headers["cache-status"]
        stats = await wait_until_settled(harness.middleware.cache, len(paths))
        assert stats["dry_entries"] > 0, stats
        assert stats["cold_entries"] > 0, stats
        assert stats["demotions"] > 0
        tiers = collections.Counter[str]()
        # Newest first: a forward scan would promote each old entry and push the next ones
        # it reaches down to dry before it gets there.
        for path in reversed(paths):
            response = await harness.get(path)
            assert is_hit(response), (path, response.headers["cache-status"])
            tier = response.headers["cache-status"].rsplit("detail=", 1)[1]
            tiers[tier] += 1
            assert response.text == f"body of {path}"
            if tier != "hot":
                assert is_hit(await harness.get(path), "hot"), "a hit below hot is promoted"
        assert tiers["cold"] > 0, tiers
        assert tiers["dry"] > 0, tiers
        assert all(harness.calls[path] == 1 for path in paths)
        assert (await harness.middleware.cache.stats())["promotions"] >= tiers["cold"]
    finally:
        await harness.close()


async def test_restart_serves_everything_from_dry_without_the_app(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    paths = [f"/items/{n}" for n in range(10)]
    for path in paths:
        await first.get(path)
    await first.close()

    second = Harness(tmp_path)
    try:
        for path in paths:
            response = await second.get(path)
            assert is_hit(response, "dry"), response.headers["cache-status"]
            assert response.text == f"body of {path}"
        assert sum(second.calls.values()) == 0
    finally:
        await second.close()


async def test_purge_by_tag_removes_only_tagged_entries(harness: Harness) -> None:
    for path in ("/products/1", "/products/2", "/other"):
        await harness.get(path)
    removed = await harness.middleware.cache.purge(tags={"type": "product"})
    assert removed == 2
    assert not is_hit(await harness.get("/products/1"))
    assert not is_hit(await harness.get("/products/2"))
    assert is_hit(await harness.get("/other"))


async def test_purge_by_url(harness: Harness) -> None:
    await harness.get("/products/3")
    await harness.middleware.cache.purge(url="http://testserver/products/3")
    assert not is_hit(await harness.get("/products/3"))


def test_broken_yaml_gives_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tiercache.yaml"
    path.write_text("hot_cache:\n  backend: ram\n  max_size_gb: lots\n")
    with pytest.raises(ConfigError) as caught:
        CacheMiddleware(make_starlette_app(collections.Counter()), config=str(path))
    message = str(caught.value)
    assert "tiercache.yaml" in message
    assert "hot_cache.max_size_gb" in message


def test_lifespan_starts_and_closes_the_cache(tmp_path: Path) -> None:
    """Closing through the app's lifespan persists hot RAM entries to dry."""
    config = cache_config(tmp_path)
    calls: Calls = collections.Counter()
    app = CacheMiddleware(make_starlette_app(calls), config=config)
    with TestClient(app) as client:
        assert client.get("/products/5").headers["cache-status"].endswith("stored")
        assert client.get("/products/5").headers["cache-status"].startswith("tiercache; hit")
    reopened = TierCache.from_dict(config)
    try:
        assert reopened.stats_sync()["dry_entries"] >= 1
    finally:
        reopened.close_sync()


async def test_purge_by_url_in_any_spelling(harness: Harness) -> None:
    """The query is stored normalised (sorted); purge(url=...) normalises what it is given."""
    await harness.get("/products/4?b=2&a=1")
    assert is_hit(await harness.get("/products/4?a=1&b=2"))
    await harness.middleware.cache.purge(url="http://TESTSERVER:80/products/4?b=2&a=1")
    assert not is_hit(await harness.get("/products/4?a=1&b=2"))


# ---- an app served under a root_path -------------------------------------------------------
# Route patterns are the app's own paths: they match scope["path"] without the root_path, as
# WSGI's PATH_INFO excludes SCRIPT_NAME; the cache key keeps the whole path.
async def test_routes_match_under_uvicorn_root_path(tmp_path: Path) -> None:
    """uvicorn --root-path /app behind a proxy that strips /app: a request for /account/me
    reaches the app as path /app/account/me with root_path /app."""
    calls: Calls = collections.Counter()
    middleware = CacheMiddleware(
        make_starlette_app(calls), cache=TierCache.from_dict(cache_config(tmp_path))
    )
    try:
        with asgi_server(middleware, root_path="/app") as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                bypassed = [await client.get("/account/me") for _ in range(2)]
                ruled = [await client.get("/ruled/r") for _ in range(2)]
    finally:
        await middleware.close()
    assert [r.headers["cache-status"] for r in bypassed] == ["tiercache; fwd=bypass"] * 2
    assert calls["/app/account/me"] == 2
    # /ruled/{name} is tagged with a rule that gives it a TTL (its response sets none).
    assert is_hit(ruled[1])
    assert calls["/app/ruled/r"] == 1


async def test_routes_match_inside_a_starlette_mount(tmp_path: Path) -> None:
    calls: Calls = collections.Counter()
    middleware = CacheMiddleware(
        make_starlette_app(calls), cache=TierCache.from_dict(cache_config(tmp_path))
    )
    shop = Starlette(routes=[Mount("/shop", app=middleware)])
    transport = httpx.ASGITransport(app=shop)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        statuses = [(await client.get("/shop/account/me")).headers["cache-status"] for _ in "ab"]
        root = await client.get("/shop/")
    await middleware.close()
    assert statuses == ["tiercache; fwd=bypass"] * 2
    assert root.status_code == 200


async def test_close_waits_for_a_delete_an_update_started(tmp_path: Path) -> None:
    """A 304 that brings Set-Cookie makes the entry unstorable: its removal from the tiers
    below runs in the background and must finish before close(), or the dry copy survives
    and is used again after a restart. With these local backends the delete has so far
    finished within the cache's own close() even when close() did not wait for it; a slower
    tier (S3, a remote redis) loses that race."""
    seen: list[bool] = []  # whether each request to the app carried a validator
    with_cookie = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        validating = any(name == b"if-none-match" for name, _ in scope["headers"])
        seen.append(validating)
        headers = [(b"etag", b'"e"'), (b"cache-control", b"max-age=0")]
        if with_cookie:
            headers.append((b"set-cookie", b"sid=1"))
        status = 304 if validating else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if validating else b"body"})

    async def get_once() -> list[Message]:
        """One GET straight through the ASGI interface, then close() with nothing awaited
        in between (as a server's shutdown right after a response): a client library's
        awaits would give the background delete its turn first."""
        middleware = CacheMiddleware(app, cache=TierCache.from_dict(cache_config(tmp_path)))
        scope = {
            "type": "http", "method": "GET", "scheme": "http", "path": "/page",
            "raw_path": b"/page", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"t")], "server": ("t", 80),
        }  # fmt: skip
        messages: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            messages.append(message)

        await middleware(scope, receive, send)
        await middleware.close()  # persists what RAM holds to dry, as at shutdown
        return messages

    await get_once()  # stored, then persisted to dry
    with_cookie = True
    validated = await get_once()  # the 304's Set-Cookie makes the stored copy unstorable
    assert (b"set-cookie", b"sid=1") in validated[0]["headers"]
    await get_once()
    assert seen == [False, True, False]  # the third found nothing to validate

"""CacheMiddleware end to end: a real Starlette app, driven over httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.apps import BIG_CHUNK, BIG_CHUNKS, cache_config, make_starlette_app
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

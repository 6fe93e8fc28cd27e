"""The middleware scenarios of tests/test_asgi.py with shared backends: cold=memcached,
cold=redis, dry=s3, tracking=redis, tracking=postgres."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.services import PostgresServer, S3Server, ServerProcess
from tests.test_asgi import Harness, is_hit, wait_until_settled

pytestmark = pytest.mark.services

Sections = dict[str, Any]
SMALL_HOT = {"backend": "ram", "max_size_bytes": 6000}
SMALL_COLD = {"backend": "ram", "max_size_bytes": 12000}


def cold_memcached(request: pytest.FixtureRequest, unique: str) -> Sections:
    server: ServerProcess = request.getfixturevalue("memcached_server")
    return {
        "cold_cache": {"backend": "memcached", "ttl_hours": 1},
        "memcached": {"host": "127.0.0.1", "port": server.port, "prefix": f"{unique}:"},
    }


def redis_section(request: pytest.FixtureRequest, unique: str) -> Sections:
    server: ServerProcess = request.getfixturevalue("redis_server")
    return {"redis": {"host": "127.0.0.1", "port": server.port, "prefix": f"{unique}:"}}


def cold_redis(request: pytest.FixtureRequest, unique: str) -> Sections:
    return {"cold_cache": {"backend": "redis", "ttl_hours": 1}, **redis_section(request, unique)}


def dry_s3(request: pytest.FixtureRequest, unique: str) -> Sections:
    server: S3Server = request.getfixturevalue("s3_server")
    return {"dry_cache": {"backend": "s3"}, "s3": server.config(bucket=unique)}


def tracking_redis(request: pytest.FixtureRequest, unique: str) -> Sections:
    return {"tracking": {"backend": "redis"}, **redis_section(request, unique)}


def tracking_postgres(request: pytest.FixtureRequest, unique: str) -> Sections:
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return {
        "tracking": {"backend": "postgres"},
        "postgres": {"dsn": server.dsn, "table": f"idx_{unique}"},
    }


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, str], Sections]] = {
    "cold=memcached": cold_memcached,
    "cold=redis": cold_redis,
    "dry=s3": dry_s3,
    "tracking=redis": tracking_redis,
    "tracking=postgres": tracking_postgres,
}
SHARED_COLD = {"cold=memcached", "cold=redis"}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, unique: str) -> tuple[str, Sections]:
    return request.param, BACKENDS[request.param](request, unique)


async def test_miss_then_hot_hit_calls_app_once(
    tmp_path: Path, backend: tuple[str, Sections]
) -> None:
    harness = Harness(tmp_path, **backend[1])
    try:
        first = await harness.get("/products/1")
        second = await harness.get("/products/1")
        assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
        assert is_hit(second, "hot")
        assert second.json() == {"id": "1"}
        assert harness.calls["/products/1"] == 1
    finally:
        await harness.close()


async def test_entries_flow_down_and_come_back_up(
    tmp_path: Path, backend: tuple[str, Sections]
) -> None:
    name, sections = backend
    harness = Harness(tmp_path, **{"hot_cache": SMALL_HOT, "cold_cache": SMALL_COLD, **sections})
    paths = [f"/items/{n}" for n in range(40)]
    cache = harness.middleware.cache
    try:
        for path in paths:
            assert "stored" in (await harness.get(path)).headers["cache-status"]
        stats = await wait_until_settled(cache, len(paths))
        assert stats["demotions"] > 0, stats
        assert stats["cold_entries"] > 0, stats
        if name in SHARED_COLD:
            # cold is shared and expires silently: demotion writes through to dry too.
            stats = await _wait_for(cache, "dry_entries", 1)
            await cache.flush(tier="cold")
        else:
            assert stats["dry_entries"] > 0, stats
        tiers = collections.Counter[str]()
        # Newest first, as in tests/test_asgi.py: a forward scan would promote each old
        # entry and push the next ones it reaches down to dry before it gets there.
        for path in reversed(paths):
            response = await harness.get(path)
            assert is_hit(response), (path, response.headers["cache-status"])
            assert response.text == f"body of {path}"
            tier = response.headers["cache-status"].rsplit("detail=", 1)[1]
            tiers[tier] += 1
            if tier != "hot":
                assert is_hit(await harness.get(path), "hot"), "a hit below hot is promoted"
        assert tiers["dry"] > 0, tiers
        if name not in SHARED_COLD:
            assert tiers["cold"] > 0, tiers
        assert all(harness.calls[path] == 1 for path in paths)
        assert (await cache.stats())["promotions"] > 0
    finally:
        await harness.close()


async def test_shared_cold_tier_serves_a_demoted_entry(
    tmp_path: Path, request: pytest.FixtureRequest, unique: str
) -> None:
    for name in sorted(SHARED_COLD):
        sections = BACKENDS[name](request, unique + name[5:])
        (tmp_path / name).mkdir()
        harness = Harness(tmp_path / name, **{"hot_cache": SMALL_HOT, **sections})
        try:
            for n in range(40):
                await harness.get(f"/items/{n}")
            await _wait_for(harness.middleware.cache, "cold_entries", 1)
            hits = [await harness.get(f"/items/{n}") for n in range(40)]
            assert any(is_hit(r, "cold") for r in hits), name
        finally:
            await harness.close()


async def test_restart_serves_everything_without_the_app(
    tmp_path: Path, backend: tuple[str, Sections]
) -> None:
    first = Harness(tmp_path, **backend[1])
    paths = [f"/items/{n}" for n in range(10)]
    for path in paths:
        await first.get(path)
    await first.close()

    second = Harness(tmp_path, **backend[1])
    try:
        for path in paths:
            response = await second.get(path)
            assert is_hit(response), response.headers["cache-status"]
            assert response.text == f"body of {path}"
            if backend[0] not in SHARED_COLD:
                assert is_hit(response, "dry"), response.headers["cache-status"]
        assert sum(second.calls.values()) == 0
    finally:
        await second.close()


async def test_purge_by_tag_and_by_url(tmp_path: Path, backend: tuple[str, Sections]) -> None:
    # The purge must reach below hot, where only the tracking index knows the tags. A restart
    # puts every entry there: close() persists RAM to dry, and the new process starts with
    # empty RAM and the index in the backend under test. (flush(tier="hot") empties hot, it
    # does not demote, so with a RAM cold tier it used to leave nothing to purge.)
    first = Harness(tmp_path, **backend[1])
    for path in ("/products/1", "/products/2", "/products/3", "/other", "/items/9"):
        assert "stored" in (await first.get(path)).headers["cache-status"]
    await first.close()

    harness = Harness(tmp_path, **backend[1])
    cache = harness.middleware.cache
    try:
        assert await cache.purge(tags={"type": "product"}) == 3
        assert await cache.purge(url="http://testserver/items/9") == 1
        for path in ("/products/1", "/products/2", "/products/3", "/items/9"):
            assert not is_hit(await harness.get(path)), path
        assert is_hit(await harness.get("/other"))
        # and from hot, in the same process
        await harness.get("/products/9")
        assert is_hit(await harness.get("/products/9"), "hot")
        await cache.purge(url="http://testserver/products/9")
        assert not is_hit(await harness.get("/products/9"))
        assert harness.calls["/other"] == 0
    finally:
        await harness.close()


async def _wait_for(cache: Any, stat: str, at_least: int) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for _ in range(200):
        stats = await cache.stats()
        if stats[stat] >= at_least:
            return stats
        await asyncio.sleep(0.025)
    raise AssertionError(f"{stat} never reached {at_least}: {stats}")

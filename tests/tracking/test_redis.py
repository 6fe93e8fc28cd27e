"""RedisTracking against a real redis-server (the shared behaviour runs on postgres too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tiercache_mw.config import RedisConfig
from tiercache_mw.tracking.base import Tracking
from tiercache_mw.tracking.redis import RedisTracking

pytestmark = pytest.mark.services

PRODUCT = (("type", "product"),)


class TrackingBehaviour:
    """What every shared tracking backend must do; subclasses provide `tracking`."""

    async def test_record_set_then_get(self, tracking: Tracking) -> None:
        await tracking.record_set("k", "hot", (("type", "product"), ("id", "1")), 120, 1000.0)
        row = await tracking.get("k")
        assert row is not None
        assert (row.tier, row.size, row.hits, row.last_used) == ("hot", 120, 0, 1000.0)
        assert row.tags == (("type", "product"), ("id", "1"))
        assert await tracking.get("missing") is None

    async def test_set_again_replaces_tier_tags_and_size(self, tracking: Tracking) -> None:
        await tracking.record_set("k", "hot", PRODUCT, 100, 1.0)
        await tracking.record_set("k", "cold", (("type", "page"),), 50, 2.0)
        assert await tracking.keys_with_tags(PRODUCT) == []
        assert await tracking.keys_with_tags((("type", "page"),)) == ["k"]
        assert await tracking.totals() == {"cold": (1, 50)}

    async def test_keys_with_tags_needs_every_pair(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", (("type", "product"), ("id", "1")), 1, 1.0)
        await tracking.record_set("b", "hot", (("type", "product"), ("id", "2")), 1, 1.0)
        await tracking.record_set("c", "dry", (("product", "type"),), 1, 1.0)
        assert await tracking.keys_with_tags(PRODUCT) == ["a", "b"]
        assert await tracking.keys_with_tags((("type", "product"), ("id", "2"))) == ["b"]
        assert await tracking.keys_with_tags((("product", "type"),)) == ["c"]

    async def test_hits_add_up_and_last_use_only_moves_forward(self, tracking: Tracking) -> None:
        await tracking.record_set("k", "hot", (), 1, 10.0)
        await tracking.record_hits({"k": (3, 20.0), "unknown": (1, 5.0)})
        await tracking.record_hits({"k": (2, 15.0)})
        row = await tracking.get("k")
        assert row is not None
        assert (row.hits, row.last_used) == (5, 20.0)
        assert await tracking.get("unknown") is None

    async def test_concurrent_hit_batches_lose_no_update(self, tracking: Tracking) -> None:
        await tracking.record_set("k", "hot", (), 1, 1.0)
        await asyncio.gather(*(tracking.record_hits({"k": (1, float(n))}) for n in range(50)))
        row = await tracking.get("k")
        assert row is not None
        assert row.hits == 50

    async def test_move_and_totals_per_tier(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", (), 100, 1.0)
        await tracking.record_set("b", "hot", (), 10, 2.0)
        await tracking.record_move("a", "cold")
        assert await tracking.totals() == {"hot": (1, 10), "cold": (1, 100)}
        assert await tracking.keys_in_tier("cold") == ["a"]
        assert await tracking.keys_in_tier("hot") == ["b"]

    async def test_oldest_lists_least_recently_used_first(self, tracking: Tracking) -> None:
        for n, key in enumerate(["c", "a", "b"]):
            await tracking.record_set(key, "dry", (), 1, float(n))
        await tracking.record_hits({"c": (1, 10.0)})
        assert [row.key for row in await tracking.oldest("dry", 2)] == ["a", "b"]

    async def test_delete_removes_from_tags_tiers_and_totals(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", PRODUCT, 5, 1.0)
        await tracking.record_set("b", "hot", PRODUCT, 5, 1.0)
        await tracking.record_delete(["a", "nope"])
        assert await tracking.keys_with_tags(PRODUCT) == ["b"]
        assert await tracking.totals() == {"hot": (1, 5)}

    async def test_clear_one_tier_or_all(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", PRODUCT, 5, 1.0)
        await tracking.record_set("b", "dry", PRODUCT, 5, 1.0)
        await tracking.clear("hot")
        assert await tracking.keys_with_tags(PRODUCT) == ["b"]
        await tracking.clear()
        assert await tracking.totals() == {}
        assert await tracking.get("b") is None


class TestRedisTracking(TrackingBehaviour):
    @pytest.fixture
    async def tracking(self, redis_settings: RedisConfig) -> AsyncIterator[Tracking]:
        made = RedisTracking(redis_settings)
        await made.start()
        yield made
        await made.clear()
        await made.close()

    async def test_two_processes_share_one_index(
        self, tracking: Tracking, redis_settings: RedisConfig
    ) -> None:
        other = RedisTracking(redis_settings)
        try:
            await tracking.record_set("k", "cold", PRODUCT, 1, 1.0)
            assert await other.keys_with_tags(PRODUCT) == ["k"]
        finally:
            await other.close()

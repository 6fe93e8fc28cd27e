"""The behaviour every tracking backend shares (sqlite, redis, postgres).

Subclass `TrackingContract` once per backend and provide the `make_tracking` fixture: a
factory `make_tracking()` returning a fresh, not yet started tracking index; every index
from one factory shares one store (file, server, table), like several processes would.
The contract starts, clears and closes what it makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tiercache_mw.tracking.base import TrackedEntry, Tracking

__all__ = ["MakeTracking", "TrackingContract"]

MakeTracking = Callable[[], Tracking]

PRODUCT = (("type", "product"),)


class TrackingContract:
    @pytest.fixture
    async def trackings(self, make_tracking: MakeTracking) -> AsyncIterator[
        Callable[[], Awaitable[Tracking]]
    ]:  # fmt: skip
        made: list[Tracking] = []

        async def make() -> Tracking:
            tracking = make_tracking()
            made.append(tracking)
            await tracking.start()
            return tracking

        yield make
        if made:
            await made[0].clear()
        for tracking in made:
            await tracking.close()

    @pytest.fixture
    async def tracking(self, trackings: Callable[[], Awaitable[Tracking]]) -> Tracking:
        return await trackings()

    async def test_implements_the_tracking_protocol(self, tracking: Tracking) -> None:
        assert isinstance(tracking, Tracking)

    async def test_record_set_then_get(self, tracking: Tracking) -> None:
        await tracking.record_set("k", "hot", (("type", "product"), ("id", "1")), 120, 1000.0)
        row = await tracking.get("k")
        assert isinstance(row, TrackedEntry)
        assert (row.key, row.tier, row.size, row.hits, row.last_used) == (
            "k",
            "hot",
            120,
            0,
            1000.0,
        )
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
        await tracking.record_set("b", "cold", (("type", "product"), ("id", "2")), 1, 1.0)
        await tracking.record_set("c", "dry", (("product", "type"),), 1, 1.0)
        assert await tracking.keys_with_tags(PRODUCT) == ["a", "b"]
        assert await tracking.keys_with_tags((("type", "product"), ("id", "2"))) == ["b"]
        assert await tracking.keys_with_tags((("product", "type"),)) == ["c"]
        assert await tracking.keys_with_tags((("type", "nothing"),)) == []

    async def test_a_tag_name_may_repeat(self, tracking: Tracking) -> None:
        tags = (("surrogate", "a"), ("surrogate", "b"), ("url", "http://x/1"))
        await tracking.record_set("k", "hot", tags, 1, 1.0)
        assert await tracking.keys_with_tags((("surrogate", "b"),)) == ["k"]
        assert await tracking.keys_with_tags((("url", "http://x/1"),)) == ["k"]
        row = await tracking.get("k")
        assert row is not None
        assert row.tags == tags

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
        assert row.last_used == 49.0

    async def test_two_indexes_on_one_store_lose_no_update(
        self, trackings: Callable[[], Awaitable[Tracking]]
    ) -> None:
        one, two = await trackings(), await trackings()
        await one.record_set("k", "hot", PRODUCT, 1, 1.0)
        await asyncio.gather(
            *(index.record_hits({"k": (1, 2.0)}) for index in (one, two) for _ in range(20))
        )
        row = await two.get("k")
        assert row is not None
        assert row.hits == 40
        assert await two.keys_with_tags(PRODUCT) == ["k"]

    async def test_move_and_totals_per_tier(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", PRODUCT, 100, 1.0)
        await tracking.record_set("b", "hot", (), 10, 2.0)
        await tracking.record_move("a", "cold")
        await tracking.record_move("missing", "cold")
        assert await tracking.totals() == {"hot": (1, 10), "cold": (1, 100)}
        assert await tracking.keys_in_tier("cold") == ["a"]
        assert await tracking.keys_in_tier("hot") == ["b"]
        assert await tracking.keys_in_tier("dry") == []
        assert await tracking.keys_with_tags(PRODUCT) == ["a"], "a move keeps the tags"

    async def test_oldest_lists_least_recently_used_first(self, tracking: Tracking) -> None:
        for n, key in enumerate(["c", "a", "b"]):
            await tracking.record_set(key, "dry", (), 1, float(n))
        await tracking.record_set("hot-one", "hot", (), 1, 0.5)
        await tracking.record_hits({"c": (1, 10.0)})
        rows = await tracking.oldest("dry", 2)
        assert [row.key for row in rows] == ["a", "b"]
        assert [row.key for row in await tracking.oldest("dry", 10)] == ["a", "b", "c"]

    async def test_delete_removes_from_tags_tiers_and_totals(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", PRODUCT, 5, 1.0)
        await tracking.record_set("b", "hot", PRODUCT, 5, 1.0)
        await tracking.record_delete(["a", "nope"])
        await tracking.record_delete([])
        assert await tracking.get("a") is None
        assert await tracking.keys_with_tags(PRODUCT) == ["b"]
        assert await tracking.totals() == {"hot": (1, 5)}
        assert await tracking.keys_in_tier("hot") == ["b"]

    async def test_clear_one_tier_or_all(self, tracking: Tracking) -> None:
        await tracking.record_set("a", "hot", PRODUCT, 5, 1.0)
        await tracking.record_set("b", "dry", PRODUCT, 5, 1.0)
        await tracking.clear("hot")
        assert await tracking.keys_with_tags(PRODUCT) == ["b"]
        assert await tracking.get("a") is None
        await tracking.clear()
        assert await tracking.totals() == {}
        assert await tracking.get("b") is None
        assert await tracking.keys_with_tags(PRODUCT) == []

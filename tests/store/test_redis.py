"""RedisTier against a real redis-server: server-side TTL, refresh on hit, prefixed flush."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.store.tier_contract import MakeTier, TierContract
from tiercache_mw.config import Config, RedisConfig, TierConfig, TrackingConfig
from tiercache_mw.store.cache import TierCache
from tiercache_mw.store.entry import ENTRY_OVERHEAD_BYTES, Entry, Residency
from tiercache_mw.store.redis import RedisTier, make_client

pytestmark = pytest.mark.services


def entry(key: str, value: object = b"v", *, cold: float | None = 60.0) -> Entry:
    now = time.time()
    return Entry(key, value, (("type", "t"),), Residency(10.0, cold, None), 100, now, now)


@pytest.fixture
async def tier(redis_settings: RedisConfig) -> AsyncIterator[RedisTier]:
    made = RedisTier("cold", TierConfig("redis", 60.0, None), redis_settings)
    yield made
    await made.flush()
    await made.close()


async def test_set_get_round_trips_value_tags_and_residency(tier: RedisTier) -> None:
    await tier.set(entry("k 1/ü", {"a": [1, 2]}))
    got = await tier.get("k 1/ü")
    assert got is not None
    assert got.value == {"a": [1, 2]}
    assert got.tags == (("type", "t"),)
    assert got.residency.cold == 60.0
    assert await tier.get("other") is None


async def test_residency_expires_on_the_server(tier: RedisTier) -> None:
    await tier.set(entry("short", cold=0.3))
    assert await tier.get("short") is not None
    await asyncio.sleep(0.5)
    assert await tier.get("short") is None
    assert (await tier.stats()).entries == 0


async def test_a_hit_refreshes_residency(tier: RedisTier) -> None:
    await tier.set(entry("used", cold=0.6))
    for _ in range(4):
        await asyncio.sleep(0.25)
        assert await tier.get("used") is not None, "each hit restarts the residency"


async def test_stats_count_sizes_and_follow_deletes(tier: RedisTier) -> None:
    await tier.set(entry("a", b"x" * 1000))
    await tier.set(entry("b", b"y" * 10))
    await tier.set(entry("a", b"x" * 500))  # replacing does not double count
    stats = await tier.stats()
    assert stats.entries == 2
    assert 510 < stats.size_bytes < 1000
    assert await tier.delete("a") is True
    assert await tier.delete("a") is False
    assert (await tier.stats()).entries == 1


async def test_flush_removes_only_this_tiers_keys(
    tier: RedisTier, redis_settings: RedisConfig
) -> None:
    hot = RedisTier("hot", TierConfig("redis", 60.0, None), redis_settings)
    client = make_client(redis_settings)
    try:
        await hot.set(entry("same"))
        await tier.set(entry("same"))
        await client.set("unrelated", b"1")
        await tier.flush()
        assert await tier.get("same") is None
        assert await hot.get("same") is not None
        assert await client.get("unrelated") == b"1"
        assert (await tier.stats()).entries == 0
    finally:
        await client.delete("unrelated")
        await client.aclose()
        await hot.flush()
        await hot.close()


async def test_a_corrupt_blob_is_a_miss(tier: RedisTier, redis_settings: RedisConfig) -> None:
    client = make_client(redis_settings)
    try:
        await client.set(f"{redis_settings.prefix}cold:e:bad", b"\xc1garbage")
        assert await tier.get("bad") is None
    finally:
        await client.aclose()


async def test_two_instances_share_entries(tier: RedisTier, redis_settings: RedisConfig) -> None:
    other = RedisTier("cold", TierConfig("redis", 60.0, None), redis_settings)
    try:
        await tier.set(entry("shared", b"from one"))
        got = await other.get("shared")
        assert got is not None
        assert got.value == b"from one"
    finally:
        await other.close()


async def test_down_server_fails_fast() -> None:
    from tests.services import free_port

    tier = RedisTier("cold", TierConfig("redis", 60.0, None), RedisConfig(port=free_port()))
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client raises
        await tier.get("k")
    assert time.monotonic() - started < 2.0
    await tier.close()


class TestRedisTierContract(TierContract):
    @pytest.fixture
    def make_tier(self, redis_settings: RedisConfig) -> MakeTier:
        return lambda name: RedisTier(name, TierConfig("redis", 60.0, None), redis_settings)


async def test_flushing_a_shared_cold_tier_keeps_moves_bound_for_dry(
    tmp_path: Path, redis_settings: RedisConfig
) -> None:
    """An entry leaving hot goes to a shared cold tier and to dry in one move; flushing
    cold while such moves wait must still let them reach dry."""
    size = 10 + ENTRY_OVERHEAD_BYTES
    cache = TierCache(
        Config(
            hot=TierConfig("ram", 3600.0, size),
            cold=TierConfig("redis", 3600.0, None),
            dry=TierConfig("local", None, None, path=str(tmp_path / "dry")),
            tracking=TrackingConfig(path=str(tmp_path / "index.db")),
            redis=redis_settings,
            base_dir=tmp_path,
        )
    )
    keys = [f"k{n}" for n in range(1000)]
    try:
        for key in keys:
            await cache.set(key, key.encode().ljust(10))
        assert (await cache.stats())["pending_demotions"] > 0, "nothing left to race with"
        await cache.flush("cold")
        missing = [key for key in keys if await cache.get(key) is None]
        assert missing == []
    finally:
        await cache.close()

"""MemcachedTier against a real memcached: key hashing, chunking, generations, refresh."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.services import ServerProcess
from tests.store.tier_contract import MakeTier, TierContract
from tiercache_mw.config import MemcachedConfig, TierConfig
from tiercache_mw.store.entry import Entry, Residency
from tiercache_mw.store.memcached import CHUNK_BYTES, MAX_CHUNKS, MemcachedTier

pytestmark = pytest.mark.services


def entry(key: str, value: object = b"v", *, cold: float | None = 60.0) -> Entry:
    now = time.time()
    return Entry(key, value, (("type", "t"),), Residency(10.0, cold, None), 100, now, now)


def make(settings: MemcachedConfig, name: str = "cold") -> MemcachedTier:
    return MemcachedTier(name, TierConfig("memcached", 60.0, None), settings)


@pytest.fixture
async def tier(memcached_settings: MemcachedConfig) -> AsyncIterator[MemcachedTier]:
    made = make(memcached_settings)
    yield made
    await made.close()


async def test_set_get_round_trips_value_tags_and_residency(tier: MemcachedTier) -> None:
    await tier.set(entry("plain", {"a": [1, 2]}))
    got = await tier.get("plain")
    assert got is not None
    assert got.value == {"a": [1, 2]}
    assert got.tags == (("type", "t"),)
    assert await tier.get("missing") is None


@pytest.mark.parametrize(
    "key",
    ["with space", "tab\there", "new\nline", "ü" * 200, "x" * 1000],
    ids=["space", "tab", "newline", "long-unicode", "long"],
)
async def test_keys_memcached_cannot_hold_are_hashed(tier: MemcachedTier, key: str) -> None:
    await tier.set(entry(key, b"stored"))
    got = await tier.get(key)
    assert got is not None
    assert got.value == b"stored"
    assert got.key == key


async def test_entries_over_the_item_limit_are_chunked(tier: MemcachedTier) -> None:
    body = os.urandom(3 * CHUNK_BYTES + 17)
    await tier.set(entry("big", body))
    got = await tier.get("big")
    assert got is not None
    assert got.value == body
    assert await tier.delete("big") is True
    assert await tier.get("big") is None


async def test_entries_beyond_the_chunk_cap_are_skipped_without_error(
    tier: MemcachedTier,
) -> None:
    await tier.set(entry("huge", b"z" * (MAX_CHUNKS * CHUNK_BYTES + 1)))
    assert await tier.get("huge") is None


async def test_residency_expires_on_the_server(tier: MemcachedTier) -> None:
    await tier.set(entry("short", cold=1.0))
    assert await tier.get("short") is not None
    # memcached's clock has one-second resolution, so the tier asks for one second more
    # than the residency: the entry goes between 1 s and 3 s after the set.
    await asyncio.sleep(3.1)
    assert await tier.get("short") is None


async def test_a_hit_refreshes_residency(tier: MemcachedTier) -> None:
    await tier.set(entry("used", cold=2.0))
    for _ in range(3):
        await asyncio.sleep(1.1)
        assert await tier.get("used") is not None, "each hit restarts the residency"


async def test_flush_drops_only_this_tier(memcached_settings: MemcachedConfig) -> None:
    cold, hot = make(memcached_settings), make(memcached_settings, "hot")
    other_prefix = make(MemcachedConfig("127.0.0.1", memcached_settings.port, "other:"))
    try:
        for tier in (cold, hot, other_prefix):
            await tier.set(entry("same"))
        await cold.flush()
        assert await cold.get("same") is None
        assert await hot.get("same") is not None
        assert await other_prefix.get("same") is not None
        assert (await cold.stats()).entries == 0
    finally:
        for tier in (cold, hot, other_prefix):
            await tier.close()


async def test_a_flush_in_one_process_reaches_the_others(
    memcached_settings: MemcachedConfig,
) -> None:
    one, two = make(memcached_settings), make(memcached_settings)
    try:
        await one.set(entry("k"))
        assert await two.get("k") is not None
        await one.flush()
        await asyncio.sleep(1.1)  # GENERATION_CACHE_SECONDS
        assert await two.get("k") is None
    finally:
        await one.close()
        await two.close()


async def test_stats_count_new_entries_and_deletes(tier: MemcachedTier) -> None:
    await tier.set(entry("a", b"x" * 1000))
    await tier.set(entry("b", b"y" * 10))
    await tier.set(entry("a", b"x" * 1000))  # a replacement is not a new entry
    stats = await tier.stats()
    assert stats.entries == 2
    assert stats.size_bytes > 1010
    assert await tier.delete("a") is True
    assert await tier.delete("a") is False
    assert (await tier.stats()).entries == 1


async def test_down_server_fails_fast_and_reconnects(
    private_servers: Callable[[str], ServerProcess],
) -> None:
    server = private_servers("memcached")
    tier = make(MemcachedConfig("127.0.0.1", server.port, "f:"))
    try:
        await tier.set(entry("k"))
        server.kill()
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client raises
            await tier.get("k")
        assert time.monotonic() - started < 2.0
        server.restart()
        await tier.set(entry("k", b"again"))
        got = await tier.get("k")
        assert got is not None
        assert got.value == b"again"
    finally:
        await tier.close()


class TestMemcachedTierContract(TierContract):
    residency_seconds = 2.0  # memcached expiry has one-second resolution

    @pytest.fixture
    def make_tier(self, memcached_settings: MemcachedConfig) -> MakeTier:
        return lambda name: make(memcached_settings, name)

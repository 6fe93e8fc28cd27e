"""TierCache end to end on the embedded backends (RAM, RAM, local disk, sqlite)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache_mw.config import Config, TierConfig, TrackingConfig, TtlRule
from tiercache_mw.store import cache as cache_module
from tiercache_mw.store.cache import DRAIN_BATCH, TierCache
from tiercache_mw.store.entry import (
    ENTRY_OVERHEAD_BYTES,
    RESPONSE_OVERHEAD_BYTES,
    Entry,
    Residency,
)
from tiercache_mw.store.local import LocalTier
from tiercache_mw.store.loop import OnLoopThreadError

MISSING = object()


def config(
    tmp_path: Path,
    *,
    hot: int | None = 1_000_000,
    cold: int | None = 1_000_000,
    hot_ttl: float | None = 3600.0,
    eviction: str = "sieve",
    rules: tuple[TtlRule, ...] = (),
) -> Config:
    return Config(
        hot=TierConfig("ram", hot_ttl, hot, eviction=eviction),
        cold=TierConfig("ram", 86400.0, cold, eviction=eviction),
        dry=TierConfig("local", None, None, path=str(tmp_path / "dry")),
        tracking=TrackingConfig(path=str(tmp_path / "index.db"), flush_interval_seconds=0.05),
        ttl_rules=rules,
        base_dir=tmp_path,
    )


@pytest.fixture
def sync_cache(tmp_path: Path) -> Iterator[TierCache]:
    cache = TierCache(config(tmp_path))
    yield cache
    cache.close_sync()


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[TierCache]:
    made = TierCache(config(tmp_path))
    yield made
    await made.close()


async def settle(cache: TierCache) -> dict[str, Any]:
    """Wait (bounded) until no move is pending, then return the stats."""
    stats: dict[str, Any] = {}
    for _ in range(400):
        stats = await cache.stats()
        if stats["pending_demotions"] == 0:
            return stats
        await asyncio.sleep(0.01)
    raise AssertionError(f"demotions never settled: {stats}")


def entry_size(payload: int) -> int:
    return payload + ENTRY_OVERHEAD_BYTES


# ---- TTL priority -------------------------------------------------------------------------
RULES = (
    TtlRule(tag=(("type", "product"),), hot_ttl_seconds=60.0, dry_ttl_seconds=7200.0),
    TtlRule(tag=(), cold_ttl_seconds=999.0),
)


def test_ttl_priority_call_over_rule_over_tier_default(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, rules=RULES, hot_ttl=100.0))
    product = (("type", "product"),)
    assert cache.residency_for(product, ttl_seconds=5.0) == Residency(5.0, 5.0, 5.0)
    assert cache.residency_for(product) == Residency(60.0, 86400.0, 7200.0)
    assert cache.residency_for((("type", "page"),)) == Residency(100.0, 999.0, None)
    plain = TierCache(config(tmp_path))
    assert plain.residency_for(()) == Residency(3600.0, 86400.0, None)


async def test_set_ttl_hours_and_rules_reach_the_entry(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, rules=RULES))
    try:
        await cache.set("a", b"1", ttl_hours=2, tags={"type": "product"})
        await cache.set("b", b"2", tags={"type": "product"})
        hot_a, hot_b = cache.get_hot("a"), cache.get_hot("b")
        assert hot_a is not None
        assert hot_b is not None
        assert hot_a.residency == Residency(7200.0, 7200.0, 7200.0)
        assert hot_b.residency.hot == 60.0
        assert hot_b.tags == (("type", "product"),)
    finally:
        await cache.close()


# ---- sizes and eviction -------------------------------------------------------------------
async def test_sizes_count_encoded_bytes_not_getsizeof(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=5_000_000))
    try:
        await cache.set("big", {"rows": ["x" * 1000 for _ in range(1000)]})
        entry = cache.get_hot("big")
        assert entry is not None
        assert entry.size > 1_000_000
        assert (await cache.stats())["hot_size_bytes"] == entry.size
    finally:
        await cache.close()


async def test_budgets_hold_within_ten_percent_under_churn(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=50_000, cold=100_000))
    rng = random.Random(3)
    try:
        for n in range(1500):
            await cache.set(f"k{rng.randrange(500)}", os.urandom(rng.randrange(100, 3000)))
            if n % 2:
                await cache.get(f"k{rng.randrange(500)}")
            if n % 100 == 0:
                stats = await cache.stats()
                assert stats["hot_size_bytes"] <= 50_000
                assert stats["cold_size_bytes"] <= 100_000
        stats = await settle(cache)
        assert 45_000 <= stats["hot_size_bytes"] <= 50_000
        assert 90_000 <= stats["cold_size_bytes"] <= 100_000
    finally:
        await cache.close()


@pytest.mark.parametrize(
    ("eviction", "kept", "evicted"),
    [("sieve", {"a", "c", "e"}, {"b", "d"}), ("lru", {"c", "d", "e"}, {"a", "b"})],
)
async def test_eviction_policy_decides_what_leaves_hot(
    tmp_path: Path, eviction: str, kept: set[str], evicted: set[str]
) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(100) * 3, eviction=eviction))
    try:
        for key in "abc":
            await cache.set(key, b"x" * 100)
        assert cache.get_hot("a") is not None
        await cache.set("d", b"x" * 100)  # both evict b: unvisited / least recently used
        assert cache.get_hot("c") is not None
        await cache.set("e", b"x" * 100)  # sieve: the hand clears c, evicts d; lru: a
        hot = {key for key in "abcde" if key in cache.hot}  # type: ignore[operator]
        assert hot == kept
        assert all(key in cache.cold for key in evicted)  # type: ignore[operator]
    finally:
        await cache.close()


# ---- the chain --------------------------------------------------------------------------------
async def test_entries_flow_hot_to_cold_to_dry_and_every_one_is_served(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(200) * 4, cold=entry_size(200) * 8))
    try:
        for n in range(30):
            await cache.set(f"k{n}", bytes([n]) * 200, tags={"n": str(n)})
        stats = await settle(cache)
        assert (stats["hot_entries"], stats["cold_entries"]) == (4, 8)
        assert stats["dry_entries"] == 18
        assert stats["demotions"] == 26 + 18  # hot -> cold, then cold -> dry
        tiers = []
        for n in reversed(range(30)):  # newest first: each tier is met before promotions churn it
            found = await cache.lookup(f"k{n}")
            assert found is not None
            entry, tier = found
            assert entry.value == bytes([n]) * 200
            tiers.append(tier)
        assert {"cold", "dry"} <= set(tiers)
        stats = await cache.stats()
        assert stats["promotions"] == tiers.count("cold") + tiers.count("dry")
    finally:
        await cache.close()


async def test_promotion_keeps_the_entry_residency_and_tags(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(100) * 2, cold=entry_size(100) * 2))
    try:
        await cache.set("mine", b"m" * 100, ttl_seconds=777.0, tags={"type": "special"})
        for n in range(6):
            await cache.set(f"other{n}", b"o" * 100)
        await settle(cache)
        assert cache.get_hot("mine") is None
        found = await cache.lookup("mine")
        assert found is not None
        assert found[1] == "dry"
        promoted = cache.get_hot("mine")
        assert promoted is not None
        assert promoted.residency == Residency(777.0, 777.0, 777.0)
        assert promoted.tags == (("type", "special"),)
    finally:
        await cache.close()


async def test_hot_residency_end_moves_the_entry_to_cold(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot_ttl=0.05))
    try:
        await cache.set("k", b"v")
        await asyncio.sleep(0.1)
        assert cache.get_hot("k") is None
        await cache._call(cache._sweep())  # what the sweeper task does every second
        assert "k" in cache.cold  # type: ignore[operator]
        found = await cache.lookup("k")
        assert found is not None
        assert found[1] == "cold"
    finally:
        await cache.close()


async def test_delete_racing_a_demotion_does_not_resurrect(tmp_path: Path) -> None:
    gate = threading.Event()
    writing = threading.Event()

    class GatedDry(LocalTier):
        def _write(self, entry: Entry) -> None:  # the blocking body: single and batched writes
            writing.set()
            gate.wait(10)
            super()._write(entry)

    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    cache.dry = GatedDry("dry", cache.config.dry, tmp_path / "dry")
    try:
        await cache.set("queued", b"q" * 10)
        await cache.set("push1", b"p" * 10)  # queued: hot -> cold
        await cache.set("push2", b"p" * 10)  # queued: cold -> dry, the write now waits
        await asyncio.to_thread(writing.wait, 10)
        # The delete waits for the write under way and then undoes it, so the gate opens
        # while the delete is pending, as a real write would finish by itself.
        deleting = asyncio.ensure_future(cache.delete("queued"))
        await asyncio.sleep(0.05)
        gate.set()
        assert await deleting is True
        await settle(cache)
        assert await cache.get("queued", MISSING) is MISSING
        assert not cache.dry.path_for("queued").exists()
    finally:
        gate.set()
        await cache.close()


async def test_delete_of_an_entry_waiting_in_the_queue(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    try:
        for key in ("a", "b", "c", "d"):
            cache.put(cache.make_entry(key, b"x" * 10, (), cache.residency_for(())))
        removed = [await cache.delete(key) for key in ("a", "b")]
        assert removed == [True, True]
        await settle(cache)
        assert await cache.get("a", MISSING) is MISSING
        assert await cache.get("b", MISSING) is MISSING
        assert await cache.get("c") == b"x" * 10
    finally:
        await cache.close()


async def test_a_deleted_key_stays_deleted_while_its_move_is_being_written(
    tmp_path: Path,
) -> None:
    """The delete lands while the demotion to dry is on disk already or still in flight: no
    later lookup may find the copy (and promote it back to hot) before it is undone."""
    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    try:
        resurrected = []
        for round_ in range(150):  # the window is a few hundred microseconds wide
            keys = [f"{round_}-{name}" for name in "abcd"]
            for key in keys:
                cache.put(cache.make_entry(key, b"x" * 10, (), cache.residency_for(())))
            for key in keys[:2]:
                assert await cache.delete(key)
                if await cache.get(key, MISSING) is not MISSING:
                    resurrected.append(key)
        assert resurrected == []
    finally:
        await cache.close()


async def test_flush_hot_leaves_cold_and_dry(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    try:
        for key in ("dry", "cold", "hot"):
            await cache.set(key, key.encode().ljust(10))
        await settle(cache)
        await cache.flush("hot")
        stats = await cache.stats()
        assert (stats["hot_entries"], stats["cold_entries"], stats["dry_entries"]) == (0, 1, 1)
        assert await cache.get("hot") is None
        assert await cache.get("cold") is not None
        await cache.flush("dry")
        assert await cache.get("dry") is None
        with pytest.raises(ValueError, match="tier"):
            await cache.flush("warm")
    finally:
        await cache.close()


# ---- the key/value API -----------------------------------------------------------------------
async def test_stored_none_is_told_apart_from_a_miss(cache: TierCache) -> None:
    await cache.set("none", None)
    assert await cache.get("none", MISSING) is None
    assert await cache.get("absent", MISSING) is MISSING
    assert await cache.get("absent") is None


async def test_values_round_trip_through_dry(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path))
    values = {"bytes": b"\x00\xff", "dict": {"a": [1, 2.5, None]}, "none": None, "text": "é"}
    for key, value in values.items():
        await cache.set(key, value)
    await cache.close()
    reopened = TierCache(config(tmp_path))
    try:
        for key, value in values.items():
            assert await reopened.get(key, MISSING) == value
    finally:
        await reopened.close()


async def test_unpackable_value_is_refused_at_set(cache: TierCache) -> None:
    with pytest.raises(TypeError, match="msgpack"):
        await cache.set("bad", object())


async def test_purge_by_tag_and_url_sees_unflushed_tracking(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(20) * 2, cold=entry_size(20) * 2))
    try:
        for n in range(8):
            tags = (("type", "product" if n % 2 else "page"), ("url", f"http://x/{n}"))
            await cache.set(f"k{n}", b"v" * 20, tags=tags)
        assert await cache.purge(tags={"type": "product"}) == 4
        assert await cache.purge(url="http://x/0") == 1
        await settle(cache)
        assert [await cache.get(f"k{n}", MISSING) is MISSING for n in range(8)] == [
            True, True, False, True, False, True, False, True,
        ]  # fmt: skip
        assert await cache.purge(keys=["k2", "nope"]) == 1
    finally:
        await cache.close()


async def test_purge_by_url_removes_every_vary_variant_from_every_tier(tmp_path: Path) -> None:
    # The url tag is not stored when the key says it: purge must still find every variant.
    cache = TierCache(config(tmp_path, hot=entry_size(20) * 2, cold=entry_size(20) * 2))
    url = "http://x/v?a=1"
    keys = [url, *(f"{url}\nvary\naccept: {n}" for n in range(5))]
    try:
        for key in keys:
            await cache.set(key, b"v" * 20, tags=(("type", "t"), ("url", url)))
        await cache.set("http://x/v?a=2", b"v" * 20, tags={"url": "http://x/v?a=2"})
        stats = await settle(cache)
        assert stats["dry_entries"] >= 2, "some variants were demoted to dry"
        assert await cache.purge(url="http://x/v?a=1") == len(keys)
        for key in keys:
            assert await cache.get(key, MISSING) is MISSING
        assert await cache.get("http://x/v?a=2") == b"v" * 20
    finally:
        await cache.close()


async def test_close_persists_ram_and_a_new_cache_serves_from_dry(tmp_path: Path) -> None:
    first = TierCache(config(tmp_path, hot=entry_size(50) * 3))
    for n in range(6):
        await first.set(f"k{n}", b"z" * 50, tags={"n": str(n)})
    await first.close()
    second = TierCache(config(tmp_path))
    try:
        assert (await second.stats())["dry_entries"] == 6
        for n in range(6):
            found = await second.lookup(f"k{n}")
            assert found is not None
            assert found[1] == "dry"
            assert found[0].tags == (("n", str(n)),)
        assert await second.purge(tags={"n": "3"}) == 1, "the index survived the restart"
    finally:
        await second.close()


# ---- loops and threads -------------------------------------------------------------------
def test_sync_twins_twice_in_a_row_from_plain_code(sync_cache: TierCache) -> None:
    for _ in range(2):
        sync_cache.set_sync("k", {"v": 1}, tags={"t": "x"})
        assert sync_cache.get_sync("k") == {"v": 1}
        assert sync_cache.stats_sync()["hot_entries"] == 1
        assert sync_cache.delete_sync("k") is True
        assert sync_cache.purge_sync(tags={"t": "x"}) == 0
        sync_cache.flush_sync("all")


async def test_sync_twins_from_a_running_loops_thread_pool(sync_cache: TierCache) -> None:
    def work(n: int) -> Any:
        sync_cache.set_sync(f"k{n}", n)
        sync_cache.set_sync(f"k{n}", n + 1)
        return sync_cache.get_sync(f"k{n}")

    results = await asyncio.gather(*(asyncio.to_thread(work, n) for n in range(8)))
    assert results == [n + 1 for n in range(8)]
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, sync_cache.stats_sync) is not None


async def test_async_api_works_from_two_different_loops(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path))
    await cache.set("k", b"v")

    def other_loop() -> Any:
        async def use() -> Any:
            await cache.set("k2", b"v2")
            return await cache.get("k"), await cache.get("k2")

        return asyncio.run(use())

    assert await asyncio.to_thread(other_loop) == (b"v", b"v2")
    await cache.close()


async def test_a_sync_call_on_the_cache_loop_raises_instead_of_deadlocking(
    sync_cache: TierCache,
) -> None:
    async def on_cache_loop() -> None:
        sync_cache.get_sync("k")

    with pytest.raises(OnLoopThreadError, match="own loop thread"):
        sync_cache.run_sync(on_cache_loop())


async def test_start_is_idempotent(cache: TierCache) -> None:
    await asyncio.gather(cache.start(), cache.start())
    await cache.start()
    assert (await cache.stats())["hot_entries"] == 0


# ---- faults ------------------------------------------------------------------------------
async def test_a_corrupt_dry_file_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    first = TierCache(config(tmp_path))
    await first.set("k", b"v" * 100)
    await first.close()
    dry = LocalTier("dry", TierConfig("local", None, None), tmp_path / "dry")
    dry.path_for("k").write_bytes(b"\x93\x01truncated")
    cache = TierCache(config(tmp_path))
    try:
        assert await cache.get("k", MISSING) is MISSING
        assert not dry.path_for("k").exists()
        assert (await cache.stats())["dry_errors"] == 0, "a bad file is a miss, not a fault"
    finally:
        await cache.close()


async def test_a_failing_dry_tier_is_a_miss_and_an_error_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    try:
        await cache.start()
        shutil.rmtree(tmp_path / "dry", ignore_errors=True)
        (tmp_path / "dry").write_text("not a directory")  # every write now fails
        for key in ("a", "b", "c", "d"):
            await cache.set(key, b"x" * 10)
        stats = await settle(cache)
        assert stats["dry_errors"] >= 1
        assert await cache.get("a", MISSING) is MISSING
        assert await cache.get("d") == b"x" * 10, "the working tiers still serve"
        assert caplog.text.count("dry backend failed") == 1, "logged once per interval"
        (tmp_path / "dry").unlink()
        await cache.set("e", b"x" * 10)
        await cache.set("f", b"x" * 10)
        await cache.set("g", b"x" * 10)
        await settle(cache)
        assert await cache.get("e") == b"x" * 10, "the tier is used again"
    finally:
        await cache.close()


async def test_demotion_queue_overflow_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    import tiercache_mw.store.cache as cache_module

    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    limit = cache_module.DEMOTION_QUEUE_MAX
    cache_module.DEMOTION_QUEUE_MAX = 3
    try:
        await cache.start()
        gate = threading.Event()
        writing = threading.Event()
        dry = cache.dry
        assert isinstance(dry, LocalTier)
        real_write = dry._write

        def slow_write(entry: Entry) -> None:
            writing.set()
            gate.wait(10)
            real_write(entry)

        dry._write = slow_write  # type: ignore[method-assign]
        n = 0
        while not writing.is_set() and n < 100:  # until the drain is stuck in a write
            cache.put(cache.make_entry(f"k{n}", b"x" * 10, (), cache.residency_for(())))
            n += 1
            await asyncio.sleep(0.001)
        for m in range(n, n + 10):
            cache.put(cache.make_entry(f"k{m}", b"x" * 10, (), cache.residency_for(())))
        gate.set()
        stats = await settle(cache)
        assert stats["demotions_dropped"] >= 4
        assert stats["hot_entries"] + stats["cold_entries"] + stats["dry_entries"] < n + 10
    finally:
        cache_module.DEMOTION_QUEUE_MAX = limit
        await cache.close()


async def test_demotion_queue_is_bounded_in_bytes(tmp_path: Path) -> None:
    import tiercache_mw.store.cache as cache_module

    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    cache._queue_max_bytes = 3 * entry_size(1000)
    try:
        await cache.start()
        gate = threading.Event()
        writing = threading.Event()
        dry = cache.dry
        assert isinstance(dry, LocalTier)
        real_write = dry._write

        def slow_write(entry: Entry) -> None:
            writing.set()
            gate.wait(10)
            real_write(entry)

        dry._write = slow_write  # type: ignore[method-assign]
        n = 0
        while not writing.is_set() and n < 100:
            cache.put(cache.make_entry(f"k{n}", b"x" * 1000, (), cache.residency_for(())))
            n += 1
            await asyncio.sleep(0.001)
        for m in range(n, n + 10):
            cache.put(cache.make_entry(f"k{m}", b"x" * 1000, (), cache.residency_for(())))
            assert cache._queued_bytes <= cache._queue_max_bytes
        assert len(cache._queue) <= 3 < cache_module.DEMOTION_QUEUE_MAX
        gate.set()
        stats = await settle(cache)
        assert stats["demotions_dropped"] >= 7
    finally:
        await cache.close()


async def test_a_burst_of_demotions_reaches_dry_in_batches(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    try:
        await cache.start()
        hops = 0
        dry = cache.dry
        assert isinstance(dry, LocalTier)
        real_many = dry._write_many

        def counting(entries: list[Entry]) -> list[BaseException | None]:
            nonlocal hops
            hops += 1
            return real_many(entries)

        dry._write_many = counting  # type: ignore[method-assign]
        for n in range(300):
            cache.put(cache.make_entry(f"k{n}", b"x" * 10, (), cache.residency_for(())))
        stats = await settle(cache)
        assert stats["demotions_dropped"] == 0
        assert stats["dry_entries"] == 298  # all but the ones still in hot and cold
        assert hops < 100
        assert await cache.get("k0") == b"x" * 10
    finally:
        await cache.close()


async def test_demotions_trickling_in_are_written_in_full_batches(tmp_path: Path) -> None:
    """A demotion every millisecond, as under steady traffic, makes a pack of many rather
    than one per wake-up of the drain; each waits in the queue, still served from there,
    for about the linger."""
    cache = TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))
    try:
        await cache.start()
        batches: list[int] = []
        dry = cache.dry
        assert isinstance(dry, LocalTier)
        real_many = dry._write_many

        def counting(entries: list[Entry]) -> list[BaseException | None]:
            batches.append(len(entries))
            return real_many(entries)

        dry._write_many = counting  # type: ignore[method-assign]
        demotions = 4 * DRAIN_BATCH
        for n in range(demotions + 2):  # hot and cold keep one each
            cache.put(cache.make_entry(f"k{n}", b"x" * 10, (), cache.residency_for(())))
            assert await cache.get(f"k{n}") == b"x" * 10  # in a tier or in the queue
            await asyncio.sleep(0.001)
        stats = await settle(cache)
        assert stats["dry_entries"] == demotions
        assert sum(batches) == demotions
        # One pack a wake-up would be about one a demotion: the linger gathers several (up
        # to 16 a pack at this pace; 4 even if a loaded machine made each step 5 ms).
        assert demotions / len(batches) >= 4, batches
    finally:
        await cache.close()


def small_cache(tmp_path: Path) -> TierCache:
    """Hot and cold hold one entry each: every further put is one move to the dry tier."""
    return TierCache(config(tmp_path, hot=entry_size(10), cold=entry_size(10)))


def put_values(cache: TierCache, keys: range) -> None:
    for n in keys:
        cache.put(cache.make_entry(f"k{n}", b"x" * 10, (), cache.residency_for(())))


async def test_moves_queued_when_a_close_cut_the_linger_short_are_written_after_a_restart(
    tmp_path: Path,
) -> None:
    """A close() during the drain's linger must not leave a wake-up counted as sent: the
    restarted cache's drain would never be woken again."""
    cache = small_cache(tmp_path)
    try:
        await cache.start()
        put_values(cache, range(3))  # one move, and the drain lingering for more
        await asyncio.sleep(0.002)
        await cache.close()
        await cache.start()
        put_values(cache, range(3, 23))
        stats = await settle(cache)
        assert stats["dry_entries"] == 21
    finally:
        await cache.close()


async def test_moves_for_a_shared_tier_do_not_linger_even_past_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other processes see an entry in a shared tier only once it is written."""
    monkeypatch.setattr(cache_module, "DRAIN_LINGER", 30.0)
    cache = TierCache(config(tmp_path))
    try:
        await cache.start()
        for n in range(3 * DRAIN_BATCH + 1):
            # As a write-through to a shared cold tier is queued (the RAM cold tier takes it).
            cache._enqueue(cache.make_entry(f"w{n}", b"x", (), cache.residency_for(())), ("cold",))
        await settle(cache)
    finally:
        await cache.close()


async def test_the_linger_ends_before_the_queue_would_drop_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full batch, or a queue half full by bytes, is written at once: the linger gathers
    small moves, it must not hold large ones until the queue overflows."""
    monkeypatch.setattr(cache_module, "DRAIN_LINGER", 30.0)
    monkeypatch.setattr(cache_module, "DEMOTION_QUEUE_MIN_BYTES", 40_000)
    cache = TierCache(config(tmp_path, hot=entry_size(10_000), cold=entry_size(10_000)))
    try:
        await cache.start()
        for n in range(60):
            cache.put(cache.make_entry(f"big{n}", b"x" * 10_000, (), cache.residency_for(())))
            await asyncio.sleep(0.002)
        stats = await settle(cache)
        assert stats["demotions_dropped"] == 0
        assert stats["dry_entries"] == 58
    finally:
        await cache.close()


# ---- misses answered without the loop thread --------------------------------------------
async def test_a_miss_is_answered_without_crossing_to_the_loop(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path))
    try:
        await cache.start()
        crossings = 0
        real_call = cache._call

        def counting_call(coro: Any) -> Any:
            nonlocal crossings
            crossings += 1
            return real_call(coro)

        cache._call = counting_call  # type: ignore[method-assign]
        assert await cache.lookup("absent") is None
        assert cache.lookup_blocking("absent too") is None
        assert crossings == 0
        cache._call = real_call  # type: ignore[method-assign]
        assert (await cache.stats())["misses"] == 2
    finally:
        await cache.close()


async def test_an_entry_another_process_wrote_to_dry_is_still_found(tmp_path: Path) -> None:
    writer = TierCache(config(tmp_path))
    reader = TierCache(config(tmp_path))  # same dry directory, its own RAM and index
    try:
        await reader.start()
        assert await reader.get("shared", MISSING) is MISSING
        await writer.start()
        await writer.dry.set(writer.make_entry("shared", b"v2", (), writer.residency_for(())))
        assert await reader.get("shared") == b"v2"
        assert reader.lookup_blocking("shared") is not None
    finally:
        await writer.close()
        await reader.close()


async def test_hot_hits_reach_tracking_counted_per_key(cache: TierCache) -> None:
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    await cache._call(cache._flush_tracking())
    for _ in range(5):
        assert cache.get_hot("a") is not None
    assert cache.get_hot("b") is not None
    await cache._call(cache._flush_tracking())
    for _ in range(2):
        assert cache.get_hot("a") is not None
    await cache._call(cache._flush_tracking())
    rows = {key: await cache.tracking.get(key) for key in ("a", "b")}
    assert {key: row.hits for key, row in rows.items() if row is not None} == {"a": 7, "b": 1}


# ---- RAM bytes per entry -------------------------------------------------------------------
def test_entries_share_repeated_headers_and_their_residency(tmp_path: Path) -> None:
    from tiercache_mw.store.entry import StoredResponse

    cache = TierCache(config(tmp_path))

    def response(etag: bytes) -> StoredResponse:
        headers = [(b"content-type", b"application/json"), (b"etag", etag)]
        return StoredResponse(200, headers, b"{}", response_time=0.0)

    one = cache.make_entry("a", response(b'"1"'), (), cache.residency_for(()))
    two = cache.make_entry("b", response(b'"2"'), (), cache.residency_for(()))
    assert one.value.headers[0] is two.value.headers[0]
    assert one.value.headers[1] is not two.value.headers[1]
    assert one.residency is two.residency
    assert one.value.extra == {}
    assert one.value.extra is two.value.extra
    # A pair kept in the intern table costs a list slot, not its characters again.
    assert one.size == 2 + 8 + 8 + RESPONSE_OVERHEAD_BYTES + ENTRY_OVERHEAD_BYTES


async def test_a_put_during_a_slow_lookup_is_not_overwritten_by_the_older_copy(
    tmp_path: Path,
) -> None:
    cache = TierCache(config(tmp_path))
    try:
        await cache.start()
        dry = cache.dry
        assert isinstance(dry, LocalTier)
        await dry.set(cache.make_entry("k", b"old", (), cache.residency_for(())))
        gate = threading.Event()
        reading = threading.Event()
        real_read = dry._read

        def slow_read(key: str) -> Entry | None:
            reading.set()
            gate.wait(10)
            return real_read(key)

        dry._read = slow_read  # type: ignore[method-assign]
        lookup = asyncio.ensure_future(cache.lookup("k"))
        await asyncio.to_thread(reading.wait, 10)
        cache.put(cache.make_entry("k", b"new", (), cache.residency_for(())))
        gate.set()
        found = await lookup
        assert found is not None
        assert found[0].value == b"old"  # what that lookup read, as it began before the put
        hot = cache.get_hot("k")
        assert hot is not None
        assert hot.value == b"new"
    finally:
        gate.set()
        await cache.close()

"""RamTier: the tier contract, byte budgets, residency on an injected clock, SIEVE and LRU."""

from __future__ import annotations

import random
import threading

import pytest

from tests.store.tier_contract import MakeTier, TierContract
from tiercache_mw.config import TierConfig
from tiercache_mw.store.base import Tier
from tiercache_mw.store.entry import ENTRY_OVERHEAD_BYTES, Entry, Residency
from tiercache_mw.store.ram import RamTier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestRamTier(TierContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def make_tier(self, clock: FakeClock) -> MakeTier:
        return lambda name: RamTier(name, TierConfig("ram", None, None), clock=clock)

    @pytest.fixture(autouse=True)
    def _keep_clock(self, clock: FakeClock) -> None:
        self._clock = clock

    async def advance(self, tier: Tier, seconds: float) -> None:
        self._clock.now += seconds


def sized(key: str, size: int, residency: Residency | None = None) -> Entry:
    return Entry(key, b"", (("type", "t"),), residency or Residency(None, None, None), size)


def ram(max_bytes: int | None, eviction: str = "sieve", **kwargs: object) -> RamTier:
    evicted: list[Entry] = []
    tier = RamTier("hot", TierConfig("ram", None, max_bytes, eviction=eviction),
                   evicted.append, **kwargs)  # type: ignore[arg-type]  # fmt: skip
    tier.evicted = evicted  # type: ignore[attr-defined]
    return tier


def test_budget_is_never_exceeded_under_churn() -> None:
    tier = ram(100_000)
    rng = random.Random(7)
    for n in range(5000):
        tier.put(sized(f"k{rng.randrange(800)}", rng.randrange(ENTRY_OVERHEAD_BYTES, 4000)))
        if n % 3 == 0:
            tier.get_now(f"k{rng.randrange(800)}")
        assert tier.size_bytes <= 100_000
    assert tier.size_bytes >= 90_000, "the budget is used, within 10 %"
    assert tier.size_bytes == sum(entry.size for entry in tier.entries())


def test_an_entry_larger_than_the_budget_goes_straight_down() -> None:
    tier = ram(1000)
    tier.put(sized("huge", 5000))
    assert "huge" not in tier
    assert [entry.key for entry in tier.evicted] == ["huge"]  # type: ignore[attr-defined]


def test_sieve_keeps_visited_entries_and_evicts_the_oldest_unvisited() -> None:
    tier = ram(400)
    for key in "abcd":
        tier.put(sized(key, 100))
    assert tier.get_now("a") is not None
    assert tier.get_now("c") is not None
    tier.put(sized("e", 100))
    tier.put(sized("f", 100))
    assert [entry.key for entry in tier.evicted] == ["b", "d"]  # type: ignore[attr-defined]
    assert {"a", "c", "e", "f"} == {entry.key for entry in tier.entries()}


def test_sieve_hand_clears_bits_and_wraps() -> None:
    tier = ram(300)
    for key in "abc":
        tier.put(sized(key, 100))
    for key in "abc":
        tier.get_now(key)
    tier.put(sized("d", 100))  # every bit set: the hand clears them all, then evicts a
    assert [entry.key for entry in tier.evicted] == ["a"]  # type: ignore[attr-defined]


def test_lru_evicts_the_least_recently_used() -> None:
    tier = ram(400, "lru")
    for key in "abcd":
        tier.put(sized(key, 100))
    tier.get_now("a")
    tier.get_now("b")
    tier.put(sized("e", 100))
    tier.put(sized("f", 100))
    assert [entry.key for entry in tier.evicted] == ["c", "d"]  # type: ignore[attr-defined]


def test_residency_counts_from_last_use_and_sweep_moves_expired_down() -> None:
    clock = FakeClock()
    tier = ram(None, clock=clock)
    tier.put(sized("used", 100, Residency(10.0, None, None)))
    tier.put(sized("idle", 100, Residency(10.0, None, None)))
    tier.put(sized("forever", 100, Residency(None, None, None)))
    clock.now += 8
    assert tier.get_now("used") is not None
    clock.now += 8
    assert tier.get_now("idle") is None, "past residency reads as a miss"
    assert tier.sweep() == 1
    assert [entry.key for entry in tier.evicted] == ["idle"]  # type: ignore[attr-defined]
    assert tier.get_now("used") is not None
    assert tier.get_now("forever") is not None


@pytest.mark.parametrize(
    ("name", "tier_ttl", "residency_left"),
    [("hot", 99.0, 5.0), ("cold", 99.0, 20.0), ("edge", 12.0, 12.0)],
)
def test_each_tier_reads_its_own_residency(
    name: str, tier_ttl: float, residency_left: float
) -> None:
    """hot and cold read their field of the entry's Residency; another name, the tier's ttl."""
    clock = FakeClock()
    tier = RamTier(name, TierConfig("ram", tier_ttl, None), clock=clock)
    tier.put(sized("k", 100, Residency(5.0, 20.0, None)))
    clock.now += residency_left - 0.5
    assert tier.get_now("k") is not None
    clock.now += residency_left + 0.5
    assert tier.take_expired("k") is not None
    tier.put(sized("k", 100, Residency(5.0, 20.0, None)))
    clock.now += residency_left + 0.5
    assert tier.sweep() == 1


def test_an_entry_moves_between_tiers_and_leaves_no_links_behind() -> None:
    hot, cold = ram(None), ram(None)
    entries = [sized(key, 100) for key in "abc"]
    for entry in entries:
        hot.put(entry)
    moved = hot.take("b")
    assert moved is entries[1]
    cold.put(moved)  # the queue links live on the entry: it is in one tier at a time
    assert [e.key for e in hot.entries()] == ["a", "c"]
    assert cold.get_now("b") is moved
    hot.put(sized("d", 100))  # the hand walks a, c, d: b is not in its way
    drained = hot.drain()
    assert {e.key for e in drained} == {"a", "c", "d"}
    # Cleared entries hold no reference to each other (nor keep each other alive).
    assert all(e.newer is None and e.older is None for e in drained)
    assert cold.size_bytes == 100
    assert hot.size_bytes == 0


def test_unknown_eviction_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="eviction"):
        RamTier("hot", TierConfig("ram", None, None, eviction="fifo"))


@pytest.mark.parametrize("eviction", ["sieve", "lru"])
def test_concurrent_hits_and_puts_keep_the_accounting_exact(eviction: str) -> None:
    tier = ram(50_000, eviction)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                key = f"k{rng.randrange(300)}"
                if rng.random() < 0.5:
                    tier.get_now(key)
                elif rng.random() < 0.9:
                    tier.put(sized(key, rng.randrange(400, 1500)))
                else:
                    tier.take(key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert tier.size_bytes <= 50_000
    assert tier.size_bytes == sum(entry.size for entry in tier.entries())

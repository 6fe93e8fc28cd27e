"""The behaviour every tier backend shares (ram, local, memcached, redis, s3).

Subclass `TierContract` once per backend and provide the `make_tier` fixture: a factory
`make_tier(name)` that returns a fresh, empty tier named `name` ("hot", "cold" or "dry");
tiers from one factory share one backend (one server, one directory, one bucket), so that
`flush` can be checked to leave the other tiers alone. The contract closes what it makes.

Set `residency_enforced = False` for a backend that does not expire entries itself, and
override `advance` to move an injected clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from tiercache_mw.store.base import Tier, TierStats
from tiercache_mw.store.entry import ENTRY_OVERHEAD_BYTES, Entry, Residency, StoredResponse

__all__ = ["MakeTier", "TierContract", "contract_entry", "contract_response"]

MakeTier = Callable[[str], Tier]

ODD_KEYS = [
    "GET http://example.com/a b?c=d",
    "../../etc/passwd",
    "/absolute/path",
    "ü" * 300,
    "x" * 2000,
    "new\nline\ttab\x00nul",
]


def contract_response(body: bytes = b'{"id": 1}') -> StoredResponse:
    now = time.time()
    return StoredResponse(
        status=200,
        headers=[(b"content-type", b"application/json"), (b"etag", b'"e1"')],
        body=body,
        response_time=now,
        freshness_lifetime=60.0,
        initial_age=1.5,
        stale_while_revalidate=5.0,
        stale_if_error=30.0,
        requires_validation=False,
        must_revalidate=True,
        etag=b'"e1"',
        last_modified=b"Tue, 15 Nov 1994 12:45:26 GMT",
        vary=("accept-encoding",),
        extra={"note": "kept"},
    )


def payload_size(value: Any) -> int:
    if isinstance(value, StoredResponse):
        return value.payload_bytes
    if isinstance(value, bytes):
        return len(value)
    return len(msgpack.packb(value, use_bin_type=True))


def contract_entry(
    key: str,
    value: Any = b"value",
    *,
    residency: Residency | None = None,
    tags: tuple[tuple[str, str], ...] = (("type", "t"), ("url", "http://x/1")),
) -> Entry:
    now = time.time()
    return Entry(
        key=key,
        value=value,
        tags=tags,
        residency=residency or Residency(None, None, None),
        size=payload_size(value) + ENTRY_OVERHEAD_BYTES,
        created_at=now,
        last_used=time.monotonic(),
    )


class TierContract:
    residency_enforced = True
    # Backends with one-second expiry resolution (memcached) need a longer residency.
    residency_seconds = 1.0

    async def advance(self, tier: Tier, seconds: float) -> None:
        """Let `seconds` pass for `tier`; override to move an injected clock instead."""
        await asyncio.sleep(seconds)

    @pytest.fixture
    async def tiers(self, make_tier: MakeTier) -> AsyncIterator[Callable[[str], Tier]]:
        made: list[Tier] = []

        def make(name: str) -> Tier:
            tier = make_tier(name)
            made.append(tier)
            return tier

        yield make
        for tier in made:
            try:
                await tier.flush()
            finally:
                await tier.close()

    @pytest.fixture
    def tier(self, tiers: Callable[[str], Tier]) -> Tier:
        return tiers("cold")

    async def test_implements_the_tier_protocol(self, tier: Tier) -> None:
        assert isinstance(tier, Tier)
        assert tier.name == "cold"
        assert isinstance(tier.reports_evictions, bool)

    async def test_stored_response_round_trips_every_field(self, tier: Tier) -> None:
        response = contract_response()
        await tier.set(contract_entry("resp", response, residency=Residency(10.0, 60.0, None)))
        got = await tier.get("resp")
        assert got is not None
        value = got.value
        assert isinstance(value, StoredResponse)
        assert value.status == 200
        assert value.headers == response.headers
        assert value.body == response.body
        assert value.freshness_lifetime == 60.0
        assert value.initial_age == 1.5
        assert value.must_revalidate is True
        assert value.etag == b'"e1"'
        assert value.vary == ("accept-encoding",)
        assert value.extra == {"note": "kept"}
        assert got.tags == (("type", "t"), ("url", "http://x/1"))
        assert got.residency.hot == 10.0
        assert got.residency.cold == 60.0

    @pytest.mark.parametrize(
        "value",
        [b"raw bytes", b"", {"a": [1, 2, {"b": None}]}, "text", 0, [], None, False],
        ids=["bytes", "empty-bytes", "dict", "str", "zero", "empty-list", "none", "false"],
    )
    async def test_key_value_entry_round_trips(self, tier: Tier, value: Any) -> None:
        await tier.set(contract_entry("kv", value))
        got = await tier.get("kv")
        assert got is not None, "a stored falsy value must not read as a miss"
        assert got.value == value
        assert type(got.value) is type(value)
        assert got.key == "kv"

    async def test_miss_is_none(self, tier: Tier) -> None:
        assert await tier.get("never-stored") is None

    @pytest.mark.parametrize("key", ODD_KEYS, ids=range(len(ODD_KEYS)))
    async def test_any_key_is_stored_under_its_own_name(self, tier: Tier, key: str) -> None:
        await tier.set(contract_entry(key, b"odd"))
        got = await tier.get(key)
        assert got is not None
        assert got.key == key
        assert got.value == b"odd"
        assert await tier.get(key + "-other") is None

    async def test_set_again_replaces(self, tier: Tier) -> None:
        await tier.set(contract_entry("k", b"one"))
        await tier.set(contract_entry("k", b"two"))
        got = await tier.get("k")
        assert got is not None
        assert got.value == b"two"
        assert (await tier.stats()).entries == 1

    async def test_delete_removes_and_reports(self, tier: Tier) -> None:
        await tier.set(contract_entry("k"))
        assert await tier.delete("k") is True
        assert await tier.get("k") is None
        assert await tier.delete("k") is False

    async def test_flush_empties_only_this_tier(self, tiers: Callable[[str], Tier]) -> None:
        hot, cold = tiers("hot"), tiers("cold")
        for tier in (hot, cold):
            await tier.set(contract_entry("same"))
            await tier.set(contract_entry("other"))
        await hot.flush()
        assert await hot.get("same") is None
        assert await hot.get("other") is None
        assert (await hot.stats()).entries == 0
        assert await cold.get("same") is not None
        assert await cold.get("other") is not None

    async def test_stats_count_entries_and_bytes(self, tier: Tier) -> None:
        empty = await tier.stats()
        assert isinstance(empty, TierStats)
        assert (empty.entries, empty.size_bytes) == (0, 0)
        await tier.set(contract_entry("a", b"x" * 5000))
        await tier.set(contract_entry("b", b"y" * 10))
        stats = await tier.stats()
        assert stats.entries == 2
        assert stats.size_bytes >= 5010
        await tier.delete("a")
        assert (await tier.stats()).entries == 1

    async def test_residency_expires_an_unused_entry(self, tier: Tier) -> None:
        if not self.residency_enforced:
            pytest.skip("this backend leaves residency to the TierCache")
        seconds = self.residency_seconds
        short = Residency(seconds, seconds, seconds)
        await tier.set(contract_entry("short", residency=short))
        await tier.set(contract_entry("long", residency=Residency(None, None, None)))
        assert await tier.get("short") is not None
        await self.advance(tier, seconds * 2 + 0.1)
        assert await tier.get("short") is None
        assert await tier.get("long") is not None

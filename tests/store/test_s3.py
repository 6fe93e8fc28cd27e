"""S3Tier against moto's S3 server: hashed keys, dry TTL from metadata, trim by the index."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from tests.services import S3Server
from tests.store.tier_contract import MakeTier, TierContract
from tiercache_mw.config import RedisConfig, S3Config, TierConfig
from tiercache_mw.store.entry import Entry, Residency
from tiercache_mw.store.s3 import S3Tier
from tiercache_mw.tracking.redis import RedisTracking

pytestmark = pytest.mark.services


def entry(key: str, value: object = b"v", *, dry: float | None = None) -> Entry:
    now = time.time()
    return Entry(key, value, (("type", "t"),), Residency(10.0, 60.0, dry), 100, now, now)


def make(settings: S3Config) -> S3Tier:
    return S3Tier("dry", TierConfig("s3", None, None), settings)


@pytest.fixture
async def tier(s3_settings: S3Config) -> AsyncIterator[S3Tier]:
    made = make(s3_settings)
    yield made
    await made.close()


async def test_creates_the_bucket_and_round_trips_an_entry(tier: S3Tier) -> None:
    body = os.urandom(200_000)
    await tier.set(entry("http://example.com/a?b=c " + "x" * 2000, body))
    got = await tier.get("http://example.com/a?b=c " + "x" * 2000)
    assert got is not None
    assert got.value == body
    assert got.tags == (("type", "t"),)
    assert await tier.get("absent") is None


async def test_objects_live_under_the_prefix_with_hashed_names(tier: S3Tier) -> None:
    await tier.set(entry("k"))
    stats = await tier.stats()
    assert stats.entries == 1
    assert stats.size_bytes > 0
    assert tier.object_key("k").startswith(tier.prefix)
    assert len(tier.object_key("k")) == len(tier.prefix) + 64


async def test_dry_residency_is_checked_on_read_and_deletes(tier: S3Tier) -> None:
    await tier.set(entry("short", dry=0.3))
    await tier.set(entry("forever"))
    await asyncio.sleep(0.5)
    assert await tier.get("short") is None
    assert await tier.get("forever") is not None
    assert (await tier.stats()).entries == 1, "the expired object was deleted on read"


async def test_a_hit_refreshes_residency(tier: S3Tier) -> None:
    await tier.set(entry("used", dry=0.8))
    for _ in range(4):
        await asyncio.sleep(0.35)
        assert await tier.get("used") is not None


async def test_delete_and_flush_keep_other_prefixes(
    tier: S3Tier, s3_settings: S3Config, s3_server: S3Server
) -> None:
    other = make(S3Config(**{**s3_server.config(s3_settings.bucket), "prefix": "elsewhere/"}))
    try:
        await tier.set(entry("a"))
        await tier.set(entry("b"))
        await other.set(entry("a"))
        assert await tier.delete("a") is True
        assert await tier.delete("a") is False
        await tier.flush()
        assert (await tier.stats()).entries == 0
        assert await other.get("a") is not None
    finally:
        await other.close()


async def test_trim_deletes_least_recently_used_by_the_index(
    tier: S3Tier, redis_settings: RedisConfig
) -> None:
    tracking = RedisTracking(redis_settings)
    try:
        for n in range(5):
            await tier.set(entry(f"k{n}"))
            await tracking.record_set(f"k{n}", "dry", (), 100, float(n))
        await tracking.record_hits({"k0": (1, 99.0)})
        assert await tier.trim(250, tracking) == 3
        assert [await tier.get(f"k{n}") is not None for n in range(5)] == [
            True, False, False, False, True,
        ]  # fmt: skip
        assert (await tracking.totals())["dry"] == (2, 200)
    finally:
        await tracking.clear()
        await tracking.close()


async def test_credentials_from_the_aws_environment(
    s3_server: S3Server, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    tier = make(S3Config(bucket=unique, endpoint_url=s3_server.endpoint_url))
    try:
        await tier.set(entry("k"))
        assert await tier.get("k") is not None
    finally:
        await tier.close()


class TestS3TierContract(TierContract):
    @pytest.fixture
    def make_tier(self, s3_settings: S3Config) -> MakeTier:
        return lambda name: S3Tier(name, TierConfig("s3", None, None), s3_settings)

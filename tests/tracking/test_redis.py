"""RedisTracking against a real redis-server: the shared contract plus its key layout."""

from __future__ import annotations

import pytest

from tests.tracking.tracking_contract import MakeTracking, TrackingContract
from tiercache_mw.config import RedisConfig
from tiercache_mw.store.redis import make_client
from tiercache_mw.tracking.base import Tracking
from tiercache_mw.tracking.redis import RedisTracking

pytestmark = pytest.mark.services

PRODUCT = (("type", "product"),)


class TestRedisTracking(TrackingContract):
    @pytest.fixture
    def make_tracking(self, redis_settings: RedisConfig) -> MakeTracking:
        return lambda: RedisTracking(redis_settings)

    async def test_index_lives_under_the_prefix_only(
        self, tracking: Tracking, redis_settings: RedisConfig
    ) -> None:
        client = make_client(redis_settings)
        try:
            await client.set("unrelated", b"1")
            await tracking.record_set("k", "cold", PRODUCT, 1, 1.0)
            keys = [key.decode() async for key in client.scan_iter(match="*")]
            mine = [key for key in keys if key != "unrelated"]
            assert mine
            assert all(key.startswith(redis_settings.prefix + "idx:") for key in mine)
            await tracking.clear()
            assert await client.get("unrelated") == b"1"
        finally:
            await client.delete("unrelated")
            await client.aclose()

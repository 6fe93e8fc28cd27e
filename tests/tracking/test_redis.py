"""RedisTracking against a real redis-server: the shared contract plus its key layout."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.services import ServerProcess
from tests.tracking.tracking_contract import MakeTracking, TrackingContract
from tiercache_mw.config import RedisConfig
from tiercache_mw.store.redis import make_client
from tiercache_mw.tracking.redis import RedisTracking

pytestmark = pytest.mark.services

PRODUCT = (("type", "product"),)


class TestRedisTracking(TrackingContract):
    @pytest.fixture
    def make_tracking(self, redis_settings: RedisConfig) -> MakeTracking:
        return lambda: RedisTracking(redis_settings)

    async def test_index_lives_under_the_prefix_only(
        self, private_servers: Callable[[str], ServerProcess], unique: str
    ) -> None:
        # A server of its own: the session's shared redis holds every other test's keys,
        # and this test must see every key the index writes, wherever it writes it.
        server = private_servers("redis")
        settings = RedisConfig(host="127.0.0.1", port=server.port, prefix=f"{unique}:")
        tracking = RedisTracking(settings)
        client = make_client(settings)
        try:
            await tracking.start()
            await client.set("unrelated", b"1")
            await tracking.record_set("k", "cold", PRODUCT, 1, 1.0)
            keys = [key.decode() async for key in client.scan_iter(match="*")]
            mine = [key for key in keys if key != "unrelated"]
            assert mine
            assert all(key.startswith(settings.prefix + "idx:") for key in mine), mine
            await tracking.clear()
            assert [key async for key in client.scan_iter(match="*")] == [b"unrelated"]
        finally:
            await tracking.close()
            await client.aclose()

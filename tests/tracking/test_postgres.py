"""PostgresTracking against a real PostgreSQL (a fresh database per session)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.tracking.test_redis import PRODUCT, TrackingBehaviour
from tiercache_mw.config import PostgresConfig
from tiercache_mw.tracking.base import Tracking
from tiercache_mw.tracking.postgres import PostgresTracking

pytestmark = pytest.mark.services


class TestPostgresTracking(TrackingBehaviour):
    @pytest.fixture
    async def tracking(self, postgres_settings: PostgresConfig) -> AsyncIterator[Tracking]:
        made = PostgresTracking(postgres_settings)
        await made.start()
        yield made
        await made.close()

    async def test_schema_is_created_on_first_use_by_racing_processes(
        self, postgres_settings: PostgresConfig
    ) -> None:
        fresh = PostgresConfig(postgres_settings.dsn, postgres_settings.table + "_race")
        racers = [PostgresTracking(fresh) for _ in range(4)]
        try:
            await asyncio.gather(
                *(r.record_set(f"k{n}", "hot", PRODUCT, 1, 1.0) for n, r in enumerate(racers))
            )
            assert await racers[0].totals() == {"hot": (4, 4)}
        finally:
            for racer in racers:
                await racer.close()

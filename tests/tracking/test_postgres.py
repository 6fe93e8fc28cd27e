"""PostgresTracking against a real PostgreSQL (a fresh database per session)."""

from __future__ import annotations

import asyncio

import pytest

from tests.tracking.tracking_contract import MakeTracking, TrackingContract
from tiercache_mw.config import PostgresConfig
from tiercache_mw.tracking.postgres import PostgresTracking

pytestmark = pytest.mark.services


PRODUCT = (("type", "product"),)


class TestPostgresTracking(TrackingContract):
    @pytest.fixture
    def make_tracking(self, postgres_settings: PostgresConfig) -> MakeTracking:
        return lambda: PostgresTracking(postgres_settings)

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

"""SqliteTracking: the shared tracking contract, plus batching in one transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.tracking.tracking_contract import MakeTracking, TrackingContract
from tiercache_mw.tracking.sqlite import SqliteTracking


class TestSqliteTracking(TrackingContract):
    @pytest.fixture
    def make_tracking(self, tmp_path: Path) -> MakeTracking:
        return lambda: SqliteTracking(tmp_path / "sub" / "index.db")


async def test_schema_is_created_on_first_use_with_a_tag_index(tmp_path: Path) -> None:
    path = tmp_path / "new" / "index.db"
    tracking = SqliteTracking(path)
    await tracking.record_set("k", "hot", (("type", "a"),), 1, 1.0)
    await tracking.close()
    with sqlite3.connect(path) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT key FROM tags WHERE name = 'type' AND value = 'a'"
        ).fetchall()
    assert any("USING PRIMARY KEY" in str(row) or "COVERING INDEX" in str(row) for row in plan)


async def test_a_batch_is_one_transaction_in_order(tmp_path: Path) -> None:
    tracking = SqliteTracking(tmp_path / "index.db")
    try:
        await tracking.record_set("gone", "hot", (), 1, 1.0)
        await tracking.record_batch(
            sets=[("a", "hot", (("t", "x"),), 10, 2.0), ("b", "hot", (), 20, 3.0)],
            moves=[("a", "cold")],
            deletes=["gone"],
            hits={"b": (4, 9.0)},
        )
        assert await tracking.totals() == {"hot": (1, 20), "cold": (1, 10)}
        assert await tracking.get("gone") is None
        row = await tracking.get("b")
        assert row is not None
        assert (row.hits, row.last_used) == (4, 9.0)
    finally:
        await tracking.close()


async def test_the_index_survives_a_reopen(tmp_path: Path) -> None:
    first = SqliteTracking(tmp_path / "index.db")
    await first.record_set("k", "dry", (("type", "p"),), 5, 1.0)
    await first.close()
    second = SqliteTracking(tmp_path / "index.db")
    try:
        assert await second.keys_with_tags((("type", "p"),)) == ["k"]
    finally:
        await second.close()

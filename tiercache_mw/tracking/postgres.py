"""Tracking index in PostgreSQL (asyncpg): one table, shared by every process and host.

One row per key; tags are a JSONB array of ``{"n": name, "v": value}`` objects under a GIN
(jsonb_path_ops) index, so a tag purge is one containment query (objects, not ``[n, v]``
pairs: array containment ignores order, and ``["a","b"]`` would match ``["b","a"]``).
Every write is a single statement (upsert, ``hits = hits + n``), so concurrent processes
never lose an update. The schema is created on first use under an advisory lock, since two
processes racing through CREATE TABLE IF NOT EXISTS can still collide in the catalog.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tiercache_mw.config import PostgresConfig
from tiercache_mw.store.entry import Tags
from tiercache_mw.tracking.base import TrackedEntry

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresTracking"]

CONNECT_TIMEOUT = 0.5  # a down server costs a request at most about this long
COMMAND_TIMEOUT = 5.0  # a tag purge over a large index may take a moment


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tags_json(tags: Tags) -> str:
    return json.dumps([{"n": name, "v": value} for name, value in tags])


class PostgresTracking:
    """The tracking index in one PostgreSQL table (`settings.table`)."""

    def __init__(self, settings: PostgresConfig) -> None:
        self.settings = settings
        self._table = _ident(settings.table)
        self._pool: asyncpg.Pool | None = None
        self._lock: asyncio.Lock | None = None
        columns = "key, tier, tags, size, hits, last_used"
        self._sql = {
            "set": (
                f"INSERT INTO {self._table} (key, tier, tags, size, hits, last_used) "
                "VALUES ($1, $2, $3::jsonb, $4, 0, $5) ON CONFLICT (key) DO UPDATE SET "
                "tier = EXCLUDED.tier, tags = EXCLUDED.tags, size = EXCLUDED.size, "
                "last_used = EXCLUDED.last_used"
            ),
            "hits": (
                f"UPDATE {self._table} AS t SET hits = t.hits + u.hits, "
                "last_used = GREATEST(t.last_used, u.last_used) "
                "FROM unnest($1::text[], $2::bigint[], $3::float8[]) AS u(key, hits, last_used) "
                "WHERE t.key = u.key"
            ),
            "move": f"UPDATE {self._table} SET tier = $2 WHERE key = $1",
            "delete": f"DELETE FROM {self._table} WHERE key = ANY($1::text[])",
            "tags": f"SELECT key FROM {self._table} WHERE tags @> $1::jsonb ORDER BY key",
            "tier": f"SELECT key FROM {self._table} WHERE tier = $1 ORDER BY last_used, key",
            "get": f"SELECT {columns} FROM {self._table} WHERE key = $1",
            "oldest": (
                f"SELECT {columns} FROM {self._table} WHERE tier = $1 "
                "ORDER BY last_used, key LIMIT $2"
            ),
            "totals": (
                f"SELECT tier, count(*), coalesce(sum(size), 0) FROM {self._table} GROUP BY tier"
            ),
            "clear_tier": f"DELETE FROM {self._table} WHERE tier = $1",
            "clear": f"DELETE FROM {self._table}",
        }

    async def start(self) -> None:
        if self._pool is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._pool is not None:
                return
            import asyncpg

            pool = await asyncpg.create_pool(
                self.settings.dsn,
                min_size=0,
                max_size=4,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
            try:
                await self._create_schema(pool)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool

    async def _create_schema(self, pool: asyncpg.Pool) -> None:
        table = self.settings.table
        lock_id = zlib.crc32(f"tiercache:{table}".encode())
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                "key text PRIMARY KEY, tier text NOT NULL, "
                "tags jsonb NOT NULL DEFAULT '[]'::jsonb, size bigint NOT NULL DEFAULT 0, "
                "hits bigint NOT NULL DEFAULT 0, last_used double precision NOT NULL DEFAULT 0)"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_ident(table + '_tags')} "
                f"ON {self._table} USING GIN (tags jsonb_path_ops)"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {_ident(table + '_lru')} "
                f"ON {self._table} (tier, last_used)"
            )

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        return self._pool

    async def record_set(self, key: str, tier: str, tags: Tags, size: int, now: float) -> None:
        pool = await self._db()
        await pool.execute(self._sql["set"], key, tier, _tags_json(tags), int(size), float(now))

    async def record_hits(self, hits: Mapping[str, tuple[int, float]]) -> None:
        if not hits:
            return
        pool = await self._db()
        keys = list(hits)
        await pool.execute(
            self._sql["hits"],
            keys,
            [int(hits[key][0]) for key in keys],
            [float(hits[key][1]) for key in keys],
        )

    async def record_move(self, key: str, tier: str) -> None:
        pool = await self._db()
        await pool.execute(self._sql["move"], key, tier)

    async def record_delete(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        if batch:
            pool = await self._db()
            await pool.execute(self._sql["delete"], batch)

    async def keys_with_tags(self, tags: Tags) -> list[str]:
        if not tags:
            return []
        pool = await self._db()
        rows = await pool.fetch(self._sql["tags"], _tags_json(tags))
        return [row[0] for row in rows]

    async def keys_in_tier(self, tier: str) -> list[str]:
        pool = await self._db()
        return [row[0] for row in await pool.fetch(self._sql["tier"], tier)]

    async def get(self, key: str) -> TrackedEntry | None:
        pool = await self._db()
        row = await pool.fetchrow(self._sql["get"], key)
        return _tracked(row) if row is not None else None

    async def oldest(self, tier: str, limit: int) -> list[TrackedEntry]:
        pool = await self._db()
        return [_tracked(row) for row in await pool.fetch(self._sql["oldest"], tier, limit)]

    async def totals(self) -> dict[str, tuple[int, int]]:
        pool = await self._db()
        rows = await pool.fetch(self._sql["totals"])
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    async def clear(self, tier: str | None = None) -> None:
        pool = await self._db()
        if tier is None:
            await pool.execute(self._sql["clear"])
        else:
            await pool.execute(self._sql["clear_tier"], tier)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _tracked(row: Any) -> TrackedEntry:
    key, tier, tags, size, hits, last_used = row
    pairs = json.loads(tags) if isinstance(tags, str) else tags
    return TrackedEntry(
        key=key,
        tier=tier,
        tags=tuple((str(pair["n"]), str(pair["v"])) for pair in pairs),
        size=int(size),
        hits=int(hits),
        last_used=float(last_used),
    )

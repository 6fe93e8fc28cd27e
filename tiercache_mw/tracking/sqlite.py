"""The embedded tracking index: stdlib sqlite3 on one dedicated thread.

One connection, used only by its own single-thread executor, so every call is serialized
and no update is lost; WAL mode and a busy timeout let several processes share the file.
The TierCache batches its writes (`record_batch`: one transaction per flush interval), so
the request path never waits for a commit.

Tags live twice: as JSON on the row (their order, for `get`) and as rows of the `tags` table
keyed (name, value, key), which is the index a tag purge reads.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tiercache_mw.store.entry import Tags
from tiercache_mw.tracking.base import TrackedEntry

__all__ = ["SetRecord", "SqliteTracking"]

T = TypeVar("T")

# key, tier, tags, size, now
SetRecord = tuple[str, str, Tags, int, float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    tags TEXT NOT NULL,
    size INTEGER NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_tier_last_used ON entries (tier, last_used);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (name, value, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key ON tags (key);
"""

_UPSERT = (
    "INSERT INTO entries (key, tier, tags, size, hits, last_used) VALUES (?, ?, ?, ?, 0, ?) "
    "ON CONFLICT (key) DO UPDATE SET tier = excluded.tier, tags = excluded.tags, "
    "size = excluded.size, last_used = excluded.last_used"
)
_HITS = "UPDATE entries SET hits = hits + ?, last_used = max(last_used, ?) WHERE key = ?"
_SELECT = "SELECT key, tier, tags, size, hits, last_used FROM entries"
_BUSY_TIMEOUT_MS = 5000


class SqliteTracking:
    """The Tracking protocol over one sqlite file; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="tiercache-sqlite")
        executor = self._executor
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # an index, rebuilt by use if lost
            conn.executescript(_SCHEMA)
            self._conn = conn
        conn = self._conn
        with conn:  # one transaction: commit on success, roll back on error
            return fn(conn)

    # ---- writes -------------------------------------------------------------------------
    @staticmethod
    def _set(conn: sqlite3.Connection, records: Sequence[SetRecord]) -> None:
        for key, tier, tags, size, now in records:
            tags_json = json.dumps([list(pair) for pair in tags])
            conn.execute(_UPSERT, (key, tier, tags_json, int(size), float(now)))
            conn.execute("DELETE FROM tags WHERE key = ?", (key,))
            conn.executemany(
                "INSERT OR IGNORE INTO tags (name, value, key) VALUES (?, ?, ?)",
                [(name, value, key) for name, value in tags],
            )

    @staticmethod
    def _delete(conn: sqlite3.Connection, keys: Sequence[str]) -> None:
        rows = [(key,) for key in keys]
        conn.executemany("DELETE FROM entries WHERE key = ?", rows)
        conn.executemany("DELETE FROM tags WHERE key = ?", rows)

    def _batch(
        self,
        conn: sqlite3.Connection,
        sets: Sequence[SetRecord],
        moves: Sequence[tuple[str, str]],
        deletes: Sequence[str],
        hits: Mapping[str, tuple[int, float]],
    ) -> None:
        self._delete(conn, deletes)
        self._set(conn, sets)
        conn.executemany("UPDATE entries SET tier = ? WHERE key = ?", [(t, k) for k, t in moves])
        conn.executemany(_HITS, [(n, used, key) for key, (n, used) in hits.items()])

    async def record_batch(
        self,
        sets: Sequence[SetRecord] = (),
        moves: Sequence[tuple[str, str]] = (),
        deletes: Sequence[str] = (),
        hits: Mapping[str, tuple[int, float]] | None = None,
    ) -> None:
        """Apply many writes in one transaction: deletes, then sets, moves and hits."""
        if not (sets or moves or deletes or hits):
            return
        await self._run(lambda conn: self._batch(conn, sets, moves, deletes, hits or {}))

    async def start(self) -> None:
        await self._run(lambda conn: None)

    async def record_set(self, key: str, tier: str, tags: Tags, size: int, now: float) -> None:
        await self.record_batch(sets=[(key, tier, tags, size, now)])

    async def record_hits(self, hits: Mapping[str, tuple[int, float]]) -> None:
        await self.record_batch(hits=dict(hits))

    async def record_move(self, key: str, tier: str) -> None:
        await self.record_batch(moves=[(key, tier)])

    async def record_delete(self, keys: Iterable[str]) -> None:
        await self.record_batch(deletes=list(keys))

    async def clear(self, tier: str | None = None) -> None:
        def clear(conn: sqlite3.Connection) -> None:
            if tier is None:
                conn.execute("DELETE FROM entries")
                conn.execute("DELETE FROM tags")
            else:
                conn.execute(
                    "DELETE FROM tags WHERE key IN (SELECT key FROM entries WHERE tier = ?)",
                    (tier,),
                )
                conn.execute("DELETE FROM entries WHERE tier = ?", (tier,))

        await self._run(clear)

    # ---- reads ---------------------------------------------------------------------------
    async def keys_with_tags(self, tags: Tags) -> list[str]:
        pairs = list(dict.fromkeys(tags))
        if not pairs:
            return []
        one = "SELECT key FROM tags WHERE name = ? AND value = ?"
        sql = " INTERSECT ".join([one] * len(pairs)) + " ORDER BY key"
        params = [part for pair in pairs for part in pair]
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [row[0] for row in rows]

    async def keys_in_tier(self, tier: str) -> list[str]:
        sql = "SELECT key FROM entries WHERE tier = ? ORDER BY key"
        rows = await self._run(lambda conn: conn.execute(sql, (tier,)).fetchall())
        return [row[0] for row in rows]

    async def get(self, key: str) -> TrackedEntry | None:
        sql = _SELECT + " WHERE key = ?"
        row = await self._run(lambda conn: conn.execute(sql, (key,)).fetchone())
        return _tracked(row) if row is not None else None

    async def oldest(self, tier: str, limit: int) -> list[TrackedEntry]:
        sql = _SELECT + " WHERE tier = ? ORDER BY last_used, key LIMIT ?"
        rows = await self._run(lambda conn: conn.execute(sql, (tier, limit)).fetchall())
        return [_tracked(row) for row in rows]

    async def totals(self) -> dict[str, tuple[int, int]]:
        sql = "SELECT tier, count(*), coalesce(sum(size), 0) FROM entries GROUP BY tier"
        rows = await self._run(lambda conn: conn.execute(sql).fetchall())
        return {tier: (int(count), int(size)) for tier, count, size in rows}

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        await asyncio.get_running_loop().run_in_executor(executor, close)
        executor.shutdown(wait=True)


def _tracked(row: tuple[str, str, str, int, int, float]) -> TrackedEntry:
    key, tier, tags, size, hits, last_used = row
    return TrackedEntry(
        key=key,
        tier=tier,
        tags=tuple((str(name), str(value)) for name, value in json.loads(tags)),
        size=int(size),
        hits=int(hits),
        last_used=float(last_used),
    )

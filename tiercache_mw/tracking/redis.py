"""Tracking index in redis (redis.asyncio), shared by every process using the server.

Layout under ``{prefix}idx:``

- ``k:{key}``        hash: tier, tags (JSON pairs), tagkeys (JSON list), size, hits, last_used
- ``t:{["n","v"]}``  set of the keys carrying one tag pair (JSON, so ``=`` or ``:`` in a tag
  cannot make two pairs collide); a tag purge is one SINTER
- ``lru:{tier}``     sorted set key -> last_used, for `oldest()` and `keys_in_tier()`
- ``tot:{tier}``     hash: entries, bytes, so `totals()` never scans
- ``tiers``          set of tier names seen

Each mutation is one Lua script, so concurrent processes never lose an update nor leave
the sets, totals and rows out of step. The scripts derive key names from the prefix, so
this needs a standalone redis (not cluster). No schema: nothing to create on first use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tiercache_mw.config import RedisConfig
from tiercache_mw.store.entry import Tags
from tiercache_mw.store.redis import client_with_scripts, glob_escape
from tiercache_mw.tracking.base import TrackedEntry

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisTracking"]

_BATCH = 500

_PRELUDE = """
local P = ARGV[1]
local function unlink(key)
  local row = redis.call('HMGET', P .. 'k:' .. key, 'tier', 'size', 'tagkeys')
  if not row[1] then return false end
  redis.call('HINCRBY', P .. 'tot:' .. row[1], 'entries', -1)
  redis.call('HINCRBY', P .. 'tot:' .. row[1], 'bytes', -tonumber(row[2]))
  redis.call('ZREM', P .. 'lru:' .. row[1], key)
  for _, tagkey in ipairs(cjson.decode(row[3])) do redis.call('SREM', tagkey, key) end
  return true
end
"""

# ARGV: prefix, key, tier, tags_json, tagkeys_json, size, now
_RECORD_SET = (
    _PRELUDE
    + """
local key, tier, size = ARGV[2], ARGV[3], ARGV[6]
local row = P .. 'k:' .. key
local hits = redis.call('HGET', row, 'hits') or '0'
unlink(key)
redis.call('HSET', row, 'tier', tier, 'tags', ARGV[4], 'tagkeys', ARGV[5], 'size', size,
           'hits', hits, 'last_used', ARGV[7])
redis.call('HINCRBY', P .. 'tot:' .. tier, 'entries', 1)
redis.call('HINCRBY', P .. 'tot:' .. tier, 'bytes', size)
redis.call('ZADD', P .. 'lru:' .. tier, ARGV[7], key)
redis.call('SADD', P .. 'tiers', tier)
for _, tagkey in ipairs(cjson.decode(ARGV[5])) do redis.call('SADD', tagkey, key) end
return 1
"""
)

# ARGV: prefix, then (key, hits, last_used) triples
_RECORD_HITS = """
local P = ARGV[1]
for i = 2, #ARGV, 3 do
  local key = ARGV[i]
  local row = P .. 'k:' .. key
  local tier = redis.call('HGET', row, 'tier')
  if tier then
    redis.call('HINCRBY', row, 'hits', ARGV[i + 1])
    local last = tonumber(redis.call('HGET', row, 'last_used'))
    if tonumber(ARGV[i + 2]) > last then
      redis.call('HSET', row, 'last_used', ARGV[i + 2])
      redis.call('ZADD', P .. 'lru:' .. tier, ARGV[i + 2], key)
    end
  end
end
return 1
"""

# ARGV: prefix, key, tier
_RECORD_MOVE = """
local P, key, tier = ARGV[1], ARGV[2], ARGV[3]
local row = P .. 'k:' .. key
local old = redis.call('HMGET', row, 'tier', 'size', 'last_used')
if not old[1] or old[1] == tier then return 0 end
redis.call('HINCRBY', P .. 'tot:' .. old[1], 'entries', -1)
redis.call('HINCRBY', P .. 'tot:' .. old[1], 'bytes', -tonumber(old[2]))
redis.call('ZREM', P .. 'lru:' .. old[1], key)
redis.call('HINCRBY', P .. 'tot:' .. tier, 'entries', 1)
redis.call('HINCRBY', P .. 'tot:' .. tier, 'bytes', tonumber(old[2]))
redis.call('ZADD', P .. 'lru:' .. tier, old[3], key)
redis.call('SADD', P .. 'tiers', tier)
redis.call('HSET', row, 'tier', tier)
return 1
"""

# ARGV: prefix, keys...
_RECORD_DELETE = (
    _PRELUDE
    + """
local removed = 0
for i = 2, #ARGV do
  if unlink(ARGV[i]) then
    redis.call('DEL', P .. 'k:' .. ARGV[i])
    removed = removed + 1
  end
end
return removed
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisTracking:
    """The tracking index in redis; see the module docstring for the layout."""

    def __init__(self, settings: RedisConfig) -> None:
        self.settings = settings
        self._p = f"{settings.prefix}idx:"
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def _redis(self) -> Redis:
        # Created on first use so that it binds to the loop TierCache runs backends on.
        if self._client is None:
            self._client, self._scripts = client_with_scripts(
                self.settings,
                {
                    "set": _RECORD_SET,
                    "hits": _RECORD_HITS,
                    "move": _RECORD_MOVE,
                    "delete": _RECORD_DELETE,
                },
            )
        return self._client

    def _tag_key(self, name: str, value: str) -> str:
        return self._p + "t:" + json.dumps([name, value], separators=(",", ":"))

    async def start(self) -> None:
        await self._redis().ping()

    async def record_set(self, key: str, tier: str, tags: Tags, size: int, now: float) -> None:
        self._redis()
        tag_keys = sorted({self._tag_key(name, value) for name, value in tags})
        await self._scripts["set"](
            args=[
                self._p,
                key,
                tier,
                json.dumps([list(pair) for pair in tags]),
                json.dumps(tag_keys),
                int(size),
                repr(float(now)),
            ]
        )

    async def record_hits(self, hits: Mapping[str, tuple[int, float]]) -> None:
        self._redis()
        items = list(hits.items())
        for start in range(0, len(items), _BATCH):
            args: list[Any] = [self._p]
            for key, (count, last_used) in items[start : start + _BATCH]:
                args += [key, int(count), repr(float(last_used))]
            await self._scripts["hits"](args=args)

    async def record_move(self, key: str, tier: str) -> None:
        self._redis()
        await self._scripts["move"](args=[self._p, key, tier])

    async def record_delete(self, keys: Iterable[str]) -> None:
        self._redis()
        batch = list(keys)
        for start in range(0, len(batch), _BATCH):
            await self._scripts["delete"](args=[self._p, *batch[start : start + _BATCH]])

    async def keys_with_tags(self, tags: Tags) -> list[str]:
        if not tags:
            return []
        members = await self._redis().sinter(
            sorted({self._tag_key(name, value) for name, value in tags})
        )
        return sorted(_text(member) for member in members)

    async def keys_in_tier(self, tier: str) -> list[str]:
        members = await self._redis().zrange(self._p + "lru:" + tier, 0, -1)
        return [_text(member) for member in members]

    async def get(self, key: str) -> TrackedEntry | None:
        row = await self._redis().hgetall(self._p + "k:" + key)
        return _tracked(key, row) if row else None

    async def oldest(self, tier: str, limit: int) -> list[TrackedEntry]:
        client = self._redis()
        keys = [_text(k) for k in await client.zrange(self._p + "lru:" + tier, 0, limit - 1)]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self._p + "k:" + key)
            rows = await pipe.execute()
        return [_tracked(key, row) for key, row in zip(keys, rows, strict=True) if row]

    async def totals(self) -> dict[str, tuple[int, int]]:
        client = self._redis()
        tiers = sorted(_text(tier) for tier in await client.smembers(self._p + "tiers"))
        async with client.pipeline(transaction=False) as pipe:
            for tier in tiers:
                pipe.hmget(self._p + "tot:" + tier, "entries", "bytes")
            rows = await pipe.execute()
        totals: dict[str, tuple[int, int]] = {}
        for tier, (entries, size) in zip(tiers, rows, strict=True):
            if entries is not None and int(entries) > 0:
                totals[tier] = (int(entries), int(size or 0))
        return totals

    async def clear(self, tier: str | None = None) -> None:
        client = self._redis()
        if tier is None:
            batch: list[bytes] = []
            async for found in client.scan_iter(match=glob_escape(self._p) + "*", count=1000):
                batch.append(found)
                if len(batch) >= _BATCH:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
            return
        while True:
            keys = [_text(k) for k in await client.zrange(self._p + "lru:" + tier, 0, _BATCH - 1)]
            if not keys:
                return
            await self.record_delete(keys)

    async def close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            await client.aclose()


def _tracked(key: str, row: Mapping[Any, Any]) -> TrackedEntry:
    fields = {_text(name): _text(value) for name, value in row.items()}
    return TrackedEntry(
        key=key,
        tier=fields["tier"],
        tags=tuple((str(name), str(value)) for name, value in json.loads(fields["tags"])),
        size=int(fields["size"]),
        hits=int(fields["hits"]),
        last_used=float(fields["last_used"]),
    )

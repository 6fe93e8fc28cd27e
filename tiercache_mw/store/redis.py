"""Redis tier (redis.asyncio): entries shared by every process, expired by the server.

Layout under ``{prefix}{tier name}:``

- ``e:{key}``  the msgpack entry bytes, ``SET ... PX residency``; a hit refreshes it with
  ``GETEX ... PX`` so residency counts since the last use, as in the RAM tiers.
- ``meta``     hash ``key -> "size ttl_ms"``: the size index for `stats()` and the TTL a
  hit needs for GETEX without reading the blob first.
- ``exp``      sorted set ``key -> expiry (ms)``: lets `stats()` drop the index rows of
  entries the server expired silently.
- ``bytes``    the sum of the sizes in ``meta``.

Stats come from that index, not from SCAN: SCAN walks the whole keyspace (every tier and
every other application sharing the server), while the index makes `stats()` O(expired).
The index is exact for expiry; entries redis evicts under ``maxmemory`` stay counted until
they are set or deleted again (documented in docs/backends.md). Every mutation runs as one
Lua script so concurrent processes never leave the index and the data out of step.
Standalone redis only: the scripts touch keys they derive (no cluster hash slots).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from tiercache_mw.config import RedisConfig, TierConfig
from tiercache_mw.store.base import TierStats
from tiercache_mw.store.codec import CodecError, decode_entry, encode_entry
from tiercache_mw.store.entry import Entry

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "CONNECT_TIMEOUT",
    "SOCKET_TIMEOUT",
    "RedisTier",
    "client_with_scripts",
    "glob_escape",
    "make_client",
]

# A down server must cost a request at most this long before the tier counts as missed.
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 0.5
_SCAN_BATCH = 500

# KEYS: entry, meta, exp, bytes. ARGV: key, blob, size, ttl_ms (0 = none), now_ms
_SET = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  redis.call('DECRBY', KEYS[4], tonumber(string.match(old, '^(%d+)')))
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]) + ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[3], '+inf', ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
redis.call('INCRBY', KEYS[4], ARGV[3])
return 1
"""

# KEYS: entry, meta, exp. ARGV: key, now_ms
_GET = """
local meta = redis.call('HGET', KEYS[2], ARGV[1])
local ttl = 0
if meta then ttl = tonumber(string.match(meta, ' (%d+)$')) end
if ttl > 0 then
  local value = redis.call('GETEX', KEYS[1], 'PX', ttl)
  if value then redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + ttl, ARGV[1]) end
  return value
end
return redis.call('GET', KEYS[1])
"""

# KEYS: entry, meta, exp, bytes. ARGV: key
_DELETE = """
local removed = redis.call('UNLINK', KEYS[1])
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  redis.call('DECRBY', KEYS[4], tonumber(string.match(old, '^(%d+)')))
  redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
return removed
"""

# KEYS: meta, exp, bytes. ARGV: now_ms. Drops index rows of entries the server expired.
_STATS = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 5000)
for _, key in ipairs(gone) do
  local old = redis.call('HGET', KEYS[1], key)
  if old then
    redis.call('DECRBY', KEYS[3], tonumber(string.match(old, '^(%d+)')))
    redis.call('HDEL', KEYS[1], key)
  end
  redis.call('ZREM', KEYS[2], key)
end
local size = tonumber(redis.call('GET', KEYS[3]) or '0')
if size < 0 then size = 0 end
return {redis.call('HLEN', KEYS[1]), size}
"""


def make_client(settings: RedisConfig) -> Redis:
    """A redis.asyncio client with short timeouts and at most one immediate retry.

    redis-py's default is 10 retries with exponential backoff, which would hold a request
    for seconds on a down server; one retry is enough to replace a connection the server
    closed on restart. A timeout is not retried: a stuck server (one that accepts and never
    answers) would make every timeout cost twice as long, and `TierCache._guard` skips the
    backend for a moment after one.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "health_check_interval": 0,
    }
    if settings.password is not None:
        options["password"] = settings.password
    if settings.url:
        return Redis.from_url(settings.url, **options)
    return Redis(host=settings.host, port=settings.port, db=settings.db, **options)


def glob_escape(text: str) -> str:
    """Escape SCAN MATCH glob characters so a prefix matches only itself."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def client_with_scripts(
    settings: RedisConfig, sources: dict[str, str]
) -> tuple[Redis, dict[str, AsyncScript]]:
    """`make_client` and the Lua scripts registered with it, by name."""
    client = make_client(settings)
    return client, {name: client.register_script(source) for name, source in sources.items()}


class RedisTier:
    """A hot or cold tier in redis; see the module docstring for the key layout."""

    reports_evictions = False

    def __init__(self, name: str, tier: TierConfig, settings: RedisConfig) -> None:
        self.name = name
        self.tier = tier
        self.settings = settings
        self._base = f"{settings.prefix}{name}:"
        self._meta = self._base + "meta"
        self._exp = self._base + "exp"
        self._bytes = self._base + "bytes"
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def _redis(self) -> Redis:
        # Created on first use so that it binds to the loop TierCache runs backends on.
        if self._client is None:
            self._client, self._scripts = client_with_scripts(
                self.settings, {"set": _SET, "get": _GET, "delete": _DELETE, "stats": _STATS}
            )
        return self._client

    def _entry_key(self, key: str) -> str:
        return f"{self._base}e:{key}"

    def _ttl_ms(self, entry: Entry) -> int:
        seconds = entry.residency.for_tier(self.name)
        if seconds is None:
            seconds = self.tier.ttl_seconds
        if seconds is None:
            return 0
        return max(1, math.ceil(seconds * 1000))

    async def get(self, key: str) -> Entry | None:
        self._redis()
        blob = await self._scripts["get"](
            keys=[self._entry_key(key), self._meta, self._exp],
            args=[key, _now_ms()],
        )
        if blob is None:
            return None
        try:
            entry = decode_entry(bytes(blob))
        except CodecError:
            await self.delete(key)
            return None
        if entry.key != key:
            return None
        return entry

    async def set(self, entry: Entry) -> None:
        self._redis()
        blob = encode_entry(entry, last_used=time.time())
        await self._scripts["set"](
            keys=[self._entry_key(entry.key), self._meta, self._exp, self._bytes],
            args=[entry.key, blob, len(blob), self._ttl_ms(entry), _now_ms()],
        )

    async def delete(self, key: str) -> bool:
        self._redis()
        removed = await self._scripts["delete"](
            keys=[self._entry_key(key), self._meta, self._exp, self._bytes], args=[key]
        )
        return bool(removed)

    async def flush(self) -> None:
        """SCAN + UNLINK of this tier's prefix only: other tiers and apps keep their keys."""
        client = self._redis()
        batch: list[bytes] = []
        async for found in client.scan_iter(match=glob_escape(self._base) + "*", count=1000):
            batch.append(found)
            if len(batch) >= _SCAN_BATCH:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)

    async def stats(self) -> TierStats:
        self._redis()
        entries, size = await self._scripts["stats"](
            keys=[self._meta, self._exp, self._bytes], args=[_now_ms()]
        )
        return TierStats(entries=int(entries), size_bytes=int(size))

    async def close(self) -> None:
        client, self._client = self._client, None
        self._scripts.clear()
        if client is not None:
            await client.aclose()


def _now_ms() -> int:
    return int(time.time() * 1000)

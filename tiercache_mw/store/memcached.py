"""Memcached tier (aiomcache): entries shared by every process, expired by the server.

Keys are ``{prefix}{tier}:{generation}:{key}``; a key too long for memcached (250 bytes) or
holding whitespace or control characters is replaced by ``h:`` + its sha256. `flush()` bumps
the tier's generation number, so the old entries become unreachable and age out on their own:
memcached cannot delete by prefix, and ``flush_all`` would wipe every tier and every other
user of the server. Other processes see a new generation within `GENERATION_CACHE_SECONDS`.

An entry larger than `CHUNK_BYTES` is stored as chunks under derived keys plus a manifest
under the entry's key (chunks named by a random token, so a reader never mixes two writes);
beyond `MAX_CHUNKS` chunks, or when the server still refuses an item, the entry is skipped.

Stats are approximate: two counters per generation (entries, bytes) are raised when `add`
creates a key and lowered on `delete`; entries that memcached expires or evicts itself are
never subtracted, so the counters run high until the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import msgpack

from tiercache_mw.config import MemcachedConfig, TierConfig
from tiercache_mw.store.base import TierStats
from tiercache_mw.store.codec import CodecError, decode_entry, encode_entry
from tiercache_mw.store.entry import Entry

if TYPE_CHECKING:
    import aiomcache

__all__ = ["CHUNK_BYTES", "MAX_CHUNKS", "MemcachedTier"]

log = logging.getLogger(__name__)

# memcached's default item limit is 1 MiB including key and item header; stay well below.
CHUNK_BYTES = 512 * 1024
MAX_CHUNKS = 64  # 32 MiB: larger entries are not worth spreading over a shared cache
TIMEOUT = 0.5  # a down or stuck server costs a request at most this long
GENERATION_CACHE_SECONDS = 1.0
_MAX_KEY_BYTES = 250
_THIRTY_DAYS = 30 * 24 * 3600  # memcached reads a larger exptime as a unix timestamp
_MANIFEST_MAGIC = b"TCMCHUNK"
_BAD_KEY = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")

T = TypeVar("T")


@functools.cache
def _client_class() -> type[aiomcache.Client]:
    """aiomcache's Client with replies read so that a closed connection raises.

    aiomcache 0.8.2 reads a simple reply with ``readline()`` until a line ends in CRLF, and
    at EOF ``readline()`` returns b"" at once without yielding (aio-libs/aiomcache#502): a
    server that dies between a command and its reply makes that loop spin forever, holding
    the loop thread, so no asyncio timeout can ever fire. ``readuntil`` raises
    IncompleteReadError instead, which `MemcachedTier._call` treats as a fault.
    """
    import aiomcache
    from aiomcache.pool import Connection

    class Client(aiomcache.Client):
        async def _execute_simple_command(self, conn: Connection, raw_command: bytes) -> bytes:
            conn.writer.write(raw_command)
            await conn.writer.drain()
            reply = await conn.reader.readuntil(b"\r\n")
            return reply[:-2]

    return Client


class MemcachedTier:
    """A hot or cold tier in memcached; see the module docstring for keys and chunking."""

    reports_evictions = False

    def __init__(self, name: str, tier: TierConfig, settings: MemcachedConfig) -> None:
        self.name = name
        self.tier = tier
        self.settings = settings
        self._base = f"{settings.prefix}{name}:"
        self._generation_key = (self._base + "gen").encode()
        self._client: aiomcache.Client | None = None
        self._generation: bytes | None = None
        self._generation_read = 0.0

    # ---- connection ---------------------------------------------------------------------

    def _mc(self) -> aiomcache.Client:
        # Created on first use, inside the loop TierCache runs backends on.
        if self._client is None:
            self._client = _client_class()(self.settings.host, self.settings.port, pool_size=16)
        return self._client

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Bound every command; on a fault drop the pool so the next call reconnects.

        aiomcache has no timeouts and returns a connection cut mid-reply to its pool,
        so after a timeout or socket error the whole client is replaced. A stuck server
        (accepts, never answers) would cost TIMEOUT per command: `TierCache._guard` skips
        the tier for a moment after a timeout.
        """
        try:
            # asyncio.timeout, not wait_for: before 3.12 wait_for can drop a cancel.
            async with asyncio.timeout(TIMEOUT):
                return await awaitable
        except (OSError, TimeoutError, asyncio.IncompleteReadError, EOFError):
            await self._reset()
            raise

    async def _reset(self) -> None:
        client, self._client = self._client, None
        self._generation = None
        if client is not None:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(TIMEOUT):
                    await client.close()

    # ---- keys -------------------------------------------------------------------------------

    async def _gen(self) -> bytes:
        now = time.monotonic()
        if self._generation is None or now - self._generation_read > GENERATION_CACHE_SECONDS:
            client = self._mc()
            current = await self._call(client.get(self._generation_key))
            if current is None:
                # A time-based start never repeats a generation that was flushed before
                # and then evicted from memcached.
                fresh = str(time.time_ns()).encode()
                await self._call(client.add(self._generation_key, fresh))
                current = await self._call(client.get(self._generation_key)) or fresh
            self._generation = bytes(current)
            self._generation_read = now
        return self._generation

    def _server_key(self, generation: bytes, key: str) -> bytes:
        raw = key.encode()
        full = self._base.encode() + generation + b":" + raw
        if len(full) > _MAX_KEY_BYTES or _BAD_KEY.search(key):
            digest = hashlib.sha256(raw).hexdigest().encode()
            full = self._base.encode() + generation + b":h:" + digest
        return full

    def _counter_keys(self, generation: bytes) -> tuple[bytes, bytes]:
        base = self._base.encode() + generation
        return base + b":#entries", base + b":#bytes"

    def _exptime(self, seconds: float | None) -> int:
        if seconds is None:
            seconds = self.tier.ttl_seconds
        if seconds is None:
            return 0
        # memcached's clock ticks once a second, so a relative exptime of n can end after
        # n - 1 seconds; one more second makes the residency at least what was asked.
        whole = max(1, math.ceil(seconds)) + 1
        return whole if whole <= _THIRTY_DAYS else int(time.time()) + whole

    # ---- the Tier protocol -----------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        client = self._mc()
        server_key = self._server_key(await self._gen(), key)
        blob = await self._call(client.get(server_key))
        if blob is None:
            return None
        chunk_keys: list[bytes] = []
        if blob.startswith(_MANIFEST_MAGIC):
            assembled = await self._read_chunks(blob)
            if assembled is None:
                return None
            blob, chunk_keys = assembled
        try:
            entry = decode_entry(blob)
        except CodecError:
            return None
        if entry.key != key:  # a sha256 collision, or a foreign writer
            return None
        # memcached has no GAT in aiomcache: touch so residency counts since the last use.
        exptime = self._exptime(entry.residency.for_tier(self.name))
        if exptime:
            for touched in (server_key, *chunk_keys):
                await self._call(client.touch(touched, exptime))
        return entry

    async def _read_chunks(self, manifest: bytes) -> tuple[bytes, list[bytes]] | None:
        try:
            token, count, total, digest = msgpack.unpackb(manifest[len(_MANIFEST_MAGIC) :])
        except Exception:  # any garbage after the magic is a miss, like a bad entry
            return None
        keys = [bytes(token) + b":" + str(index).encode() for index in range(int(count))]
        parts = await self._call(self._mc().multi_get(*keys))
        if any(part is None for part in parts):
            return None
        blob = b"".join(part for part in parts if part is not None)
        if len(blob) != total or hashlib.sha256(blob).digest() != digest:
            return None
        return blob, keys

    async def set(self, entry: Entry) -> None:
        client = self._mc()
        generation = await self._gen()
        server_key = self._server_key(generation, entry.key)
        blob = encode_entry(entry, last_used=time.time())
        exptime = self._exptime(entry.residency.for_tier(self.name))
        stored_bytes = len(blob)
        if len(blob) > CHUNK_BYTES:
            count = math.ceil(len(blob) / CHUNK_BYTES)
            if count > MAX_CHUNKS:
                log.debug(
                    "memcached %s: %s is %d bytes, not stored", self.name, entry.key, len(blob)
                )
                await self.delete(entry.key)
                return
            token = server_key[:200] + b":c" + secrets.token_hex(4).encode()
            for index in range(count):
                part = blob[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
                if not await self._store(
                    client.set(token + b":" + str(index).encode(), part, exptime)
                ):
                    return
            manifest = [token, count, len(blob), hashlib.sha256(blob).digest()]
            blob = _MANIFEST_MAGIC + msgpack.packb(manifest, use_bin_type=True)
        created = await self._store(client.add(server_key, blob, exptime))
        if created:
            await self._count(generation, 1, stored_bytes)
        else:
            await self._store(client.set(server_key, blob, exptime))

    async def _store(self, command: Awaitable[bool]) -> bool:
        """A storage command; an item the server refuses (too large) is skipped, not raised."""
        import aiomcache

        try:
            return await self._call(command)
        except aiomcache.exceptions.ClientException as exc:
            log.debug("memcached %s refused an item: %s", self.name, exc)
            return False

    async def _count(self, generation: bytes, entries: int, size: int) -> None:
        client = self._mc()
        for counter, delta in zip(self._counter_keys(generation), (entries, size), strict=True):
            if delta == 0:
                continue
            command = client.incr if delta > 0 else client.decr
            try:
                await self._call(command(counter, abs(delta)))
            except Exception as exc:
                # incr on a missing counter is an error: create it (decr floors at 0 anyway).
                if isinstance(exc, OSError | TimeoutError):
                    raise
                if delta > 0 and not await self._call(client.add(counter, str(delta).encode())):
                    await self._call(client.incr(counter, delta))

    async def delete(self, key: str) -> bool:
        client = self._mc()
        generation = await self._gen()
        server_key = self._server_key(generation, key)
        blob = await self._call(client.get(server_key))
        if blob is None:
            return False
        size = len(blob)
        if blob.startswith(_MANIFEST_MAGIC):
            try:
                token, count, size, _ = msgpack.unpackb(blob[len(_MANIFEST_MAGIC) :])
            except Exception:
                token, count = b"", 0
            for index in range(int(count)):
                await self._call(client.delete(bytes(token) + b":" + str(index).encode()))
        removed = bool(await self._call(client.delete(server_key)))
        if removed:
            await self._count(generation, -1, -int(size))
        return removed

    async def flush(self) -> None:
        """Bump the generation: never flush_all, which would empty the whole server."""
        client = self._mc()
        fresh = str(time.time_ns()).encode()
        await self._call(client.set(self._generation_key, fresh))
        self._generation = fresh
        self._generation_read = time.monotonic()

    async def stats(self) -> TierStats:
        generation = await self._gen()
        values = await self._call(self._mc().multi_get(*self._counter_keys(generation)))
        entries, size = (int(value) if value else 0 for value in values)
        return TierStats(entries=entries, size_bytes=size)

    async def close(self) -> None:
        await self._reset()

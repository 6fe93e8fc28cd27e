"""MemcachedTier against a real memcached: key hashing, chunking, generations, refresh."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.services import ServerProcess
from tests.store.tier_contract import MakeTier, TierContract
from tiercache_mw.config import MemcachedConfig, TierConfig
from tiercache_mw.store.entry import Entry, Residency
from tiercache_mw.store.memcached import CHUNK_BYTES, MAX_CHUNKS, TIMEOUT, MemcachedTier

pytestmark = pytest.mark.services


def entry(key: str, value: object = b"v", *, cold: float | None = 60.0) -> Entry:
    now = time.time()
    return Entry(key, value, (("type", "t"),), Residency(10.0, cold, None), 100, now, now)


def make(settings: MemcachedConfig, name: str = "cold") -> MemcachedTier:
    return MemcachedTier(name, TierConfig("memcached", 60.0, None), settings)


@pytest.fixture
async def tier(memcached_settings: MemcachedConfig) -> AsyncIterator[MemcachedTier]:
    made = make(memcached_settings)
    yield made
    await made.close()


async def test_set_get_round_trips_value_tags_and_residency(tier: MemcachedTier) -> None:
    await tier.set(entry("plain", {"a": [1, 2]}))
    got = await tier.get("plain")
    assert got is not None
    assert got.value == {"a": [1, 2]}
    assert got.tags == (("type", "t"),)
    assert await tier.get("missing") is None


@pytest.mark.parametrize(
    "key",
    ["with space", "tab\there", "new\nline", "ü" * 200, "x" * 1000],
    ids=["space", "tab", "newline", "long-unicode", "long"],
)
async def test_keys_memcached_cannot_hold_are_hashed(tier: MemcachedTier, key: str) -> None:
    await tier.set(entry(key, b"stored"))
    got = await tier.get(key)
    assert got is not None
    assert got.value == b"stored"
    assert got.key == key


async def test_entries_over_the_item_limit_are_chunked(tier: MemcachedTier) -> None:
    body = os.urandom(3 * CHUNK_BYTES + 17)
    await tier.set(entry("big", body))
    got = await tier.get("big")
    assert got is not None
    assert got.value == body
    assert await tier.delete("big") is True
    assert await tier.get("big") is None


async def test_entries_beyond_the_chunk_cap_are_skipped_without_error(
    tier: MemcachedTier,
) -> None:
    await tier.set(entry("huge", b"z" * (MAX_CHUNKS * CHUNK_BYTES + 1)))
    assert await tier.get("huge") is None


async def test_residency_expires_on_the_server(tier: MemcachedTier) -> None:
    await tier.set(entry("short", cold=1.0))
    assert await tier.get("short") is not None
    # memcached's clock has one-second resolution, so the tier asks for one second more
    # than the residency: the entry goes between 1 s and 3 s after the set.
    await asyncio.sleep(3.1)
    assert await tier.get("short") is None


async def test_a_hit_refreshes_residency(tier: MemcachedTier) -> None:
    await tier.set(entry("used", cold=2.0))
    for _ in range(3):
        await asyncio.sleep(1.1)
        assert await tier.get("used") is not None, "each hit restarts the residency"


async def test_flush_drops_only_this_tier(memcached_settings: MemcachedConfig) -> None:
    cold, hot = make(memcached_settings), make(memcached_settings, "hot")
    other_prefix = make(MemcachedConfig("127.0.0.1", memcached_settings.port, "other:"))
    try:
        for tier in (cold, hot, other_prefix):
            await tier.set(entry("same"))
        await cold.flush()
        assert await cold.get("same") is None
        assert await hot.get("same") is not None
        assert await other_prefix.get("same") is not None
        assert (await cold.stats()).entries == 0
    finally:
        for tier in (cold, hot, other_prefix):
            await tier.close()


async def test_a_flush_in_one_process_reaches_the_others(
    memcached_settings: MemcachedConfig,
) -> None:
    one, two = make(memcached_settings), make(memcached_settings)
    try:
        await one.set(entry("k"))
        assert await two.get("k") is not None
        await one.flush()
        await asyncio.sleep(1.1)  # GENERATION_CACHE_SECONDS
        assert await two.get("k") is None
    finally:
        await one.close()
        await two.close()


async def test_stats_count_new_entries_and_deletes(tier: MemcachedTier) -> None:
    await tier.set(entry("a", b"x" * 1000))
    await tier.set(entry("b", b"y" * 10))
    await tier.set(entry("a", b"x" * 1000))  # a replacement is not a new entry
    stats = await tier.stats()
    assert stats.entries == 2
    assert stats.size_bytes > 1010
    assert await tier.delete("a") is True
    assert await tier.delete("a") is False
    assert (await tier.stats()).entries == 1


async def test_down_server_fails_fast_and_reconnects(
    private_servers: Callable[[str], ServerProcess],
) -> None:
    server = private_servers("memcached")
    tier = make(MemcachedConfig("127.0.0.1", server.port, "f:"))
    try:
        await tier.set(entry("k"))
        server.kill()
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the client raises
            await tier.get("k")
        assert time.monotonic() - started < 2.0
        server.restart()
        await tier.set(entry("k", b"again"))
        got = await tier.get("k")
        assert got is not None
        assert got.value == b"again"
    finally:
        await tier.close()


async def test_a_stuck_server_costs_each_command_one_timeout_and_is_used_again_after(
    private_servers: Callable[[str], ServerProcess],
) -> None:
    """The tier bounds each command by TIMEOUT and reconnects after one; skipping a stuck
    tier for a moment after a timeout is TierCache._guard's (test_stuck_backends.py)."""
    server = private_servers("memcached")
    assert server.proc is not None
    pid = server.proc.pid
    tier = make(MemcachedConfig("127.0.0.1", server.port, "s:"))
    try:
        await tier.set(entry("k"))
        os.kill(pid, signal.SIGSTOP)  # still accepts connections, answers nothing
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await tier.get("k")
            took = time.monotonic() - started
            assert took < TIMEOUT * 3, took  # its timeout, not a hang; slack for a busy host
        os.kill(pid, signal.SIGCONT)
        got = await tier.get("k")
        assert got is not None
    finally:
        os.kill(pid, signal.SIGCONT)
        await tier.close()


async def _answer_gets_then_die_on_the_next_command(
    last_words: bytes,
) -> tuple[asyncio.Server, int]:
    """A server that answers ``get`` with a miss and dies mid-way through any other command:
    it reads the whole command (so its close is a clean FIN, not a reset) and closes after
    sending `last_words`, as a memcached killed between a request and its reply looks."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                words = line.split()
                if words[0] in (b"get", b"gets"):
                    writer.write(b"END\r\n")
                    continue
                if words[0] in (b"set", b"add"):
                    await reader.readexactly(int(words[4]) + 2)
                writer.write(last_words)
                await writer.drain()
                break
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.timeout(15)
@pytest.mark.parametrize("last_words", [b"", b"STOR"], ids=["no-reply", "half-a-reply"])
async def test_a_server_that_dies_before_its_reply_is_an_error_not_a_hang(
    last_words: bytes,
) -> None:
    # aiomcache 0.8.2 reads a reply with readline() until a line ends in CRLF; at EOF readline
    # returns b"" without yielding, so the loop spun forever and no asyncio timeout could
    # fire (aio-libs/aiomcache#502). That hung the cache's loop thread when a memcached
    # was killed while a demotion waited for its reply.
    server, port = await _answer_gets_then_die_on_the_next_command(last_words)
    tier = make(MemcachedConfig("127.0.0.1", port, "dies:"))
    try:
        for _ in range(3):  # each attempt on a fresh connection, after the reset
            started = time.monotonic()
            with pytest.raises((OSError, asyncio.IncompleteReadError)):
                await tier.set(entry("k"))
            assert time.monotonic() - started < 2.0
    finally:
        await tier.close()
        server.close()
        await server.wait_closed()


class TestMemcachedTierContract(TierContract):
    residency_seconds = 2.0  # memcached expiry has one-second resolution

    @pytest.fixture
    def make_tier(self, memcached_settings: MemcachedConfig) -> MakeTier:
        return lambda name: make(memcached_settings, name)

"""A stuck backend (its server accepts connections and never answers, e.g. SIGSTOPped)
costs one timeout, then `TierCache._guard` skips it for `SKIP_AFTER_TIMEOUT`: requests
through it and a close() draining many demotions or tracking writes into it stay fast."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from tests.services import ServerProcess
from tiercache_mw.store import cache as cache_module
from tiercache_mw.store.cache import SKIP_AFTER_TIMEOUT, TierCache
from tiercache_mw.store.memcached import TIMEOUT as MEMCACHED_TIMEOUT
from tiercache_mw.store.redis import SOCKET_TIMEOUT as REDIS_TIMEOUT

TIMEOUTS = {"memcached": MEMCACHED_TIMEOUT, "redis": REDIS_TIMEOUT}
VALUE = b"v" * 100
QUEUED = 500  # at the 0.5-1 s per command a stuck server cost before, close took minutes
CLOSE_BOUND = 5.0


def make_cache(tmp_path: Path, server: ServerProcess, unique: str, **sections: Any) -> TierCache:
    kind = "redis" if server.name == "redis-server" else server.name
    config: dict[str, Any] = {
        "hot_cache": {"backend": "ram", "max_size_mb": 10},
        "cold_cache": {"backend": kind, "ttl_hours": 1},
        "dry_cache": {"backend": "local", "path": str(tmp_path / "dry")},
        # Tracking writes wait for close(), so that it is close() that makes them.
        "tracking": {
            "backend": "sqlite",
            "path": str(tmp_path / "index.db"),
            "flush_interval_seconds": 3600,
        },
        kind: {"host": "127.0.0.1", "port": server.port, "prefix": f"{unique}:"},
    }
    config.update(sections)
    return TierCache.from_dict(config)


@contextmanager
def stopped(server: ServerProcess) -> Iterator[None]:
    """The server stopped: the kernel still accepts its connections, it answers nothing."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


@asynccontextmanager
async def closing(cache: TierCache) -> AsyncIterator[TierCache]:
    try:
        yield cache
    finally:
        await cache.close()


async def settled(cache: TierCache) -> None:
    """Every demotion queued so far has been written (or given up on)."""
    for _ in range(200):
        if not cache._pending:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{len(cache._pending)} demotions still pending")


async def timed_close(cache: TierCache) -> float:
    started = time.monotonic()
    await cache.close()
    return time.monotonic() - started


@pytest.mark.services
@pytest.mark.parametrize("kind", ["memcached", "redis"])
async def test_a_stuck_cold_tier_costs_one_timeout_then_is_skipped_until_it_answers_again(
    tmp_path: Path, kind: str, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    server = private_servers(kind)
    async with closing(make_cache(tmp_path, server, unique)) as cache:
        await cache.set("shared", VALUE)  # written through to the shared cold tier
        await settled(cache)
        assert cache._hot_ram is not None
        cache._hot_ram.take("shared")  # so that a lookup has to ask the cold tier
        assert await cache.get("shared") == VALUE
        cache._hot_ram.take("shared")
        with stopped(server):
            started = time.monotonic()
            assert await cache.get("missing") is None  # the one timeout
            first_took = time.monotonic() - started
            timed_out = time.monotonic()
            for n in range(100):
                assert await cache.get(f"missing/{n}") is None
            assert await cache.get("shared") is None, "skipped: a miss"
            skipped_took = time.monotonic() - timed_out
            assert cache._errors["cold"] >= 102
        # One timeout (no retry on top), and a hundred calls for less than one more.
        assert first_took < TIMEOUTS[kind] * 1.8, first_took
        assert skipped_took < TIMEOUTS[kind], skipped_took
        await asyncio.sleep(max(0.0, timed_out + SKIP_AFTER_TIMEOUT - time.monotonic()) + 0.05)
        assert await cache.get("shared") == VALUE, "asked again once the window is over"
        assert cache._hot_ram.take("shared") is not None, "promoted from cold"


@pytest.mark.services
@pytest.mark.parametrize("kind", ["memcached", "redis"])
async def test_a_delete_in_the_window_still_reaches_a_server_that_answers_again(
    tmp_path: Path, kind: str, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    """One stall longer than the client's timeout opens the window; a delete made in it is
    still sent, or another process would go on serving the deleted entry."""
    server = private_servers(kind)
    async with (
        closing(make_cache(tmp_path / "a", server, unique)) as cache,
        closing(make_cache(tmp_path / "b", server, unique)) as other,
    ):
        await cache.set("k", VALUE)  # written through to the shared cold tier
        await settled(cache)
        with stopped(server):
            assert await cache.get("missing") is None  # the one timeout: the window opens
        assert await cache.delete("k")
        assert await other.get("k") is None


@pytest.mark.services
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memcached", "redis"])
async def test_close_with_many_demotions_queued_for_a_stuck_tier_stays_bounded(
    tmp_path: Path, kind: str, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    server = private_servers(kind)
    cache = make_cache(tmp_path, server, unique)
    await cache.set("warm", VALUE)  # connected before the server stops
    await settled(cache)
    with stopped(server):
        for n in range(QUEUED):
            await cache.set(f"k/{n}", VALUE)
        # The first of them keeps the drain waiting for its timeout: the rest wait for close.
        assert len(cache._pending) > QUEUED / 2
        took = await timed_close(cache)
    assert took < CLOSE_BOUND, took
    assert cache._errors["cold"] >= QUEUED, "each one skipped is counted"
    assert not cache._pending


@pytest.mark.services
@pytest.mark.timeout(60)
async def test_close_with_many_tracking_writes_for_a_stuck_redis_index_stays_bounded(
    tmp_path: Path, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    server = private_servers("redis")
    cache = make_cache(
        tmp_path,
        server,
        unique,
        cold_cache={"backend": "ram", "max_size_mb": 10},
        tracking={"backend": "redis", "flush_interval_seconds": 3600},
    )
    await cache.start()
    with stopped(server):
        for n in range(QUEUED):  # one record_set each at close: redis tracking has no batch
            await cache.set(f"k/{n}", VALUE)
        took = await timed_close(cache)
    assert took < CLOSE_BOUND, took
    assert cache._errors["tracking"] >= QUEUED


def bare_cache(tmp_path: Path) -> TierCache:
    """Embedded backends, never started: for `_guard` on its own."""
    return TierCache.from_dict(
        {
            "dry_cache": {"path": str(tmp_path / "dry")},
            "tracking": {"path": str(tmp_path / "index.db")},
        }
    )


async def _never_called() -> str:
    raise AssertionError("a skipped call must not run")


@pytest.mark.parametrize(
    "error",
    [TimeoutError("builtin"), redis.exceptions.TimeoutError("redis-py's own class")],
    ids=["builtin", "redis-py"],
)
async def test_a_timeout_opens_the_window_and_a_skipped_call_is_closed_unrun(
    tmp_path: Path, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    cache = bare_cache(tmp_path)

    async def times_out() -> str:
        raise error

    assert await cache._guard("cold", times_out(), "default") == "default"
    skipped = _never_called()
    assert await cache._guard("cold", skipped, "default") == "default"
    assert inspect.getcoroutinestate(skipped) == inspect.CORO_CLOSED  # no "never awaited"
    assert cache._errors["cold"] == 2
    assert "skipped for 1 s" in caplog.text
    # Another backend is not held to it, and a close (always made) still is.
    assert await cache._guard("dry", asyncio.sleep(0, "dry"), "default") == "dry"
    assert await cache._guard("cold", asyncio.sleep(0, "closed"), None, always=True) == "closed"


async def test_a_skip_is_logged_as_one_after_a_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "ERROR_LOG_INTERVAL", 0.0)
    cache = bare_cache(tmp_path)

    async def times_out() -> None:
        raise TimeoutError("Timeout reading from 127.0.0.1:1")

    await cache._guard("cold", times_out(), None)
    await cache._guard("cold", _never_called(), None)
    assert "cold backend skipped after a timeout 0.0 s ago" in caplog.text
    assert "Timeout reading from 127.0.0.1:1" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError(111, "refused"), redis.exceptions.ConnectionError("refused")],
    ids=["refused", "redis-py-refused"],
)
async def test_a_refused_connection_opens_no_window(tmp_path: Path, error: Exception) -> None:
    cache = bare_cache(tmp_path)

    async def refused() -> str:
        raise error

    assert await cache._guard("cold", refused(), "default") == "default"
    # A restarted server is used again at once.
    assert await cache._guard("cold", asyncio.sleep(0, "answer"), "default") == "answer"


async def test_after_the_window_one_call_tries_again_while_the_others_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call arriving while the probe waits on a still-stuck server does not wait too; the
    probe's answer closes the window, its timeout opens a new one."""
    monkeypatch.setattr(cache_module, "SKIP_AFTER_TIMEOUT", 0.05)
    cache = bare_cache(tmp_path)
    made: list[str] = []

    async def call(name: str) -> str:
        made.append(name)
        return name

    async def times_out() -> str:
        raise TimeoutError("stuck")

    await cache._guard("cold", times_out(), None)
    await asyncio.sleep(0.06)
    answer = asyncio.Event()

    async def waits_for_the_server() -> str:
        await answer.wait()
        return "answer"

    probe = asyncio.ensure_future(cache._guard("cold", waits_for_the_server(), "default"))
    await asyncio.sleep(0)
    assert await cache._guard("cold", call("meanwhile"), "default") == "default"
    answer.set()
    assert await probe == "answer"
    # The window is closed: every call goes to the backend again.
    assert await cache._guard("cold", call("next"), "default") == "next"

    await cache._guard("cold", times_out(), None)
    await asyncio.sleep(0.06)
    assert await cache._guard("cold", times_out(), "default") == "default"  # the probe
    assert await cache._guard("cold", call("in the new window"), "default") == "default"
    assert made == ["next"]


async def test_a_timeout_in_the_dry_trim_does_not_have_the_dry_tier_skipped(tmp_path: Path) -> None:
    """An S3 dry tier's trim asks the tracking index: a stuck index times the trim out, and
    that must not make every dry read a miss for the next second."""
    cache = TierCache.from_dict(
        {
            "dry_cache": {"path": str(tmp_path / "dry"), "max_size_gb": 1},
            "tracking": {"path": str(tmp_path / "index.db")},
        }
    )

    async def trim_behind_a_stuck_index(max_bytes: int, tracking: object) -> int:
        raise TimeoutError("tracking index stuck")

    async with closing(cache):
        await cache.start()
        cache.dry.trim = trim_behind_a_stuck_index  # type: ignore[attr-defined]  # as S3's
        cache._dry_dirty = True
        await cache._loop.run_async(cache._sweep())
        assert "dry" not in cache._timed_out
        stats = await cache.stats()
        assert stats["dry_trim_errors"] == 1
        assert stats["dry_errors"] == 0

"""A shared tier's server dies in the middle of a run of requests: no client sees an error,
the fault is counted, and the tier is used again once the server is back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.services import ServerProcess
from tests.test_asgi import Harness, is_hit
from tiercache_mw.store.memcached import TIMEOUT as MEMCACHED_TIMEOUT
from tiercache_mw.store.redis import SOCKET_TIMEOUT as REDIS_TIMEOUT

pytestmark = pytest.mark.services

PATHS = [f"/items/{n}" for n in range(12)]


def sections_for(kind: str, server: ServerProcess, unique: str) -> dict[str, Any]:
    return {
        # A hot tier this small keeps demoting, so the cold tier is in every request's path.
        "hot_cache": {"backend": "ram", "max_size_bytes": 3000},
        "cold_cache": {"backend": kind, "ttl_hours": 1},
        kind: {"host": "127.0.0.1", "port": server.port, "prefix": f"{unique}:"},
    }


def error_count(stats: dict[str, Any]) -> int:
    """Every counter the TierCache reports for backend faults (`*error*` keys)."""
    total = 0
    for name, value in stats.items():
        if "error" in name and isinstance(value, int | float):
            total += int(value)
        elif "error" in name and isinstance(value, dict):
            total += sum(int(v) for v in value.values() if isinstance(v, int | float))
    return total


@pytest.mark.parametrize("kind", ["memcached", "redis"])
async def test_killing_the_cold_server_mid_run_never_reaches_a_client(
    tmp_path: Path, kind: str, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    server = private_servers(kind)
    harness = Harness(tmp_path, **sections_for(kind, server, unique))
    cache = harness.middleware.cache
    errors_before = 0
    try:
        for round_number in range(6):
            if round_number == 2:
                errors_before = error_count(await cache.stats())
                server.kill()
            if round_number == 4:
                assert error_count(await cache.stats()) > errors_before, await cache.stats()
                server.restart()
            for path in PATHS:
                response = await harness.get(path)
                assert response.status_code == 200, (round_number, path)
                assert response.text == f"body of {path}"

        # Back up: entries reach the restarted server again and are served from it.
        # A cold hit may come from the demotion queue before the move is written, so the
        # server's own count is waited for too.
        served_from_cold = False
        stats = await cache.stats()
        for _ in range(100):
            for path in PATHS:
                if is_hit(await harness.get(path), "cold"):
                    served_from_cold = True
            stats = await cache.stats()
            if served_from_cold and stats["cold_entries"] > 0:
                break
            await asyncio.sleep(0.05)
        assert served_from_cold, stats
        assert stats["cold_entries"] > 0, stats
    finally:
        await harness.close()


@pytest.mark.parametrize("kind", ["memcached", "redis"])
async def test_a_cold_server_down_from_the_start_is_a_miss_not_an_error(
    tmp_path: Path, kind: str, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    server = private_servers(kind)
    server.kill()
    harness = Harness(tmp_path, **sections_for(kind, server, unique))
    try:
        for path in PATHS[:4]:
            response = await harness.get(path)
            assert response.status_code == 200
            assert response.text == f"body of {path}"
        assert is_hit(await harness.get(PATHS[3]), "hot")
    finally:
        await harness.close()


@pytest.mark.parametrize("kind", ["memcached", "redis"])
async def test_a_stuck_cold_server_costs_requests_little_and_close_stays_bounded(
    tmp_path: Path, kind: str, private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    """A server that accepts connections and never answers (stopped, not dead): each command
    to it would wait its whole timeout, so requests and a close that drains the demotions
    queued for it must not pay that timeout per command."""
    server = private_servers(kind)
    assert server.proc is not None
    pid = server.proc.pid
    timeout = {"memcached": MEMCACHED_TIMEOUT, "redis": REDIS_TIMEOUT}[kind]
    harness = Harness(tmp_path, **sections_for(kind, server, unique))
    requests = 60
    try:
        for path in PATHS:
            assert (await harness.get(path)).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        for n in range(requests):
            response = await harness.get(f"/stuck/{n}")
            assert response.status_code == 200
            assert response.text == f"body of /stuck/{n}"
        requests_took = time.monotonic() - started
    finally:
        closing = time.monotonic()
        await harness.close()
        close_took = time.monotonic() - closing
        os.kill(pid, signal.SIGCONT)
    # Paying the timeout per command would take requests * TIMEOUT for each of the two.
    assert requests_took < requests * timeout / 4, requests_took
    assert close_took < requests * timeout / 4, close_took

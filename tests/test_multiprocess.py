"""Several processes, one shared cache: the redis purge bus, and two uvicorn workers
(cold=redis, tracking=redis) that see each other's entries and purges."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.services import ServerProcess, free_port
from tiercache_mw.config import RedisConfig, TierConfig
from tiercache_mw.store.broadcast import RedisPurgeBus
from tiercache_mw.store.redis import RedisTier

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parent.parent


# ---- the purge bus ---------------------------------------------------------------------


class Received:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.arrived = asyncio.Event()

    def __call__(self, keys: list[str]) -> None:
        self.batches.append(keys)
        self.arrived.set()

    async def wait(self, seconds: float = 1.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrived.wait(), seconds)


async def test_a_purge_reaches_other_processes_but_not_the_sender(
    redis_settings: RedisConfig,
) -> None:
    got_a, got_b = Received(), Received()
    a, b = RedisPurgeBus(redis_settings, got_a), RedisPurgeBus(redis_settings, got_b)
    try:
        for bus in (a, b):
            await bus.start()
            assert await bus.wait_subscribed(5.0)
        await a.publish(["k1", "k2"])
        await got_b.wait()
        assert got_b.batches == [["k1", "k2"]]
        assert got_a.batches == []
    finally:
        await a.close()
        await b.close()


async def test_the_bus_resubscribes_after_redis_restarts(
    private_servers: Callable[[str], ServerProcess], unique: str
) -> None:
    server = private_servers("redis")
    settings = RedisConfig(host="127.0.0.1", port=server.port, prefix=f"{unique}:")
    got: list[list[str]] = []
    listener, sender = RedisPurgeBus(settings, got.append), RedisPurgeBus(settings, print)
    try:
        await listener.start()
        assert await listener.wait_subscribed(5.0)
        server.kill()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the client's own error
            await sender.publish(["lost"])
        server.restart()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            if await listener.wait_subscribed(0.2):
                await sender.publish(["after"])
            await asyncio.sleep(0.1)
        assert ["after"] in got
    finally:
        await listener.close()
        await sender.close()


# ---- two uvicorn workers ------------------------------------------------------------------


class Workers:
    def __init__(self, base_url: str, proc: subprocess.Popen[bytes]) -> None:
        self.base_url = base_url
        self.proc = proc
        # A new connection per request lets the kernel hand it to either worker.
        self.client = httpx.Client(
            base_url=base_url, limits=httpx.Limits(max_keepalive_connections=0), timeout=10
        )

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def from_each_worker(self, path: str, tries: int = 400) -> dict[str, httpx.Response]:
        """GET until both workers answered once; returns pid -> their first response."""
        first: dict[str, httpx.Response] = {}
        for _ in range(tries):
            response = self.get(path)
            first.setdefault(response.headers["x-served-by"], response)
            if len(first) == 2:
                return first
        raise AssertionError(f"only workers {sorted(first)} answered in {tries} requests")


@pytest.fixture
def workers(redis_settings: RedisConfig, tmp_path: Path) -> Iterator[Workers]:
    config = {
        "hot_cache": {"backend": "ram", "max_size_mb": 10},
        "cold_cache": {"backend": "redis", "ttl_hours": 1},
        "dry_cache": {"backend": "local", "path": str(tmp_path / "dry")},
        "tracking": {"backend": "redis"},
        "redis": {
            "host": redis_settings.host,
            "port": redis_settings.port,
            "prefix": redis_settings.prefix,
        },
    }
    path = tmp_path / "tiercache.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "TIERCACHE_TEST_CONFIG": str(path), "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.multiprocess_app:app", "--workers", "2",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = Workers(f"http://127.0.0.1:{port}", proc)
    try:
        pids: set[str] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                pids.add(running.get("/_health").headers["x-served-by"])
            except httpx.TransportError:
                time.sleep(0.1)
        if len(pids) < 2:
            log.flush()
            output = (tmp_path / "uvicorn.log").read_text(errors="replace")
            raise AssertionError(f"two workers never answered ({pids}):\n{output[-3000:]}")
        yield running
    finally:
        running.client.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def cold_entries(settings: RedisConfig) -> int:
    async def count() -> int:
        tier = RedisTier("cold", TierConfig("redis", None, None), settings)
        try:
            return (await tier.stats()).entries
        finally:
            await tier.close()

    return asyncio.run(count())


def is_hit(response: httpx.Response, tier: str | None = None) -> bool:
    status = response.headers.get("cache-status", "")
    return status.startswith("tiercache; hit") and (tier is None or status.endswith(tier))


def test_an_entry_cached_by_one_worker_is_a_cold_hit_in_the_other(
    workers: Workers, redis_settings: RedisConfig
) -> None:
    first = workers.get("/page/shared")
    assert "stored" in first.headers["cache-status"]
    deadline = time.monotonic() + 5
    while cold_entries(redis_settings) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cold_entries(redis_settings) >= 1, "the entry never reached the shared cold tier"
    other = None
    for _ in range(400):
        response = workers.get("/page/shared")
        if response.headers["x-served-by"] != first.headers["x-served-by"]:
            other = response
            break
    assert other is not None, "the second worker never answered"
    assert is_hit(other, "detail=cold"), other.headers["cache-status"]
    assert other.text == first.text


def test_a_purge_through_one_worker_reaches_both_within_a_second(workers: Workers) -> None:
    cached = workers.get("/page/purged").text
    for response in _until_both_hot(workers, "/page/purged"):
        assert response.text == cached
    purge = workers.client.post("/_purge", json={"url": f"{workers.base_url}/page/purged"})
    assert purge.status_code == 200
    assert purge.json()["removed"] >= 1
    time.sleep(1.0)  # the requirement itself is "within one second" of real time
    for response in workers.from_each_worker("/page/purged").values():
        assert response.text != cached, "a worker served the purged entry"


def _until_both_hot(workers: Workers, path: str) -> list[httpx.Response]:
    """Request until both workers serve the path from their own hot tier."""
    hot: dict[str, httpx.Response] = {}
    for _ in range(400):
        response = workers.get(path)
        if is_hit(response, "detail=hot"):
            hot[response.headers["x-served-by"]] = response
        if len(hot) == 2:
            return list(hot.values())
    raise AssertionError(f"hot in only {sorted(hot)}")

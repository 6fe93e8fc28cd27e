"""WSGICacheMiddleware end to end: a real Flask app through Flask's test client."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.apps import BIG_CHUNK, BIG_CHUNKS, cache_config, make_flask_app
from tiercache_mw import TierCache, WSGICacheMiddleware


class Harness:
    def __init__(self, tmp_path: Path, **sections: Any) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.app: Flask = make_flask_app(self.calls)
        self.cache = TierCache.from_dict(cache_config(tmp_path, **sections))
        self.middleware = WSGICacheMiddleware(self.app.wsgi_app, cache=self.cache)
        self.app.wsgi_app = self.middleware  # type: ignore[method-assign]
        self.client: FlaskClient = self.app.test_client()

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        # buffered: a WSGI server reads the whole body, which is when the cache stores it
        return self.client.get(path, buffered=True, **kwargs)

    def close(self) -> None:
        self.middleware.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def is_hit(response: TestResponse, tier: str | None = None) -> bool:
    status = response.headers["cache-status"]
    return status.startswith("tiercache; hit; ttl=") and (
        tier is None or status.endswith(f"detail={tier}")
    )


def test_miss_then_hot_hit_calls_app_once(harness: Harness) -> None:
    first = harness.get("/products/1")
    second = harness.get("/products/1")
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert is_hit(second, "hot")
    assert second.get_json() == {"id": "1"}
    assert harness.calls["/products/1"] == 1


def test_head_is_served_from_the_get_entry(harness: Harness) -> None:
    get = harness.get("/products/2")
    head = harness.client.head("/products/2")
    assert is_hit(head, "hot")
    assert head.data == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert harness.calls["/products/2"] == 1


def test_bypass_route(harness: Harness) -> None:
    for _ in range(2):
        assert harness.get("/account/me").headers["cache-status"] == "tiercache; fwd=bypass"
    assert harness.calls["/account/me"] == 2


@pytest.mark.parametrize(
    ("path", "request_headers"),
    [
        ("/nostore", {}),
        ("/private", {}),
        ("/cookie", {}),
        ("/auth", {"Authorization": "Bearer secret"}),
    ],
    ids=["no-store", "private", "set-cookie", "authorization"],
)
def test_responses_a_shared_cache_must_not_reuse(
    harness: Harness, path: str, request_headers: dict[str, str]
) -> None:
    harness.get(path, headers=request_headers)
    assert not is_hit(harness.get(path, headers=request_headers))
    assert harness.calls[path] == 2


def test_route_rule_ttl_expires(harness: Harness) -> None:
    harness.get("/ruled/b")
    assert is_hit(harness.get("/ruled/b"))
    time.sleep(1.2)
    assert not is_hit(harness.get("/ruled/b"))
    assert harness.calls["/ruled/b"] == 2


def test_oversize_body_streams_whole_and_is_not_stored(harness: Harness) -> None:
    for _ in range(2):
        response = harness.get("/big")
        assert response.data == BIG_CHUNK * BIG_CHUNKS
    assert harness.calls["/big"] == 2


def wait_until_settled(cache: TierCache, expected: int) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for _ in range(200):
        stats = cache.stats_sync()
        if stats["hot_entries"] + stats["cold_entries"] + stats["dry_entries"] >= expected:
            return stats
        time.sleep(0.025)
    raise AssertionError(f"entries never settled: {stats}")


def test_entries_flow_down_to_dry_and_come_back_up(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        hot_cache={"backend": "ram", "max_size_bytes": 6000},
        cold_cache={"backend": "ram", "max_size_bytes": 12000},
    )
    paths = [f"/items/{n}" for n in range(40)]
    try:
        for path in paths:
            harness.get(path)
        wait_until_settled(harness.cache, len(paths))
        tiers: collections.Counter[str] = collections.Counter()
        for path in reversed(paths):  # newest first, as in test_asgi
            response = harness.get(path)
            assert is_hit(response), (path, response.headers["cache-status"])
            tier = response.headers["cache-status"].rsplit("detail=", 1)[1]
            tiers[tier] += 1
            if tier != "hot":
                assert is_hit(harness.get(path), "hot")
        assert tiers["cold"] > 0, tiers
        assert tiers["dry"] > 0, tiers
        assert all(harness.calls[path] == 1 for path in paths)
    finally:
        harness.close()


def test_restart_serves_from_dry_without_the_app(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    for n in range(5):
        first.get(f"/items/{n}")
    first.close()
    second = Harness(tmp_path)
    try:
        for n in range(5):
            assert is_hit(second.get(f"/items/{n}"), "dry")
        assert sum(second.calls.values()) == 0
    finally:
        second.close()


def test_purge_by_tag(harness: Harness) -> None:
    harness.get("/products/1")
    harness.get("/other")
    assert harness.cache.purge_sync(tags={"type": "product"}) == 1
    assert not is_hit(harness.get("/products/1"))
    assert is_hit(harness.get("/other"))


def test_concurrent_misses_collapse_into_one_app_call(tmp_path: Path) -> None:
    """Threads asking for one key while it is being fetched wait for that one call."""
    calls: collections.Counter[str] = collections.Counter()
    release = threading.Event()

    def slow_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls[environ["PATH_INFO"]] += 1
        release.wait(5)
        start_response("200 OK", [("Cache-Control", "max-age=60"), ("Content-Length", "2")])
        return [b"ok"]

    cache = TierCache.from_dict(cache_config(tmp_path))
    middleware = WSGICacheMiddleware(slow_app, cache=cache)
    statuses: list[str] = []

    def request() -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/slow",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
        }
        headers: dict[str, str] = {}

        def start_response(
            status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            headers.update(response_headers)
            return lambda data: None

        body = b"".join(middleware(environ, start_response))
        assert body == b"ok"
        statuses.append(headers["cache-status"])

    threads = [threading.Thread(target=request) for _ in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    release.set()
    for thread in threads:
        thread.join(10)
    try:
        assert calls["/slow"] == 1
        assert len(statuses) == 10
        assert sum("collapsed" in status for status in statuses) == 9
    finally:
        middleware.close()


def test_a_response_not_stored_streams_each_chunk_at_once(tmp_path: Path) -> None:
    """Only a response being stored holds a chunk back; a no-store stream (say, events)
    reaches the client chunk by chunk."""
    delivered = threading.Event()
    waited: list[bool] = []

    def events(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Cache-Control", "no-store")])
        yield b"first"
        waited.append(delivered.wait(2))  # the client must have the first chunk by now
        yield b"second"

    middleware = WSGICacheMiddleware(events, cache=TierCache.from_dict(cache_config(tmp_path)))
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/events",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    try:

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            return lambda data: None

        body = middleware(environ, start_response)
        chunks = []
        for chunk in body:
            chunks.append(chunk)
            delivered.set()
        assert chunks == [b"first", b"second"]
        assert waited == [True]
    finally:
        middleware.close()

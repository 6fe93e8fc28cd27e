"""WSGICacheMiddleware end to end: a real Flask app through Flask's test client."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import Client, EnvironBuilder, TestResponse

from tests.apps import BIG_CHUNK, BIG_CHUNKS, cache_config, make_flask_app
from tests.live import wsgi_server
from tests.rfc.origin import FakeClock
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


# ---- the write() callable (PEP 3333) ---------------------------------------------------------
# Through a real server: werkzeug's test client drops write() data when it buffers.
def written_app(
    body: Callable[[Callable[[bytes], object]], Iterable[bytes]], cache_control: str
) -> tuple[collections.Counter[str], Callable[..., Iterable[bytes]]]:
    """An app that starts its response, then hands `body` the write() callable it got."""
    calls: collections.Counter[str] = collections.Counter()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        calls[environ["PATH_INFO"]] += 1
        write = start_response("200 OK", [("Cache-Control", cache_control)])
        return body(write)

    return calls, app


@contextmanager
def served(tmp_path: Path, app: Callable[..., Iterable[bytes]]) -> Iterator[httpx.Client]:
    """The app behind the middleware on a real threaded server; a client for it."""
    middleware = WSGICacheMiddleware(app, cache=TierCache.from_dict(cache_config(tmp_path)))
    try:
        with (
            wsgi_server(middleware) as port,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
        ):
            yield client
    finally:
        middleware.close()


def hit(response: httpx.Response) -> bool:
    return response.headers["cache-status"].startswith("tiercache; hit;")


def test_a_body_sent_through_write_is_stored_whole(tmp_path: Path) -> None:
    def hello_world(write: Callable[[bytes], object]) -> list[bytes]:
        write(b"hello ")
        return [b"world"]

    calls, app = written_app(hello_world, "max-age=60")
    with served(tmp_path, app) as client:
        first, second = client.get("/doc"), client.get("/doc")
    assert first.content == second.content == b"hello world"
    assert hit(second)
    assert calls["/doc"] == 1


def test_a_body_sent_only_through_write_is_stored(tmp_path: Path) -> None:
    def written(write: Callable[[bytes], object]) -> list[bytes]:
        for part in (b"a", b"b", b"c"):
            write(part)
        return []

    calls, app = written_app(written, "max-age=60")
    with served(tmp_path, app) as client:
        first, second = client.get("/abc"), client.get("/abc")
    assert first.content == second.content == b"abc"
    assert hit(second)
    assert calls["/abc"] == 1


def test_a_written_body_over_max_entry_bytes_is_sent_whole_and_not_stored(
    tmp_path: Path,
) -> None:
    def big(write: Callable[[bytes], object]) -> list[bytes]:
        for _ in range(BIG_CHUNKS):
            write(BIG_CHUNK)
        return [b"end"]

    calls, app = written_app(big, "max-age=60")
    with served(tmp_path, app) as client:
        responses = [client.get("/big") for _ in range(2)]
    assert all(r.content == BIG_CHUNK * BIG_CHUNKS + b"end" for r in responses)
    assert not any(hit(r) for r in responses)
    assert calls["/big"] == 2


def test_writes_between_chunks_reach_client_and_store_in_order(tmp_path: Path) -> None:
    """write() goes out on the socket at once, so a chunk the cache holds back must go
    out before it."""

    def interleaved(write: Callable[[bytes], object]) -> Iterator[bytes]:
        yield b"1"
        write(b"2")
        yield b"3"
        write(b"4")

    calls, app = written_app(interleaved, "max-age=60")
    with served(tmp_path, app) as client:
        first, second = client.get("/mixed"), client.get("/mixed")
    assert first.content == second.content == b"1234"
    assert hit(second)
    assert calls["/mixed"] == 1


def test_an_app_using_write_is_refreshed_in_the_background(tmp_path: Path) -> None:
    """stale-while-revalidate: the refresh has no client, yet the app's write() must work."""
    versions = iter((b"v1", b"v2"))

    def versioned(write: Callable[[bytes], object]) -> list[bytes]:
        write(next(versions))
        return []

    calls, app = written_app(versioned, "max-age=10, stale-while-revalidate=60")
    middleware = WSGICacheMiddleware(app, cache=TierCache.from_dict(cache_config(tmp_path)))
    clock = FakeClock()
    middleware.engine.clock = clock
    client = Client(middleware)
    try:
        # Client's default (unbuffered) mode keeps write() data.
        assert client.get("/v").get_data() == b"v1"
        clock.advance(20)
        assert client.get("/v").get_data() == b"v1"  # stale, refreshed behind it
        for _ in range(200):
            if client.get("/v").get_data() == b"v2":
                break
            time.sleep(0.02)
        assert client.get("/v").get_data() == b"v2"
        assert calls["/v"] == 2
    finally:
        middleware.close()


def test_write_on_a_response_the_cache_replaces_is_drained(tmp_path: Path) -> None:
    """The app answers the cache's validators with a 304 it writes through write(): the
    client gets the stored 200, and the app no error."""
    calls: collections.Counter[str] = collections.Counter()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls[environ["PATH_INFO"]] += 1
        headers = [("Cache-Control", "max-age=0"), ("ETag", '"e"')]
        if environ.get("HTTP_IF_NONE_MATCH") == '"e"':
            start_response("304 Not Modified", headers)(b"")
            return []
        start_response("200 OK", headers)(b"stored")
        return []

    with served(tmp_path, app) as client:
        client.get("/e")
        validated = client.get("/e")
    assert (validated.status_code, validated.content) == (200, b"stored")
    assert validated.headers["cache-status"] == "tiercache; fwd=stale; fwd-status=304"
    assert calls["/e"] == 2


class _ClosableBody:
    """An app's iterable that records its close() (PEP 3333: the server must call it)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


def _no_write(data: bytes) -> None:
    """write() for a start_response whose response nobody reads."""


def test_a_forward_closed_before_iteration_lets_its_followers_go(tmp_path: Path) -> None:
    """An outer middleware may close the body without iterating it: the app's iterable is
    closed and the requests collapsed onto this forward do not wait collapse_timeout."""
    bodies: list[_ClosableBody] = []

    def app(environ: dict[str, Any], start_response: Any) -> _ClosableBody:
        start_response("200 OK", [("Cache-Control", "max-age=60"), ("Content-Length", "2")])
        bodies.append(_ClosableBody([b"ok"]))
        return bodies[-1]

    middleware = WSGICacheMiddleware(app, cache=TierCache.from_dict(cache_config(tmp_path)))
    try:
        environ = EnvironBuilder(path="/closed", base_url="http://origin.test").get_environ()
        body = middleware(environ, lambda status, headers, exc_info=None: _no_write)
        close = getattr(body, "close", None)  # PEP 3333: the iterable may have close()
        assert close is not None
        close()  # never iterated
        assert bodies[0].closed
        started = time.monotonic()
        follower = Client(middleware).get("/closed", base_url="http://origin.test")
        assert (follower.status_code, follower.get_data()) == (200, b"ok")
        assert time.monotonic() - started < 3.0  # collapse_timeout_seconds is 10
        assert len(bodies) == 2
    finally:
        middleware.close()

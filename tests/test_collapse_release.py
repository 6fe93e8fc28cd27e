"""Collapsed requests are let go as soon as the leader's answer is known: at its head when it
will not be stored (Varnish's hit-for-miss), else once the entry is stored, before the
leader's client has read the last of it. A Range request never leads.

Both adapters behind real servers on loopback (uvicorn, werkzeug's threaded server): the
leader's client really stalls on a socket, and followers really queue on the middleware.
The tests wait for real conditions (the app called, followers waiting on the leader), never a
fixed time: on a loaded runner a follower late by a fixed sleep would be a plain hit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.apps import cache_config
from tests.live import asgi_server, wsgi_server
from tests.rfc.origin import FakeClock
from tiercache_mw import CacheMiddleware, TierCache, WSGICacheMiddleware
from tiercache_mw.engine import HttpCache
from tiercache_mw.wsgi import StartResponse, WSGIEnviron

GATE = None  # in a script's parts: the app waits here until the test opens the gate
WAIT_SECONDS = 10.0  # any wait in the apps or the clients ends by then
PROMPT_SECONDS = 3.0  # well under collapse_timeout_seconds (10 s)
BIG = b"b" * (8 << 20)  # more than loopback buffers hold while a client does not read
ADAPTERS = ["asgi", "wsgi"]


class Scripted:
    """One response for every request, its body sent in parts; counts the calls."""

    def __init__(self, headers: list[tuple[str, str]], parts: list[bytes | None]) -> None:
        self.headers = headers
        self.parts = parts
        self.gate = threading.Event()
        self.calls = 0
        self._called = threading.Condition()

    def _count(self) -> None:
        with self._called:
            self.calls += 1
            self._called.notify_all()

    def wait_for_calls(self, times: int) -> bool:
        with self._called:
            return self._called.wait_for(lambda: self.calls >= times, WAIT_SECONDS)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._count()
        headers = [(name.encode(), value.encode()) for name, value in self.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for part in self.parts:
            if part is GATE:
                await asyncio.to_thread(self.gate.wait, WAIT_SECONDS)
            else:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def wsgi(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterator[bytes]:
        self._count()
        start_response("200 OK", self.headers)
        return self._body()

    def _body(self) -> Iterator[bytes]:
        for part in self.parts:
            if part is GATE:
                self.gate.wait(WAIT_SECONDS)
            else:
                yield part

    def body(self) -> bytes:
        return b"".join(part for part in self.parts if part is not GATE)


class InFlight(dict[str, Any]):
    """A middleware's map of forwards in flight (key -> the leader's), counting the requests
    that found a leader there: from that lookup on, a follower waits for its leader and is
    answered from what the leader stored, however soon or late the leader finishes."""

    def __init__(self) -> None:
        super().__init__()
        self.followers = 0
        self._lock = threading.Lock()  # WSGI followers look from several threads

    def get(self, key: str, default: Any = None) -> Any:
        found = super().get(key, default)
        if found is not None:
            with self._lock:
                self.followers += 1
        return found


@dataclass
class Site:
    client: httpx.AsyncClient
    inflight: InFlight
    engine: HttpCache


@asynccontextmanager
async def served(
    adapter: str, origin: Scripted, tmp_path: Path, **http: Any
) -> AsyncIterator[Site]:
    config = cache_config(tmp_path, hot_cache={"backend": "ram", "max_size_mb": 64}, http={**http})
    cache = TierCache.from_dict(config)
    inflight = InFlight()
    if adapter == "asgi":
        asgi = CacheMiddleware(origin.asgi, cache=cache)
        asgi._inflight = inflight
        server = asgi_server(asgi)
        engine = asgi.engine
    else:
        wsgi = WSGICacheMiddleware(origin.wsgi, cache=cache)
        wsgi._inflight = inflight
        server = wsgi_server(wsgi)
        engine = wsgi.engine
    try:
        with server as port:
            base_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_SECONDS * 3) as client:
                yield Site(client, inflight, engine)
    finally:
        origin.gate.set()
        await (asgi.close() if adapter == "asgi" else asyncio.to_thread(wsgi.close))


class Fetch:
    """One GET in a task: `head` is set when its head arrives; it reads the body once `read`
    is set (a client that stalls keeps it unset)."""

    def __init__(
        self, client: httpx.AsyncClient, path: str, headers: dict[str, str], *, read: bool
    ) -> None:
        self.head = asyncio.Event()
        self.read = asyncio.Event()
        if read:
            self.read.set()
        self.response: httpx.Response | None = None
        self.body = b""
        self.task = asyncio.create_task(self._run(client, path, headers))

    async def _run(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        async with client.stream("GET", path, headers=headers) as response:
            self.response = response
            self.head.set()
            await self.read.wait()
            self.body = await response.aread()

    @property
    def cache_status(self) -> str:
        assert self.response is not None
        return self.response.headers["cache-status"]

    async def finish(self) -> None:
        self.read.set()
        async with asyncio.timeout(WAIT_SECONDS * 2):
            await self.task


@contextmanager
def fetching() -> Iterator[list[Fetch]]:
    """The fetches a test starts; any still running at its end are cancelled."""
    fetches: list[Fetch] = []
    try:
        yield fetches
    finally:
        for fetch in fetches:
            fetch.task.cancel()


async def until_called(origin: Scripted, times: int) -> None:
    assert await asyncio.to_thread(origin.wait_for_calls, times), f"{times} calls expected"


async def followers_waiting(site: Site, count: int) -> None:
    """Until `count` requests found the leader in flight and wait on it (bounded)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while site.inflight.followers < count:
        assert time.monotonic() < deadline, (
            f"{count} followers expected to wait on the leader, "
            f"{site.inflight.followers} did within {WAIT_SECONDS} s"
        )
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("headers", "first"),
    [
        ([("cache-control", "no-store")], b"event: 1\n\n"),
        ([("cache-control", "private, max-age=60")], b"mine"),
        ([("cache-control", "max-age=60"), ("set-cookie", "session=1")], b"cookie"),
        ([("cache-control", "max-age=60"), ("content-length", "20006")], b"x" * 20000),
        ([("cache-control", "max-age=60")], b"x" * 20000),  # over max_entry_bytes, streamed
    ],
    ids=["no-store", "private", "set-cookie", "content-length-too-large", "streamed-too-large"],
)
async def test_a_response_not_stored_lets_the_waiters_go_at_once(
    tmp_path: Path, adapter: str, headers: list[tuple[str, str]], first: bytes
) -> None:
    """The leader's stream stays open (an event stream, a download); the request that came
    during it must reach the app itself at once, not after collapse_timeout_seconds."""
    origin = Scripted(headers, [first, GATE, b"finish"])
    async with served(adapter, origin, tmp_path, max_entry_bytes=16384) as site:
        client = site.client
        with fetching() as fetches:
            leader = Fetch(client, "/stream", {}, read=False)
            fetches.append(leader)
            await until_called(origin, 1)
            follower = Fetch(client, "/stream", {}, read=False)
            fetches.append(follower)
            async with asyncio.timeout(PROMPT_SECONDS):
                await follower.head.wait()  # while the leader's response is still open
            assert origin.calls == 2
            origin.gate.set()
            await leader.finish()
            await follower.finish()
    assert leader.body == follower.body == origin.body()
    assert "collapsed" not in follower.cache_status


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_stored_response_lets_the_waiters_go_before_its_client_has_read_it(
    tmp_path: Path, adapter: str
) -> None:
    """The waiters are answered from the entry once it is stored, while the leader's client
    (slow, or gone quiet) has not read the last part yet."""
    origin = Scripted([("cache-control", "max-age=60")], [b"start", GATE, BIG])
    async with served(adapter, origin, tmp_path, max_entry_bytes=16 << 20) as site:
        client = site.client
        with fetching() as fetches:
            leader = Fetch(client, "/big", {}, read=False)
            fetches.append(leader)
            await until_called(origin, 1)
            follower = Fetch(client, "/big", {}, read=True)
            fetches.append(follower)
            await followers_waiting(site, 1)
            origin.gate.set()
            async with asyncio.timeout(PROMPT_SECONDS):
                await follower.task
            assert not leader.task.done()  # its client has not read it all
            await leader.finish()
    assert leader.body == follower.body == origin.body()
    assert "collapsed" in follower.cache_status
    assert origin.calls == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_range_request_does_not_lead(tmp_path: Path, adapter: str) -> None:
    """Its answer may be a 206, which is never stored: a request that came meanwhile goes
    to the app itself instead of waiting for it."""
    origin = Scripted([("cache-control", "max-age=60")], [GATE, b"0123456789"])
    async with served(adapter, origin, tmp_path) as site:
        client = site.client
        with fetching() as fetches:
            ranged = Fetch(client, "/r", {"range": "bytes=0-1"}, read=True)
            fetches.append(ranged)
            await until_called(origin, 1)
            whole = Fetch(client, "/r", {}, read=True)
            fetches.append(whole)
            await until_called(origin, 2)  # before the gate opens
            origin.gate.set()
            await ranged.finish()
            await whole.finish()
    assert whole.body == origin.body()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_range_request_waits_for_a_leader_and_gets_its_part(
    tmp_path: Path, adapter: str
) -> None:
    origin = Scripted([("cache-control", "max-age=60")], [GATE, b"0123456789"])
    async with served(adapter, origin, tmp_path) as site:
        client = site.client
        with fetching() as fetches:
            whole = Fetch(client, "/r", {}, read=True)
            fetches.append(whole)
            await until_called(origin, 1)
            ranged = Fetch(client, "/r", {"range": "bytes=2-4"}, read=True)
            fetches.append(ranged)
            await followers_waiting(site, 1)
            origin.gate.set()
            await whole.finish()
            await ranged.finish()
    assert ranged.response is not None
    assert (ranged.response.status_code, ranged.body) == (206, b"234")
    assert "collapsed" in ranged.cache_status
    assert origin.calls == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_conditional_miss_followers_get_304s_from_the_one_stored_200(
    tmp_path: Path, adapter: str
) -> None:
    """The leader's If-None-Match is not sent (its 200 is stored, then answered with a 304):
    it waits for nothing, and the followers get their 304s from the same entry."""
    etag = '"v7"'
    origin = Scripted([("cache-control", "max-age=60"), ("etag", etag)], [GATE, b"items"])
    conditional = {"if-none-match": etag}
    async with served(adapter, origin, tmp_path) as site:
        client = site.client
        with fetching() as fetches:
            leader = Fetch(client, "/poll", conditional, read=True)
            fetches.append(leader)
            await until_called(origin, 1)
            followers = [Fetch(client, "/poll", conditional, read=True) for _ in range(2)]
            fetches.extend(followers)
            await followers_waiting(site, 2)
            origin.gate.set()
            for fetch in (leader, *followers):
                await fetch.finish()
    assert origin.calls == 1
    assert [fetch.response.status_code for fetch in (leader, *followers) if fetch.response] == [
        304,
        304,
        304,
    ]
    assert leader.cache_status == "tiercache; fwd=uri-miss; fwd-status=200; stored"
    assert {follower.cache_status for follower in followers} == {
        "tiercache; fwd=uri-miss; fwd-status=200; collapsed"
    }


class Revalidated(Scripted):
    """A 200 with a one-second lifetime; a request with If-None-Match waits at the gate,
    then gets a 304."""

    def __init__(self) -> None:
        super().__init__([("cache-control", "max-age=1"), ("etag", '"r"')], [b"revalidated"])

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not any(name == b"if-none-match" for name, _ in scope["headers"]):
            await super().asgi(scope, receive, send)
            return
        self._count()
        await asyncio.to_thread(self.gate.wait, WAIT_SECONDS)
        headers = [(name.encode(), value.encode()) for name, value in self.headers]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def wsgi(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterator[bytes]:
        if "HTTP_IF_NONE_MATCH" not in environ:
            return super().wsgi(environ, start_response)
        self._count()
        self.gate.wait(WAIT_SECONDS)
        start_response("304 Not Modified", self.headers)
        return iter(())


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_followers_of_a_revalidation_report_the_304_the_leader_received(
    tmp_path: Path, adapter: str
) -> None:
    """RFC 9211 §2.3: fwd-status is what the app answered the forward they waited for."""
    origin = Revalidated()
    async with served(adapter, origin, tmp_path) as site:
        client = site.client
        # Freshness on a test clock: wall-clock seconds could also age the revalidated entry
        # before a loaded runner's followers get to it.
        clock = site.engine.clock = FakeClock()
        assert (await client.get("/r")).status_code == 200
        clock.advance(2)  # stale: the next request validates
        with fetching() as fetches:
            leader = Fetch(client, "/r", {}, read=True)
            fetches.append(leader)
            await until_called(origin, 2)
            followers = [Fetch(client, "/r", {}, read=True) for _ in range(2)]
            fetches.extend(followers)
            await followers_waiting(site, 2)
            origin.gate.set()
            for fetch in (leader, *followers):
                await fetch.finish()
    assert origin.calls == 2
    assert leader.cache_status == "tiercache; fwd=stale; fwd-status=304"
    assert {follower.cache_status for follower in followers} == {
        "tiercache; fwd=stale; fwd-status=304; collapsed"
    }
    assert all(fetch.body == b"revalidated" for fetch in (leader, *followers))

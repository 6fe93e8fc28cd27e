"""Reverse-proxy mode end to end: a real upstream (uvicorn in a thread) behind
`python -m tiercache_mw.cli proxy` (a subprocess), both on loopback, driven with httpx.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tiercache_mw.proxy import strip_hop_by_hop

REPO = Path(__file__).resolve().parent.parent
READY_SECONDS = 20.0
STREAM_CHUNKS = [bytes([65 + n % 26]) * 1000 for n in range(40)]
GZIPPED = gzip.compress(b"tiercache " * 200, mtime=0)


# ---- the upstream --------------------------------------------------------------------------
class Origin:
    """A counting Starlette origin; `calls[(method, path)]` is how often each was reached."""

    def __init__(self) -> None:
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bodies: dict[str, bytes] = {}
        self.gate = threading.Event()  # /gated sends its second half once this is set
        self.release = threading.Event()  # /slow answers once this is set
        self.app = Starlette(
            routes=[
                Route("/items/{name}", self.item, methods=["GET", "HEAD", "POST", "PUT"]),
                Route("/account/{name}", self.item),
                Route("/echo", self.echo, methods=["GET", "POST"]),
                Route("/hop", self.hop),
                Route("/cookie", self.cookie),
                Route("/stream", self.stream),
                Route("/gated", self.gated),
                Route("/gzip", self.gzipped),
                Route("/redirect", self.redirect),
                Route("/slow", self.slow),
                Route("/tagged/{name}", self.tagged),
            ]
        )

    def count(self, request: Request) -> None:
        self.calls[(request.method, request.url.path)] += 1

    async def item(self, request: Request) -> Response:
        self.count(request)
        if request.method in ("POST", "PUT"):
            body = await request.body()
            self.bodies[request.url.path] = body
            return JSONResponse({"received": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        n = self.calls[(request.method, request.url.path)]
        return PlainTextResponse(
            f"{request.url.path} #{n}", headers={"cache-control": "max-age=60"}
        )

    async def tagged(self, request: Request) -> Response:
        """An ETag'd resource that answers its own If-None-Match with a 304, as origins do."""
        self.count(request)
        headers = {"cache-control": "max-age=60", "etag": '"t1"'}
        if request.headers.get("if-none-match") == '"t1"':
            return Response(status_code=304, headers=headers)
        return PlainTextResponse("tagged", headers=headers)

    async def echo(self, request: Request) -> JSONResponse:
        self.count(request)
        body = await request.body()
        return JSONResponse(
            {
                "headers": [[k, v] for k, v in request.headers.items()],
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
            },
            headers={"cache-control": "no-store"},
        )

    async def hop(self, request: Request) -> Response:
        self.count(request)
        headers = {
            "connection": "x-hop-secret",
            "x-hop-secret": "must not pass",
            "keep-alive": "timeout=5",
            "proxy-authenticate": 'Basic realm="upstream"',
            "x-kept": "yes",
            "cache-control": "max-age=60",
        }
        return PlainTextResponse("hop", headers=headers)

    async def cookie(self, request: Request) -> Response:
        self.count(request)
        headers = {"cache-control": "max-age=60", "set-cookie": "session=abc; HttpOnly"}
        return PlainTextResponse("cookie", headers=headers)

    async def stream(self, request: Request) -> StreamingResponse:
        self.count(request)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in STREAM_CHUNKS:
                yield chunk

        return StreamingResponse(chunks(), headers={"cache-control": "max-age=60"})

    async def gated(self, request: Request) -> StreamingResponse:
        self.count(request)

        async def chunks() -> AsyncIterator[bytes]:
            yield b"first half;"
            await asyncio.to_thread(self.gate.wait, 10)
            yield b"second half"

        return StreamingResponse(chunks(), headers={"cache-control": "no-store"})

    async def gzipped(self, request: Request) -> Response:
        self.count(request)
        headers = {
            "content-encoding": "gzip",
            "vary": "accept-encoding",
            "cache-control": "max-age=60",
        }
        return Response(GZIPPED, headers=headers, media_type="text/plain")

    async def redirect(self, request: Request) -> Response:
        self.count(request)
        return Response(status_code=302, headers={"location": "/items/target"})

    async def slow(self, request: Request) -> Response:
        self.count(request)
        await asyncio.to_thread(self.release.wait, 10)
        return PlainTextResponse("late", headers={"cache-control": "no-store"})


class ThreadedServer:
    """uvicorn serving `app` from a socket bound here, in a daemon thread."""

    def __init__(self, app: Starlette) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        # No Date from the origin: the proxy must add one (RFC 9110 §6.6.1).
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2,
            date_header=False, ws="none",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + READY_SECONDS
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("upstream uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


# ---- the proxy -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(directory: Path) -> Path:
    config = {
        "hot_cache": {"backend": "ram", "max_size_mb": 10},
        "cold_cache": {"backend": "ram", "max_size_mb": 10},
        "dry_cache": {"backend": "local", "path": str(directory / "dry")},
        "tracking": {"backend": "sqlite", "path": str(directory / "index.db")},
        "routes": [{"pattern": "/account/**", "cache": False}],
    }
    path = directory / "tiercache.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class ProxyProcess:
    """`python -m tiercache_mw.cli proxy ...` on a free loopback port."""

    def __init__(self, upstream: str, directory: Path, *extra: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "proxy.log"
        self.log = self.log_path.open("wb")
        command = [
            sys.executable, "-m", "tiercache_mw.cli", "proxy", "--upstream", upstream,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--config", str(write_config(directory)), "--log-level", "info", *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            command, cwd=directory, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited early:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"proxy did not listen within {READY_SECONDS} s:\n{self.output()}")

    def stop(self) -> bool:
        """SIGTERM, as a service manager would; True if the lifespan shutdown completed."""
        self.process.terminate()
        try:
            code = self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = None
        self.log.close()
        # uvicorn re-raises the signal after a graceful shutdown, so -SIGTERM is a clean exit.
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.output()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[Origin, ThreadedServer]]:
    upstream = Origin()
    server = ThreadedServer(upstream.app)
    server.start()
    yield upstream, server
    upstream.gate.set()
    upstream.release.set()
    server.stop()


@pytest.fixture(scope="module")
def proxy(
    origin: tuple[Origin, ThreadedServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    _, server = origin
    process = ProxyProcess(
        f"http://127.0.0.1:{server.port}", tmp_path_factory.mktemp("proxy"), "--timeout", "1"
    )
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop(), f"proxy did not shut down cleanly:\n{process.output()}"


@pytest.fixture
async def client(proxy: ProxyProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def upstream(origin: tuple[Origin, ThreadedServer]) -> Origin:
    return origin[0]


# ---- tests ---------------------------------------------------------------------------------
async def test_miss_then_hit_reaches_upstream_once(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    first = await client.get("/items/a")
    second = await client.get("/items/a")
    assert first.status_code == second.status_code == 200
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("tiercache; hit; ttl=")
    assert second.headers["cache-status"].endswith("; detail=hot")
    assert second.text == first.text == "/items/a #1"
    assert upstream.calls[("GET", "/items/a")] == 1
    assert "age" in second.headers


async def test_conditional_miss_is_stored_and_answered_304_by_the_proxy(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    """The upstream gets the miss without If-None-Match: its 200 is stored and every poll,
    the first included, gets its 304 from the proxy."""
    polls = [await client.get("/tagged/poll", headers={"if-none-match": '"t1"'}) for _ in range(3)]
    assert [poll.status_code for poll in polls] == [304, 304, 304]
    assert polls[0].headers["cache-status"] == "tiercache; fwd=uri-miss; fwd-status=200; stored"
    assert upstream.calls[("GET", "/tagged/poll")] == 1
    assert (await client.get("/tagged/poll")).text == "tagged"


async def test_date_is_added_when_the_origin_sends_none(client: httpx.AsyncClient) -> None:
    """RFC 9110 §6.6.1: a recipient with a clock adds Date to a message it forwards."""
    response = await client.get("/items/dated")
    assert parsedate_to_datetime(response.headers["date"]).year >= 2024
    assert len(response.headers.get_list("date")) == 1


async def test_bypass_route_is_forwarded_every_time(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    first = await client.get("/account/me")
    second = await client.get("/account/me")
    assert (
        first.headers["cache-status"] == second.headers["cache-status"] == "tiercache; fwd=bypass"
    )
    assert second.text == "/account/me #2"
    assert upstream.calls[("GET", "/account/me")] == 2


async def test_response_hop_by_hop_fields_are_stripped_and_via_added(
    client: httpx.AsyncClient,
) -> None:
    """RFC 9110 §7.6.1 (Connection and the fields it names) and §7.6.3 (Via)."""
    for response in (await client.get("/hop"), await client.get("/hop")):
        assert response.headers["x-kept"] == "yes"
        assert "x-hop-secret" not in response.headers
        assert "keep-alive" not in response.headers
        assert "proxy-authenticate" not in response.headers
        assert response.headers.get("connection", "keep-alive") == "keep-alive"
        assert response.headers["via"] == "1.1 tiercache"
    assert response.headers["cache-status"].startswith("tiercache; hit;")


async def test_request_is_forwarded_with_upstream_host_and_forwarding_fields(
    client: httpx.AsyncClient, proxy: ProxyProcess, origin: tuple[Origin, ThreadedServer]
) -> None:
    """Hop-by-hop request fields dropped (§7.6.1), Via appended (§7.6.3), X-Forwarded-*."""
    response = await client.get(
        "/echo",
        headers={
            "connection": "x-client-hop",
            "x-client-hop": "secret",
            "keep-alive": "300",
            "proxy-authorization": "Basic c2VjcmV0",
            "te": "trailers",
            "via": "1.0 edge",
            "x-forwarded-for": "10.0.0.1",
            "user-agent": "tiercache-test",
            "accept-encoding": "identity",
        },
    )
    seen = dict(response.json()["headers"])
    for name in ("x-client-hop", "keep-alive", "proxy-authorization", "te"):
        assert name not in seen, name
    assert seen["host"] == f"127.0.0.1:{origin[1].port}"
    assert seen["via"] == "1.0 edge, 1.1 tiercache"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{proxy.port}"
    assert seen["user-agent"] == "tiercache-test"
    assert seen["accept-encoding"] == "identity"  # the proxy adds no encodings of its own
    assert response.headers["cache-status"].startswith("tiercache; fwd=uri-miss")


async def test_post_body_is_forwarded_and_invalidates_cached_get(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    """RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI."""
    await client.get("/items/b")
    assert (await client.get("/items/b")).headers["cache-status"].startswith("tiercache; hit;")
    body = os.urandom(64 * 1024)
    posted = await client.post("/items/b", content=body)
    assert posted.status_code == 200
    assert posted.json() == {"received": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert upstream.bodies["/items/b"] == body
    after = await client.get("/items/b")
    assert after.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert after.text == "/items/b #2"
    assert upstream.calls[("GET", "/items/b")] == 2


async def test_chunked_request_body_is_streamed_up_intact(client: httpx.AsyncClient) -> None:
    parts = [os.urandom(8192) for _ in range(16)]

    async def upload() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    response = await client.post("/echo", content=upload())
    whole = b"".join(parts)
    assert response.json()["length"] == len(whole)
    assert response.json()["sha256"] == hashlib.sha256(whole).hexdigest()


async def test_streamed_response_body_is_intact_and_cached(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    first = await client.get("/stream")
    second = await client.get("/stream")
    assert first.content == second.content == b"".join(STREAM_CHUNKS)
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("tiercache; hit;")
    assert upstream.calls[("GET", "/stream")] == 1


async def test_range_is_answered_from_the_cached_response(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    """RFC 9110 §14: a stored 200 answers a byte range with 206, the upstream asked once."""
    whole = await client.get("/stream")
    part = await client.get("/stream", headers={"range": "bytes=1000-1004"})
    assert part.status_code == 206
    assert part.content == whole.content[1000:1005] == b"BBBBB"
    assert part.headers["content-range"] == f"bytes 1000-1004/{len(whole.content)}"
    assert part.headers["cache-status"].startswith("tiercache; hit;")
    assert upstream.calls[("GET", "/stream")] == 1


async def test_response_is_streamed_before_upstream_finishes(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    async with client.stream("GET", "/gated") as response:
        chunks = response.aiter_raw()
        first = await asyncio.wait_for(chunks.__anext__(), 5)
        assert first == b"first half;"  # arrived while the upstream waits on the gate
        upstream.gate.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"second half"


async def test_content_encoding_passes_through_undecoded(client: httpx.AsyncClient) -> None:
    for expected in ("tiercache; fwd=uri-miss; stored", "tiercache; hit;"):
        async with client.stream("GET", "/gzip", headers={"accept-encoding": "gzip"}) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert response.headers["content-encoding"] == "gzip"
        assert raw == GZIPPED
        assert response.headers["cache-status"].startswith(expected)


async def test_set_cookie_response_passes_through_and_is_not_stored(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    for _ in range(2):
        response = await client.get("/cookie")
        assert response.headers["set-cookie"] == "session=abc; HttpOnly"
        assert response.headers["cache-status"].startswith("tiercache; fwd=uri-miss")
        assert "stored" not in response.headers["cache-status"]
    assert upstream.calls[("GET", "/cookie")] == 2


async def test_redirects_are_returned_not_followed(
    client: httpx.AsyncClient, upstream: Origin
) -> None:
    response = await client.get("/redirect")
    assert response.status_code == 302
    assert response.headers["location"] == "/items/target"
    assert upstream.calls[("GET", "/items/target")] == 0


async def test_upstream_timeout_gives_504(client: httpx.AsyncClient, upstream: Origin) -> None:
    try:
        response = await client.get("/slow")
    finally:
        upstream.release.set()
    assert response.status_code == 504
    assert response.text.startswith("Gateway Timeout")
    assert response.headers["cache-status"].startswith("tiercache; fwd=")


def test_upstream_down_gives_502_with_cache_status(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        upstream = f"http://127.0.0.1:{closed.getsockname()[1]}"
        process = ProxyProcess(upstream, tmp_path)
        try:
            process.wait_ready()
            response = httpx.get(process.url + "/items/x", trust_env=False, timeout=10)
        finally:
            process.stop()
    assert response.status_code == 502
    assert response.text.startswith("Bad Gateway")
    assert response.headers["cache-status"].startswith("tiercache; fwd=uri-miss")
    assert "stored" not in response.headers["cache-status"]
    assert "upstream unreachable" in process.output()


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([(b"Connection", b"close"), (b"X-A", b"1")], [(b"x-a", b"1")]),
        ([(b"connection", b"X-A, x-b"), (b"x-a", b"1"), (b"X-B", b"2"), (b"x-c", b"3")],
         [(b"x-c", b"3")]),
        ([(b"transfer-encoding", b"chunked"), (b"trailer", b"x"), (b"upgrade", b"h2c"),
          (b"proxy-connection", b"keep-alive"), (b"content-length", b"5")],
         [(b"content-length", b"5")]),
        ([(b"Proxy-Authorization", b"Basic eA=="), (b"proxy-authenticate", b"Basic"),
          (b"authorization", b"Bearer t")],
         [(b"authorization", b"Bearer t")]),
    ],
)  # fmt: skip
def test_strip_hop_by_hop_removes_fixed_and_connection_named_fields(
    headers: list[tuple[bytes, bytes]], kept: list[tuple[bytes, bytes]]
) -> None:
    """RFC 9110 §7.6.1."""
    assert strip_hop_by_hop(headers) == kept


def test_invalid_upstream_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tiercache_mw.cli", "proxy", "--upstream", "ftp://x", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 2
    assert "upstream must be an http(s) URL" in result.stderr

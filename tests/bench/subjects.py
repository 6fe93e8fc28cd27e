"""The apps under test: one small builder per subject, all answering GET /item with the same
1 KB JSON document, so every figure is a ratio to the raw constant app of the same kind.

Each builder takes a private temp directory (every file a cache writes goes under it) and
returns the app. Apps that sit behind a cache count their calls in `CALLS`, so the harness
can prove a "hit" subject never reached its app and a "miss" subject always did.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "BODY",
    "CACHE_CONTROL",
    "CALLS",
    "DRY_LOAD_CONTROL",
    "PAYLOAD",
    "StartResponse",
    "WSGIApp",
    "cashews_app",
    "counted_asgi",
    "counted_wsgi",
    "dry_load_asgi",
    "fastapi_bare",
    "fastapi_cache2_app",
    "flask_bare",
    "flask_caching_app",
    "floor_asgi",
    "floor_wsgi",
    "hishel_app",
    "raw_asgi",
    "raw_wsgi",
    "tiercache_asgi",
    "tiercache_config",
    "tiercache_wsgi",
]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# A 1 KB JSON document (1,024 bytes once serialised compactly).
PAYLOAD: dict[str, Any] = {
    "id": 42,
    "name": "benchmark item",
    "tags": [f"tag-{i:02d}" for i in range(20)],
    "values": list(range(100, 100 + 113)),
}
BODY = json.dumps(PAYLOAD, separators=(",", ":")).encode()
PAYLOAD["pad"] = "x" * max(0, 1024 - len(BODY) - len(',"pad":""'))
BODY = json.dumps(PAYLOAD, separators=(",", ":")).encode()
CACHE_CONTROL = "public, max-age=3600"
NO_STORE = "no-store"

# Calls that reached an app sitting behind a cache, per subject name.
CALLS: collections.Counter[str] = collections.Counter()


def _asgi_headers(cache_control: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    if cache_control is not None:
        headers.append((b"cache-control", cache_control.encode()))
    return headers


def raw_asgi() -> ASGIApp:
    """The floor: a constant response, prebuilt once."""
    start = {"type": "http.response.start", "status": 200, "headers": _asgi_headers(None)}
    body = {"type": "http.response.body", "body": BODY}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start)
        await send(body)

    return app


def counted_asgi(name: str, cache_control: str) -> ASGIApp:
    """The constant app with a Cache-Control header, counting its calls (the origin behind
    a caching middleware)."""
    headers = _asgi_headers(cache_control)
    body = {"type": "http.response.body", "body": BODY}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        CALLS[name] += 1
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send(body)

    return app


def _wsgi_headers(cache_control: str | None) -> list[tuple[str, str]]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
    if cache_control is not None:
        headers.append(("Cache-Control", cache_control))
    return headers


def raw_wsgi() -> WSGIApp:
    headers = _wsgi_headers(None)
    body = [BODY]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return body

    return app


def counted_wsgi(name: str, cache_control: str) -> WSGIApp:
    headers = _wsgi_headers(cache_control)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        CALLS[name] += 1
        start_response("200 OK", list(headers))
        return [BODY]

    return app


# ---- frameworks ---------------------------------------------------------------------------
def fastapi_bare() -> ASGIApp:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/item")
    async def item() -> dict[str, Any]:
        return PAYLOAD

    return app


def flask_bare() -> WSGIApp:
    from flask import Flask

    app = Flask("bench_flask_bare")

    @app.get("/item")
    def item() -> dict[str, Any]:
        return PAYLOAD

    return app.wsgi_app


# ---- peers --------------------------------------------------------------------------------
def fastapi_cache2_app(name: str = "fastapi-cache2") -> ASGIApp:
    from fastapi import FastAPI
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.inmemory import InMemoryBackend
    from fastapi_cache.decorator import cache

    # fastapi-cache2 keeps its backend in class state: init once per process is its usage.
    FastAPICache.init(InMemoryBackend(), prefix="bench")
    app = FastAPI()

    @app.get("/item")
    @cache(expire=3600)
    async def item() -> dict[str, Any]:
        CALLS[name] += 1
        return PAYLOAD

    return app


def cashews_app(name: str = "cashews") -> ASGIApp:
    from cashews import cache
    from fastapi import FastAPI

    cache.setup("mem://")
    app = FastAPI()

    @app.get("/item")
    @cache(ttl="1h")
    async def item() -> dict[str, Any]:
        CALLS[name] += 1
        return PAYLOAD

    return app


def hishel_app(tmp: Path, name: str = "hishel") -> ASGIApp:
    from hishel import AsyncSqliteStorage
    from hishel.asgi import ASGICacheMiddleware

    storage = AsyncSqliteStorage(database_path=str(tmp / "hishel.db"))
    return ASGICacheMiddleware(counted_asgi(name, CACHE_CONTROL), storage=storage)


def flask_caching_app(name: str = "flask-caching") -> WSGIApp:
    from flask import Flask
    from flask_caching import Cache

    app = Flask("bench_flask_caching")
    cache = Cache(app, config={"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 3600})

    @app.get("/item")
    @cache.cached()
    def item() -> dict[str, Any]:
        CALLS[name] += 1
        return PAYLOAD

    return app.wsgi_app


# ---- tiercache_mw -------------------------------------------------------------------------
def tiercache_config(
    tmp: Path,
    *,
    hot_bytes: int = 64 * 1024**2,
    cold_bytes: int = 256 * 1024**2,
    eviction: str = "sieve",
) -> dict[str, Any]:
    return {
        "hot_cache": {"backend": "ram", "max_size_bytes": hot_bytes, "eviction": eviction},
        "cold_cache": {"backend": "ram", "max_size_bytes": cold_bytes, "eviction": eviction},
        "dry_cache": {"backend": "local", "path": str(tmp / "dry")},
        "tracking": {"backend": "sqlite", "path": str(tmp / "index.db")},
    }


def tiercache_asgi(
    tmp: Path, name: str, *, cache_control: str = CACHE_CONTROL, **sizes: Any
) -> ASGIApp:
    from tiercache_mw import CacheMiddleware, TierCache

    cache = TierCache.from_dict(tiercache_config(tmp, **sizes))
    return CacheMiddleware(counted_asgi(name, cache_control), cache=cache)


def tiercache_wsgi(
    tmp: Path, name: str, *, cache_control: str = CACHE_CONTROL, **sizes: Any
) -> WSGIApp:
    from tiercache_mw import TierCache, WSGICacheMiddleware

    cache = TierCache.from_dict(tiercache_config(tmp, **sizes))
    return WSGICacheMiddleware(counted_wsgi(name, cache_control), cache=cache)


# ---- the floor ------------------------------------------------------------------------------
# Request fields that send a request past any hot hit (a cache must read them), as in hot.py.
_FLOOR_BYPASS = frozenset(
    {b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"if-match",
     b"if-unmodified-since", b"if-range", b"range"}
)  # fmt: skip
_FLOOR_BYPASS_ENVIRON = frozenset(
    "HTTP_" + name.decode().upper().replace("-", "_") for name in _FLOOR_BYPASS
)
_FLOOR_HEADERS = [
    *_asgi_headers(CACHE_CONTROL),
    (b"age", b"0"),
    (b"cache-status", b"floor; hit; ttl=3600; detail=hot"),
]


def floor_asgi(clock: Callable[[], float] = time.time) -> ASGIApp:
    """The least a correct hot hit has to do, hand-inlined in one function with no cache
    behind it: check the method and the request's fields, map the request line to a key,
    find the entry, compare the clock with its freshness, and send a copy of its header list
    (middleware further out may edit it in place) and its body. What pure Python cannot go
    below; tiercache_mw's hot hit is measured against it."""
    fresh_until = clock() + 3600
    keys: dict[tuple[Any, ...], str] = {
        ("GET", "http", b"bench.local", b"/item", b""): "http://bench.local/item"
    }
    entries = {"http://bench.local/item": (fresh_until, _FLOOR_HEADERS, BODY)}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method == "GET" or method == "HEAD":
            host = None
            for name, value in scope["headers"]:
                if name == b"host":
                    host = host or value
                elif name in _FLOOR_BYPASS:
                    break
            else:
                line = (method, scope["scheme"], host, scope["raw_path"], scope["query_string"])
                entry = entries.get(keys.get(line, ""))
                if entry is not None and clock() < entry[0]:
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": entry[1][:]}
                    )
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"" if method == "HEAD" else entry[2],
                        }
                    )
                    return
        raise AssertionError("the floor app answers only its one fresh entry")

    return app


def floor_wsgi(clock: Callable[[], float] = time.time) -> WSGIApp:
    """`floor_asgi` for WSGI: the environ checked for fields a cache must read, the key found
    by request line, the header list copied into start_response."""
    fresh_until = clock() + 3600
    keys: dict[tuple[Any, ...], str] = {
        ("GET", "http", "bench.local", "/item", ""): "http://bench.local/item"
    }
    headers = [(n.decode(), v.decode()) for n, v in _FLOOR_HEADERS]
    entries = {"http://bench.local/item": (fresh_until, headers, [BODY])}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if (method == "GET" or method == "HEAD") and environ.keys().isdisjoint(
            _FLOOR_BYPASS_ENVIRON
        ):
            line = (
                method,
                environ["wsgi.url_scheme"],
                environ.get("HTTP_HOST"),
                environ.get("PATH_INFO"),
                environ.get("QUERY_STRING"),
            )
            entry = entries.get(keys.get(line, ""))
            if entry is not None and clock() < entry[0]:
                start_response("200 OK", entry[1][:])
                return [] if method == "HEAD" else entry[2]
        raise AssertionError("the floor app answers only its one fresh entry")

    return app


# ---- a hot hit under uvicorn while the dry tier absorbs demotions ---------------------------
# Paths under this prefix switch the background writer; they never reach the cache.
DRY_LOAD_CONTROL = "/_bench/"
# As in store._dry_load: hot holds ~64 entries and a cold tier smaller than one entry sends
# every hot eviction straight to the dry queue, so each background put is one dry demotion.
DRY_LOAD_HOT_BYTES = 64 * 2000
DRY_LOAD_COLD_BYTES = 1000


class _DemotionLoad:
    """The background writer of `dry_load_asgi`, on the server's own event loop: when busy,
    it puts new 1 KB entries into the cache at `rate` a second, a few every `interval` (as
    requests arrive, not in bursts), the same puts as store._dry_load's writer."""

    def __init__(self, cache: Any, rate: float, interval: float) -> None:
        self.cache = cache
        self.rate = rate
        self.batch = max(1, round(rate * interval))
        self.body = os.urandom(1024)
        self.written = 0
        self.busy_seconds = 0.0
        self.quiet_seconds = 0.0  # from a settled queue to the next busy phase
        # CPU time of the whole process (every thread) in each kind of phase; the drain after
        # a busy phase, before the quiet one starts, counts in neither.
        self.busy_cpu = self.quiet_cpu = 0.0
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._since = self._since_cpu = 0.0
        self._quiet_since: tuple[float, float] | None = None  # (monotonic, process_time)

    async def _write(self, stop: asyncio.Event) -> None:
        cache = self.cache
        next_at = time.monotonic()
        while not stop.is_set():
            for _ in range(self.batch):
                n = self.written
                value = self.body[:-8] + b"%08d" % n
                cache.put(cache.make_entry(f"bg:{n}", value, (), cache.residency_for(())))
                self.written = n + 1
            next_at += self.batch / self.rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def busy(self) -> None:
        if self._task is None:
            if self._quiet_since is not None:
                self.quiet_seconds += time.monotonic() - self._quiet_since[0]
                self.quiet_cpu += time.process_time() - self._quiet_since[1]
                self._quiet_since = None
            self._stop = asyncio.Event()
            self._since = time.monotonic()
            self._since_cpu = time.process_time()
            self._task = asyncio.get_running_loop().create_task(self._write(self._stop))

    async def quiet(self, wait: float = 10.0) -> bool:
        """Stop the writer, then wait until every demotion it queued is on disk, so the
        quiet phase that follows is quiet. False if the queue did not drain in `wait` s."""
        if self._task is not None and self._stop is not None:
            self._stop.set()
            await self._task
            self.busy_seconds += time.monotonic() - self._since
            self.busy_cpu += time.process_time() - self._since_cpu
            self._task = self._stop = None
        deadline = time.monotonic() + wait
        while (await self.cache.stats()).get("pending_demotions", 0):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        if self._quiet_since is None:
            self._quiet_since = (time.monotonic(), time.process_time())
        return True

    async def control(self, command: str) -> dict[str, Any]:
        settled = True
        if command == "busy":
            self.busy()
        elif command == "quiet":
            settled = await self.quiet()
        elif command != "stats":
            raise KeyError(command)
        stats = await self.cache.stats()
        return {
            "settled": settled,
            "rate": self.rate,
            "written": self.written,
            "busy_seconds": self.busy_seconds,
            "quiet_seconds": self.quiet_seconds,
            "busy_cpu": self.busy_cpu,
            "quiet_cpu": self.quiet_cpu,
            **{k: stats.get(k, 0) for k in ("demotions", "dry_entries", "demotions_dropped")},
        }


def dry_load_asgi(
    tmp: Path, name: str = "tiercache-dry-load-asgi", *, rate: float = 5000.0,
    interval: float = 0.001,
) -> ASGIApp:  # fmt: skip
    """tiercache_mw's ASGI middleware for a server process, beside a writer that makes the
    dry tier absorb `rate` demotions a second while busy. GET /_bench/busy starts it,
    /_bench/quiet stops it and answers once the demotion queue is on disk, /_bench/stats
    reports; each answers JSON with the writer's and the cache's counters."""
    from tiercache_mw import CacheMiddleware, TierCache

    cache = TierCache.from_dict(
        tiercache_config(tmp, hot_bytes=DRY_LOAD_HOT_BYTES, cold_bytes=DRY_LOAD_COLD_BYTES)
    )
    inner = CacheMiddleware(counted_asgi(name, CACHE_CONTROL), cache=cache)
    load = _DemotionLoad(cache, rate, interval)
    json_headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(DRY_LOAD_CONTROL):
            try:
                status, payload = 200, await load.control(scope["path"][len(DRY_LOAD_CONTROL) :])
            except KeyError:
                status, payload = 404, {}
            body = json.dumps(payload).encode()
            headers = [*json_headers, (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "lifespan":

            async def receive_and_stop() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    await load.quiet(wait=0)  # no writer left running into close()
                return message

            await inner(scope, receive_and_stop, send)
            return
        await inner(scope, receive, send)

    return app

"""A scriptable origin app and a harness that drives it through CacheMiddleware.

Each test scripts what the origin answers per path (status, headers, body, optionally from the
request's headers), reads how often the origin was called, and moves a fake clock instead of
sleeping.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send
from werkzeug.http import http_date
from werkzeug.test import Client

from tiercache_mw import CacheMiddleware, TierCache, WSGICacheMiddleware
from tiercache_mw.wsgi import WSGIApp

START = 1_700_000_000.0


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"hello"


Script = Callable[[dict[str, str]], Answer] | Answer


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def date(self, offset: float = 0.0) -> str:
        return http_date(self.now + offset)


class Origin:
    """A pure ASGI app answering from per-path scripts; counts calls, keeps request headers."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.seen: list[dict[str, str]] = []
        self.fail_with: Exception | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        self.calls[path] += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        headers[":method"] = scope["method"]
        self.seen.append(headers)
        if self.fail_with is not None:
            raise self.fail_with
        script = self.scripts.get(path, Answer(404, {}, b"not found"))
        answer = script if isinstance(script, Answer) else script(headers)
        body = b"" if scope["method"] == "HEAD" else answer.body
        raw = [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
        if answer.status != 304 and "content-length" not in answer.headers:
            raw.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def local_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """The embedded tiers (RAM, a local dry directory, SQLite) under `tmp_path`, and
    `sections` on top."""
    return {
        "dry_cache": {"backend": "local", "path": str(tmp_path / "dry")},
        "tracking": {"backend": "sqlite", "path": str(tmp_path / "index.db")},
        **sections,
    }


@contextlib.contextmanager
def wsgi_client(app: WSGIApp, tmp_path: Path, **sections: Any) -> Iterator[Client]:
    """A test client for `app` behind WSGICacheMiddleware on `local_config`, closed after."""
    middleware = WSGICacheMiddleware(
        app, cache=TierCache.from_dict(local_config(tmp_path, **sections))
    )
    try:
        yield Client(middleware)
    finally:
        middleware.close()


class Harness:
    def __init__(self, tmp_path: Path, **sections: Any) -> None:
        config = local_config(tmp_path, **sections)
        self.clock = FakeClock()
        self.origin = Origin()
        self.cache = TierCache.from_dict(config)
        self.middleware = CacheMiddleware(self.origin, cache=self.cache)
        self.middleware.engine.clock = self.clock
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.middleware), base_url="http://origin.test"
        )

    def script(self, path: str, script: Script) -> None:
        self.origin.scripts[path] = script

    async def get(self, path: str, **headers: str) -> httpx.Response:
        return await self.client.get(path, headers=_header_names(headers))

    async def request(self, method: str, path: str, **headers: str) -> httpx.Response:
        return await self.client.request(method, path, headers=_header_names(headers))

    async def close(self) -> None:
        await self.client.aclose()
        await self.middleware.close()


def _header_names(headers: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in headers.items()}


def status_of(response: httpx.Response) -> str:
    return response.headers["cache-status"]


def is_hit(response: httpx.Response) -> bool:
    return status_of(response).startswith("tiercache; hit;")

"""The app `uvicorn --workers 2` runs in tests/test_multiprocess.py.

Its cache comes from the YAML file named by TIERCACHE_TEST_CONFIG. Every response says which
worker process served it (`x-served-by`, added outside the cache), and a page body is unique
per app call, so a test can tell a cached copy from a fresh one.
"""

from __future__ import annotations

import os
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tiercache_mw import CacheMiddleware, TierCache

cache = TierCache.from_yaml(os.environ["TIERCACHE_TEST_CONFIG"])


async def page(request: Request) -> PlainTextResponse:
    name = request.path_params["name"]
    return PlainTextResponse(f"{name} {uuid.uuid4().hex}", headers={"cache-control": "max-age=600"})


async def purge(request: Request) -> JSONResponse:
    url = (await request.json())["url"]
    removed = await cache.purge(url=url)
    return JSONResponse({"removed": removed})


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"cache-control": "no-store"})


class ServedBy:
    """Outside the cache, so a hit also names the worker that served it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-served-by", self.pid)]
            await send(message)

        await self.app(scope, receive, send_with_pid)


routes = [
    Route("/page/{name}", page),
    Route("/_purge", purge, methods=["POST"]),
    Route("/_health", health),
]
app = ServedBy(CacheMiddleware(Starlette(routes=routes), cache=cache))

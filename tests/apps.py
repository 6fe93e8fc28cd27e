"""Real ASGI and WSGI apps the middleware tests drive, each counting the calls it gets."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

BIG_CHUNK = b"x" * 4096
BIG_CHUNKS = 8  # 32 KiB in all, over the tests' max_entry_bytes


def cache_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """An embedded-backend config under tmp_path with the test routes and rules."""
    config: dict[str, Any] = {
        "hot_cache": {"backend": "ram", "max_size_mb": 10},
        "cold_cache": {"backend": "ram", "max_size_mb": 10},
        "dry_cache": {"backend": "local", "path": str(tmp_path / "dry")},
        "tracking": {"backend": "sqlite", "path": str(tmp_path / "index.db")},
        "http": {"max_entry_bytes": 16384},
        "routes": [
            {"pattern": "/account/**", "cache": False},
            {"pattern": "/ruled/{name}", "tags": {"type": "ruled"}},
            {"pattern": "/products/{id}", "tags": {"type": "product"}},
        ],
        "ttl_rules": [{"tag": {"type": "ruled"}, "ttl_seconds": 1}],
    }
    config.update(sections)
    return config


def product_headers(product_id: str) -> dict[str, str]:
    return {"cache-control": "max-age=60", "etag": f'"p{product_id}"'}


def make_starlette_app(calls: collections.Counter[str]) -> Starlette:
    async def product(req: Request) -> JSONResponse:
        calls[req.url.path] += 1
        product_id = req.path_params["id"]
        return JSONResponse({"id": product_id}, headers=product_headers(product_id))

    async def plain(req: Request) -> PlainTextResponse:
        calls[req.url.path] += 1
        return PlainTextResponse(f"body of {req.url.path}", headers=_headers_for(req.url.path))

    async def big(req: Request) -> StreamingResponse:
        calls[req.url.path] += 1

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(BIG_CHUNKS):
                yield BIG_CHUNK

        return StreamingResponse(chunks(), headers={"cache-control": "max-age=60"})

    routes = [
        Route("/products/{id}", product),
        Route("/big", big),
        Route("/{path:path}", plain),
    ]
    return Starlette(routes=routes)


def make_flask_app(calls: collections.Counter[str]) -> Flask:
    app = Flask("tiercache_test_app")

    @app.route("/products/<product_id>")
    def product(product_id: str) -> Response:
        calls[request.path] += 1
        response = jsonify({"id": product_id})
        response.headers.update(product_headers(product_id))
        return response

    @app.route("/big")
    def big() -> Response:
        calls[request.path] += 1

        def chunks() -> Iterator[bytes]:
            for _ in range(BIG_CHUNKS):
                yield BIG_CHUNK

        return Response(chunks(), headers={"cache-control": "max-age=60"})

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>")
    def plain(path: str) -> Response:
        calls[request.path] += 1
        return Response(f"body of {request.path}", headers=_headers_for(request.path))

    return app


def _headers_for(path: str) -> dict[str, str]:
    """Each path prefix exercises one storing rule."""
    if path.startswith("/nostore"):
        return {"cache-control": "no-store"}
    if path.startswith("/private"):
        return {"cache-control": "private, max-age=60"}
    if path.startswith("/cookie"):
        return {"cache-control": "max-age=60", "set-cookie": "session=abc"}
    if path.startswith(("/ruled", "/plain")):
        return {}
    return {"cache-control": "max-age=3600"}

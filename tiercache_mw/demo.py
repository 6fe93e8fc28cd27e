"""The demo `tiercache-mw demo` serves: a small Starlette shop wrapped in CacheMiddleware.

Embedded defaults only (RAM hot and cold tiers, local disk under ./.tiercache, SQLite index),
so nothing else needs installing. `GET /` lists what to try.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tiercache_mw.asgi import CacheMiddleware
from tiercache_mw.store.cache import TierCache

__all__ = ["DEMO_CONFIG", "make_app"]  # and `app`, built on first access

DEMO_CONFIG: dict[str, Any] = {
    "hot_cache": {"backend": "ram", "ttl_hours": 1, "max_size_gb": 0.1},
    "cold_cache": {"backend": "ram", "ttl_hours": 4, "max_size_gb": 0.25},
    "dry_cache": {"backend": "local", "path": ".tiercache/dry", "max_size_gb": 1},
    "tracking": {"backend": "sqlite", "path": ".tiercache/index.db"},
    "routes": [
        {"pattern": "/account/**", "cache": False},
        {"pattern": "/stats", "cache": False},
        {"pattern": "/products/{id}", "tags": {"type": "product"}},
        {"pattern": "/slow/**", "tags": {"type": "report"}},
    ],
    "ttl_rules": [
        {"tag": {"type": "product"}, "stale_while_revalidate_seconds": 30},
        # /slow sends no Cache-Control: this rule gives it 30 s of freshness.
        {"tag": {"type": "report"}, "ttl_seconds": 30},
    ],
}

INDEX = """tiercache demo: every response carries a Cache-Status header. Try:

  curl -i {base}products/1          twice: fwd=uri-miss; stored, then hit; ttl=59; detail=hot
  curl -i {base}products/1 -H 'If-None-Match: "{etag}"'    a 304 answered by the cache
  time curl -s {base}slow/report    {delay:g} s the first time, instant for the next 30 s
  curl -i {base}account/me          never cached (route says cache: false): fwd=bypass
  curl -i -X POST {base}products/1 -d '{{"price": 12.5}}'
                                    changes the product and invalidates its cached GET
  curl -s {base}stats               hits, misses and bytes per tier
"""


class Shop:
    """The demo's data: products that change when POSTed to, and a call counter."""

    def __init__(self) -> None:
        self.products: dict[int, dict[str, Any]] = {
            n: {"id": n, "name": f"Product {n}", "price": 10.0 + n} for n in range(1, 11)
        }
        self.calls = 0

    def etag(self, product: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(product, sort_keys=True).encode()).hexdigest()
        return f'"{digest[:16]}"'


def make_app(config: dict[str, Any] | None = None, *, slow_seconds: float = 2.0) -> CacheMiddleware:
    """The demo app on `config` (default `DEMO_CONFIG`); `slow_seconds` for /slow/{name}."""
    cache = TierCache.from_dict(config if config is not None else DEMO_CONFIG)
    shop = Shop()

    async def index(request: Request) -> PlainTextResponse:
        etag = shop.etag(shop.products[1])[1:-1]
        text = INDEX.format(base=request.base_url, etag=etag, delay=slow_seconds)
        return PlainTextResponse(text)

    async def product(request: Request) -> Response:
        shop.calls += 1
        found = shop.products.get(_int(request.path_params["id"]))
        if found is None:
            return JSONResponse({"error": "no such product"}, status_code=404)
        if request.method == "POST":
            changes = await request.json() if await request.body() else {}
            if not isinstance(changes, dict):
                return JSONResponse({"error": "expected a JSON object"}, status_code=400)
            found.update({k: v for k, v in changes.items() if k in ("name", "price")})
            # A 2xx answer to POST makes the cache drop its copy (RFC 9111 §4.4).
            return JSONResponse(found)
        headers = {"cache-control": "max-age=60", "etag": shop.etag(found)}
        return JSONResponse(found, headers=headers)

    async def slow(request: Request) -> JSONResponse:
        shop.calls += 1
        await asyncio.sleep(slow_seconds)
        name = request.path_params["name"]
        return JSONResponse({"report": name, "computed_at": time.time()})

    async def account(request: Request) -> JSONResponse:
        shop.calls += 1
        return JSONResponse({"user": "demo", "served_at": time.time()})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"app_calls": shop.calls, **(await cache.stats())})

    routes = [
        Route("/", index),
        Route("/products/{id}", product, methods=["GET", "HEAD", "POST"]),
        Route("/slow/{name}", slow),
        Route("/account/me", account),
        Route("/stats", stats),
    ]
    return CacheMiddleware(Starlette(routes=routes), cache=cache)


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return -1


_app: CacheMiddleware | None = None


def __getattr__(name: str) -> Any:
    """`demo.app` is built on first access, so importing this module touches no files."""
    global _app
    if name == "app":
        if _app is None:
            _app = make_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""FastAPI behind tiercache_mw, configured from examples/tiercache.yaml.

Run:   python examples/fastapi_app.py          (uvicorn on http://127.0.0.1:8000)
Then:  curl -i http://127.0.0.1:8000/products/1    twice: a stored miss, then a hot hit

/products/{id} sends no Cache-Control, so the `type: product` rule's ttl_seconds (300) gives it
its freshness; /reports/{name} is fresh for 60 s by its rule; /account/me is never cached; a
POST to /products/{id} changes the product and invalidates its cached GET.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException

from tiercache_mw import CacheMiddleware

CONFIG = Path(__file__).with_name("tiercache.yaml")


def create_app(config: str | Path = CONFIG) -> FastAPI:
    app = FastAPI(title="tiercache example")
    # Pure ASGI middleware: the cache starts and closes with the app's lifespan.
    app.add_middleware(CacheMiddleware, config=config)
    products: dict[int, dict[str, Any]] = {
        n: {"id": n, "name": f"Product {n}", "price": 10.0 + n} for n in range(1, 4)
    }

    @app.get("/products/{product_id}")
    async def product(product_id: int) -> dict[str, Any]:
        if product_id not in products:
            raise HTTPException(status_code=404, detail="no such product")
        return {**products[product_id], "served_at": time.time()}

    @app.post("/products/{product_id}")
    async def update_product(product_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        if product_id not in products:
            raise HTTPException(status_code=404, detail="no such product")
        products[product_id].update({k: v for k, v in changes.items() if k in ("name", "price")})
        return products[product_id]

    @app.get("/reports/{name}")
    async def report(name: str) -> dict[str, Any]:
        return {"report": name, "computed_at": time.time()}

    @app.get("/account/me")
    async def account() -> dict[str, Any]:
        return {"user": "example", "served_at": time.time()}

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)

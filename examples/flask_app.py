"""Flask behind tiercache_mw, configured from examples/tiercache.yaml.

Run:   flask --app examples/flask_app run       (http://127.0.0.1:5000)
   or: python examples/flask_app.py
Then:  curl -i http://127.0.0.1:5000/products/1    twice: a stored miss, then a hot hit

Hot hits are answered synchronously in the worker thread; only cold/dry lookups cross to the
cache's background loop. The cache is closed at exit, which writes RAM entries to the dry tier
so the next run starts warm.
"""

from __future__ import annotations

import atexit
import time
from pathlib import Path
from typing import Any

from flask import Flask, abort, request

from tiercache_mw import TierCache, WSGICacheMiddleware

CONFIG = Path(__file__).with_name("tiercache.yaml")


def create_app(config: str | Path = CONFIG, *, close_at_exit: bool = True) -> Flask:
    app = Flask(__name__)
    products: dict[int, dict[str, Any]] = {
        n: {"id": n, "name": f"Product {n}", "price": 10.0 + n} for n in range(1, 4)
    }

    @app.get("/products/<int:product_id>")
    def product(product_id: int) -> dict[str, Any]:
        if product_id not in products:
            abort(404)
        return {**products[product_id], "served_at": time.time()}

    @app.post("/products/<int:product_id>")
    def update_product(product_id: int) -> dict[str, Any]:
        if product_id not in products:
            abort(404)
        changes = request.get_json(silent=True) or {}
        products[product_id].update({k: v for k, v in changes.items() if k in ("name", "price")})
        return products[product_id]

    @app.get("/reports/<name>")
    def report(name: str) -> dict[str, Any]:
        return {"report": name, "computed_at": time.time()}

    @app.get("/account/me")
    def account() -> dict[str, Any]:
        return {"user": "example", "served_at": time.time()}

    middleware = WSGICacheMiddleware(app.wsgi_app, cache=TierCache.from_yaml(config))
    app.wsgi_app = middleware  # type: ignore[method-assign]
    # WSGI has no lifespan: close at exit so RAM entries persist to the dry tier.
    if close_at_exit:
        atexit.register(middleware.close)
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=5000)

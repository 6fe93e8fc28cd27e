"""The example apps and the demo, each driven through its own test client on a copy of its
configuration under tmp_path (so the cache files land there, not in the repository).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.testclient import TestClient

from tiercache_mw.demo import DEMO_CONFIG, make_app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example_yaml(tmp_path: Path) -> Path:
    """The example YAML itself; its relative cache paths resolve inside tmp_path."""
    copy = tmp_path / "tiercache.yaml"
    shutil.copyfile(EXAMPLES / "tiercache.yaml", copy)
    return copy


def in_tmp(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **config,
        "dry_cache": {**config["dry_cache"], "path": str(tmp_path / "dry")},
        "tracking": {**config["tracking"], "path": str(tmp_path / "index.db")},
    }


def test_fastapi_example_serves_a_miss_then_a_hot_hit(
    example_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(example_yaml.parent)
    app = load_example("fastapi_app").create_app(example_yaml)
    with TestClient(app) as client:
        first = client.get("/products/1")
        second = client.get("/products/1")
        account = client.get("/account/me")
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("tiercache; hit; ttl=")
    assert second.headers["cache-status"].endswith("; detail=hot")
    assert second.json() == first.json()  # same served_at: the app ran once
    assert account.headers["cache-status"] == "tiercache; fwd=bypass"


def test_flask_example_serves_a_miss_then_a_hot_hit(
    example_yaml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(example_yaml.parent)
    app = load_example("flask_app").create_app(example_yaml, close_at_exit=False)
    client = app.test_client()
    try:
        # buffered: a WSGI server reads the whole body, which is when the cache stores it
        first = client.get("/products/1", buffered=True)
        second = client.get("/products/1", buffered=True)
        posted = client.post("/products/1", json={"price": 99.0}, buffered=True)
        after = client.get("/products/1", buffered=True)
    finally:
        app.wsgi_app.close()
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("tiercache; hit; ttl=")
    assert second.headers["cache-status"].endswith("; detail=hot")
    assert second.get_json() == first.get_json()
    assert posted.status_code == 200
    assert after.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert after.get_json()["price"] == 99.0


def test_demo_app_caches_products_bypasses_account_and_invalidates_on_post(
    tmp_path: Path,
) -> None:
    app = make_app(in_tmp(DEMO_CONFIG, tmp_path), slow_seconds=0)
    with TestClient(app) as client:
        first = client.get("/products/1")
        second = client.get("/products/1")
        not_modified = client.get("/products/1", headers={"if-none-match": first.headers["etag"]})
        posted = client.post("/products/1", json={"price": 12.5})
        after = client.get("/products/1")
        accounts = [client.get("/account/me") for _ in range(2)]
        slow = [client.get("/slow/daily") for _ in range(2)]
        stats = client.get("/stats").json()
    assert first.headers["cache-control"] == "max-age=60"
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert second.headers["cache-status"].startswith("tiercache; hit; ttl=")
    assert second.headers["cache-status"].endswith("; detail=hot")
    assert not_modified.status_code == 304
    assert posted.json()["price"] == 12.5
    assert after.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert after.json()["price"] == 12.5
    assert after.headers["etag"] != first.headers["etag"]
    assert [r.headers["cache-status"] for r in accounts] == ["tiercache; fwd=bypass"] * 2
    assert slow[1].headers["cache-status"].startswith("tiercache; hit;")
    assert slow[1].json() == slow[0].json()
    # products 1 (twice, around the POST), the POST, two accounts, one slow report
    assert stats["app_calls"] == 6
    assert stats["hot_hits"] >= 2

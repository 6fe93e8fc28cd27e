"""Which subjects the suite measures and how each is prepared.

A `Spec` says how to build the app, which paths to cycle through, what must be true of every
measured response (the Cache-Status detail, whether the app behind was reached) and what to do,
untimed, before each measured call (flush a tier so the next lookup comes from a lower one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench import subjects as s

__all__ = ["DRY_LOAD", "SPECS", "Spec", "by_name"]

# Hot budget that holds one bench entry but not two: a 1 KB body, three stored headers and the
# per-entry overhead come to about 1.9 KB, so two requests alternating between two URLs evict
# each other to the tier below and every request is a hit of that tier.
ONE_ENTRY = 2900
# Smaller than any entry: a RAM tier with this budget passes every entry straight down.
NO_ENTRY = 1000


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # "asgi" | "wsgi"
    build: Callable[[Path], Any]
    label: str  # for the table and the chart
    paths: tuple[str, ...] = ("/item",)
    warm: tuple[str, ...] = ("/item",)  # requested once, in order, before measuring
    flush: str | None = None  # tier flushed (untimed) before each measured call
    cache_status: str = ""  # every measured Cache-Status must contain this
    behind: str | None = None  # CALLS name of the app behind a cache
    app_called: bool = False  # a miss subject: the app behind runs on every request
    server: bool = False  # also measured under uvicorn / gunicorn
    baseline: bool = False  # the raw constant app of its kind

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return by_name, (self.name,)  # pickled by name: the builders are lambdas

    @property
    def group(self) -> str:
        return "tiercache_mw" if self.name.startswith("tiercache") else "other"


def _cc_miss(tmp: Path, kind: str) -> Any:
    build = s.tiercache_asgi if kind == "asgi" else s.tiercache_wsgi
    return build(tmp, f"tiercache-miss-{kind}", cache_control=s.NO_STORE)


SPECS: tuple[Spec, ...] = (
    # ---- ASGI ----
    Spec("raw-asgi", "asgi", lambda tmp: s.raw_asgi(), "raw constant ASGI app",
         server=True, baseline=True),
    Spec("tiercache-hot-asgi", "asgi",
         lambda tmp: s.tiercache_asgi(tmp, "tiercache-hot-asgi"), "tiercache_mw hot hit (ASGI)",
         cache_status="detail=hot", behind="tiercache-hot-asgi", server=True),
    Spec("floor-asgi", "asgi", lambda tmp: s.floor_asgi(),
         "pure-Python floor of a hot hit (ASGI, hand-inlined)", cache_status="detail=hot"),
    Spec("tiercache-cold-asgi", "asgi",
         lambda tmp: s.tiercache_asgi(tmp, "tiercache-cold-asgi", hot_bytes=ONE_ENTRY),
         "tiercache_mw cold hit (ASGI)", paths=("/item/a", "/item/b"),
         warm=("/item/a", "/item/b"), cache_status="detail=cold", behind="tiercache-cold-asgi"),
    Spec("tiercache-dry-asgi", "asgi",
         lambda tmp: s.tiercache_asgi(
             tmp, "tiercache-dry-asgi", hot_bytes=ONE_ENTRY, cold_bytes=NO_ENTRY
         ),
         "tiercache_mw dry hit (ASGI)", warm=("/item", "/item/other"), flush="hot",
         cache_status="detail=dry", behind="tiercache-dry-asgi"),
    Spec("tiercache-miss-asgi", "asgi", lambda tmp: _cc_miss(tmp, "asgi"),
         "tiercache_mw miss (ASGI, no-store)", cache_status="fwd=",
         behind="tiercache-miss-asgi", app_called=True, server=True),
    Spec("fastapi-bare", "asgi", lambda tmp: s.fastapi_bare(), "FastAPI endpoint, no cache",
         server=True),
    Spec("fastapi-cache2", "asgi", lambda tmp: s.fastapi_cache2_app(), "fastapi-cache2 hit",
         behind="fastapi-cache2", server=True),
    Spec("cashews", "asgi", lambda tmp: s.cashews_app(), "cashews hit (FastAPI, mem://)",
         behind="cashews", server=True),
    Spec("hishel", "asgi", lambda tmp: s.hishel_app(tmp), "hishel 2.0 ASGICacheMiddleware hit",
         behind="hishel", server=True),
    # ---- WSGI ----
    Spec("raw-wsgi", "wsgi", lambda tmp: s.raw_wsgi(), "raw constant WSGI app",
         server=True, baseline=True),
    Spec("tiercache-hot-wsgi", "wsgi",
         lambda tmp: s.tiercache_wsgi(tmp, "tiercache-hot-wsgi"), "tiercache_mw hot hit (WSGI)",
         cache_status="detail=hot", behind="tiercache-hot-wsgi", server=True),
    Spec("floor-wsgi", "wsgi", lambda tmp: s.floor_wsgi(),
         "pure-Python floor of a hot hit (WSGI, hand-inlined)", cache_status="detail=hot"),
    Spec("tiercache-cold-wsgi", "wsgi",
         lambda tmp: s.tiercache_wsgi(tmp, "tiercache-cold-wsgi", hot_bytes=ONE_ENTRY),
         "tiercache_mw cold hit (WSGI)", paths=("/item/a", "/item/b"),
         warm=("/item/a", "/item/b"), cache_status="detail=cold", behind="tiercache-cold-wsgi"),
    Spec("tiercache-dry-wsgi", "wsgi",
         lambda tmp: s.tiercache_wsgi(
             tmp, "tiercache-dry-wsgi", hot_bytes=ONE_ENTRY, cold_bytes=NO_ENTRY
         ),
         "tiercache_mw dry hit (WSGI)", warm=("/item", "/item/other"), flush="hot",
         cache_status="detail=dry", behind="tiercache-dry-wsgi"),
    Spec("tiercache-miss-wsgi", "wsgi", lambda tmp: _cc_miss(tmp, "wsgi"),
         "tiercache_mw miss (WSGI, no-store)", cache_status="fwd=",
         behind="tiercache-miss-wsgi", app_called=True),
    Spec("flask-bare", "wsgi", lambda tmp: s.flask_bare(), "Flask endpoint, no cache",
         server=True),
    Spec("flask-caching", "wsgi", lambda tmp: s.flask_caching_app(),
         "Flask-Caching hit (SimpleCache)", behind="flask-caching", server=True),
)  # fmt: skip


# Not a row of the tables: the server process of the dry-load measurement (servers.py), whose
# hot hits are timed while its cache absorbs demotions.
DRY_LOAD = Spec("tiercache-dry-load-asgi", "asgi", lambda tmp: s.dry_load_asgi(tmp),
                "tiercache_mw hot hit while dry absorbs demotions (ASGI)",
                cache_status="detail=hot", behind="tiercache-dry-load-asgi")  # fmt: skip


def by_name(name: str) -> Spec:
    for spec in (*SPECS, DRY_LOAD):
        if spec.name == name:
            return spec
    raise KeyError(name)

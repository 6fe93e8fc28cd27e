"""The hot path (tiercache_mw.hot) answers exactly as the full path would, or not at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.rfc.origin import Answer, Harness, is_hit, status_of
from tiercache_mw import WSGICacheMiddleware
from tiercache_mw.asgi import hot_key
from tiercache_mw.asgi import request_view as asgi_request_view
from tiercache_mw.config import TierConfig
from tiercache_mw.engine import RequestView
from tiercache_mw.hot import REQUEST_FIELDS_NEEDING_THE_FULL_PATH
from tiercache_mw.http.key import primary_key
from tiercache_mw.store.entry import Entry, Residency
from tiercache_mw.store.ram import RamTier
from tiercache_mw.wsgi import hot_key as wsgi_hot_key
from tiercache_mw.wsgi import request_view as wsgi_request_view


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    await h.close()


FRESH = Answer(headers={"cache-control": "max-age=100", "etag": '"a"', "x-app": "yes"})


def scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"b=2&a=1",
        "headers": [(b"host", b"origin.test"), *headers],
        "server": ["127.0.0.1", 80],  # a list, as some servers send it
    }


def comparable(response: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() != "date")
    return response.status_code, response.content, headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_hot_and_full_path_give_the_same_answer(harness: Harness, method: str) -> None:
    harness.script("/same", FRESH)
    await harness.get("/same")
    harness.clock.advance(30)
    hot = await harness.request(method, "/same")
    harness.middleware.hot.enabled = False
    full = await harness.request(method, "/same")
    assert comparable(hot) == comparable(full)
    assert status_of(hot) == "tiercache; hit; ttl=70; detail=hot"
    assert harness.origin.calls["/same"] == 1


@pytest.mark.parametrize("field", sorted(REQUEST_FIELDS_NEEDING_THE_FULL_PATH))
def test_requests_with_their_own_directives_take_the_full_path(field: bytes) -> None:
    assert hot_key(scope("/p", [])) is not None
    assert hot_key(scope("/p", [(field, b"x")])) is None
    # Wherever the field comes, before or after Host.
    assert hot_key(scope("/p", [(b"accept", b"*/*"), (field, b"x"), (b"dnt", b"1")])) is None
    headers = [(field, b"x"), (b"host", b"origin.test")]
    assert hot_key({**scope("/p", []), "headers": headers}) is None


def test_hot_key_is_the_primary_key_with_a_normalised_query() -> None:
    assert hot_key(scope("/p", [])) == "http://origin.test/p?a=1&b=2"


def test_hot_key_takes_the_first_host_field_as_the_full_path_does() -> None:
    assert hot_key(scope("/p", [(b"host", b"other.test")])) == "http://origin.test/p?a=1&b=2"


def full_path_key(request: RequestView) -> str:
    """The primary key the engine's full path gives the request (HttpCache.plan)."""
    return primary_key(
        request.method, request.scheme, request.host, request.raw_path, request.query
    )


# Scope edits: each is a shape some server sends; the memo must keep apart what differs.
ASGI_SHAPES: list[dict[str, Any]] = [
    {},
    {"scheme": "https"},
    {"scheme": None},  # removed below: a server that sends no scheme ("http")
    {"scheme": ""},
    {"query_string": None},  # removed: no query string at all
    {"query_string": b""},
    {"raw_path": None},
    {"raw_path": b""},  # empty: the path names the resource, as in `request_view`
    {"raw_path": b"/p%2Fq"},
    {"raw_path": b"/p?x=1"},
    {"headers": [(b"user-agent", b"u")]},  # no Host: the server's address
    {"headers": [(b"user-agent", b"u")], "server": None},
    {"headers": [(b"user-agent", b"u")], "server": ("origin.test", None)},
    {"headers": [(b"user-agent", b"u"), (b"host", b"Origin.Test:80")]},
    {"method": "HEAD"},
]


@pytest.mark.parametrize("edit", ASGI_SHAPES)
def test_asgi_hot_key_is_the_full_paths_key(edit: dict[str, Any]) -> None:
    shaped = scope("/p", [])
    shaped.update(edit)
    for name in [name for name, value in edit.items() if value is None]:
        del shaped[name]
    # Twice: the first builds the key, the second reads it from the memo.
    expected = full_path_key(asgi_request_view(shaped))
    assert hot_key(shaped) == expected
    assert hot_key(dict(shaped)) == expected


def environ(**edit: str | None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/v w",
        "QUERY_STRING": "b=2&a=1",
        "SERVER_NAME": "origin.test",
        "SERVER_PORT": "8080",
        "HTTP_HOST": "origin.test",
        "wsgi.url_scheme": "http",
    }
    base.update(edit)
    return {name: value for name, value in base.items() if value is not None}


@pytest.mark.parametrize(
    "edit",
    [
        {},
        {"wsgi.url_scheme": None},
        {"wsgi.url_scheme": "https"},
        {"QUERY_STRING": None},
        {"QUERY_STRING": ""},
        {"HTTP_HOST": None},
        {"HTTP_HOST": ""},
        {"RAW_URI": "/raw%20path?b=2&a=1"},
        {"REQUEST_URI": "/request%20uri?b=2&a=1"},
        {"RAW_URI": "", "REQUEST_URI": "/r"},
        {"SCRIPT_NAME": None},
        {"PATH_INFO": None},
        {"REQUEST_METHOD": "HEAD"},
    ],
)
def test_wsgi_hot_key_is_the_full_paths_key(edit: dict[str, str | None]) -> None:
    shaped = environ(**edit)
    expected = full_path_key(wsgi_request_view(shaped))
    assert wsgi_hot_key(shaped) == expected
    assert wsgi_hot_key(dict(shaped)) == expected


@pytest.mark.parametrize("field", sorted(REQUEST_FIELDS_NEEDING_THE_FULL_PATH))
def test_wsgi_requests_with_their_own_directives_take_the_full_path(field: bytes) -> None:
    variable = "HTTP_" + field.decode().upper().replace("-", "_")
    assert wsgi_hot_key(environ()) is not None
    assert wsgi_hot_key(environ(**{variable: "x"})) is None


async def test_age_and_ttl_move_on_between_hits_in_different_seconds(harness: Harness) -> None:
    harness.script("/tick", FRESH)
    await harness.get("/tick")
    first = await harness.get("/tick")
    harness.clock.advance(5)
    second = await harness.get("/tick")
    assert (first.headers["age"], second.headers["age"]) == ("0", "5")
    assert "ttl=95" in status_of(second)


async def test_hot_fields_match_the_full_path_at_fractional_clock_readings(
    harness: Harness,
) -> None:
    """The hot path reuses its Age/Cache-Status fields over a window of clock readings: at
    every reading, inside a second or across one, they must be the full path's."""
    harness.script("/frac", Answer(headers={"cache-control": "max-age=3"}))
    await harness.get("/frac")
    harness.clock.advance(0.25)
    for step in (0.0, 0.5, 0.24, 0.02, 0.73, 0.26, 0.99):
        harness.clock.advance(step)
        harness.middleware.hot.enabled = True
        hot = await harness.get("/frac")
        harness.middleware.hot.enabled = False
        full = await harness.get("/frac")
        assert comparable(hot) == comparable(full), harness.clock.now
        assert "detail=hot" in status_of(hot)
    harness.clock.advance(0.01)  # 3.0 s old: stale, so never answered by the hot path
    harness.middleware.hot.enabled = True
    assert "detail=hot" not in status_of(await harness.get("/frac"))
    assert harness.origin.calls["/frac"] == 2


async def test_a_clock_stepping_back_never_gives_a_negative_age(harness: Harness) -> None:
    harness.script("/back", FRESH)
    await harness.get("/back")
    await harness.get("/back")
    harness.clock.advance(-5)
    response = await harness.get("/back")
    assert response.headers["age"] == "0"


async def test_wsgi_hot_hit_sends_the_headers_of_a_freshened_entry(harness: Harness) -> None:
    """A 304 replaces the stored headers (§4.3.4): the WSGI str headers must follow."""
    wsgi = WSGICacheMiddleware(lambda environ, start: [], cache=harness.cache)
    wsgi.engine.clock = harness.clock
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/v",
        "SERVER_NAME": "origin.test",
        "SERVER_PORT": "80",
        "HTTP_HOST": "origin.test",
        "wsgi.url_scheme": "http",
    }
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.clear()
        seen.update(headers)

    harness.script("/v", Answer(headers={"cache-control": "max-age=10", "etag": '"v"'}))
    await harness.get("/v")
    key = wsgi_hot_key(environ)
    assert key is not None
    b"".join(wsgi(environ, start_response))
    assert seen["cache-status"].startswith("tiercache; hit")
    assert "x-version" not in seen
    harness.clock.advance(20)
    harness.script(
        "/v", Answer(304, {"cache-control": "max-age=100", "etag": '"v"', "x-version": "2"})
    )
    await harness.get("/v")  # revalidated through the ASGI side: headers updated
    b"".join(wsgi(environ, start_response))
    assert seen["cache-status"].startswith("tiercache; hit")
    assert seen["x-version"] == "2"


async def test_hot_hits_are_counted_in_stats_and_tracking_like_any_hot_hit(
    harness: Harness,
) -> None:
    """The hot path reads hot RAM on the cache's behalf: each hit it serves, from either
    adapter, counts in `hot_hits` and reaches the tracking index's hit count."""
    harness.script("/count", FRESH)
    await harness.get("/count")
    cache = harness.cache
    before = (await cache.stats())["hot_hits"]
    for _ in range(3):
        assert "detail=hot" in status_of(await harness.get("/count"))
    wsgi = WSGICacheMiddleware(lambda environ, start: [], cache=cache)
    wsgi.engine.clock = harness.clock
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(dict(headers)["cache-status"])

    hit = environ(PATH_INFO="/count", SCRIPT_NAME="", QUERY_STRING="")
    for _ in range(2):
        b"".join(wsgi(hit, start_response))
    assert len(seen) == 2
    assert all("detail=hot" in status for status in seen)
    assert (await cache.stats())["hot_hits"] == before + 5
    await cache._call(cache._flush_tracking())
    row = await cache.tracking.get("http://origin.test/count")
    assert row is not None
    assert row.hits == 5


@pytest.mark.parametrize("value", [{"vary": ["accept"]}, b"bytes", "text", [1, 2], 3])
async def test_anything_but_a_stored_response_under_the_key_takes_the_full_path(
    harness: Harness, value: object
) -> None:
    key = "http://origin.test/kv"
    await harness.cache.set(key, value)
    assert harness.cache.get_hot(key) is not None
    assert harness.middleware.hot.fresh(key) is None


async def test_vary_marker_under_the_key_takes_the_full_path(harness: Harness) -> None:
    harness.script("/vary", Answer(headers={"cache-control": "max-age=100", "vary": "accept"}))
    await harness.get("/vary", accept="a")
    assert harness.middleware.hot.fresh("http://origin.test/vary") is None
    # The full path finds the variant (in hot RAM too, hence its own detail=hot).
    assert is_hit(await harness.get("/vary", accept="a"))
    assert not is_hit(await harness.get("/vary", accept="b"))


@pytest.mark.parametrize("eviction", ["sieve", "lru"])
def test_a_hot_tier_counting_its_hits_counts_as_the_tier_cache_does(eviction: str) -> None:
    """What the hot path relies on when it reads hot RAM directly: `get_now` counts each hit
    and lists an entry once per flush (`take_first_hits`), as TierCache.get_hot does."""
    tier = RamTier("hot", TierConfig("ram", None, None, eviction=eviction))
    for key in ("a", "b"):
        tier.put(Entry(key, b"", (), Residency(None, None, None), 1))
    tier.get_now("a")
    assert (tier.hits, tier.first_hits) == (0, []), "off unless the owner turns it on"
    tier.count_hits = True
    for key in ("a", "a", "b", "a", "missing"):
        tier.get_now(key)
    assert tier.hits == 4
    taken = tier.take_first_hits()
    assert [(entry.key, entry.hits) for entry in taken] == [("a", 3), ("b", 1)]
    assert tier.first_hits == []
    taken[0].hits = 0  # as the tracking flush resets it
    tier.get_now("a")
    assert [entry.key for entry in tier.take_first_hits()] == ["a"]

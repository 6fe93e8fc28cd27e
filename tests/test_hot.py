"""The hot path (tiercache_mw.hot) answers exactly as the full path would, or not at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.rfc.origin import Answer, Harness, status_of
from tiercache_mw import WSGICacheMiddleware
from tiercache_mw.asgi import hot_key
from tiercache_mw.wsgi import hot_key as wsgi_hot_key


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


@pytest.mark.parametrize(
    "field",
    [b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"if-range"],
)
def test_requests_with_their_own_directives_take_the_full_path(field: bytes) -> None:
    assert hot_key(scope("/p", [])) is not None
    assert hot_key(scope("/p", [(field, b"x")])) is None


def test_hot_key_is_the_primary_key_with_a_normalised_query() -> None:
    assert hot_key(scope("/p", [])) == "http://origin.test/p?a=1&b=2"


def test_hot_key_takes_the_first_host_field_as_the_full_path_does() -> None:
    assert hot_key(scope("/p", [(b"host", b"other.test")])) == "http://origin.test/p?a=1&b=2"


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

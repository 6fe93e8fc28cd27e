"""RFC 9110 §14 Range and §13.1.5 If-Range answered from the cache (RFC 9111 §3.3, §4)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from werkzeug.test import Client

from tests.rfc.origin import Answer, Harness, is_hit, local_config, status_of
from tiercache_mw import CacheMiddleware, TierCache, WSGICacheMiddleware
from tiercache_mw.wsgi import StartResponse, WSGIEnviron

BODY = b"0123456789"
LAST_MODIFIED = "Mon, 13 Nov 2023 21:13:20 GMT"  # an hour before origin.START
OTHER_DATE = "Mon, 13 Nov 2023 20:13:20 GMT"


def whole(etag: str = '"v1"', body: bytes = BODY, **more: str) -> Answer:
    headers = {
        "cache-control": "max-age=100",
        "etag": etag,
        "last-modified": LAST_MODIFIED,
        "content-type": "text/plain",
        **{name.replace("_", "-"): value for name, value in more.items()},
    }
    return Answer(headers=headers, body=body)


async def primed(cache: Harness, path: str, answer: Answer) -> None:
    cache.script(path, answer)
    response = await cache.get(path)
    assert response.headers["cache-status"].endswith("stored")


@pytest.mark.parametrize(
    ("range_value", "content_range", "part"),
    [
        ("bytes=0-3", "bytes 0-3/10", b"0123"),  # §14.1.2: first-pos and last-pos
        ("bytes=4-", "bytes 4-9/10", b"456789"),  # to the end
        ("bytes=-3", "bytes 7-9/10", b"789"),  # suffix: the last three bytes
        ("bytes=-100", "bytes 0-9/10", b"0123456789"),  # §14.1.3: a longer suffix is all
        ("bytes=8-100", "bytes 8-9/10", b"89"),  # a last-pos past the end is the end
        ("bytes=9-9", "bytes 9-9/10", b"9"),
        ("Bytes = 1-2", "bytes 1-2/10", b"12"),  # range units are case-insensitive (§14.1)
    ],
)
async def test_fresh_hit_answers_a_byte_range_with_206(
    cache: Harness, range_value: str, content_range: str, part: bytes
) -> None:
    await primed(cache, "/r", whole())
    response = await cache.get("/r", range=range_value)
    assert response.status_code == 206
    assert response.content == part
    assert response.headers["content-range"] == content_range
    assert response.headers["content-length"] == str(len(part))
    assert response.headers.get_list("content-length") == [str(len(part))]
    assert response.headers["etag"] == '"v1"'  # §15.3.7: the 200's validators and type
    assert response.headers["content-type"] == "text/plain"
    assert is_hit(response)
    assert "age" in response.headers
    assert cache.origin.calls["/r"] == 1


async def test_206_carries_the_same_age_and_cache_status_as_the_whole_answer(
    cache: Harness,
) -> None:
    await primed(cache, "/age", whole())
    cache.clock.advance(30)
    # A conditional field keeps the whole answer off the hot path too, for a like-for-like
    # comparison with the engine's 206.
    whole_response = await cache.get("/age", if_none_match='"other"')
    part = await cache.get("/age", range="bytes=0-0")
    assert whole_response.status_code == 200
    assert part.status_code == 206
    assert part.headers["age"] == whole_response.headers["age"] == "30"
    assert status_of(part) == status_of(whole_response) == "tiercache; hit; ttl=70; detail=hot"


@pytest.mark.parametrize(
    "range_value",
    [
        "items=0-3",  # another unit (§14.2: ignored)
        "bytes=abc",  # unparseable
        "bytes=3-1",  # last-pos before first-pos: invalid (§14.1.1)
        "bytes0-3",
        "bytes=0-1,4-5",  # several ranges: sent whole rather than multipart (docs)
    ],
)
async def test_range_the_cache_does_not_answer_gets_the_whole_200(
    cache: Harness, range_value: str
) -> None:
    await primed(cache, "/ignored", whole())
    response = await cache.get("/ignored", range=range_value)
    assert response.status_code == 200
    assert response.content == BODY
    assert "content-range" not in response.headers
    assert is_hit(response)
    assert cache.origin.calls["/ignored"] == 1


@pytest.mark.parametrize("range_value", ["bytes=10-", "bytes=10-20", "bytes=100-200"])
async def test_range_past_the_end_is_416_with_the_length(cache: Harness, range_value: str) -> None:
    """§15.5.17: 416 with Content-Range: bytes */length, from the cache."""
    await primed(cache, "/far", whole())
    response = await cache.get("/far", range=range_value)
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */10"
    assert response.content == b""
    assert is_hit(response)
    assert cache.origin.calls["/far"] == 1


async def test_empty_body_is_sent_whole(cache: Harness) -> None:
    """No byte to point at: the whole (empty) 200 rather than a 416 for a satisfiable -1."""
    await primed(cache, "/empty", whole(body=b""))
    response = await cache.get("/empty", range="bytes=-1")
    assert response.status_code == 200
    assert response.content == b""


async def test_head_ignores_range(cache: Harness) -> None:
    """§14.2: Range is only defined for GET."""
    await primed(cache, "/head", whole())
    response = await cache.request("HEAD", "/head", range="bytes=0-3")
    assert response.status_code == 200
    assert response.headers["content-length"] == "10"
    assert "content-range" not in response.headers


@pytest.mark.parametrize(
    ("stored_etag", "if_range", "expect"),
    [
        ('"v1"', '"v1"', 206),  # §13.1.5: strong match
        ('"v1"', '"v2"', 200),
        ('"v1"', 'W/"v1"', 200),  # a weak tag never matches
        ('W/"v1"', 'W/"v1"', 200),
        ('W/"v1"', '"v1"', 200),
        ('"v1"', LAST_MODIFIED, 206),  # the stored Last-Modified, strong (Date an hour later)
        ('"v1"', OTHER_DATE, 200),  # any other date is false, even an earlier one
        ('"v1"', "garbage", 200),
    ],
)
async def test_if_range_decides_between_the_part_and_the_whole(
    cache: Harness, stored_etag: str, if_range: str, expect: int
) -> None:
    await primed(cache, "/ir", whole(etag=stored_etag, date=cache.clock.date()))
    response = await cache.get("/ir", range="bytes=2-4", if_range=if_range)
    assert response.status_code == expect
    assert response.content == (b"234" if expect == 206 else BODY)
    assert is_hit(response)
    assert cache.origin.calls["/ir"] == 1


async def test_if_range_date_needs_a_strong_last_modified(cache: Harness) -> None:
    """§8.8.2.2: a Last-Modified less than a second before the stored Date is weak."""
    await primed(cache, "/weak-date", whole(date=LAST_MODIFIED))
    response = await cache.get("/weak-date", range="bytes=0-1", if_range=LAST_MODIFIED)
    assert response.status_code == 200
    assert response.content == BODY


async def test_if_range_without_range_is_ignored(cache: Harness) -> None:
    await primed(cache, "/no-range", whole())
    response = await cache.get("/no-range", if_range='"v1"')
    assert response.status_code == 200
    assert response.content == BODY


async def test_preconditions_come_before_range(cache: Harness) -> None:
    """§13.2.2: If-None-Match's 304 and If-Match's 412 are decided before Range."""
    await primed(cache, "/pre", whole())
    assert (await cache.get("/pre", range="bytes=0-1", if_none_match='"v1"')).status_code == 304
    assert (await cache.get("/pre", range="bytes=0-1", if_match='"v2"')).status_code == 412
    assert (await cache.get("/pre", range="bytes=0-1", if_match='"v1"')).status_code == 206


async def test_range_applies_to_the_encoded_body(cache: Harness) -> None:
    """Content-Encoding is part of the representation: the range counts encoded bytes."""
    encoded = gzip.compress(BODY * 20, mtime=0)
    await primed(cache, "/gz", whole(body=encoded, content_encoding="gzip"))
    headers = {"range": "bytes=0-9", "accept-encoding": "gzip"}
    async with cache.client.stream("GET", "/gz", headers=headers) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 206
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-range"] == f"bytes 0-9/{len(encoded)}"
    assert raw == encoded[:10]


async def test_only_a_stored_200_is_cut(cache: Harness) -> None:
    """A stored 404 (or any non-200) is sent as it is (§14.2: Range applies to a 200)."""
    cache.script("/gone", Answer(404, {"cache-control": "max-age=100"}, b"not here"))
    await cache.get("/gone")
    response = await cache.get("/gone", range="bytes=0-2")
    assert response.status_code == 404
    assert response.content == b"not here"
    assert is_hit(response)


async def test_miss_forwards_range_and_passes_the_206_through_unstored(cache: Harness) -> None:
    """A miss sends Range to the app unchanged; its 206 is never stored (docs)."""

    def partial(headers: dict[str, str]) -> Answer:
        if headers.get("range") == "bytes=0-3":
            cache_headers = {"cache-control": "max-age=100", "content-range": "bytes 0-3/10"}
            return Answer(206, cache_headers, b"0123")
        return whole()

    cache.script("/miss", partial)
    response = await cache.get("/miss", range="bytes=0-3", if_range='"v1"')
    assert response.status_code == 206
    assert response.content == b"0123"
    assert status_of(response) == "tiercache; fwd=uri-miss"
    assert cache.origin.seen[-1]["range"] == "bytes=0-3"
    assert cache.origin.seen[-1]["if-range"] == '"v1"'
    again = await cache.get("/miss", range="bytes=0-3")
    assert again.status_code == 206
    assert cache.origin.calls["/miss"] == 2


async def test_revalidation_asks_for_the_whole_and_answers_the_range(cache: Harness) -> None:
    """A stale entry is validated without Range/If-Range; the 304 freshens it and the client
    gets its part of the freshened response."""
    await primed(cache, "/stale", whole(cache_control="max-age=10"))
    cache.clock.advance(20)
    cache.script("/stale", Answer(304, {"etag": '"v1"', "cache-control": "max-age=100"}, b""))
    response = await cache.get("/stale", range="bytes=1-2", if_range='"v1"')
    sent = cache.origin.seen[-1]
    assert "range" not in sent
    assert "if-range" not in sent
    assert sent["if-none-match"] == '"v1"'
    assert response.status_code == 206
    assert response.content == b"12"
    assert status_of(response) == "tiercache; fwd=stale; fwd-status=304"
    assert is_hit(await cache.get("/stale", range="bytes=1-2"))
    assert cache.origin.calls["/stale"] == 2


async def test_revalidation_that_brings_a_new_200_stores_it(cache: Harness) -> None:
    """The app's whole 200 replaces the entry; this client gets it whole (§14.2), the next
    range request is cut from it."""
    await primed(cache, "/new", whole(cache_control="max-age=10"))
    cache.clock.advance(20)
    cache.script("/new", whole(etag='"v2"', body=b"abcdefghij"))
    response = await cache.get("/new", range="bytes=1-2")
    assert "range" not in cache.origin.seen[-1]
    assert response.status_code == 200
    assert response.content == b"abcdefghij"
    assert status_of(response) == "tiercache; fwd=stale; fwd-status=200; stored"
    part = await cache.get("/new", range="bytes=1-2")
    assert (part.status_code, part.content) == (206, b"bc")
    assert is_hit(part)


async def test_refetch_without_validators_drops_range_too(cache: Harness) -> None:
    """An entry with no validator is fetched again whole, so it can be replaced; were Range
    sent, the app's 206 would pass unstored and every range request would miss."""
    cache.script("/plain", Answer(headers={"cache-control": "max-age=10"}, body=BODY))
    await cache.get("/plain")
    cache.clock.advance(20)
    response = await cache.get("/plain", range="bytes=0-1", if_range='"x"')
    assert "range" not in cache.origin.seen[-1]
    assert "if-range" not in cache.origin.seen[-1]
    assert response.status_code == 200
    assert is_hit(await cache.get("/plain", range="bytes=0-1"))


async def test_retry_after_a_304_for_another_representation_drops_range(
    cache: Harness,
) -> None:
    """§4.3.4: the app is asked again unconditionally, still for the whole response."""
    await primed(cache, "/other", whole(cache_control="max-age=0"))

    def answer(headers: dict[str, str]) -> Answer:
        if "if-none-match" in headers:
            return Answer(304, {"etag": '"v2"'}, b"")
        return whole(etag='"v2"', body=b"abcdefghij")

    cache.script("/other", answer)
    response = await cache.get("/other", range="bytes=0-1")
    retried = cache.origin.seen[-1]
    assert "if-none-match" not in retried
    assert "range" not in retried
    assert response.content == b"abcdefghij"


async def test_stale_while_revalidate_answers_the_range_and_refreshes_whole(
    cache: Harness,
) -> None:
    await primed(cache, "/swr", whole(cache_control="max-age=10, stale-while-revalidate=60"))
    cache.clock.advance(20)
    cache.script("/swr", whole(etag='"v2"', body=b"abcdefghij"))
    response = await cache.get("/swr", range="bytes=-2")
    assert (response.status_code, response.content) == (206, b"89")
    assert status_of(response).startswith("tiercache; hit; ttl=-10")
    for _ in range(200):
        if cache.origin.calls["/swr"] == 2:
            break
        await asyncio.sleep(0.01)
    assert "range" not in cache.origin.seen[-1]
    for _ in range(100):
        fresh = await cache.get("/swr", range="bytes=-2")
        if fresh.content == b"ij":
            break
        await asyncio.sleep(0.01)
    assert (fresh.status_code, fresh.content) == (206, b"ij")


async def test_stale_if_error_answers_the_range(cache: Harness) -> None:
    await primed(cache, "/sie", whole(cache_control="max-age=10, stale-if-error=60"))
    cache.clock.advance(20)
    cache.script("/sie", Answer(503, {}, b"down"))
    response = await cache.get("/sie", range="bytes=0-2")
    assert (response.status_code, response.content) == (206, b"012")
    assert status_of(response) == "tiercache; fwd=stale; fwd-status=503; detail=stale-if-error"


class GatedApp:
    """Answers the whole body once the test opens the gate, so requests pile up meanwhile."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.gate.wait()
        headers = [(b"cache-control", b"max-age=60"), (b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})


async def test_collapsed_range_requests_get_their_parts(tmp_path: Path) -> None:
    app = GatedApp()
    middleware = CacheMiddleware(app, cache=TierCache.from_dict(local_config(tmp_path)))
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://origin.test") as client:
        leader = asyncio.create_task(client.get("/same"))
        for _ in range(100):
            if app.calls:
                break
            await asyncio.sleep(0.01)
        parts = [
            asyncio.create_task(client.get("/same", headers={"range": f"bytes={n}-{n}"}))
            for n in range(3)
        ]
        await asyncio.sleep(0.05)
        app.gate.set()
        first = await leader
        answers = await asyncio.gather(*parts)
    await middleware.close()
    assert app.calls == 1
    assert first.content == BODY
    assert [(a.status_code, a.content) for a in answers] == [(206, b"0"), (206, b"1"), (206, b"2")]
    assert all("collapsed" in status_of(a) for a in answers)


# ---- WSGI: the same engine behind WSGICacheMiddleware -----------------------------------------
class WsgiOrigin:
    """A WSGI app whose first answer has max-age=0, so the next request validates."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str | None]] = []

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        self.seen.append({name: environ.get(name) for name in ("HTTP_RANGE", "HTTP_IF_RANGE")})
        headers = [("cache-control", "max-age=0" if len(self.seen) == 1 else "max-age=100")]
        start_response("200 OK", [*headers, ("etag", '"v1"'), ("content-length", "10")])
        return [BODY]


@pytest.fixture
def wsgi(tmp_path: Path) -> Any:
    origin = WsgiOrigin()
    middleware = WSGICacheMiddleware(origin, cache=TierCache.from_dict(local_config(tmp_path)))
    yield origin, Client(middleware)
    middleware.close()


def test_wsgi_hit_answers_206_and_416(wsgi: tuple[WsgiOrigin, Client]) -> None:
    origin, client = wsgi
    client.get("/w")  # stored, stale at once
    client.get("/w")  # validated: the new 200 is fresh for 100 s
    part = client.get("/w", headers={"range": "bytes=3-5"})
    assert part.status_code == 206
    assert part.get_data() == b"345"
    assert part.headers["content-range"] == "bytes 3-5/10"
    assert part.headers["content-length"] == "3"
    assert part.headers["cache-status"].startswith("tiercache; hit;")
    far = client.get("/w", headers={"range": "bytes=20-"})
    assert far.status_code == 416
    assert far.headers["content-range"] == "bytes */10"
    assert len(origin.seen) == 2


def test_wsgi_validation_sends_no_range(wsgi: tuple[WsgiOrigin, Client]) -> None:
    origin, client = wsgi
    client.get("/v")  # stored with max-age=0
    response = client.get("/v", headers={"range": "bytes=0-1", "if-range": '"v1"'})
    assert origin.seen[-1] == {"HTTP_RANGE": None, "HTTP_IF_RANGE": None}
    assert response.status_code == 200  # the app's new whole 200, stored
    part = client.get("/v", headers={"range": "bytes=0-1"})
    assert (part.status_code, part.get_data()) == (206, b"01")

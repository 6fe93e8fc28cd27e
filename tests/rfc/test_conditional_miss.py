"""A conditional GET that misses is sent to the app without If-None-Match/If-Modified-Since;
the 200 is stored and the client's conditions are answered from it (Varnish does the same:
varnishtest ticket #907, backend asked once, the client gets its 304s from the cache).

Both adapters with real apps behind them: ASGI through httpx's transport, WSGI through
werkzeug's test client (httpx's WSGI transport drops what an app passes to write()).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from werkzeug.http import http_date
from werkzeug.test import Client

from tests.rfc.origin import local_config
from tiercache_mw import CacheMiddleware, TierCache, WSGICacheMiddleware
from tiercache_mw.engine import NOT_STORABLE_SECONDS
from tiercache_mw.wsgi import StartResponse, WSGIEnviron

ADAPTERS = ["asgi", "wsgi"]
ETAG = '"v7"'
LAST_MODIFIED = http_date(1_600_000_000)
CONDITIONS = {
    "if-none-match": {"if-none-match": ETAG},
    "if-modified-since": {"if-modified-since": LAST_MODIFIED},
}
CONDITION_FIELDS = ("if-none-match", "if-modified-since")


class Resource:
    """One response, answered as an origin would: a 304 when the request's own If-None-Match
    matches; its body in `parts` (streamed without Content-Length unless `sized`)."""

    def __init__(
        self,
        headers: dict[str, str] | None = None,
        parts: tuple[bytes, ...] = (b'{"items": []}',),
        *,
        sized: bool = True,
        by_language: bool = False,
        use_write: bool = False,
    ) -> None:
        self.headers = {
            "etag": ETAG,
            "last-modified": LAST_MODIFIED,
            "cache-control": "max-age=60",
            **(headers or {}),
        }
        self.parts = parts
        self.sized = sized
        self.by_language = by_language
        self.use_write = use_write
        self.seen: list[dict[str, str]] = []

    def answer(self, method: str, request: dict[str, str]) -> tuple[int, list[tuple[str, str]]]:
        self.seen.append({":method": method, **request})
        headers = list(self.headers.items())
        if self.by_language:
            headers.append(("vary", "accept-language"))
        if request.get("if-none-match") == ETAG:
            return 304, headers
        if self.sized:
            headers.append(("content-length", str(len(self.body(request)))))
        return 200, headers

    def chunks(self, request: dict[str, str]) -> tuple[bytes, ...]:
        if self.by_language:
            return (request.get("accept-language", "none").encode(),)
        return self.parts

    def body(self, request: dict[str, str]) -> bytes:
        return b"".join(self.chunks(request))

    @property
    def calls(self) -> int:
        return len(self.seen)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, headers = self.answer(scope["method"], request)
        raw = [(name.encode(), value.encode()) for name, value in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if status == 304 or scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        for chunk in self.chunks(request):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def wsgi(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterator[bytes]:
        request = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        status, headers = self.answer(environ["REQUEST_METHOD"], request)
        write = start_response(f"{status} X", headers)
        if status == 304 or environ["REQUEST_METHOD"] == "HEAD":
            return iter(())
        if self.use_write:  # PEP 3333's write() callable, then an empty iterable
            for chunk in self.chunks(request):
                write(chunk)
            return iter(())
        return iter(self.chunks(request))


class Served:
    """A Resource behind one adapter; `get` returns the client's response."""

    def __init__(self, adapter: str, resource: Resource, tmp_path: Path, **http: Any) -> None:
        config = local_config(tmp_path, http=http)
        self.adapter = adapter
        self.resource = resource
        cache = TierCache.from_dict(config)
        self.asgi: CacheMiddleware | None = None
        self.wsgi: WSGICacheMiddleware | None = None
        if adapter == "asgi":
            self.asgi = CacheMiddleware(resource.asgi, cache=cache)
            self.async_client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.asgi), base_url="http://origin.test"
            )
        else:
            self.wsgi = WSGICacheMiddleware(resource.wsgi, cache=cache)
            self.sync_client = Client(self.wsgi)

    async def get(self, path: str = "/api/items", **headers: str) -> httpx.Response:
        """GET with `headers` given as keywords: if_none_match=... sends If-None-Match."""
        fields = {name.replace("_", "-"): value for name, value in headers.items()}
        return await self.request("GET", path, fields)

    async def request(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        if self.asgi is not None:
            return await self.async_client.request(method, path, headers=headers)
        return await asyncio.to_thread(self._wsgi_request, method, path, headers)

    def _wsgi_request(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        response = self.sync_client.open(
            path, method=method, headers=headers, base_url="http://origin.test"
        )
        return httpx.Response(
            response.status_code, headers=list(response.headers), content=response.get_data()
        )

    async def close(self) -> None:
        if self.asgi is not None:
            await self.async_client.aclose()
            await self.asgi.close()
        else:
            assert self.wsgi is not None
            await asyncio.to_thread(self.wsgi.close)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    served: list[Served] = []

    def make(adapter: str, resource: Resource, **http: Any) -> Served:
        served.append(Served(adapter, resource, tmp_path / str(len(served)), **http))
        return served[-1]

    yield make
    for one in served:
        await one.close()


def sent_conditions(request: dict[str, str]) -> list[str]:
    return [name for name in CONDITION_FIELDS if name in request]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("condition", list(CONDITIONS))
async def test_conditional_miss_is_stored_and_answered_304_from_the_cache(
    serve: Any, adapter: str, condition: str
) -> None:
    resource = Resource()
    served = serve(adapter, resource)
    polls = [await served.get(**CONDITIONS[condition]) for _ in range(5)]
    assert [poll.status_code for poll in polls] == [304] * 5
    assert all(poll.content == b"" and poll.headers["etag"] == ETAG for poll in polls)
    # RFC 9211 §2.3: the app answered 200; without fwd-status the 304 would be taken for its.
    assert polls[0].headers["cache-status"] == "tiercache; fwd=uri-miss; fwd-status=200; stored"
    assert all(poll.headers["cache-status"].startswith("tiercache; hit;") for poll in polls[1:])
    assert resource.calls == 1
    assert sent_conditions(resource.seen[0]) == []
    plain = await served.get()
    assert (plain.status_code, plain.content) == (200, resource.body({}))
    assert resource.calls == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_if_none_match_for_another_etag_gets_the_stored_200(serve: Any, adapter: str) -> None:
    resource = Resource()
    served = serve(adapter, resource)
    first = await served.get(if_none_match='"old"')
    assert (first.status_code, first.content) == (200, resource.body({}))
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    assert first.headers["content-length"] == str(len(resource.body({})))
    assert (await served.get(if_none_match=ETAG)).status_code == 304
    assert resource.calls == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    "headers",
    [
        {"cache-control": "no-store"},
        {"cache-control": "private, max-age=60"},
        {"set-cookie": "sid=1"},
    ],
    ids=["no-store", "private", "set-cookie"],
)
async def test_an_answer_that_is_not_stored_passes_then_the_app_answers_the_conditions(
    serve: Any, adapter: str, headers: dict[str, str]
) -> None:
    """RFC 9110 §13.2.1: a server that cannot act as a cache for the response does not
    evaluate the conditions: the whole 200 the app sent is a valid answer to them. The key is
    then remembered as not storable (Varnish's hit-for-miss): later polls keep their
    conditions and get the app's own 304s."""
    resource = Resource(headers)
    served = serve(adapter, resource)
    first = await served.get(if_none_match=ETAG)
    assert (first.status_code, first.content) == (200, resource.body({}))
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss"
    polls = [await served.get(if_none_match=ETAG) for _ in range(3)]
    assert [poll.status_code for poll in polls] == [304] * 3
    assert all(poll.headers["cache-status"] == "tiercache; fwd=uri-miss" for poll in polls)
    assert [sent_conditions(seen) for seen in resource.seen] == [[]] + [["if-none-match"]] * 3


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_plain_miss_not_stored_lets_the_next_conditions_through(
    serve: Any, adapter: str
) -> None:
    resource = Resource({"cache-control": "private, max-age=60"})
    served = serve(adapter, resource)
    assert (await served.get()).status_code == 200
    assert (await served.get(if_modified_since=LAST_MODIFIED)).status_code == 200
    assert sent_conditions(resource.seen[1]) == ["if-modified-since"]


def engine_of(served: Served) -> Any:
    middleware = served.asgi if served.asgi is not None else served.wsgi
    assert middleware is not None
    return middleware.engine


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_once_the_mark_expires_a_storable_answer_is_stored_again(
    serve: Any, adapter: str
) -> None:
    resource = Resource({"cache-control": "private, max-age=60"})
    served = serve(adapter, resource)
    assert (await served.get(if_none_match=ETAG)).status_code == 200
    resource.headers["cache-control"] = "max-age=60"  # the app makes it shareable
    assert (await served.get(if_none_match=ETAG)).status_code == 304
    assert sent_conditions(resource.seen[1]) == ["if-none-match"]  # still marked
    engine = engine_of(served)
    later = time.time() + NOT_STORABLE_SECONDS + 1
    engine.clock = lambda: later
    filled = await served.get(if_none_match=ETAG)
    assert filled.headers["cache-status"] == "tiercache; fwd=uri-miss; fwd-status=200; stored"
    assert sent_conditions(resource.seen[2]) == []
    assert (
        (await served.get(if_none_match=ETAG)).headers["cache-status"].startswith("tiercache; hit;")
    )
    assert resource.calls == 3


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_an_unsafe_request_clears_the_mark(serve: Any, adapter: str) -> None:
    """RFC 9111 §4.4: a POST invalidates what is known of the URL, the mark included."""
    resource = Resource({"cache-control": "private, max-age=60"})
    served = serve(adapter, resource)
    assert (await served.get(if_none_match=ETAG)).status_code == 200
    resource.headers["cache-control"] = "max-age=60"
    assert (await served.request("POST", "/api/items", {})).status_code == 200
    filled = await served.get(if_none_match=ETAG)
    assert filled.headers["cache-status"] == "tiercache; fwd=uri-miss; fwd-status=200; stored"
    assert sent_conditions(resource.seen[2]) == []


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_response_kept_out_by_authorization_marks_nothing(serve: Any, adapter: str) -> None:
    """§3.5: the Authorization request's answer is not stored, but another client's may be."""
    resource = Resource()
    served = serve(adapter, resource)
    assert (await served.get(authorization="Bearer t")).status_code == 200
    filled = await served.get(if_none_match=ETAG)
    assert filled.headers["cache-status"] == "tiercache; fwd=uri-miss; fwd-status=200; stored"


@pytest.mark.parametrize(
    ("adapter", "sized", "use_write"),
    [
        ("asgi", True, False),
        ("asgi", False, False),
        ("wsgi", True, False),
        ("wsgi", False, False),
        ("wsgi", False, True),
    ],
    ids=["asgi-content-length", "asgi-streamed", "wsgi-content-length", "wsgi-streamed",
         "wsgi-write-callable"],
)  # fmt: skip
async def test_a_body_over_max_entry_bytes_passes_whole(
    serve: Any, adapter: str, sized: bool, use_write: bool
) -> None:
    resource = Resource(parts=(b"0123456789",) * 5, sized=sized, use_write=use_write)
    served = serve(adapter, resource, max_entry_bytes=25)
    first = await served.get(if_none_match=ETAG)
    assert (first.status_code, first.content) == (200, resource.body({}))
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss"
    # Remembered as too large to store: the next poll keeps its condition, the app says 304.
    assert (await served.get(if_none_match=ETAG)).status_code == 304
    assert sent_conditions(resource.seen[1]) == ["if-none-match"]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_small_body_through_write_is_stored_and_answered(serve: Any, adapter: str) -> None:
    resource = Resource(parts=(b"01234", b"56789"), sized=False, use_write=adapter == "wsgi")
    served = serve(adapter, resource)
    assert (await served.get(if_none_match=ETAG)).status_code == 304
    whole = await served.get()
    assert (whole.status_code, whole.content) == (200, b"0123456789")
    assert resource.calls == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_vary_stores_the_conditional_misses_variant(serve: Any, adapter: str) -> None:
    resource = Resource(by_language=True)
    served = serve(adapter, resource)
    english = {"accept-language": "en"}
    assert (await served.get(if_none_match=ETAG, **english)).status_code == 304
    german = await served.get(accept_language="de")
    assert (german.status_code, german.content) == (200, b"de")
    assert resource.calls == 2
    again = await served.get(if_none_match=ETAG, **english)
    assert again.status_code == 304
    assert again.headers["cache-status"].startswith("tiercache; hit;")
    assert (await served.get(**english)).content == b"en"
    assert resource.calls == 2


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"range": "bytes=0-1"}),
        ("GET", {"authorization": "Bearer t"}),
        ("GET", {"cache-control": "no-store"}),
        ("HEAD", {}),
    ],
    ids=["range", "authorization", "request-no-store", "head"],
)
async def test_conditions_still_reach_the_app(
    serve: Any, adapter: str, method: str, headers: dict[str, str]
) -> None:
    """A range miss passes through (docs/http-semantics.md, Ranges); a response to
    Authorization or a no-store request is not stored; a HEAD miss stores nothing: the app's
    own 304 is then the better answer."""
    resource = Resource()
    served = serve(adapter, resource)
    response = await served.request(method, "/api/items", {"if-none-match": ETAG, **headers})
    assert response.status_code == 304
    assert sent_conditions(resource.seen[0]) == ["if-none-match"]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_if_match_still_goes_to_the_app(serve: Any, adapter: str) -> None:
    """RFC 9110 §13.2.1: the cache evaluates conditions only on what it stores; If-Match on a
    miss is left to the app, the validation conditions are answered from the stored 200."""
    resource = Resource()
    served = serve(adapter, resource)
    response = await served.get(if_none_match=ETAG, if_match=ETAG)
    assert response.status_code == 304
    assert resource.seen[0].get("if-match") == ETAG
    assert sent_conditions(resource.seen[0]) == []


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("qualified", ['no-cache="Set-Cookie"', 'private="Set-Cookie"'])
async def test_the_client_that_filled_gets_the_fields_kept_out_of_the_store(
    serve: Any, adapter: str, qualified: str
) -> None:
    """RFC 9111 §5.2.2.4, §5.2.2.7: a qualified no-cache/private keeps Set-Cookie out of the
    stored copy only; the client the app sent it to gets it, as on a plain miss."""
    resource = Resource({"cache-control": f"max-age=60, {qualified}", "set-cookie": "sid=1"})
    served = serve(adapter, resource)
    first = await served.get(if_none_match='"old"')
    assert (first.status_code, first.content) == (200, resource.body({}))
    assert first.headers["set-cookie"] == "sid=1"
    assert first.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
    hit = await served.get()
    assert hit.headers["cache-status"].startswith("tiercache; hit;")
    assert "set-cookie" not in hit.headers
    assert resource.calls == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_the_304_to_the_client_that_filled_carries_what_a_hits_304_does_and_its_cookie(
    serve: Any, adapter: str
) -> None:
    """RFC 9110 §15.4.5: the fields a 200 would have had that a 304 must repeat; and the
    Set-Cookie the app sent this client, which no-cache="Set-Cookie" only keeps out of the
    stored copy (RFC 9111 §5.2.2.4): a later hit's 304 has none."""
    resource = Resource({"cache-control": 'max-age=60, no-cache="Set-Cookie"', "set-cookie": "a"})
    served = serve(adapter, resource)
    filled = await served.get(if_none_match=ETAG)
    hit = await served.get(if_none_match=ETAG)
    assert (filled.status_code, hit.status_code) == (304, 304)
    own = {"age", "cache-status"}
    assert set(filled.headers) - own == (set(hit.headers) - own) | {"set-cookie"}
    assert filled.headers["set-cookie"] == "a"
    assert {"etag", "cache-control", "last-modified"} <= set(filled.headers)


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_plain_miss_streamed_past_max_entry_bytes_marks_the_key(
    serve: Any, adapter: str
) -> None:
    """The size shows only mid-stream (no Content-Length): the adapter marks the key."""
    resource = Resource(parts=(b"0123456789",) * 5, sized=False)
    served = serve(adapter, resource, max_entry_bytes=25)
    assert (await served.get()).content == resource.body({})
    assert (await served.get(if_none_match=ETAG)).status_code == 304
    assert sent_conditions(resource.seen[1]) == ["if-none-match"]

"""WSGICacheMiddleware: the tiered response cache for WSGI apps (Flask, Django).

Hot hits are served synchronously in the worker thread; only cold/dry tiers and purges cross
to the cache's background event loop. The steps are `HttpCache`'s, as in the ASGI middleware.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import quote

from tiercache_mw.engine import (
    Action,
    ConfigSource,
    Exchange,
    HttpCache,
    Reply,
    RequestView,
    ResponseDecision,
    ResponsePlan,
    build_cache,
)
from tiercache_mw.hot import REQUEST_FIELDS_NEEDING_THE_FULL_PATH, HotPath
from tiercache_mw.http.key import KeyMemo, primary_key
from tiercache_mw.store.cache import TierCache

__all__ = ["WSGICacheMiddleware"]

logger = logging.getLogger("tiercache_mw")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIEnviron = dict[str, Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

_HEADER_ENVIRON = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
_ENVIRON_HEADERS = frozenset(_HEADER_ENVIRON.values())
_FULL_PATH_VARIABLES = frozenset(
    "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    for name in REQUEST_FIELDS_NEEDING_THE_FULL_PATH
)


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


def _host(environ: WSGIEnviron) -> str:
    return environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"


def _raw_path(environ: WSGIEnviron) -> str:
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw_uri:
        return str(raw_uri).partition("?")[0]
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote(path, safe="/;%:@&=+$,!~*'()")


def request_view(environ: WSGIEnviron) -> RequestView:
    headers: list[tuple[bytes, bytes]] = []
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            field = name[5:].replace("_", "-").lower().encode("latin-1")
            headers.append((field, value.encode("latin-1")))
        elif name in _HEADER_ENVIRON and value:
            headers.append((_HEADER_ENVIRON[name], value.encode("latin-1")))
    return RequestView(
        method=environ["REQUEST_METHOD"],
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=_host(environ),
        path=environ.get("PATH_INFO", "") or "/",
        raw_path=_raw_path(environ),
        query=environ.get("QUERY_STRING", ""),
        headers=headers,
    )


def hot_key(environ: WSGIEnviron) -> str | None:
    """The primary key of a plain GET/HEAD, or None when the request needs the full path."""
    # A keys view tests the eight names against the environ in C, not the other way round.
    if not environ.keys().isdisjoint(_FULL_PATH_VARIABLES):
        return None
    get = environ.get
    # Most servers give the request target as sent (RAW_URI, REQUEST_URI) and a Host field:
    # then those name the resource; the other variables only when they are missing. A
    # missing scheme or query string (None) and one sent stay apart in the memo.
    request_line = (
        environ["REQUEST_METHOD"],
        get("wsgi.url_scheme"),
        get("HTTP_HOST") or (get("SERVER_NAME"), get("SERVER_PORT")),
        get("RAW_URI") or get("REQUEST_URI") or (get("SCRIPT_NAME"), get("PATH_INFO")),
        get("QUERY_STRING"),
    )
    key = _keys.get(request_line)
    if key is None:
        key = _remember_key(request_line, environ)
    return key


_keys = KeyMemo()


def _remember_key(request_line: tuple[Any, ...], environ: WSGIEnviron) -> str:
    method, scheme, _origin, _target, query = request_line
    key = primary_key(
        method,
        "http" if scheme is None else scheme,
        _host(environ),
        _raw_path(environ),
        "" if query is None else query,
    )
    return _keys.remember(request_line, key)


def _native(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class WSGICacheMiddleware:
    def __init__(
        self, app: WSGIApp, *, cache: TierCache | None = None, config: ConfigSource = None
    ) -> None:
        self.app = app
        self.cache = build_cache(cache, config)
        self.engine = HttpCache(self.cache)
        self.hot = HotPath(self.engine, native=True)
        # key -> (done, the leader's Exchange: followers report the status it received)
        self._inflight: dict[str, tuple[threading.Event, Exchange]] = {}
        self._inflight_lock = threading.Lock()
        self._refreshing: set[str] = set()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        hot = self.hot
        if (method == "GET" or method == "HEAD") and hot.enabled:
            key = hot_key(environ)
            found = hot.fresh(key) if key is not None else None
            if found is not None:
                stored, memo = found
                status = stored.status
                native = memo[4]
                assert native is not None  # a native HotPath fills it
                start_response(_STATUS_LINES.get(status) or _status_line(status), native[:])
                return [b"" if method == "HEAD" else stored.body]
        return self._handle(request_view(environ), environ, start_response)

    def close(self) -> None:
        """Close the cache, persisting its RAM tiers to dry (WSGI has no lifespan)."""
        self.cache.close_sync()

    def _send(self, start_response: StartResponse, reply: Reply) -> list[bytes]:
        status_line = _STATUS_LINES.get(reply.status) or _status_line(reply.status)
        start_response(status_line, _native(reply.headers))
        return [reply.body]

    def _handle(
        self, request: RequestView, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        engine = self.engine
        exchange = engine.plan(request)
        if not exchange.cacheable:
            return self._forward(exchange, environ, start_response)
        self._find(exchange)
        action = engine.reuse(exchange, engine.clock())
        if action is Action.FORWARD:
            return self._forward_collapsed(exchange, environ, start_response)
        if action is Action.SERVE:
            return self._send(start_response, engine.hit_reply(exchange, engine.clock()))
        if action is Action.SERVE_AND_REFRESH:
            reply = engine.hit_reply(exchange, engine.clock())
            self._refresh_in_background(exchange, environ)
            return self._send(start_response, reply)
        return self._send(start_response, engine.gateway_timeout(exchange))

    def _find(self, exchange: Exchange) -> None:
        variant = self.engine.resolve(exchange, self.cache.lookup_blocking(exchange.key))
        if variant is not None:
            self.engine.resolve(exchange, self.cache.lookup_blocking(variant))

    def _forward_collapsed(
        self, exchange: Exchange, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        """One thread forwards per key; the others wait and answer from what it stored.

        The waiters are let go as soon as the answer is known: at start_response when it
        will not be stored (as Varnish's hit-for-miss), else once the entry is stored.
        """
        if exchange.request.method != "GET":
            return self._forward(exchange, environ, start_response)  # a HEAD stores nothing
        key = exchange.key
        leads = not exchange.forwards_a_range  # a part is never stored: nothing to wait for
        with self._inflight_lock:
            inflight = self._inflight.get(key)
            if inflight is None and leads:
                done = threading.Event()
                self._inflight[key] = (done, exchange)
        if inflight is not None:
            leader, leading = inflight
            finished = leader.wait(self.engine.http.collapse_timeout_seconds)
            reply = self._collapsed_reply(exchange, leading) if finished else None
            if reply is not None:
                return self._send(start_response, reply)
            return self._forward(exchange, environ, start_response)
        if not leads:
            return self._forward(exchange, environ, start_response)

        def release() -> None:
            with self._inflight_lock:
                current = self._inflight.get(key)
                if current is not None and current[0] is done:  # not a later leader's
                    del self._inflight[key]
            done.set()

        return self._forward(exchange, environ, start_response, on_done=release)

    def _collapsed_reply(self, exchange: Exchange, leader: Exchange) -> Reply | None:
        retry = self.engine.plan(exchange.request)
        self._find(retry)
        if retry.entry is None or retry.entry is exchange.entry:
            return None
        if self.engine.reuse(retry, self.engine.clock()) is not Action.SERVE:
            return None
        retry.fwd = exchange.fwd
        return self.engine.collapsed_reply(
            retry, self.engine.clock(), fwd_status=leader.received_status or None
        )

    def _forward(
        self,
        exchange: Exchange,
        environ: WSGIEnviron,
        start_response: StartResponse,
        *,
        on_done: Callable[[], None] | None = None,
    ) -> Iterable[bytes]:
        forward = _Forward(self, exchange, environ, start_response, on_done)
        if exchange.forward_headers is not None:
            environ = _with_forward_headers(environ, exchange.forward_headers)
        exchange.request_time = self.engine.clock()
        try:
            result = self.app(environ, forward.start_response)
        except Exception:
            forward.release()
            reply = self.engine.stale_on_exception(exchange)
            if reply is None:
                raise
            logger.warning("app raised; served stale for %s", exchange.url, exc_info=True)
            return self._send(start_response, reply)
        return _ForwardedBody(forward, result)

    def _refresh_in_background(self, exchange: Exchange, environ: WSGIEnviron) -> None:
        """One background refresh per key (RFC 5861 §3), in a daemon thread."""
        with self._inflight_lock:
            if exchange.key in self._refreshing or exchange.key in self._inflight:
                return
            self._refreshing.add(exchange.key)
        refresh = self.engine.refresh_exchange(exchange)
        refresh_environ = {
            **environ,
            "REQUEST_METHOD": "GET",
            "wsgi.input": io.BytesIO(b""),
            "CONTENT_LENGTH": "0",
        }

        def run() -> None:
            try:
                for _ in self._forward_collapsed(refresh, refresh_environ, _ignore_start):
                    pass
            except Exception:
                logger.warning("background refresh failed for %s", refresh.url, exc_info=True)
            finally:
                with self._inflight_lock:
                    self._refreshing.discard(refresh.key)

        threading.Thread(target=run, name="tiercache-refresh", daemon=True).start()


class _Forward:
    """One forwarded WSGI response: decides at start_response, tees the body into the store.

    The body arrives through the iterable the app returns and through the write() callable
    start_response returns (PEP 3333); both pass through `_take`, in the order they come.
    """

    def __init__(
        self,
        middleware: WSGICacheMiddleware,
        exchange: Exchange,
        environ: WSGIEnviron,
        start_response: StartResponse,
        on_done: Callable[[], None] | None,
    ) -> None:
        self.middleware = middleware
        self.exchange = exchange
        self.environ = environ  # the client's, for a retry
        self.result_closed = False
        self.client_start_response = start_response
        self.client_write: Callable[[bytes], object] = _refuse_write
        self.on_done = on_done
        self.decision: ResponseDecision | None = None
        self.status = 0
        self.status_line = ""
        self.exc_info: ExcInfo | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.max_bytes = middleware.engine.http.max_entry_bytes
        # The body kept for the store while `storing`, and the one chunk held back: while
        # storing, the entry is stored before the last chunk goes out, so that a client's
        # next request finds it; a response that is not stored streams with no delay.
        self.storing = False
        self.parts: list[bytes] = []
        self.kept = 0
        self.held: bytes | None = None
        # STORE_THEN_ANSWER: the client's start_response waits, and the whole body is kept,
        # until the cache answers from the stored entry, or the body proves too large.
        self.answering = False

    def release(self) -> None:
        if self.on_done is not None:
            self.on_done()
            self.on_done = None

    def start_response(
        self, status_line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.status = int(status_line.split(" ", 1)[0])
        self.status_line, self.exc_info = status_line, exc_info
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        engine = self.middleware.engine
        # RFC 9111 §4.4: invalidate before the client has the response and can ask again.
        for url in engine.invalidations(self.exchange, self.status, self.headers):
            self.middleware.cache.purge_sync(url=url)
        self.decision = engine.on_response(self.exchange, self.status, self.headers)
        # Called again with exc_info, the app replaces what it had started: none of it is kept.
        self.parts.clear()
        self.kept = 0
        self.held = None
        plan = self.decision.plan
        self.storing = plan.stores
        self.answering = plan is ResponsePlan.STORE_THEN_ANSWER
        if not self.storing and plan is not ResponsePlan.RETRY:
            self.release()  # nothing to wait for: any update of the entry is stored now
        if plan.replaces_response:
            return _discard_write  # the app's answer is dropped; drain it quietly
        if not self.answering:
            self._start_client_response()
        return self.write

    def _start_client_response(self) -> None:
        assert self.decision is not None
        self.client_write = self.client_start_response(
            self.status_line, _native(self.decision.headers), self.exc_info
        )

    def write(self, data: bytes) -> None:
        """The app's write(): to the client through the server's own write, and into the store
        in order with the iterable's chunks."""
        for ready in self._take(data):
            self.client_write(ready)

    def _take(self, chunk: bytes) -> tuple[bytes, ...]:
        """Keep `chunk` for the store; return what may go to the client now, in order."""
        if self.storing:
            self.kept += len(chunk)
            if self.kept > self.max_bytes:
                self.middleware.engine.mark_not_storable(self.exchange)
                self.storing = False  # too large: stream the rest through, keep nothing
                self.release()
                if self.answering:
                    return self._send_kept_as_pass(chunk)
                self.parts.clear()
            else:
                self.parts.append(chunk)
                if self.answering:
                    return ()
        held = self.held
        if self.storing:
            self.held = chunk
            return () if held is None else (held,)
        self.held = None
        return (chunk,) if held is None else (held, chunk)

    def _send_kept_as_pass(self, chunk: bytes) -> tuple[bytes, ...]:
        """A STORE_THEN_ANSWER body too large to store: the app's response goes out after
        all, its head now and the body kept so far first."""
        self.answering = False
        self._start_client_response()
        kept = b"".join(self.parts)
        self.parts.clear()
        return (kept, chunk)

    def _answer_from_stored(self) -> bytes:
        """Store the whole body kept and send the client the cache's answer from it."""
        middleware = self.middleware
        assert self.decision is not None
        entries = middleware.engine.finish(self.exchange, self.decision, b"".join(self.parts))
        for entry in entries:
            middleware.cache.put(entry)
        self.release()
        reply = middleware.engine.answer_from_stored(
            self.exchange, self.decision, stored=bool(entries)
        )
        self.client_write = _discard_write
        return middleware._send(self.client_start_response, reply)[0]

    def stream(self, result: Iterable[bytes]) -> Generator[bytes, None, None]:
        middleware = self.middleware
        engine = middleware.engine
        try:
            iterator = iter(result)
            first = self._first_chunk(iterator)
            decision = self.decision
            if decision is None:
                raise RuntimeError("WSGI app returned without calling start_response")
            if decision.plan is ResponsePlan.SERVE_STORED:
                assert decision.reply is not None
                middleware._send(self.client_start_response, decision.reply)
                yield decision.reply.body
                return
            if decision.plan is ResponsePlan.RETRY:
                self._close(result)  # before the app is called again
                # A GET or HEAD: its (empty) body was read by the first call.
                environ = {**self.environ, "wsgi.input": io.BytesIO(b""), "CONTENT_LENGTH": "0"}
                on_done, self.on_done = self.on_done, None  # the retry releases the waiters
                yield from middleware._forward(
                    self.exchange, environ, self.client_start_response, on_done=on_done
                )
                return
            chunks = _chain(first, iterator)
            if self.storing:
                for chunk in chunks:
                    yield from self._take(chunk)
                    if not self.storing:
                        break  # too large: nothing is held any more, the rest streams through
            yield from chunks  # a response not stored streams with no work per chunk
            if self.answering:
                yield self._answer_from_stored()
                return
            if self.storing:
                for entry in engine.finish(self.exchange, decision, b"".join(self.parts)):
                    middleware.cache.put(entry)
                # Before the last chunk goes out: the waiters need not wait for this client.
                self.release()
            if self.held is not None:
                yield self.held
        finally:
            self._close(result)
            self.release()

    def _close(self, result: Iterable[bytes]) -> None:
        if self.result_closed:
            return
        self.result_closed = True
        close = getattr(result, "close", None)
        if close is not None:
            close()

    def _first_chunk(self, iterator: Iterator[bytes]) -> bytes | None:
        """Pull the first chunk: apps may call start_response only when first iterated."""
        try:
            return next(iterator)
        except StopIteration:
            return None


class _ForwardedBody:
    """The iterable a forward returns (PEP 3333): `_Forward.stream`'s chunks, with a close()
    that also works when nothing was iterated. A generator's own close() skips its `finally`
    when it never started, which would leave the collapsed waiters waiting out
    collapse_timeout_seconds and the app's iterable unclosed."""

    __slots__ = ("_chunks", "_forward", "_result")

    def __init__(self, forward: _Forward, result: Iterable[bytes]) -> None:
        self._forward = forward
        self._result = result
        self._chunks = forward.stream(result)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks  # the server iterates the generator itself: no work per chunk

    def close(self) -> None:
        try:
            self._chunks.close()  # runs `stream`'s finally when it had started
        finally:
            self._forward._close(self._result)
            self._forward.release()


def _chain(first: bytes | None, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first is not None:
        yield first
    yield from rest


def _with_forward_headers(environ: WSGIEnviron, headers: list[tuple[bytes, bytes]]) -> WSGIEnviron:
    """The environ with its HTTP_ fields rebuilt from the engine's `forward_headers`, so that
    whatever it replaced (validators) or dropped (Range, If-Range, the client's conditions)
    is what the app sees. CONTENT_TYPE/CONTENT_LENGTH describe wsgi.input and stay."""
    updated = {key: value for key, value in environ.items() if not key.startswith("HTTP_")}
    for name, value in headers:
        if name in _ENVIRON_HEADERS:
            continue
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        previous = updated.get(key)
        # One variable per field, repeated fields joined as servers join them.
        updated[key] = text if previous is None else f"{previous},{text}"
    return updated


def _refuse_write(data: bytes) -> object:
    raise RuntimeError("write() before start_response")


def _discard_write(data: bytes) -> None:
    """write() for a response nobody receives (replaced by the cache, a background refresh)."""


def _ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
) -> Callable[[bytes], object]:
    return _discard_write

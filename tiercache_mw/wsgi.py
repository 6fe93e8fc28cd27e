"""WSGICacheMiddleware: the tiered response cache for WSGI apps (Flask, Django).

Hot hits are served synchronously in the worker thread; only cold/dry tiers and purges cross
to the cache's background event loop. The steps are `HttpCache`'s, as in the ASGI middleware.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
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
_CONDITIONAL_ENVIRON = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE")
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
    # A keys view tests the seven names against the environ in C, not the other way round.
    if not environ.keys().isdisjoint(_FULL_PATH_VARIABLES):
        return None
    get = environ.get
    # Most servers give the request target as sent (RAW_URI, REQUEST_URI) and a Host field:
    # then those name the resource; the other variables only when they are missing.
    target = get("RAW_URI") or get("REQUEST_URI") or (get("SCRIPT_NAME"), get("PATH_INFO"))
    origin = get("HTTP_HOST") or (get("SERVER_NAME"), get("SERVER_PORT"))
    request_line = (
        environ["REQUEST_METHOD"],
        get("wsgi.url_scheme", "http"),
        origin,
        target,
        get("QUERY_STRING", ""),
    )
    key = _keys.get(request_line)
    if key is None:
        key = _remember_key(request_line, environ)
    return key


_keys = KeyMemo()


def _remember_key(request_line: tuple[Any, ...], environ: WSGIEnviron) -> str:
    method, scheme, _origin, _target, query = request_line
    key = primary_key(method, scheme, _host(environ), _raw_path(environ), query)
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
        self._inflight: dict[str, threading.Event] = {}
        self._inflight_lock = threading.Lock()
        self._refreshing: set[str] = set()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if (method == "GET" or method == "HEAD") and self.hot.enabled:
            key = hot_key(environ)
            found = self.hot.fresh(key) if key is not None else None
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
        """One thread forwards per key; the others wait and answer from what it stored."""
        if exchange.request.method != "GET":
            return self._forward(exchange, environ, start_response)  # a HEAD stores nothing
        key = exchange.key
        with self._inflight_lock:
            leader = self._inflight.get(key)
            if leader is None:
                done = self._inflight[key] = threading.Event()
        if leader is not None:
            finished = leader.wait(self.engine.http.collapse_timeout_seconds)
            reply = self._collapsed_reply(exchange) if finished else None
            if reply is not None:
                return self._send(start_response, reply)
            return self._forward(exchange, environ, start_response)

        def release() -> None:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            done.set()

        return self._forward(exchange, environ, start_response, on_done=release)

    def _collapsed_reply(self, exchange: Exchange) -> Reply | None:
        retry = self.engine.plan(exchange.request)
        self._find(retry)
        if retry.entry is None or retry.entry is exchange.entry:
            return None
        if self.engine.reuse(retry, self.engine.clock()) is not Action.SERVE:
            return None
        retry.fwd = exchange.fwd
        return self.engine.collapsed_reply(retry, self.engine.clock())

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
            environ = _with_validators(environ, exchange.forward_headers)
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
        return forward.stream(result)

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
    """One forwarded WSGI response: decides at start_response, tees the body into the store."""

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
        self.on_done = on_done
        self.decision: ResponseDecision | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    def release(self) -> None:
        if self.on_done is not None:
            self.on_done()
            self.on_done = None

    def start_response(
        self, status_line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        self.status = int(status_line.split(" ", 1)[0])
        self.headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        engine = self.middleware.engine
        # RFC 9111 §4.4: invalidate before the client has the response and can ask again.
        for url in engine.invalidations(self.exchange, self.status, self.headers):
            self.middleware.cache.purge_sync(url=url)
        self.decision = engine.on_response(self.exchange, self.status, self.headers)
        if self.decision.plan.replaces_response:
            return _refuse_write
        return self.client_start_response(status_line, _native(self.decision.headers), exc_info)

    def stream(self, result: Iterable[bytes]) -> Iterator[bytes]:
        middleware = self.middleware
        engine = middleware.engine
        max_bytes = engine.http.max_entry_bytes
        parts: list[bytes] = []
        kept = 0
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
                yield from middleware._forward(self.exchange, environ, self.client_start_response)
                return
            storing = decision.plan is ResponsePlan.STORE
            # While storing, one chunk is held back so that the entry is stored before the
            # last chunk goes out and a client's next request finds it; a response that is
            # not stored streams with no delay.
            held: bytes | None = None
            for chunk in _chain(first, iterator):
                if storing:
                    kept += len(chunk)
                    if kept > max_bytes:
                        storing = False  # too large: stream the rest through, keep nothing
                        parts.clear()
                    else:
                        parts.append(chunk)
                if held is not None:
                    yield held
                    held = None
                if storing:
                    held = chunk
                else:
                    yield chunk
            if storing:
                for entry in engine.finish(self.exchange, decision, b"".join(parts)):
                    middleware.cache.put(entry)
            if held is not None:
                yield held
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


# Plans under which the app's response never reaches the client.


def _chain(first: bytes | None, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first is not None:
        yield first
    yield from rest


def _with_validators(environ: WSGIEnviron, headers: list[tuple[bytes, bytes]]) -> WSGIEnviron:
    updated = {key: value for key, value in environ.items() if key not in _CONDITIONAL_ENVIRON}
    for name, value in headers:
        if name in (b"if-none-match", b"if-modified-since"):
            updated["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode(
                "latin-1"
            )
    return updated


def _refuse_write(data: bytes) -> object:
    raise RuntimeError("the cache replaced this response; write() is not available")


def _ignore_start(
    status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
) -> Callable[[bytes], object]:
    return _refuse_write

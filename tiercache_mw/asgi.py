"""CacheMiddleware: the tiered response cache as pure ASGI middleware.

A hot hit is answered in `__call__` from RAM without awaiting anything but `send`. Everything
else follows `HttpCache`'s steps: look up (cold and dry tiers run on the cache's own loop),
reuse or forward to the app, tee the streamed body into the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

__all__ = ["CacheMiddleware"]

logger = logging.getLogger("tiercache_mw")


def _raw_path(raw_path: bytes | None, path: str) -> str:
    target = raw_path.decode("latin-1") if raw_path else path
    return target.partition("?")[0]


def _host(host: bytes | None, server: tuple[str, int | None] | None) -> str:
    if host is not None:
        return host.decode("latin-1")
    if server:
        return f"{server[0]}:{server[1]}" if server[1] is not None else str(server[0])
    return ""


def _route_path(scope: Scope) -> str:
    """The path the app's router matches, as WSGI's PATH_INFO: scope["path"] includes the
    root_path (ASGI spec; uvicorn --root-path, Starlette's Mount), route patterns do not.

    starlette._utils.get_route_path does this but is private and changed across the
    starlette versions we allow; these lines follow its current form.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path  # a server that sends the path without its root_path
    rest = path[len(root_path) :]
    if not rest:
        return "/"
    return rest if rest[0] == "/" else path  # /app is not the root of /application


def request_view(scope: Scope) -> RequestView:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    host = None
    for name, value in headers:
        if name == b"host":
            host = value
            break
    return RequestView(
        method=scope["method"],
        scheme=scope.get("scheme", "http"),
        host=_host(host, _server(scope)),
        path=_route_path(scope),
        raw_path=_raw_path(scope.get("raw_path"), scope["path"]),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
    )


def hot_key(scope: Scope) -> str | None:
    """The primary key of a plain GET/HEAD, or None when the request needs the full path."""
    host = None
    for name, value in scope["headers"]:
        # One set probe per field: most fields are neither Host nor one of those.
        if name in _HOST_AND_FULL_PATH_FIELDS:
            if name != b"host":
                return None
            if host is None:  # the first, as `request_view` takes it
                host = value
    # Without a Host field the server's address names the origin; the two cannot collide
    # in the memo, one being bytes and the other a tuple. Likewise a raw_path (bytes) and a
    # path (str), and a missing scheme or query string (None) against one sent.
    request_line = (
        scope["method"],
        scope.get("scheme"),
        host if host is not None else _server(scope),
        scope.get("raw_path") or scope["path"],
        scope.get("query_string"),
    )
    key = _keys.get(request_line)
    if key is None:
        key = _remember_key(request_line)
    return key


_HOST_AND_FULL_PATH_FIELDS = REQUEST_FIELDS_NEEDING_THE_FULL_PATH | {b"host"}


def _server(scope: Scope) -> tuple[str, int | None] | None:
    server = scope.get("server")
    return (server[0], server[1]) if server else None  # some servers send a list


# method, scheme, Host or server address, raw_path or path, query string
_RequestLine = tuple[
    str, "str | None", "bytes | tuple[str, int | None] | None", "bytes | str", "bytes | None"
]
_keys = KeyMemo()


def _remember_key(request_line: _RequestLine) -> str:
    method, scheme, origin, target, query = request_line
    host = _host(origin, None) if isinstance(origin, bytes) else _host(None, origin)
    # `target` is the raw_path when one was sent, else the path, as `_raw_path` chooses.
    path = target.decode("latin-1") if isinstance(target, bytes) else target
    key = primary_key(
        method,
        "http" if scheme is None else scheme,
        host,
        path.partition("?")[0],
        "" if query is None else query.decode("latin-1"),
    )
    return _keys.remember(request_line, key)


def _no_waiters() -> None:
    """`release` for a forward nobody is collapsed onto."""


class CacheMiddleware:
    def __init__(
        self, app: ASGIApp, *, cache: TierCache | None = None, config: ConfigSource = None
    ) -> None:
        self.app = app
        self.cache = build_cache(cache, config)
        self.engine = HttpCache(self.cache)
        self.hot = HotPath(self.engine)
        # key -> (done, the leader's Exchange: followers report the status it received)
        self._inflight: dict[str, tuple[asyncio.Future[None], Exchange]] = {}
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            method = scope["method"]
            hot = self.hot
            if (method == "GET" or method == "HEAD") and hot.enabled:
                key = hot_key(scope)
                found = hot.fresh(key) if key is not None else None
                if found is not None:
                    # The hot hit, sent inline rather than through a Reply: one object and
                    # one call less on the path this middleware exists for.
                    stored, memo = found
                    await send(
                        {
                            "type": "http.response.start",
                            "status": stored.status,
                            "headers": memo[3][:],
                        }
                    )
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"" if method == "HEAD" else stored.body,
                        }
                    )
                    return
            await self._handle(request_view(scope), scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ---- lifespan ----------------------------------------------------------------------
    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the cache with the app and close it after the app has shut down."""

        async def receive_and_start() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.cache.start()
            return message

        async def send_and_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.close()
            await send(message)

        await self.app(scope, receive_and_start, send_and_close)

    async def close(self) -> None:
        """Wait for background refreshes and the removals they or requests started, then
        close the cache (persisting RAM to dry)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.engine.drain()
        await self.cache.close()

    # ---- the full path ---------------------------------------------------------------------
    async def _handle(
        self, request: RequestView, scope: Scope, receive: Receive, send: Send
    ) -> None:
        engine = self.engine
        exchange = engine.plan(request)
        if not exchange.cacheable:
            await self._forward(exchange, scope, receive, send)
            return
        await self._find(exchange)
        action = engine.reuse(exchange, engine.clock())
        if action is Action.FORWARD:
            await self._forward_collapsed(exchange, scope, receive, send)
        elif action is Action.SERVE:
            await _send_reply(send, engine.hit_reply(exchange, engine.clock()))
        elif action is Action.SERVE_AND_REFRESH:
            await _send_reply(send, engine.hit_reply(exchange, engine.clock()))
            self._refresh_in_background(exchange, scope)
        else:
            await _send_reply(send, engine.gateway_timeout(exchange))

    async def _find(self, exchange: Exchange) -> None:
        variant = self.engine.resolve(exchange, await self.cache.lookup(exchange.key))
        if variant is not None:
            self.engine.resolve(exchange, await self.cache.lookup(variant))

    async def _forward_collapsed(
        self, exchange: Exchange, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Concurrent forwards for one key make one call to the app; the others wait for it
        and are answered from what it stored, or go to the app themselves if it stores nothing.

        The waiters are let go as soon as the answer is known: at the response head when it
        will not be stored (as Varnish's hit-for-miss), else once the entry is stored.
        """
        if exchange.request.method != "GET":
            await self._forward(exchange, scope, receive, send)  # a HEAD stores nothing to share
            return
        key = exchange.key
        inflight = self._inflight.get(key)
        if inflight is not None:
            leader, leading = inflight
            if await self._wait_for(leader) and await self._answer_collapsed(
                exchange, leading, send
            ):
                return
            await self._forward(exchange, scope, receive, send)
            return
        if exchange.forwards_a_range:
            # Its answer is a part, never stored: requests waiting on it would wait for nothing.
            await self._forward(exchange, scope, receive, send)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = (done, exchange)

        def release() -> None:
            current = self._inflight.get(key)
            if current is not None and current[0] is done:  # not a later leader's
                del self._inflight[key]
            if not done.done():
                done.set_result(None)

        try:
            await self._forward(exchange, scope, receive, send, release)
        finally:
            release()

    async def _wait_for(self, leader: asyncio.Future[None]) -> bool:
        try:
            # asyncio.timeout, not wait_for: before 3.12 wait_for can drop a cancel.
            async with asyncio.timeout(self.engine.http.collapse_timeout_seconds):
                await asyncio.shield(leader)
        except TimeoutError:
            return False
        return True

    async def _answer_collapsed(self, exchange: Exchange, leader: Exchange, send: Send) -> bool:
        retry = self.engine.plan(exchange.request)
        await self._find(retry)
        if retry.entry is None or retry.entry is exchange.entry:
            return False
        if self.engine.reuse(retry, self.engine.clock()) is not Action.SERVE:
            return False
        retry.fwd = exchange.fwd
        reply = self.engine.collapsed_reply(
            retry, self.engine.clock(), fwd_status=leader.received_status or None
        )
        await _send_reply(send, reply)
        return True

    async def _forward(
        self,
        exchange: Exchange,
        scope: Scope,
        receive: Receive,
        send: Send,
        release: Callable[[], None] = _no_waiters,
    ) -> None:
        """Call the app and tee its response into the store; `release` lets the requests
        collapsed onto this one go once they can be answered (idempotent)."""
        engine = self.engine
        client_scope = scope
        if exchange.forward_headers is not None:
            scope = {**scope, "headers": exchange.forward_headers}
        max_bytes = engine.http.max_entry_bytes
        decision: ResponseDecision | None = None
        response_status = 0
        response_headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []
        kept = 0
        storing = False
        # STORE_THEN_ANSWER: the app's head, not sent while the client may get the cache's
        # answer instead; sent with what was kept when the response cannot be stored after all.
        held_start: Message | None = None
        answered = False  # the cache's answer went out: the app's remaining messages are dropped

        async def send_held_as_pass() -> None:
            nonlocal held_start, storing
            assert held_start is not None
            start, held_start = held_start, None
            storing = False
            release()
            await send(start)
            if parts:
                await send(
                    {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                )
                parts.clear()

        async def send_through_cache(message: Message) -> None:
            nonlocal decision, response_status, response_headers, kept, storing
            nonlocal held_start, answered
            if answered:
                return
            kind = message["type"]
            if kind == "http.response.start":
                response_status = message["status"]
                response_headers = list(message.get("headers", ()))
                # RFC 9111 §4.4: invalidate before the client has the response and can ask
                # again (behind a real server it may do so before the app returns).
                for url in engine.invalidations(exchange, response_status, response_headers):
                    await self.cache.purge(url=url)
                decision = engine.on_response(exchange, response_status, response_headers)
                if decision.plan is ResponsePlan.RETRY:
                    return  # the app is asked again once it has finished this response
                storing = decision.plan.stores
                if not storing:
                    release()  # nothing to wait for: any update of the entry is stored now
                if decision.plan is ResponsePlan.SERVE_STORED:
                    assert decision.reply is not None
                    await _send_reply(send, decision.reply)
                    return
                if decision.plan is ResponsePlan.STORE_THEN_ANSWER:
                    held_start = {**message, "headers": decision.headers}
                    return
                await send({**message, "headers": decision.headers})
            elif kind == "http.response.body":
                if decision is not None and decision.plan.replaces_response:
                    return  # the app's answer was replaced; drain it quietly
                if held_start is not None:
                    assert decision is not None
                    chunk = message.get("body", b"")
                    kept += len(chunk)
                    if kept > max_bytes:
                        engine.mark_not_storable(exchange)
                        await send_held_as_pass()  # too large to store: the app's 200 after all
                        await send(message)
                        return
                    parts.append(chunk)
                    if message.get("more_body", False):
                        return
                    entries = engine.finish(exchange, decision, b"".join(parts))
                    for entry in entries:
                        self.cache.put(entry)
                    release()
                    answered = True
                    reply = engine.answer_from_stored(exchange, decision, stored=bool(entries))
                    await _send_reply(send, reply)
                    return
                if storing:
                    chunk = message.get("body", b"")
                    kept += len(chunk)
                    if kept > max_bytes:
                        engine.mark_not_storable(exchange)
                        storing = False  # too large: stream the rest through, keep nothing
                        parts.clear()
                        release()
                    else:
                        parts.append(chunk)
                if storing and not message.get("more_body", False):
                    assert decision is not None
                    # Stored before the last chunk goes out, so a client's next request finds it
                    # and the waiting requests are answered without waiting for this client.
                    for entry in engine.finish(exchange, decision, b"".join(parts)):
                        self.cache.put(entry)
                    release()
                await send(message)
            else:
                if held_start is not None:
                    await send_held_as_pass()
                storing = False  # trailers or pathsend: not a body we can keep whole
                release()
                if decision is None or not decision.plan.replaces_response:
                    await send(message)

        exchange.request_time = self.engine.clock()
        try:
            await self.app(scope, receive, send_through_cache)
        except Exception:
            if decision is not None:
                raise
            reply = engine.stale_on_exception(exchange)
            if reply is None:
                raise
            logger.warning("app raised; served stale for %s", exchange.url, exc_info=True)
            await _send_reply(send, reply)
            return
        if decision is not None and decision.plan is ResponsePlan.RETRY:
            # A GET or HEAD: its (empty) body was read by the first call, so it is replayed.
            await self._forward(exchange, client_scope, _empty_body_then(receive), send, release)

    # ---- stale-while-revalidate --------------------------------------------------------------
    def _refresh_in_background(self, exchange: Exchange, scope: Scope) -> None:
        """One background refresh per key (RFC 5861 §3); the client already has its answer."""
        if exchange.key in self._refreshing or exchange.key in self._inflight:
            return
        refresh = self.engine.refresh_exchange(exchange)
        self._refreshing.add(exchange.key)
        task = asyncio.get_running_loop().create_task(self._refresh(refresh, scope))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, exchange: Exchange, scope: Scope) -> None:
        finished = asyncio.Event()

        async def receive() -> Message:
            if not finished.is_set():
                finished.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # no client: never disconnects before we finish
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            return None

        refresh_scope = {**scope, "method": "GET"}
        try:
            await self._forward_collapsed(exchange, refresh_scope, receive, discard)
        except Exception:
            logger.warning("background refresh failed for %s", exchange.url, exc_info=True)
        finally:
            self._refreshing.discard(exchange.key)


def _empty_body_then(receive: Receive) -> Receive:
    """`receive` for a second call to the app: the empty request body again, then the
    client's own messages (its disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return replay


async def _send_reply(send: Send, reply: Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": reply.body})

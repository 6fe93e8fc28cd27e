"""Reverse-proxy mode: an ASGI app that forwards every request to one upstream origin.

`proxy_app` only moves bytes (RFC 9110 §7.6 intermediary duties: hop-by-hop fields, Via,
X-Forwarded-*); `build_proxy` puts `CacheMiddleware` in front of it, so every caching decision
is the same one the in-process middleware makes. One pooled `httpx.AsyncClient` is created on
first use (on the serving loop) and closed on lifespan shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from werkzeug.http import http_date

from tiercache_mw.asgi import CacheMiddleware
from tiercache_mw.engine import ConfigSource
from tiercache_mw.http import headers as http_headers
from tiercache_mw.http.headers import Headers

__all__ = ["HOP_BY_HOP", "ReverseProxy", "build_proxy", "proxy_app", "strip_hop_by_hop"]

logger = logging.getLogger("tiercache_mw.proxy")

# The cache's hop-by-hop set plus the proxy credentials (RFC 9110 §11.7.1), which are meant
# for the hop that asked for them and are never forwarded.
HOP_BY_HOP = http_headers.HOP_BY_HOP | {b"proxy-authenticate", b"proxy-authorization"}
# Host: httpx sends the upstream's. Expect: the ASGI server already answered 100-continue.
_NOT_FORWARDED = frozenset({b"host", b"expect"})
VIA_PSEUDONYM = "tiercache"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 100


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop hop-by-hop fields: the fixed set and every field `Connection` names
    (RFC 9110 §7.6.1). Names come back lowercased.
    """
    pairs = [(name.lower(), value) for name, value in headers]
    dropped = http_headers.connection_fields(pairs) | HOP_BY_HOP
    return [(name, value) for name, value in pairs if name not in dropped]


def _append(headers: Headers, name: bytes, value: bytes) -> None:
    """Append to a list-valued field (combining with ", " as RFC 9110 §5.3 allows)."""
    for index, (existing, current) in enumerate(headers):
        if existing == name:
            headers[index] = (name, current + b", " + value)
            return
    headers.append((name, value))


def _set(headers: Headers, name: bytes, value: bytes) -> None:
    headers[:] = [(n, v) for n, v in headers if n != name]
    headers.append((name, value))


def _via(http_version: str) -> bytes:
    """RFC 9110 §7.6.3: received-protocol (name omitted for HTTP) and a pseudonym."""
    version = http_version.removeprefix("HTTP/")
    return f"{version} {VIA_PSEUDONYM}".encode("latin-1")


class _ClientGone(Exception):
    """The client disconnected while its request body was being sent upstream."""


class ReverseProxy:
    """A pure ASGI app forwarding every method to `upstream`, streamed both ways.

    Redirects are passed to the client, never followed; Content-Encoding is passed as the
    origin sent it (the raw bytes go through, nothing is decompressed).
    """

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        url = httpx.URL(upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.upstream = url
        self._origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self._prefix = url.raw_path.decode("ascii").partition("?")[0].rstrip("/")
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                limits=self.limits,
                follow_redirects=False,
                trust_env=False,  # never route origin traffic through HTTP(S)_PROXY
                # A jar that accepts nothing: one user's Set-Cookie must not reach another.
                cookies=httpx.Cookies(CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not proxied; close the handshake
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- one request -----------------------------------------------------------------------
    def target_url(self, scope: Scope) -> str:
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path:
            path = raw_path.decode("latin-1").partition("?")[0]
        else:
            path = quote(scope.get("root_path", "") + scope["path"])
        query: bytes = scope.get("query_string", b"")
        url = self._origin + self._prefix + path
        return f"{url}?{query.decode('latin-1')}" if query else url

    def request_headers(self, scope: Scope) -> Headers:
        """The client's fields minus hop-by-hop ones, Host and Expect, plus Via and
        X-Forwarded-For/-Proto/-Host.
        """
        incoming: Headers = list(scope.get("headers", ()))
        host = b""
        for name, value in incoming:
            if name.lower() == b"host":
                host = value
        headers = [(n, v) for n, v in strip_hop_by_hop(incoming) if n not in _NOT_FORWARDED]
        _append(headers, b"via", _via(scope.get("http_version", "1.1")))
        client = scope.get("client")
        if client:
            _append(headers, b"x-forwarded-for", str(client[0]).encode("latin-1"))
        _set(headers, b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1"))
        if host:
            _set(headers, b"x-forwarded-host", host)
        return headers

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        url = self.target_url(scope)
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        content: bytes | AsyncIterator[bytes]
        if first.get("more_body", False):
            content = self._body(first.get("body", b""), receive)
        else:
            content = first.get("body", b"")
        try:
            request = httpx.Request(
                method, url, headers=self.request_headers(scope), content=content
            )
        except httpx.InvalidURL:
            await _send_error(send, 400, b"Bad Request: the target cannot be forwarded\n")
            return
        try:
            response = await self.client.send(request, stream=True)
        except _ClientGone:
            return
        except httpx.TimeoutException as exc:
            logger.warning("upstream timed out: %s %s (%s)", method, url, type(exc).__name__)
            await _send_error(send, 504, b"Gateway Timeout: the upstream did not answer in time\n")
            return
        except httpx.TransportError as exc:
            logger.warning("upstream unreachable: %s %s (%s)", method, url, exc)
            await _send_error(send, 502, b"Bad Gateway: could not reach the upstream\n")
            return
        try:
            await self._stream_response(response, send)
        finally:
            await response.aclose()

    async def _body(self, first: bytes, receive: Receive) -> AsyncIterator[bytes]:
        if first:
            yield first
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def _stream_response(self, response: httpx.Response, send: Send) -> None:
        headers = strip_hop_by_hop(response.headers.raw)
        _append(headers, b"via", _via(response.http_version))
        if not any(name == b"date" for name, _ in headers):
            # RFC 9110 §6.6.1: a recipient with a clock adds Date to what it forwards or caches.
            headers.append((b"date", http_date().encode("ascii")))
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        try:
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError:
            # Headers are out: the only honest signal left is to abort, so no cache stores a
            # truncated body and the client sees the connection drop.
            logger.warning("upstream failed mid-body: %s", response.request.url, exc_info=True)
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_error(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        (b"date", http_date().encode("ascii")),
        (b"via", _via("1.1")),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def proxy_app(
    upstream: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> ASGIApp:
    """An ASGI app forwarding every request to `upstream` (no caching of its own)."""
    return ReverseProxy(
        upstream, timeout=timeout, connect_timeout=connect_timeout, max_connections=max_connections
    )


def build_proxy(
    upstream: str,
    config: ConfigSource = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> CacheMiddleware:
    """The caching reverse proxy: `CacheMiddleware` in front of `proxy_app(upstream)`."""
    app = proxy_app(
        upstream, timeout=timeout, connect_timeout=connect_timeout, max_connections=max_connections
    )
    return CacheMiddleware(app, config=config)

"""Invalidation by unsafe methods (RFC 9111 §4.4)."""

from __future__ import annotations

from collections.abc import Container
from urllib.parse import urljoin, urlsplit

from tiercache_mw.http.headers import Headers, get_header
from tiercache_mw.http.key import normalise_url

__all__ = ["SAFE_METHODS", "UNSAFE_METHODS", "invalidation_urls"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1


class _UnsafeMethods(Container[str]):
    """Every method not known to be safe, including unknown ones (§4.4)."""

    def __contains__(self, method: object) -> bool:
        return isinstance(method, str) and method.upper() not in SAFE_METHODS

    def __repr__(self) -> str:
        return "UNSAFE_METHODS(not in GET, HEAD, OPTIONS, TRACE)"


UNSAFE_METHODS: Container[str] = _UnsafeMethods()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def invalidation_urls(method: str, status: int, url: str, headers: Headers) -> list[str]:
    """URLs to invalidate after an unsafe request to `url` (normalised, as `key.url_for`
    names it) got `status` with response `headers` (lowercase names).

    RFC 9111 §4.4: only for a non-error status (1xx-3xx); the target URI, plus the URIs in
    Location and Content-Location resolved against it, when they share its origin (to stop a
    response from purging another site's entries).
    """
    if method not in UNSAFE_METHODS or not 100 <= status < 400:
        return []
    urls = [url]
    origin = _origin(url)
    for name in (b"location", b"content-location"):
        value = get_header(headers, name)
        if value is None:
            continue
        try:
            target = normalise_url(urljoin(url, value.decode("latin-1").strip()))
        except ValueError:
            continue  # an unparsable reference (bad port, IPv6 brackets) invalidates nothing
        if _origin(target) == origin and target not in urls:
            urls.append(target)
    return urls

"""Cache keys (RFC 9111 §4.1, §2): the primary key of a request and Vary's secondary key.

Key normalisation (docs/http-semantics.md has the reasons):
- method class: GET and HEAD share one key (a HEAD is answered from a stored GET, §4.3.5);
- scheme and host lowercased, the scheme's default port dropped (RFC 9110 §4.2.3);
- path exactly as sent (``/a%2Fb`` and ``/a/b`` may be different resources);
- query: empty members dropped, members sorted by parameter name, keeping the order of
  repeated names (``?b=2&a=1&a=0`` → ``a=1&a=0&b=2``); no percent-decoding.

`primary_key` sits on the hot path: its result is memoised per request line.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from urllib.parse import urlsplit

from tiercache_mw.http.headers import Headers, get_all

__all__ = ["KeyMemo", "normalise_query", "normalise_url", "primary_key", "url_for", "vary_key"]

_DEFAULT_PORTS = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}
_SAFE_METHODS_KEY = frozenset({"GET", "HEAD"})
# Values compared case-insensitively for Vary (tokens and language tags: RFC 9110 §12.5,
# RFC 5646 §2.1.1); Accept-Encoding is also order-free, so its members are sorted.
_CASE_INSENSITIVE = frozenset({"accept-encoding", "accept-language", "accept-charset", "accept"})
_ORDER_FREE = frozenset({"accept-encoding"})


def _param_name(member: str) -> str:
    return member.partition("=")[0]


@functools.lru_cache(maxsize=4096)
def normalise_query(query: str) -> str:
    """Query members sorted by name (stable), empty members dropped."""
    members = [member for member in query.split("&") if member]
    if len(members) > 1:
        members.sort(key=_param_name)
    return "&".join(members)


@functools.lru_cache(maxsize=1024)
def _authority(scheme: str, host: str) -> tuple[str, str]:
    scheme = scheme.lower()
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(default):
        host = host[: -len(default)]
    return scheme, host


def url_for(scheme: str, host: str, raw_path: str, query: str) -> str:
    """The request's URL as the cache names it: the `url` tag that purge(url=...) matches."""
    scheme, host = _authority(scheme, host)
    path = raw_path or "/"
    if query:
        query = normalise_query(query)
        if query:
            return f"{scheme}://{host}{path}?{query}"
    return f"{scheme}://{host}{path}"


@functools.lru_cache(maxsize=16384)
def primary_key(method: str, scheme: str, host: str, raw_path: str, query: str) -> str:
    """The primary cache key (RFC 9111 §2): method class + normalised URL.

    Memoised because it is on every hot hit: a repeated request line costs one dict probe.
    """
    url = url_for(scheme, host, raw_path, query)
    return url if method in _SAFE_METHODS_KEY else f"{method} {url}"


def normalise_url(url: str) -> str:
    """Any absolute URL normalised like `url_for` (fragment dropped); used to match Location,
    Content-Location and purge(url=...) against stored entries."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url  # not absolute: nothing to normalise it against
    return url_for(parts.scheme, parts.netloc, parts.path, parts.query)


def _vary_value(name: str, values: list[bytes]) -> str:
    """One request field's value for Vary (RFC 9111 §4.1): lines joined, list members with
    whitespace folded, lowercased where the field is case-insensitive."""
    text = ",".join(value.decode("latin-1") for value in values)
    members = [" ".join(member.split()) for member in text.split(",")]
    members = [member.replace(" ;", ";").replace("; ", ";") for member in members if member]
    if name in _CASE_INSENSITIVE:
        members = [member.lower() for member in members]
    if name in _ORDER_FREE:
        members.sort()
    return ",".join(members)


def vary_key(primary: str, names: tuple[str, ...] | list[str], headers: Headers) -> str | None:
    """The secondary key of a request for a response that varies on `names` (lowercase);
    None for Vary: * (never matches, §4.1). An absent field differs from an empty one."""
    parts = [primary, "\nvary"]
    for name in names:
        if name == "*":
            return None
        values = get_all(headers, name.encode("latin-1"))
        if values:
            parts.append(f"\n{name}: {_vary_value(name, values)}")
        else:
            parts.append(f"\n{name}")
    return "".join(parts)


class KeyMemo(dict[Hashable, str]):
    """Primary keys by the request values they are made of, so that a repeated request skips
    every decode and join. A plain dict for the hit path's `get`; emptied when full, which
    is cheaper per hit than an LRU's bookkeeping, and a key is cheap to build again."""

    def __init__(self, limit: int = 16384) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, request_line: Hashable, key: str) -> str:
        if len(self) >= self.limit:
            self.clear()
        self[request_line] = key
        return key

"""The Cache-Status response field (RFC 9211) in Structured Field syntax (RFC 8941)."""

from __future__ import annotations

import functools
import math
import re

__all__ = ["FWD_REASONS", "cache_status", "sf_item"]

# RFC 9211 §2.2: the registered reasons a request went forward.
FWD_REASONS = frozenset(
    {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}
)
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*\Z")  # RFC 8941 §3.3.4


@functools.lru_cache(maxsize=256)
def sf_item(value: str) -> str:
    """A bare item: a token when RFC 8941 §3.3.4 allows one, else an sf-string (§3.3.3);
    characters outside printable ASCII, which an sf-string cannot hold, are percent-escaped."""
    if _TOKEN.match(value):
        return value
    return _sf_string(value)


def _sf_string(value: str) -> str:
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return '"' + "".join(out) + '"'


def cache_status(
    name: str,
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
    key: str | None = None,
) -> bytes:
    """One Cache-Status member (RFC 9211 §2): `name; hit; ttl=117; detail=hot`,
    `name; fwd=uri-miss; stored`, `name; fwd=stale; fwd-status=304`, ...

    ttl is an sf-integer (§2.4, negative once stale: rounded down), key an sf-string (§2.7),
    detail a token when it is one, else an sf-string (§2.8).
    """
    parts = [sf_item(name)]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd if fwd in FWD_REASONS else sf_item(fwd)}")
    if fwd_status is not None:
        parts.append(f"fwd-status={int(fwd_status)}")
    if ttl is not None:
        # Rounded down, not toward zero: 0.4 s past freshness is already stale, ttl=-1 (§2.4).
        parts.append(f"ttl={math.floor(ttl)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail:
        parts.append(f"detail={sf_item(detail)}")
    if key is not None:
        parts.append(f"key={_sf_string(key)}")
    return "; ".join(parts).encode("ascii")

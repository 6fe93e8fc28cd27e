"""What the tiers hold: `Entry` (one cached value with its tags and residency) and
`StoredResponse` (an HTTP response as the middleware keeps it).

RAM tiers keep these objects as they are, so a hot hit never deserializes; the shared and
durable tiers keep the bytes from `tiercache_mw.store.codec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "NO_EXTRA",
    "Entry",
    "HitMemo",
    "Residency",
    "StoredResponse",
    "Tags",
    "header_bytes",
    "intern_headers",
]

# Tags are (name, value) pairs; a name may repeat (several surrogate keys), so not a dict.
Tags = tuple[tuple[str, str], ...]

# What one RAM entry costs beyond its payload bytes: the Entry, StoredResponse and header
# list objects, the key string, the url tag, the body's object header and the tier's index
# slot and queue node. Measured with tracemalloc on CPython 3.11 (tests/bench memory: 822 B
# traced for a 64-byte body, three shared headers and a 27-character URL key); budgets count
# it so that `max_size_gb` holds for real memory, not just payload.
ENTRY_OVERHEAD_BYTES = 730
# Each stored header costs a 2-tuple and two bytes objects beyond its characters, or only
# a list slot when its (name, value) pair is shared (see `intern_headers`).
HEADER_OVERHEAD_BYTES = 130
SHARED_HEADER_BYTES = 8


# (age, ttl, owner, fields as bytes, fields as str) of the last hot hit on a response.
HitMemo = tuple[int, int, object, tuple[tuple[bytes, bytes], ...], tuple[tuple[str, str], ...]]


# Shared by every response without extras: a dict per entry cost 64 B. Read-only, so no
# entry can change another's; code that needs its own copies it (dict(stored.extra)).
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})

# Header fields repeat across responses (content-type: application/json, cache-control:
# public, max-age=60): one shared (name, value) tuple each instead of a tuple and two bytes
# objects per entry. Bounded: once full, new pairs are kept as they are, never evicted.
HEADER_INTERN_MAX = 4096
HEADER_INTERN_VALUE_MAX = 128  # longer values (cookies, CSP) rarely repeat
_header_pairs: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}


def intern_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with repeated (name, value) pairs replaced by one shared tuple each."""
    table = _header_pairs
    shared = list(headers)  # sized exactly, unlike a list grown by append
    for index, pair in enumerate(shared):
        found = table.get(pair)
        if found is None:
            if len(pair[1]) > HEADER_INTERN_VALUE_MAX or len(table) >= HEADER_INTERN_MAX:
                continue
            # setdefault is atomic under the GIL: two threads keep the same tuple.
            found = table.setdefault(pair, pair)
        shared[index] = found
    return shared


def header_bytes(pair: tuple[bytes, bytes]) -> int:
    """What one stored header costs an entry: a list slot when the pair is shared through
    `intern_headers`, else its characters plus a tuple and two bytes objects."""
    if _header_pairs.get(pair) is pair:
        return SHARED_HEADER_BYTES
    return len(pair[0]) + len(pair[1]) + HEADER_OVERHEAD_BYTES


@dataclass(slots=True, frozen=True)
class Residency:
    """How long, in seconds since last use, an entry stays in each tier; None = no limit."""

    hot: float | None
    cold: float | None
    dry: float | None

    def for_tier(self, tier: str) -> float | None:
        return {"hot": self.hot, "cold": self.cold, "dry": self.dry}[tier]


@dataclass(slots=True, eq=False)
class StoredResponse:
    """An HTTP response as the cache serves it again.

    `headers` are the app's headers with lowercased names, minus the ones the cache owns
    (Age, Cache-Status, hop-by-hop, surrogate keys), ready to send with only Age and
    Cache-Status appended. The timing fields are wall-clock seconds (time.time()).
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    request_time: float
    response_time: float
    # Derived once by tiercache_mw.http when the response is stored, so a hit only compares.
    freshness_lifetime: float = 0.0
    initial_age: float = 0.0  # corrected_initial_age of RFC 9111 §4.2.3 at response_time
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    requires_validation: bool = False  # no-cache (unqualified) on the response
    must_revalidate: bool = False  # must-revalidate / proxy-revalidate / s-maxage
    etag: bytes | None = None
    last_modified: bytes | None = None
    vary: tuple[str, ...] = ()  # lowercased field names from Vary, "*" included
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)  # shared, not copied
    # tiercache_mw.hot's memos, process-local and never encoded: the Age and Cache-Status
    # fields of the last hot hit, and the headers as WSGI's str pairs. Not init fields,
    # so dataclasses.replace (a freshened copy) starts without them.
    hit_memo: HitMemo | None = field(default=None, init=False, repr=False)
    native_headers: list[tuple[str, str]] | None = field(default=None, init=False, repr=False)

    @property
    def payload_bytes(self) -> int:
        return len(self.body) + sum(map(header_bytes, self.headers))


@dataclass(slots=True, eq=False)
class Entry:
    """One cached value. `value` is bytes, a msgpack-able object, None, or a StoredResponse."""

    key: str
    value: Any
    tags: Tags
    residency: Residency
    size: int  # bytes it is accounted for in a RAM budget (payload + ENTRY_OVERHEAD_BYTES)
    created_at: float  # time.time() when first stored
    last_used: float  # time.monotonic() in RAM tiers; time.time() once encoded
    visited: bool = False  # SIEVE's bit: set on hit, cleared when the hand passes
    # Hits since the last tracking flush, counted here so a hit writes no shared dict; the
    # TierCache notes the entry on its first hit and the flush harvests and resets it.
    hits: int = 0

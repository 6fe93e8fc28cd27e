"""What the tiers hold: `Entry` (one cached value with its tags and residency) and
`StoredResponse` (an HTTP response as the middleware keeps it).

RAM tiers keep these objects as they are, so a hot hit never deserializes; the shared and
durable tiers keep the bytes from `tiercache_mw.store.codec`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "ENTRY_OVERHEAD_BYTES",
    "NO_EXTRA",
    "RESPONSE_OVERHEAD_BYTES",
    "URL_TAG",
    "Entry",
    "HitMemo",
    "Residency",
    "StoredHeaders",
    "StoredResponse",
    "Tags",
    "header_bytes",
    "intern_headers",
    "key_url",
]

T = TypeVar("T")

# Tags are (name, value) pairs; a name may repeat (several surrogate keys), so not a dict.
Tags = tuple[tuple[str, str], ...]
URL_TAG = "url"  # the tag tiercache_mw.engine puts on every HTTP entry
StoredHeaders = tuple[tuple[bytes, bytes], ...]

# What one RAM entry costs beyond its payload bytes: the Entry (which carries the SIEVE links),
# the key string, the value's object header, last use as a float and the tier's index slot;
# a StoredResponse value adds its own object, its header tuple and its response_time float.
# Measured with tracemalloc on CPython 3.11 (tests/bench memory, 200,000 entries with a
# 27-character URL key: 342 B traced for a 64-byte bytes value, 542 B for a response with a
# 64-byte body and three shared headers; at 1,000,000 the index costs ~8 B less per entry);
# budgets count them so that `max_size_gb` holds for real memory, not just payload.
ENTRY_OVERHEAD_BYTES = 278
RESPONSE_OVERHEAD_BYTES = 176
# Each stored header costs a 2-tuple and two bytes objects beyond its characters, or only
# a tuple slot when its (name, value) pair is shared (see `intern_headers`).
HEADER_OVERHEAD_BYTES = 130
SHARED_HEADER_BYTES = 8


# (valid from, valid until, owner, headers as bytes, headers as str or None) of the last hot
# hit on a response: its headers plus Age and Cache-Status, right for any clock reading
# within the window (tiercache_mw.hot).
HitMemo = tuple[float, float, object, list[tuple[bytes, bytes]], list[tuple[str, str]] | None]


# Shared by every response without extras: a dict per entry cost 64 B. Read-only, so no
# entry can change another's; code that needs its own copies it (dict(stored.extra)).
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})

# Header fields repeat across responses (content-type: application/json, cache-control:
# public, max-age=60): one shared (name, value) tuple each instead of a tuple and two bytes
# objects per entry. Bounded: once full, new pairs are kept as they are, never evicted.
HEADER_INTERN_MAX = 4096
HEADER_INTERN_VALUE_MAX = 128  # longer values (cookies, CSP) rarely repeat
_header_pairs: dict[tuple[bytes, bytes], tuple[bytes, bytes]] = {}


def intern_headers(headers: Iterable[tuple[bytes, bytes]]) -> StoredHeaders:
    """`headers` with repeated (name, value) pairs replaced by one shared tuple each."""
    table = _header_pairs
    shared = list(headers)
    for index, pair in enumerate(shared):
        found = table.get(pair)
        if found is None:
            if len(pair[1]) > HEADER_INTERN_VALUE_MAX or len(table) >= HEADER_INTERN_MAX:
                continue
            # setdefault is atomic under the GIL: two threads keep the same tuple.
            found = table.setdefault(pair, pair)
        shared[index] = found
    return tuple(shared)


def header_bytes(pair: tuple[bytes, bytes]) -> int:
    """What one stored header costs an entry: a tuple slot when the pair is shared through
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


@dataclass(slots=True, frozen=True)
class _Policy:
    """What rarely differs between responses: the reuse rules and the extras. Few distinct
    combinations, so one shared object each (see `_shared`) instead of six slots per
    response."""

    stale_while_revalidate: float
    stale_if_error: float
    requires_validation: bool
    must_revalidate: bool
    vary: tuple[str, ...]
    # Not compared or hashed: only policies with NO_EXTRA are shared (a Mapping cannot be
    # hashed), so the shared ones all hold the same object here.
    extra: Mapping[str, Any] = field(compare=False)


# Bounded like the header table: once full, new values are kept as they are, never evicted.
# One table per kind, so that unique heuristic lifetimes cannot crowd the policies out.
SHARED_VALUES_MAX = 4096
_policies: dict[_Policy, _Policy] = {}
_lifetimes: dict[float, float] = {}
_ages: dict[float, float] = {}


def _shared(value: T, table: dict[T, T]) -> T:
    """One object for equal immutable values across responses."""
    found = table.get(value)
    if found is not None:
        return found
    if len(table) >= SHARED_VALUES_MAX:
        return value
    return table.setdefault(value, value)


class StoredResponse:
    """An HTTP response as the cache serves it again.

    `headers` are the app's headers with lowercased names, minus the ones the cache owns
    (Age, Cache-Status, hop-by-hop, surrogate keys), ready to send with only Age and
    Cache-Status appended; a tuple, so a hit that sends them copies them into a list. The
    timing fields are wall-clock seconds (time.time()).

    Held a million times over in RAM, so what rarely differs between responses (the stale
    allowances, no-cache, must-revalidate, Vary, the extras) is one shared `_Policy`, read
    through properties; `request_time` only serves to derive `initial_age`, so it is not
    kept. `status` stays a slot: every hot hit reads it, and a property costs ~50 ns there.
    A plain slotted class rather than a dataclass: `dataclasses.replace` could not hand the
    shared rules over, `replace` does.
    """

    __slots__ = ("_policy", "body", "etag", "freshness_lifetime", "headers", "hit_memo",
                 "initial_age", "last_modified", "response_time", "status")  # fmt: skip

    status: int
    headers: StoredHeaders
    body: bytes
    response_time: float
    # Derived once by tiercache_mw.http when the response is stored, so a hit only compares.
    freshness_lifetime: float
    initial_age: float  # corrected_initial_age of RFC 9111 §4.2.3 at response_time
    etag: bytes | None
    last_modified: bytes | None
    _policy: _Policy
    # tiercache_mw.hot's memo, process-local and never encoded; a copy starts without it.
    hit_memo: HitMemo | None

    def __init__(
        self,
        status: int,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        *,
        response_time: float,
        freshness_lifetime: float = 0.0,
        initial_age: float = 0.0,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        requires_validation: bool = False,  # no-cache (unqualified) on the response
        must_revalidate: bool = False,  # must-revalidate / proxy-revalidate / s-maxage
        etag: bytes | None = None,
        last_modified: bytes | None = None,
        vary: tuple[str, ...] = (),  # lowercased field names from Vary, "*" included
        extra: Mapping[str, Any] = NO_EXTRA,  # shared, not copied
    ) -> None:
        self.status = status
        # A tuple is 24 B smaller than a list of the same headers.
        self.headers = headers if type(headers) is tuple else tuple(headers)
        self.body = body
        self.response_time = response_time
        self.freshness_lifetime = _shared(freshness_lifetime, _lifetimes)  # max-age repeats
        # Kept to the millisecond, rounded up, so that ages share objects (a float is 24 B):
        # Age goes out in whole seconds, and rounding up never serves a response longer.
        if math.isfinite(initial_age):
            initial_age = _shared(math.ceil(initial_age * 1000) / 1000, _ages)
        self.initial_age = initial_age
        self.etag = etag
        self.last_modified = last_modified
        policy = _Policy(
            stale_while_revalidate,
            stale_if_error,
            requires_validation,
            must_revalidate,
            vary,
            extra,
        )
        self._policy = _shared(policy, _policies) if extra is NO_EXTRA else policy
        self.hit_memo = None

    def replace(self, **changes: Any) -> StoredResponse:
        """A copy with `changes` (constructor arguments) applied, without the hit memo."""
        policy = self._policy
        fields: dict[str, Any] = {
            "status": self.status,
            "headers": self.headers,
            "body": self.body,
            "response_time": self.response_time,
            "freshness_lifetime": self.freshness_lifetime,
            "initial_age": self.initial_age,
            "stale_while_revalidate": policy.stale_while_revalidate,
            "stale_if_error": policy.stale_if_error,
            "requires_validation": policy.requires_validation,
            "must_revalidate": policy.must_revalidate,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "vary": policy.vary,
            "extra": policy.extra,
        }
        unknown = changes.keys() - fields.keys()
        if unknown:
            raise TypeError(f"StoredResponse has no field {sorted(unknown)[0]!r}")
        return StoredResponse(**(fields | changes))

    @property
    def stale_while_revalidate(self) -> float:
        return self._policy.stale_while_revalidate

    @property
    def stale_if_error(self) -> float:
        return self._policy.stale_if_error

    @property
    def requires_validation(self) -> bool:
        return self._policy.requires_validation

    @property
    def must_revalidate(self) -> bool:
        return self._policy.must_revalidate

    @property
    def vary(self) -> tuple[str, ...]:
        return self._policy.vary

    @property
    def extra(self) -> Mapping[str, Any]:
        return self._policy.extra

    @property
    def payload_bytes(self) -> int:
        return len(self.body) + sum(map(header_bytes, self.headers))

    def __repr__(self) -> str:
        return (
            f"StoredResponse(status={self.status!r}, headers={self.headers!r}, "
            f"body=<{len(self.body)} bytes>, response_time={self.response_time!r}, "
            f"freshness_lifetime={self.freshness_lifetime!r}, initial_age={self.initial_age!r})"
        )


class _KeyUrlTags(tuple):  # type: ignore[type-arg]
    """Tags stored without their last pair, ("url", the key's URL): `Entry.tags` adds it back.

    A GET's primary key is its normalised URL and a Vary variant's key starts with it, so
    the url tag the engine puts on every HTTP entry repeats what the key says (104 B)."""

    __slots__ = ()


_ONLY_KEY_URL = _KeyUrlTags()  # the common case, shared: a plain GET with no other tags


def key_url(key: str) -> str:
    """The URL a cache key names: the key itself, or a Vary variant's primary part."""
    return key.partition("\n")[0]


def _compact_tags(key: str, tags: Tags) -> Tags:
    if not tags:
        return ()
    name, value = tags[-1]
    if name != URL_TAG or value != key_url(key):
        return tags
    return _KeyUrlTags(tags[:-1]) if len(tags) > 1 else _ONLY_KEY_URL


def _derived_size(value: Any) -> int | None:
    """What an entry holding `value` is accounted for, when the value alone says it."""
    if isinstance(value, StoredResponse):
        return value.payload_bytes + RESPONSE_OVERHEAD_BYTES + ENTRY_OVERHEAD_BYTES
    if isinstance(value, bytes):
        return len(value) + ENTRY_OVERHEAD_BYTES
    return None


class Entry:
    """One cached value. `value` is bytes, a msgpack-able object, None, or a StoredResponse.

    A plain slotted class, not a dataclass: it holds a million times over, so what can be
    derived (the url tag, the size of bytes and responses) is not stored, and the RAM tier's
    SIEVE queue links live here instead of in a node object of their own. An entry whose size
    cannot be derived from its value is built as a `_SizedEntry`, which alone pays for a
    slot holding it.
    """

    __slots__ = ("_tags", "hits", "key", "last_used", "newer", "older", "residency", "value",
                 "visited")  # fmt: skip

    def __new__(
        cls,
        key: str,
        value: Any,
        tags: Tags,
        residency: Residency,
        size: int | None = None,
        created_at: float | None = None,
        last_used: float = 0.0,
    ) -> Entry:
        if size is None or size == _derived_size(value):
            return object.__new__(cls)
        sized = object.__new__(_SizedEntry)
        sized._size = size
        return sized

    def __init__(
        self,
        key: str,
        value: Any,
        tags: Tags,
        residency: Residency,
        size: int | None = None,
        created_at: float | None = None,
        last_used: float = 0.0,
    ) -> None:
        """`size` is what a RAM budget counts (payload and overheads, see
        ENTRY_OVERHEAD_BYTES); None derives it from bytes and StoredResponse values.
        `created_at` is accepted from callers of the old signature and not kept: nothing
        read it, and a float per entry costs 32 B."""
        del created_at
        if size is None and not isinstance(value, StoredResponse | bytes):
            raise ValueError(f"entry {key!r}: a {type(value).__name__} value needs a size")
        self.key = key
        self.value = value
        self._tags = _compact_tags(key, tags)
        self.residency = residency
        self.last_used = last_used  # time.monotonic() in RAM tiers; time.time() once encoded
        self.visited = False  # SIEVE's bit: set on hit, cleared when the hand passes
        # Hits since the last tracking flush, counted here so a hit writes no shared dict;
        # the TierCache notes the entry on its first hit and the flush harvests and resets it.
        self.hits = 0
        # SIEVE links, owned by the one RamTier holding the entry.
        self.newer: Entry | None = None
        self.older: Entry | None = None

    @property
    def tags(self) -> Tags:
        tags = self._tags
        if type(tags) is _KeyUrlTags:
            return (*tags, (URL_TAG, key_url(self.key)))
        return tags

    @property
    def size(self) -> int:
        """Bytes the entry is accounted for in a RAM budget; stable for the entry's life
        (a stored response is not changed once it is in an entry)."""
        derived = _derived_size(self.value)
        assert derived is not None  # else __new__ made a _SizedEntry
        return derived

    def __repr__(self) -> str:
        return f"Entry(key={self.key!r}, value={self.value!r}, tags={self.tags!r})"


class _SizedEntry(Entry):
    """An entry with its size given: a msgpack value, or a size other than the derived one."""

    __slots__ = ("_size",)
    _size: int

    @property
    def size(self) -> int:
        return self._size

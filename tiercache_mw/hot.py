"""The hot hit: a fresh response in hot RAM, answered with no I/O, no parsing and no await.

Both adapters try it before anything else, with a key they build straight from the scope or
environ. It answers only plain requests (no Cache-Control, Pragma or conditional fields of
their own, see `REQUEST_FIELDS_NEEDING_THE_FULL_PATH`) for entries that need no validation;
everything else returns None and takes the engine's full path, which gives these requests the
same answer (tests/test_hot.py holds the two paths to that).
"""

from __future__ import annotations

from tiercache_mw.engine import HttpCache, Reply
from tiercache_mw.http.cache_status import cache_status
from tiercache_mw.store.entry import HitMemo, StoredResponse

__all__ = ["REQUEST_FIELDS_NEEDING_THE_FULL_PATH", "HotPath", "NativeReply"]

# Request fields whose directives or conditions the full path has to read (RFC 9111 §5.2.1,
# §5.4; RFC 9110 §13); lowercase, as in an ASGI scope.
REQUEST_FIELDS_NEEDING_THE_FULL_PATH = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
    }
)

# A hot answer in WSGI's terms: status code, str headers, body.
NativeReply = tuple[int, list[tuple[str, str]], bytes]

_AGE = b"age"
_CACHE_STATUS = b"cache-status"
_EMPTY = b""


class HotPath:
    """Serves fresh hot entries for one middleware (its cache name, its clock)."""

    __slots__ = ("_engine", "_get_hot", "enabled")

    def __init__(self, engine: HttpCache) -> None:
        self._engine = engine
        self._get_hot = engine.cache.get_hot
        # Cache-Status key= needs the full path's Exchange; debugging is not the hot path.
        self.enabled = not engine.http.debug_key

    def reply(self, key: str, head: bool) -> Reply | None:
        """The answer for a plain GET (or HEAD) of `key`, or None for the full path."""
        found = self._fresh(key)
        if found is None:
            return None
        stored, memo = found
        # A new list per reply: middleware further out may edit the headers in place.
        headers = stored.headers + list(memo[3])
        return Reply(stored.status, headers, _EMPTY if head else stored.body)

    def reply_native(self, key: str, head: bool) -> NativeReply | None:
        """`reply` with WSGI's str headers (decoded once per entry, not per hit)."""
        found = self._fresh(key)
        if found is None:
            return None
        stored, memo = found
        native = stored.native_headers
        if native is None:
            native = stored.native_headers = [
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in stored.headers
            ]
        return stored.status, native + list(memo[4]), _EMPTY if head else stored.body

    def _fresh(self, key: str) -> tuple[StoredResponse, HitMemo] | None:
        entry = self._get_hot(key)
        if entry is None:
            return None
        stored = entry.value
        # A Vary marker or a key/value entry under this key: the full path knows what to do.
        if type(stored) is not StoredResponse or stored.requires_validation:
            return None
        # http.freshness.current_age, inlined: one call less on every hit.
        age = stored.initial_age + (self._engine.clock() - stored.response_time)
        ttl = stored.freshness_lifetime - age
        if ttl <= 0:
            return None
        whole_age, whole_ttl = int(age), int(ttl)
        memo = stored.hit_memo
        if memo is None or memo[0] != whole_age or memo[1] != whole_ttl or memo[2] is not self:
            age_value = str(whole_age).encode()
            status_value = cache_status(self._engine.name, hit=True, ttl=whole_ttl, detail="hot")
            # Many hits land in the same second: they share these fields. Tuples are
            # immutable, so sharing them between responses is safe.
            memo = stored.hit_memo = (
                whole_age,
                whole_ttl,
                self,
                ((_AGE, age_value), (_CACHE_STATUS, status_value)),
                (("age", age_value.decode()), ("cache-status", status_value.decode("latin-1"))),
            )
        return stored, memo

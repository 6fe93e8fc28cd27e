"""The hot hit: a fresh response in hot RAM, answered with no I/O, no parsing and no await.

Both adapters try it before anything else, with a key they build straight from the scope or
environ. It answers only plain requests (no Cache-Control, Pragma or conditional fields of
their own, see `REQUEST_FIELDS_NEEDING_THE_FULL_PATH`) for entries that need no validation;
everything else returns None and takes the engine's full path, which gives these requests the
same answer (tests/test_hot.py holds the two paths to that).
"""

from __future__ import annotations

from tiercache_mw.engine import HttpCache
from tiercache_mw.http.cache_status import cache_status
from tiercache_mw.store.entry import HitMemo, StoredResponse
from tiercache_mw.store.ram import RamTier

__all__ = ["REQUEST_FIELDS_NEEDING_THE_FULL_PATH", "HotPath"]

# Request fields whose directives, conditions or ranges the full path has to read (RFC 9111
# §5.2.1, §5.4; RFC 9110 §13, §14); lowercase, as in an ASGI scope.
REQUEST_FIELDS_NEEDING_THE_FULL_PATH = frozenset(
    {
        b"cache-control",
        b"pragma",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
    }
)

_AGE = b"age"
_CACHE_STATUS = b"cache-status"


class HotPath:
    """Serves fresh hot entries for one middleware (its cache name, its clock)."""

    __slots__ = ("_engine", "_get_hot", "_native", "enabled")

    def __init__(self, engine: HttpCache, *, native: bool = False) -> None:
        self._engine = engine
        hot = engine.cache.hot
        # Hot RAM read directly when the tier counts its own hits, as the TierCache has it
        # do (a call less per hit); otherwise through get_hot, which counts them itself.
        if isinstance(hot, RamTier) and hot.count_hits:
            self._get_hot = hot.get_now
        else:
            self._get_hot = engine.cache.get_hot
        self._native = native  # WSGI: the memo carries the headers as str pairs too
        # Cache-Status key= needs the full path's Exchange; debugging is not the hot path.
        self.enabled = not engine.http.debug_key

    def fresh(self, key: str) -> tuple[StoredResponse, HitMemo] | None:
        """The stored response under `key` and the headers to answer with for now, if it may
        be served without validation; None sends the request down the full path.

        The headers are `memo[3]` (bytes pairs) or, for a `native` path, `memo[4]` (str
        pairs): the stored ones plus Age and Cache-Status. Send a copy (`memo[3][:]`):
        middleware further out may edit a response's headers in place.
        """
        entry = self._get_hot(key)
        if entry is None:
            return None
        stored = entry.value
        try:
            memo = stored.hit_memo
        except AttributeError:  # a Vary marker or a key/value entry: not a response
            return None
        now = self._engine.clock()
        # Within the memo's window neither whole Age nor whole ttl has moved, and the window
        # ends no later than the response's freshness: one comparison stands for both checks.
        # Only `_remember` makes a memo this path owns, and only for a StoredResponse: an
        # owned memo needs no type check (a zero-cost `try` instead of one on every hit).
        if memo is not None and memo[0] <= now < memo[1] and memo[2] is self:
            return stored, memo
        return self._remember(stored, now)

    def _remember(self, stored: object, now: float) -> tuple[StoredResponse, HitMemo] | None:
        """`fresh` the long way: freshness checked and the hit fields built, about once a
        second per entry."""
        # Not a response (a key/value entry's value has no hit_memo to get here, but the
        # check costs nothing on this path): the full path knows what to do.
        if type(stored) is not StoredResponse or stored.requires_validation:
            return None
        # http.freshness.current_age, inlined: no call for the clock the engine already read.
        age = stored.initial_age + (now - stored.response_time)
        ttl = stored.freshness_lifetime - age
        if ttl <= 0:
            return None
        whole_age, whole_ttl = int(age), int(ttl)
        # The span of `now` around this one over which int(age) and int(ttl) keep their
        # values; it ends when ttl reaches whole_ttl, which is at or before ttl reaches 0.
        valid_from = now - min(age - whole_age, whole_ttl + 1 - ttl)
        valid_until = now + min(whole_age + 1 - age, ttl - whole_ttl)
        age_value = str(max(0, whole_age)).encode()
        status_value = cache_status(self._engine.name, hit=True, ttl=whole_ttl, detail="hot")
        headers = [*stored.headers, (_AGE, age_value), (_CACHE_STATUS, status_value)]
        native = None
        if self._native:
            previous = stored.hit_memo
            # The stored headers are a tuple, never changed: decoded once per entry, and
            # each new window only renews Age and Cache-Status.
            if previous is not None and previous[2] is self and previous[4] is not None:
                native = previous[4][:-2]
            else:
                native = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in stored.headers]
            native.append(("age", age_value.decode()))
            native.append(("cache-status", status_value.decode("latin-1")))
        # Hits within the window share these lists; each reply sends a copy.
        memo = stored.hit_memo = (valid_from, valid_until, self, headers, native)
        return stored, memo

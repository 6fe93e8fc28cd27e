"""The in-process RAM tiers (hot, and cold when it is not shared): a dict of entries under a
byte budget, residency since last use, and SIEVE or LRU eviction.

Reads take no lock: a hit is one dict lookup, a residency check and two attribute writes (and
its count, on a tier whose owner asks for one), so it costs the same from the event loop and
from many WSGI threads. Every mutation (insert, eviction, removal, sweep) holds one
`threading.Lock`. Entries that leave (eviction or end of residency) are handed to `on_evict`
after the lock is released, so the next tier's lock is never taken while this one is held.

SIEVE (Zhang et al., NSDI '24) keeps a FIFO queue and a visited bit: a hit only sets the bit;
the eviction hand walks from the oldest entry towards the newest, clearing bits, and evicts
the first unvisited entry. LRU moves the entry to the newest end on every hit instead.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from tiercache_mw.config import TierConfig
from tiercache_mw.store.base import EvictCallback, TierStats
from tiercache_mw.store.entry import Entry

__all__ = ["RamTier"]

EVICTION_POLICIES = ("sieve", "lru")
TIER_NAMES = ("hot", "cold", "dry")  # the fields of a Residency


class RamTier:
    """A RAM tier; `get_now` is the lock-free hit path the TierCache (and, for the hot tier,
    tiercache_mw.hot) uses directly."""

    reports_evictions = True

    def __init__(
        self,
        name: str,
        tier: TierConfig,
        on_evict: EvictCallback | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tier.eviction not in EVICTION_POLICIES:
            raise ValueError(f"eviction must be one of {EVICTION_POLICIES}, got {tier.eviction!r}")
        self.name = name
        self.tier = tier
        self.max_bytes = tier.max_size_bytes
        self.default_ttl = tier.ttl_seconds
        self.on_evict = on_evict
        self.clock = clock
        self.lru = tier.eviction == "lru"
        # An entry's residency here is read from its Residency when needed, not kept on the
        # entry (8 B each); the hit path reads hot's field directly, without a call.
        self._hot = name == "hot"
        self._residency_field = operator.attrgetter(name) if name in TIER_NAMES else None
        # LRU needs move_to_end on a hit; OrderedDict does that in C under the GIL.
        self._index: dict[str, Entry] = OrderedDict() if self.lru else {}
        self._lock = threading.Lock()
        self._size = 0
        # Hit counting, when the owner turns it on (the TierCache does for its hot tier):
        # `get_now` counts there and then, so that a hot hit is one call, not two.
        self.count_hits = False
        self.hits = 0
        self.first_hits: list[Entry] = []  # hit for the first time since `take_first_hits`
        # SIEVE queue, a doubly linked list through the entries' own `newer`/`older` slots
        # (an entry is in one RamTier at a time): newest at the head, the hand walks from
        # the tail towards the head.
        self._head: Entry | None = None
        self._tail: Entry | None = None
        self._hand: Entry | None = None

    # ---- the lock-free read path ---------------------------------------------------------
    def get_now(self, key: str) -> Entry | None:
        """The entry if present and within its residency; marks it used. No lock, no I/O."""
        entry = self._index.get(key)
        if entry is None:
            return None
        now = self.clock()
        ttl = entry.residency.hot if self._hot else self.ttl_for(entry)
        if ttl is not None and now - entry.last_used > ttl:
            return None  # past residency: the sweeper (or the TierCache) moves it down
        entry.last_used = now
        if self.lru:
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager on every hit
                self._index.move_to_end(key)  # type: ignore[attr-defined]
            except KeyError:
                pass  # removed by another thread since the lookup: still a valid read
        else:
            entry.visited = True
        if self.count_hits:
            # The TierCache's count of a hot hit: its number, and per entry for tracking,
            # the entry listed on its first hit since the last flush. Lock-free, so best
            # effort: a thread switch between these lines and a flush may lose counts, and
            # at worst leave the entry unlisted (its hits untracked) until it leaves hot. A
            # lock here would cost every hot hit ~50 ns for a statistic.
            self.hits += 1
            hits = entry.hits
            entry.hits = hits + 1
            if not hits:
                self.first_hits.append(entry)
        return entry

    def take_first_hits(self) -> list[Entry]:
        """The entries first hit since the last call (their counts are on them: Entry.hits)."""
        taken, self.first_hits = self.first_hits, []
        return taken

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size_bytes(self) -> int:
        return self._size

    def ttl_for(self, entry: Entry) -> float | None:
        """The entry's own residency here (the TierCache filled in tier defaults)."""
        field = self._residency_field
        if field is None:
            return self.default_ttl
        ttl: float | None = field(entry.residency)
        return ttl

    # ---- mutations (under the lock) ---------------------------------------------------------
    def put(self, entry: Entry, *, replace: bool = True) -> bool:
        """Insert or replace; entries pushed out go to `on_evict`. An entry larger than the
        whole budget is not kept here: it goes straight to `on_evict`. With replace=False
        (a promotion) an entry already here within its residency is kept, and False is
        returned: a put of a newer copy may have landed while the older one was read below."""
        now = self.clock()
        evicted: list[Entry] = []
        with self._lock:
            old = self._index.get(entry.key)
            if old is not None:
                if not replace and not self._expired(old, now):
                    return False
                self._unlink(old)
            entry.last_used = now
            entry.visited = False
            if self.max_bytes is not None and entry.size > self.max_bytes:
                evicted.append(entry)
            else:
                # Room first, as SIEVE inserts after evicting: the newcomer is never the victim.
                if self.max_bytes is not None:
                    while self._size + entry.size > self.max_bytes and self._index:
                        evicted.append(self._evict_one())
                self._link(entry)
        self._hand_over(evicted)
        return True

    def take(self, key: str) -> Entry | None:
        """Remove and return the entry whatever its residency (for a move or a delete)."""
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                return None
            self._unlink(entry)
            return entry

    def take_expired(self, key: str) -> Entry | None:
        """Remove and return the entry only if it is past its residency."""
        with self._lock:
            entry = self._index.get(key)
            if entry is None or not self._expired(entry, self.clock()):
                return None
            self._unlink(entry)
            return entry

    def sweep(self) -> int:
        """Move every entry past its residency to `on_evict`; returns how many left."""
        now = self.clock()
        expired: list[Entry] = []
        field, ttl = self._residency_field, self.default_ttl
        # Checked on a snapshot, removed under the lock: a sweep never stalls hits. `_expired`
        # inlined: a Python call per entry would make a sweep of a million ~50 % slower.
        candidates = [
            entry
            for entry in list(self._index.values())
            if (ttl := ttl if field is None else field(entry.residency)) is not None
            and now - entry.last_used > ttl
        ]
        if not candidates:
            return 0
        with self._lock:
            for entry in candidates:
                if self._index.get(entry.key) is entry and self._expired(entry, now):
                    self._unlink(entry)
                    expired.append(entry)
        self._hand_over(expired)
        return len(expired)

    def drain(self) -> list[Entry]:
        """Remove and return every entry (for close: persisting RAM to dry)."""
        with self._lock:
            entries = list(self._index.values())
            self._clear()
        return entries

    def entries(self) -> list[Entry]:
        return list(self._index.values())

    def clear(self) -> None:
        with self._lock:
            self._clear()

    # ---- the Tier protocol ---------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        return self.get_now(key)

    async def set(self, entry: Entry) -> None:
        self.put(entry)

    async def delete(self, key: str) -> bool:
        return self.take(key) is not None

    async def flush(self) -> None:
        self.clear()

    async def stats(self) -> TierStats:
        return TierStats(entries=len(self._index), size_bytes=self._size)

    async def close(self) -> None:
        return None

    # ---- internals ----------------------------------------------------------------------------
    def _expired(self, entry: Entry, now: float) -> bool:
        ttl = self.ttl_for(entry)
        return ttl is not None and now - entry.last_used > ttl

    def _hand_over(self, entries: list[Entry]) -> None:
        if self.on_evict is not None:
            for entry in entries:
                self.on_evict(entry)

    def _clear(self) -> None:
        if not self.lru:
            # Links left in place would keep every cleared entry alive through any one of them.
            for entry in self._index.values():
                entry.newer = entry.older = None
        self._index.clear()
        self._size = 0
        self._head = self._tail = self._hand = None

    def _link(self, entry: Entry) -> None:
        self._index[entry.key] = entry
        self._size += entry.size
        if self.lru:
            return
        entry.newer = None
        entry.older = self._head
        if self._head is not None:
            self._head.newer = entry
        self._head = entry
        if self._tail is None:
            self._tail = entry

    def _unlink(self, entry: Entry) -> None:
        del self._index[entry.key]
        self._size -= entry.size
        if self.lru:
            return
        if self._hand is entry:
            self._hand = entry.newer
        if entry.newer is not None:
            entry.newer.older = entry.older
        else:
            self._head = entry.older
        if entry.older is not None:
            entry.older.newer = entry.newer
        else:
            self._tail = entry.newer
        entry.newer = entry.older = None

    def _evict_one(self) -> Entry:
        if self.lru:
            _, entry = self._index.popitem(last=False)  # type: ignore[call-arg]
            self._size -= entry.size
            return entry
        hand = self._hand or self._tail
        assert hand is not None
        while hand.visited:
            hand.visited = False
            hand = hand.newer or self._tail
            assert hand is not None
        self._hand = hand.newer
        self._unlink(hand)
        return hand

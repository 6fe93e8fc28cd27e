"""The in-process RAM tiers (hot, and cold when it is not shared): a dict of entries under a
byte budget, residency since last use, and SIEVE or LRU eviction.

Reads take no lock: a hit is one dict lookup, a residency check and two attribute writes, so
it costs the same from the event loop and from many WSGI threads. Every mutation (insert,
eviction, removal, sweep) holds one `threading.Lock`. Entries that leave (eviction or end of
residency) are handed to `on_evict` after the lock is released, so the next tier's lock is
never taken while this one is held.

SIEVE (Zhang et al., NSDI '24) keeps a FIFO queue and a visited bit: a hit only sets the bit;
the eviction hand walks from the oldest entry towards the newest, clearing bits, and evicts
the first unvisited entry. LRU moves the entry to the newest end on every hit instead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from tiercache_mw.config import TierConfig
from tiercache_mw.store.base import EvictCallback, TierStats
from tiercache_mw.store.entry import Entry

__all__ = ["RamTier"]

EVICTION_POLICIES = ("sieve", "lru")


class _Node:
    """One queue slot; SIEVE's queue is a doubly linked list so the hand can stay in place."""

    __slots__ = ("entry", "newer", "older", "ttl")

    def __init__(self, entry: Entry, ttl: float | None) -> None:
        self.entry = entry
        self.ttl = ttl
        self.newer: _Node | None = None
        self.older: _Node | None = None


class RamTier:
    """A RAM tier; `get_now` is the lock-free hit path the TierCache uses directly."""

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
        # LRU needs move_to_end on a hit; OrderedDict does that in C under the GIL.
        self._index: dict[str, _Node] = OrderedDict() if self.lru else {}
        self._lock = threading.Lock()
        self._size = 0
        # SIEVE queue: newest at the head, the hand walks from the tail towards the head.
        self._head: _Node | None = None
        self._tail: _Node | None = None
        self._hand: _Node | None = None

    # ---- the lock-free read path ---------------------------------------------------------
    def get_now(self, key: str) -> Entry | None:
        """The entry if present and within its residency; marks it used. No lock, no I/O."""
        node = self._index.get(key)
        if node is None:
            return None
        entry = node.entry
        now = self.clock()
        ttl = node.ttl
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
        return entry

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size_bytes(self) -> int:
        return self._size

    def ttl_for(self, entry: Entry) -> float | None:
        """The entry's own residency here (the TierCache filled in tier defaults)."""
        if self.name in ("hot", "cold", "dry"):
            return entry.residency.for_tier(self.name)
        return self.default_ttl

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
                self._link(_Node(entry, self.ttl_for(entry)))
        self._hand_over(evicted)
        return True

    def take(self, key: str) -> Entry | None:
        """Remove and return the entry whatever its residency (for a move or a delete)."""
        with self._lock:
            node = self._index.get(key)
            if node is None:
                return None
            self._unlink(node)
            return node.entry

    def take_expired(self, key: str) -> Entry | None:
        """Remove and return the entry only if it is past its residency."""
        with self._lock:
            node = self._index.get(key)
            if node is None or not self._expired(node, self.clock()):
                return None
            self._unlink(node)
            return node.entry

    def sweep(self) -> int:
        """Move every entry past its residency to `on_evict`; returns how many left."""
        now = self.clock()
        expired: list[Entry] = []
        # Checked on a snapshot, removed under the lock: a sweep never stalls hits.
        candidates = [node for node in list(self._index.values()) if self._expired(node, now)]
        if not candidates:
            return 0
        with self._lock:
            for node in candidates:
                if self._index.get(node.entry.key) is node and self._expired(node, now):
                    self._unlink(node)
                    expired.append(node.entry)
        self._hand_over(expired)
        return len(expired)

    def drain(self) -> list[Entry]:
        """Remove and return every entry (for close: persisting RAM to dry)."""
        with self._lock:
            entries = [node.entry for node in self._index.values()]
            self._clear()
        return entries

    def entries(self) -> list[Entry]:
        return [node.entry for node in list(self._index.values())]

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
    @staticmethod
    def _expired(node: _Node, now: float) -> bool:
        return node.ttl is not None and now - node.entry.last_used > node.ttl

    def _hand_over(self, entries: list[Entry]) -> None:
        if self.on_evict is not None:
            for entry in entries:
                self.on_evict(entry)

    def _clear(self) -> None:
        self._index.clear()
        self._size = 0
        self._head = self._tail = self._hand = None

    def _link(self, node: _Node) -> None:
        self._index[node.entry.key] = node
        self._size += node.entry.size
        if self.lru:
            return
        node.newer = None
        node.older = self._head
        if self._head is not None:
            self._head.newer = node
        self._head = node
        if self._tail is None:
            self._tail = node

    def _unlink(self, node: _Node) -> None:
        del self._index[node.entry.key]
        self._size -= node.entry.size
        if self.lru:
            return
        if self._hand is node:
            self._hand = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._head = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._tail = node.newer
        node.newer = node.older = None

    def _evict_one(self) -> Entry:
        if self.lru:
            _, node = self._index.popitem(last=False)  # type: ignore[call-arg]
            self._size -= node.entry.size
            return node.entry
        hand = self._hand or self._tail
        assert hand is not None
        while hand.entry.visited:
            hand.entry.visited = False
            hand = hand.newer or self._tail
            assert hand is not None
        self._hand = hand.newer
        self._unlink(hand)
        return hand.entry

"""TierCache: the tiered store (hot -> cold -> dry, promotion on hit) and the original
smartcache key/value API.

Threads and loops: RAM tiers are read and written inline from any thread or loop (a hot hit
is a dict lookup). Everything else (disk, shared servers, the tracking index, demotions to
them) runs on one long-lived loop thread per cache (`store.loop.LoopThread`), which owns
every backend client. Async methods called from another loop await it through
`asyncio.wrap_future`; the `*_sync` twins block on it from any other thread.

Flow: `put` stores into hot. An entry leaving hot (eviction, end of residency) goes to cold;
one leaving cold goes to dry; a hit below hot promotes the entry back to hot with its own
residency and tags. RAM -> RAM moves happen inline; moves to a non-RAM tier go through a
bounded queue drained on the loop (the oldest pending move is dropped and counted when it is
full). While an entry waits in that queue it is still found by lookups, and a delete or purge
meanwhile cancels the move, or undoes it if the write was already under way.

Dry hits without the loop: when hot and cold are RAM and dry is a local directory, a lookup
reads the dry file on the caller's thread (`LocalTier.read_cached`, page cache only, from a
coroutine; a plain blocking read from a WSGI thread, which waits either way), as a hop to the
loop thread and on to a worker costs ~300 µs against a ~20 µs read. Such a read is
registered in `_reading` and promotes under `_reads_lock`, the lock a delete marks it under,
so a delete racing it wins as it does against a read on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from tiercache_mw.config import Config
from tiercache_mw.http.key import normalise_url
from tiercache_mw.store.backends import make_tier, make_tracking
from tiercache_mw.store.base import Tier, TierStats
from tiercache_mw.store.entry import (
    ENTRY_OVERHEAD_BYTES,
    URL_TAG,
    Entry,
    Residency,
    StoredResponse,
    Tags,
    intern_headers,
)
from tiercache_mw.store.local import READ_IN_THREAD, LocalTier
from tiercache_mw.store.loop import LoopThread, OnLoopThreadError
from tiercache_mw.store.ram import RamTier

__all__ = ["OnLoopThreadError", "TierCache"]

log = logging.getLogger("tiercache_mw")

T = TypeVar("T")
TagsArg = Mapping[str, str] | Tags | None

TIERS = ("hot", "cold", "dry")
DEMOTION_QUEUE_MAX = 10_000
# The queue also holds at most this share of the RAM budgets in accounted bytes (within
# [4 MiB, 256 MiB]): entries waiting there are outside both budgets.
DEMOTION_QUEUE_BUDGET_SHARE = 0.25
DEMOTION_QUEUE_MIN_BYTES = 4 << 20
DEMOTION_QUEUE_MAX_BYTES = 256 << 20
# Moves to the local dry tier written per worker-thread hop (one pack). Larger packs cost
# less CPU but hand the GIL back and forth with request threads in longer runs: through
# uvicorn at 5,000 demotions/s, batches of 32 or 64 doubled the hits' p99 (1.8-2.2 ms
# against 1.1 ms at 16) for no CPU saved (0.55-0.58 of a core against 0.58).
DRAIN_BATCH = 16
# A drain woken for moves to the local dry tier waits this long for more before it writes,
# unless a batch, a half-full queue or a move for a shared tier waits: a pack costs an
# inode (~0.7 ms of kernel time on the bench VM's ext4) and a batch two thread hops, so one
# pack per wake-up (~5 entries at 5,000 demotions/s) took 0.9 of a core where full batches
# take 0.58. Waiting moves are served from the queue; close() does not wait.
DRAIN_LINGER = 0.02
_DRY_ONLY = ("dry",)
BACKEND_TIMEOUT = 10.0  # a stuck backend call becomes a miss after this long
SKIP_AFTER_TIMEOUT = 1.0  # a stuck server would cost each call (each queued demotion) a timeout
ERROR_LOG_INTERVAL = 30.0  # at most one log line per tier per interval
SWEEP_INTERVAL = 1.0  # how often residency is checked and shared dry tiers are trimmed
HOUR = 3600.0
RESIDENCY_MEMO_MAX = 1024  # distinct per-call ttls that share a Residency


class _Demotion:
    """One entry on its way to `targets` (non-RAM tiers, written in order); `urgent` when
    the drain is not to linger for it (see `TierCache._enqueue`)."""

    __slots__ = ("entry", "targets", "urgent")

    def __init__(self, entry: Entry, targets: tuple[str, ...], urgent: bool) -> None:
        self.entry = entry
        self.targets = targets
        self.urgent = urgent


class _Write:
    """A move being written to its tiers; `deleted` when a delete or purge met it there."""

    __slots__ = ("deleted", "done")

    def __init__(self) -> None:
        self.deleted = False
        self.done = asyncio.Event()


class _Read:
    """Slow lookups of one key in flight; `removed` when the key was deleted meanwhile."""

    __slots__ = ("count", "removed")

    def __init__(self) -> None:
        self.count = 0
        self.removed = False


class _TrackingBuffer:
    """Tracking writes waiting for the next flush: the last write per key, and hit counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key -> (tier, tags, size, time) for a set, None for a delete
        self._ops: dict[str, tuple[str, Tags, int, float] | None] = {}
        # Entries hit since the last flush; their counts live on them (Entry.hits).
        self.hit_entries: list[Entry] = []

    def set(self, entry: Entry, tier: str) -> None:
        with self._lock:
            self._ops[entry.key] = (tier, entry.tags, entry.size, time.time())

    def delete(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._ops[key] = None

    def give_back(self, ops: dict[str, tuple[str, Tags, int, float] | None]) -> None:
        """Ops a cancelled flush had taken, back for the next one; a newer op for the same
        key, buffered meanwhile, wins."""
        with self._lock:
            for key, op in ops.items():
                self._ops.setdefault(key, op)

    def count_hit(self, entry: Entry) -> None:
        """One hit on `entry`: an int bump, and a list append only on its first hit since
        the last flush. Lock-free, so best effort, as RamTier.get_now's count is: a hit
        racing the flush may lose counts, or leave `entry` unlisted until it leaves its tier."""
        hits = entry.hits
        entry.hits = hits + 1
        if not hits:
            self.hit_entries.append(entry)

    def take(
        self, hot_hit_entries: list[Entry]
    ) -> tuple[dict[str, tuple[str, Tags, int, float] | None], dict[str, int]]:
        """The ops, and the hit counts of `hit_entries` and of `hot_hit_entries` (the hot
        RamTier's first hits, which it counts itself)."""
        with self._lock:
            ops, self._ops = self._ops, {}
            entries, self.hit_entries = self.hit_entries, []
        entries += hot_hit_entries
        hits: dict[str, int] = {}
        for entry in entries:
            count, entry.hits = entry.hits, 0
            if count:
                hits[entry.key] = hits.get(entry.key, 0) + count
        return ops, hits


def _tags(tags: TagsArg) -> Tags:
    if not tags:
        return ()
    if isinstance(tags, Mapping):
        return tuple((str(name), str(value)) for name, value in tags.items())
    return tuple((str(name), str(value)) for name, value in tags)


class TierCache:
    def __init__(self, config: Config | None = None) -> None:
        if config is None:
            from tiercache_mw.config import load_config

            config = load_config(None)
        self.config = config
        self._loop = LoopThread("tiercache-loop")
        self._start_lock = threading.Lock()
        self._started: Any = None  # concurrent.futures.Future of the start on the loop
        self.hot: Tier = make_tier("hot", config.hot, config, self._left_hot)
        self.cold: Tier = make_tier("cold", config.cold, config, self._left_cold)
        self.dry: Tier = make_tier("dry", config.dry, config, None)
        if isinstance(self.dry, LocalTier):
            self.dry.on_remove = self._dry_removed
        # Resolved once: the hit path must not pay an isinstance per request.
        self._hot_ram: RamTier | None = self.hot if isinstance(self.hot, RamTier) else None
        if self._hot_ram is not None:
            # Hot hits are counted where they are read (RamTier.get_now): one call per hit.
            self._hot_ram.count_hits = True
        self._cold_ram: RamTier | None = self.cold if isinstance(self.cold, RamTier) else None
        # When hot and cold are this process's RAM, a local dry directory is the only tier
        # below, and the caller's thread reads it without crossing to the loop thread.
        self._dry_below_ram: LocalTier | None = (
            self.dry
            if self._hot_ram is not None
            and self._cold_ram is not None
            and isinstance(self.dry, LocalTier)
            else None
        )
        self.tracking = make_tracking(config)
        from tiercache_mw.rules import TtlRules

        self._ttl_rules = TtlRules.from_config(config)
        self._default_residency = Residency(
            config.hot.ttl_seconds, config.cold.ttl_seconds, config.dry.ttl_seconds
        )
        # id(rule) -> (rule, its Residency); the rule is kept so an id is never reused.
        self._residency_by_rule: dict[int, tuple[Any, Residency]] = {}
        self._residency_by_ttl: dict[float, Residency] = {}
        self._buffer = _TrackingBuffer()
        self._queue: collections.deque[_Demotion] = collections.deque()
        self._queue_lock = threading.Lock()
        self._queued_bytes = 0
        self._queued_urgent = 0  # urgent moves in the queue
        budgets = [t.max_size_bytes for t in (config.hot, config.cold) if t.backend == "ram"]
        share = (
            sum(b for b in budgets if b is not None) * DEMOTION_QUEUE_BUDGET_SHARE
            if budgets and None not in budgets
            else DEMOTION_QUEUE_MAX_BYTES
        )
        self._queue_max_bytes = int(
            min(DEMOTION_QUEUE_MAX_BYTES, max(DEMOTION_QUEUE_MIN_BYTES, share))
        )
        self._pending: dict[str, _Demotion] = {}
        self._writing: dict[str, _Write] = {}  # loop thread only
        # Held to change `_reading` and `_deleting`, to mark a key removed (`_drop_local`),
        # and by a lookup from its check that the key is still there to its promotion: a
        # read off the loop thread must not promote a key a delete has begun to remove.
        self._reads_lock = threading.Lock()
        self._reading: dict[str, _Read] = {}
        self._deleting: collections.Counter[str] = collections.Counter()  # deletes under way
        self._wake_sent = False
        self._hurry_sent = False
        self._drain_event: asyncio.Event | None = None
        # Set when the drain is not to linger: a move for a shared tier (other processes see
        # an entry only once it is there), a full batch or a half-full queue (`_enqueue`).
        self._hurry_event: asyncio.Event | None = None
        self._tracking_lock: asyncio.Lock | None = None
        self._drain_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        # Ends the background loops along with their cancel: _guard awaits backend calls
        # inline, so a client that swallows a cancel must not keep a loop running forever.
        self._closing = False
        self._bus: Any = None
        self._dry_dirty = False
        # Counters: plain ints bumped from many threads; a rare lost increment under
        # contention is the price of keeping locks off the hit path.
        self._hot_hits = self._cold_hits = self._dry_hits = self._misses = 0
        self._demotions = self._promotions = self._dropped = 0
        self._errors: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, float] = {}
        # name -> (when a call to it last timed out, that error): see `_guard`.
        self._timed_out: dict[str, tuple[float, str]] = {}
        self._probing: set[str] = set()  # backends a call is trying again after their window

    @classmethod
    def from_yaml(cls, path: str | Path) -> TierCache:
        from tiercache_mw.config import load_config

        return cls(load_config(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TierCache:
        from tiercache_mw.config import load_config

        return cls(load_config(dict(data)))

    config: Config

    # ---- lifecycle -------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._started is not None:
            return
        with self._start_lock:
            if self._started is None:
                self._loop.start()
                self._started = self._loop.submit(self._start_on_loop())

    async def _after_start(self, coro: Awaitable[T]) -> T:
        try:
            await asyncio.wrap_future(self._started)
        except BaseException:
            if isinstance(coro, Coroutine):
                coro.close()
            raise
        return await coro

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the cache's loop once started, from whatever loop the caller is on."""
        self._ensure_started()
        return await self._loop.run_async(self._after_start(coro))

    async def start(self) -> None:
        """Idempotent; every other method calls it on first use."""
        self._ensure_started()
        await asyncio.wrap_future(self._started)

    async def _start_on_loop(self) -> None:
        self._closing = False
        self._drain_event = asyncio.Event()
        self._hurry_event = asyncio.Event()
        # A wake-up sent to a loop that has since closed (a close() cancelling the drain in
        # its linger, or a put racing close) is lost: none is outstanding for these events.
        self._wake_sent = self._hurry_sent = False
        self._tracking_lock = asyncio.Lock()
        self._drain_lock = asyncio.Lock()
        await self._guard("tracking", self.tracking.start(), None)
        if isinstance(self.dry, LocalTier):
            await self._guard("dry", self.dry.start(), None)
        loop = asyncio.get_running_loop()
        self._drain_task = loop.create_task(self._drain_forever())
        self._tasks = [
            loop.create_task(self._tracking_forever()),
            loop.create_task(self._sweep_forever()),
        ]
        if self.config.redis is not None:
            await self._start_bus()
        if self._queue:
            self._hurry_event.set()
            self._drain_event.set()

    async def _start_bus(self) -> None:
        assert self.config.redis is not None
        try:
            from tiercache_mw.store.broadcast import RedisPurgeBus

            self._bus = RedisPurgeBus(self.config.redis, self.invalidate_local)
        except Exception as exc:  # the redis extra missing: purges stay in this process
            self._count_error("broadcast", exc)
            return
        await self._guard("broadcast", self._bus.start(), None)

    async def close(self) -> None:
        """Drain pending demotions and tracking writes, persist hot and cold RAM to dry."""
        if self._started is None and not self._has_ram_entries():
            return
        if self._loop.on_this_loop():
            raise OnLoopThreadError("close() cannot run on the cache's own loop thread")
        await self._call(self._close_on_loop())
        await asyncio.to_thread(self._stop_loop)

    def _has_ram_entries(self) -> bool:
        return any(tier is not None and len(tier) > 0 for tier in (self._hot_ram, self._cold_ram))

    async def _close_on_loop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._drain_queue()
        # Cold first: where a key is in both, the hot copy is the newer and lands last.
        for ram in (self._cold_ram, self._hot_ram):
            if ram is None:
                continue
            for entry in ram.drain():
                await self._guard("dry", self.dry.set(entry), None)
                self._buffer.set(entry, "dry")
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None
        if isinstance(self.dry, LocalTier):
            await self._guard("dry", self.dry.touch_read(), None)
        await self._flush_tracking()
        if self._bus is not None:
            await self._guard("broadcast", self._bus.close(), None, always=True)
            self._bus = None
        await self._guard("tracking", self.tracking.close(), None, always=True)
        for name in TIERS:
            await self._guard(name, self._tier(name).close(), None, always=True)

    def _stop_loop(self) -> None:
        with self._start_lock:
            self._loop.stop()
            self._started = None

    # ---- the original key/value API ---------------------------------------------------
    async def get(self, key: str, default: Any = None) -> Any:
        found = await self.lookup(key)
        return default if found is None else found[0].value

    async def set(
        self, key: str, value: Any, *, ttl_hours: float | None = None,
        ttl_seconds: float | None = None, tags: TagsArg = None,
    ) -> None:  # fmt: skip
        pairs = _tags(tags)
        ttl = ttl_seconds if ttl_seconds is not None else None
        if ttl is None and ttl_hours is not None:
            ttl = ttl_hours * HOUR
        self.put(self.make_entry(key, value, pairs, self.residency_for(pairs, ttl_seconds=ttl)))

    async def delete(self, key: str) -> bool:
        return await self._call(self._remove_keys([key])) > 0

    async def flush(self, tier: str = "all") -> None:
        if tier != "all" and tier not in TIERS:
            raise ValueError(f"tier must be one of {(*TIERS, 'all')}, got {tier!r}")
        await self._call(self._flush(TIERS if tier == "all" else (tier,)))

    async def stats(self) -> dict[str, Any]:
        return await self._call(self._stats())

    async def purge(
        self, *, tags: TagsArg = None, url: str | None = None, keys: list[str] | None = None
    ) -> int:
        """Remove every entry carrying all of `tags`, every entry for `url`, and `keys`, from
        every tier; returns how many keys were removed."""
        selectors: list[Tags] = []
        if tags:
            selectors.append(_tags(tags))
        if url is not None:
            # Any spelling of the URL finds the entries: ?b=2&a=1 is stored as ?a=1&b=2.
            selectors.append(((URL_TAG, normalise_url(url)),))
        return await self._call(self._purge(selectors, list(keys or ())))

    def get_sync(self, key: str, default: Any = None) -> Any:
        return self.run_sync(self.get(key, default))

    def set_sync(
        self, key: str, value: Any, *, ttl_hours: float | None = None,
        ttl_seconds: float | None = None, tags: TagsArg = None,
    ) -> None:  # fmt: skip
        self.run_sync(self.set(key, value, ttl_hours=ttl_hours, ttl_seconds=ttl_seconds, tags=tags))

    def delete_sync(self, key: str) -> bool:
        result: bool = self.run_sync(self.delete(key))
        return result

    def flush_sync(self, tier: str = "all") -> None:
        self.run_sync(self.flush(tier))

    def stats_sync(self) -> dict[str, Any]:
        result: dict[str, Any] = self.run_sync(self.stats())
        return result

    def purge_sync(
        self, *, tags: TagsArg = None, url: str | None = None, keys: list[str] | None = None
    ) -> int:
        result: int = self.run_sync(self.purge(tags=tags, url=url, keys=keys))
        return result

    def close_sync(self) -> None:
        if self._loop.in_loop_thread():
            raise OnLoopThreadError("close_sync() cannot run on the cache's own loop thread")
        if self._started is None and not self._has_ram_entries():
            return
        self._ensure_started()
        self._loop.run(self._after_start(self._close_on_loop()))
        self._stop_loop()

    # ---- entry-level API for the HTTP engine --------------------------------------------
    def residency_for(self, tags: Tags, *, ttl_seconds: float | None = None) -> Residency:
        """Per-call ttl > tag rule > tier default > global default, per tier. Residency is
        frozen, so entries under one rule share one object (56 B each otherwise)."""
        if ttl_seconds is not None:
            found = self._residency_by_ttl.get(ttl_seconds)
            if found is None:
                found = Residency(ttl_seconds, ttl_seconds, ttl_seconds)
                if len(self._residency_by_ttl) < RESIDENCY_MEMO_MAX:
                    self._residency_by_ttl[ttl_seconds] = found
            return found
        rule = self._ttl_rules.for_tags(tags)
        if rule is None:
            return self._default_residency
        memo = self._residency_by_rule.get(id(rule))
        if memo is None or memo[0] is not rule:
            config = self.config
            memo = self._residency_by_rule[id(rule)] = (
                rule,
                Residency(
                    config.hot.ttl_seconds
                    if rule.hot_ttl_seconds is None
                    else rule.hot_ttl_seconds,
                    config.cold.ttl_seconds
                    if rule.cold_ttl_seconds is None
                    else rule.cold_ttl_seconds,
                    config.dry.ttl_seconds
                    if rule.dry_ttl_seconds is None
                    else rule.dry_ttl_seconds,
                ),
            )
        return memo[1]

    def make_entry(self, key: str, value: Any, tags: Tags, residency: Residency) -> Entry:
        size: int | None = None  # bytes and responses: the Entry derives it from the value
        if isinstance(value, StoredResponse):
            value.headers = intern_headers(value.headers)
        elif isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value)
        else:
            try:
                size = len(msgpack.packb(value, use_bin_type=True)) + ENTRY_OVERHEAD_BYTES
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(
                    f"cache value for {key!r} is not bytes or msgpack-able: {exc}"
                ) from exc
        return Entry(key, value, tuple(tags), residency, size, last_used=time.monotonic())

    def get_hot(self, key: str) -> Entry | None:
        """Hot RAM only: no I/O, no await, safe from any thread. Counts a hot hit."""
        hot = self._hot_ram
        return None if hot is None else hot.get_now(key)  # which counts the hit

    async def lookup(self, key: str) -> tuple[Entry, str] | None:
        """Hot, then cold, then dry; a hit below hot is promoted. Returns (entry, tier)."""
        found = self._lookup_ram(key)
        if found is not None:
            return found
        dry = self._dry_below_ram
        if dry is not None:
            # From the page cache on this thread; only what would wait goes to the loop.
            read = self._begin_read(key)
            try:
                entry = dry.read_cached(key)
                if entry is not READ_IN_THREAD:
                    return self._dry_found(key, read, entry)
            finally:
                self._end_read(key, read)
        return await self._call(self._lookup_slow(key))

    def lookup_blocking(self, key: str) -> tuple[Entry, str] | None:
        """`lookup` for sync callers (WSGI): RAM and a local dry tier on the caller's thread
        (which waits either way), other tiers on the cache's loop."""
        if self._loop.in_loop_thread():
            raise OnLoopThreadError(
                "lookup_blocking was called from the cache's own loop thread: await lookup"
            )
        found = self._lookup_ram(key)
        if found is not None:
            return found
        dry = self._dry_below_ram
        if dry is None:
            return self.run_sync(self._lookup_slow(key))  # type: ignore[no-any-return]
        read = self._begin_read(key)
        try:
            try:
                entry = dry._read(key)  # the worker-thread body: this thread is one
            except Exception as exc:  # what `_guard` does for a read on the loop
                self._count_error("dry", exc)
                entry = None
            return self._dry_found(key, read, entry)
        finally:
            self._end_read(key, read)

    def _dry_found(self, key: str, read: _Read, entry: Entry | None) -> tuple[Entry, str] | None:
        """The end of a lookup that read `entry` (None: not there) from dry off the loop."""
        if entry is not None and self._promote_if_still_there(key, read, entry):
            self._dry_hits += 1
            return entry, "dry"
        self._misses += 1
        return None

    def put(self, entry: Entry) -> None:
        """Store into hot now (sync, RAM only); evictions and tracking go to the background."""
        self._ensure_started()
        key = entry.key
        self._pending.pop(key, None)  # an older version on its way down must not land later
        cold = self._cold_ram
        if cold is not None:
            cold.take(key)
        hot = self._hot_ram
        if hot is not None:
            hot.put(entry)
        else:
            self._enqueue(entry, ("hot",))
        self._buffer.set(entry, "hot")
        if cold is None and not self.cold.reports_evictions and hot is not None:
            # A shared cold tier is how other processes see this entry: write through now.
            self._enqueue(entry, ("cold",))

    def run_sync(self, coro: Any) -> Any:
        """Run a coroutine on the cache's long-lived loop thread and wait for its result."""
        if self._loop.in_loop_thread():
            coro.close()
            raise OnLoopThreadError(
                "a blocking tiercache call (a *_sync method, run_sync or lookup_blocking) was "
                "made from the cache's own loop thread, where it would wait for itself"
            )
        self._ensure_started()
        return self._loop.run(self._after_start(coro))

    def invalidate_local(self, keys: Iterable[str]) -> None:
        """Drop these keys from this process's RAM tiers and pending moves (another process
        purged them from the shared tiers)."""
        for key in keys:
            self._drop_local(key)

    # ---- RAM-side lookups (any thread) -----------------------------------------------------
    def _lookup_ram(self, key: str) -> tuple[Entry, str] | None:
        self._ensure_started()
        hot = self._hot_ram
        if hot is not None:
            entry = self.get_hot(key)
            if entry is not None:
                return entry, "hot"
            expired = hot.take_expired(key)
            if expired is not None:
                self._left_hot(expired)
        cold = self._cold_ram
        if cold is not None:
            entry = cold.get_now(key)
            if entry is not None and cold.take(key) is entry:
                self._cold_hits += 1
                self._promote(entry)
                return entry, "cold"
            expired = cold.take_expired(key)
            if expired is not None:
                self._left_cold(expired)
        item = self._pending.get(key)
        tier = item.targets[0] if item is not None else "hot"
        if item is not None and tier != "hot" and self._pending.pop(key, None) is item:
            # Caught on its way down: served as a hit of the tier it was going to.
            if tier == "cold":
                self._cold_hits += 1
            else:
                self._dry_hits += 1
            self._promote(item.entry)
            return item.entry, tier
        return None

    def _promote(self, entry: Entry) -> None:
        self._promotions += 1
        hot = self._hot_ram
        if hot is not None:
            # Never over a copy already in hot: a put() from another thread may have stored
            # a newer one while this lookup was reading the older copy below.
            hot.put(entry, replace=False)  # its own residency and tags; last use restarts
        else:
            self._enqueue(entry, ("hot",))
        self._buffer.set(entry, "hot")

    # ---- demotion ----------------------------------------------------------------------
    def _left_hot(self, entry: Entry) -> None:
        self._demotions += 1
        cold = self._cold_ram
        if cold is not None:
            cold.put(entry)
            self._buffer.set(entry, "cold")
        elif self.cold.reports_evictions:
            self._enqueue(entry, ("cold",))
        else:
            # The shared tier expires silently: dry gets its copy now, not at eviction.
            self._enqueue(entry, ("cold", "dry"))

    def _left_cold(self, entry: Entry) -> None:
        self._demotions += 1
        self._enqueue(entry, _DRY_ONLY)

    def _dry_removed(self, keys: list[str]) -> None:
        self._buffer.delete(keys)

    def _enqueue(self, entry: Entry, targets: tuple[str, ...]) -> None:
        # Only moves to the local dry tier linger, to be packed together: other processes
        # see an entry in a shared tier only once it is there.
        urgent = targets != _DRY_ONLY or not isinstance(self.dry, LocalTier)
        item = _Demotion(entry, targets, urgent)
        size = entry.size
        with self._queue_lock:
            while self._queue and (
                len(self._queue) >= DEMOTION_QUEUE_MAX
                or self._queued_bytes + size > self._queue_max_bytes
            ):
                old = self._queue.popleft()
                self._queued_bytes -= old.entry.size
                self._queued_urgent -= old.urgent
                if self._pending.get(old.entry.key) is old:
                    del self._pending[old.entry.key]
                self._dropped += 1
            self._queue.append(item)
            self._queued_bytes += size
            self._queued_urgent += urgent
            self._pending[entry.key] = item
            # No lingering either once a batch is there or the queue is half full by bytes
            # (the linger must not make it drop moves).
            hurry = (
                urgent
                or len(self._queue) >= DRAIN_BATCH
                or 2 * self._queued_bytes > self._queue_max_bytes
            )
        # One wake-up at a time of each kind: puts meanwhile send none.
        if hurry:
            if not self._hurry_sent:
                self._hurry_sent = self._wake_sent = True
                self._ensure_started()
                self._loop.call_soon(self._wake_drain, True)
        elif not self._wake_sent:
            self._wake_sent = True
            self._ensure_started()
            self._loop.call_soon(self._wake_drain, False)

    def _wake_drain(self, hurry: bool) -> None:
        if self._drain_event is None or self._hurry_event is None:
            self._wake_sent = self._hurry_sent = False  # not started yet: the start wakes it
            return
        if hurry:
            self._hurry_event.set()
        self._drain_event.set()

    async def _drain_forever(self) -> None:
        assert self._drain_event is not None
        assert self._hurry_event is not None
        hurry = self._hurry_event
        while not self._closing:
            await self._drain_event.wait()
            if not hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DRAIN_LINGER):
                        await hurry.wait()
            hurry.clear()
            self._hurry_sent = False
            self._drain_event.clear()
            self._wake_sent = False
            if await self._drain_queue(whole=False):
                self._drain_event.set()  # what is left waits its linger

    async def _drain_queue(self, *, whole: bool = True) -> bool:
        """Write queued moves, every one (`whole`), or as long as a batch is full or an
        urgent move waits: the trickle that arrives while a batch is written waits to make
        a batch of its own. True when moves are left."""
        if self._drain_lock is None:
            self._drain_lock = asyncio.Lock()
        # One drainer at a time: close() waits for the move being written, then drains the rest.
        async with self._drain_lock:
            first = True
            while True:
                with self._queue_lock:
                    if not self._queue:
                        return False
                    if not (
                        whole or first or self._queued_urgent or len(self._queue) >= DRAIN_BATCH
                    ):
                        return True
                    first = False
                    batch = [
                        self._queue.popleft() for _ in range(min(DRAIN_BATCH, len(self._queue)))
                    ]
                    self._queued_bytes -= sum(item.entry.size for item in batch)
                    self._queued_urgent -= sum(item.urgent for item in batch)
                dry = self.dry
                if isinstance(dry, LocalTier):
                    to_dry = [item for item in batch if item.targets == _DRY_ONLY]
                    if to_dry:
                        await self._write_dry_batch(dry, to_dry)
                    batch = [item for item in batch if item.targets != _DRY_ONLY]
                for item in batch:
                    await self._write_move(item)

    async def _write_dry_batch(self, dry: LocalTier, items: list[_Demotion]) -> None:
        """`_write_move` for many moves bound for the local dry tier only, in one thread hop."""
        live: list[tuple[_Demotion, _Write]] = []
        for item in items:
            key = item.entry.key
            write = self._writing[key] = _Write()
            if self._pending.get(key) is item:
                live.append((item, write))
            else:  # deleted, replaced or promoted meanwhile (or an older copy in this batch)
                del self._writing[key]
                write.done.set()
        if not live:
            return
        try:
            results = await self._guard("dry", dry.set_many([item.entry for item, _ in live]), None)
            self._dry_dirty = True
            for index, (item, write) in enumerate(live):
                key = item.entry.key
                failure = results[index] if results is not None else None
                if failure is not None:
                    self._count_error("dry", failure)
                written = results is not None and failure is None
                if self._pending.get(key) is item:
                    del self._pending[key]
                if write.deleted:
                    if written:
                        await self._guard("dry", dry.delete(key), False, always=True)
                    self._buffer.delete([key])
                elif written:
                    self._buffer.set(item.entry, "dry")
        finally:
            for item, write in live:
                key = item.entry.key
                if self._pending.get(key) is item:
                    del self._pending[key]
                if self._writing.get(key) is write:
                    del self._writing[key]
                write.done.set()

    async def _write_move(self, item: _Demotion) -> None:
        key = item.entry.key
        # Registered before the check: a delete from now on is seen by one side or the other.
        # It stays registered until a delete met meanwhile has been undone, so that lookups
        # and deletes (which wait for `done`) never see the copy that briefly landed.
        write = self._writing[key] = _Write()
        written: list[str] = []
        try:
            if self._pending.get(key) is not item:
                return  # deleted, replaced or promoted meanwhile
            for name in item.targets:
                if name not in item.targets:
                    continue  # that tier was flushed while an earlier target was written
                if await self._guard(name, self._write(name, item.entry), False):
                    written.append(name)
            if self._pending.get(key) is item:
                del self._pending[key]
            if write.deleted:
                for name in written:
                    await self._guard(name, self._tier(name).delete(key), False, always=True)
                self._buffer.delete([key])
            elif written:
                self._buffer.set(item.entry, written[0])
        finally:
            if self._pending.get(key) is item:
                del self._pending[key]
            if self._writing.get(key) is write:
                del self._writing[key]
            write.done.set()

    async def _write(self, name: str, entry: Entry) -> bool:
        await self._tier(name).set(entry)
        if name == "dry":
            self._dry_dirty = True
        return True

    # ---- removal -------------------------------------------------------------------------
    def _tier(self, name: str) -> Tier:
        return {"hot": self.hot, "cold": self.cold, "dry": self.dry}[name]

    def _drop_local(self, key: str) -> bool:
        # Under the lock a lookup promotes under: its promotion lands before the takes
        # below (which remove it) or sees the mark and does not happen.
        with self._reads_lock:
            removed = self._pending.pop(key, None) is not None
            write = self._writing.get(key)
            if write is not None:
                write.deleted = True
            read = self._reading.get(key)
            if read is not None:
                read.removed = True  # a lookup reading it now must not promote it back to hot
            for ram in (self._hot_ram, self._cold_ram):
                if ram is not None and ram.take(key) is not None:
                    removed = True
        return removed

    async def _remove_keys(self, keys: list[str], *, publish: bool = True) -> int:
        count = 0
        for key in keys:
            # Until its files are gone, a lookup that starts now (after `_drop_local` marked
            # the reads under way) may still find one: it must not promote it.
            with self._reads_lock:
                self._deleting[key] += 1
            try:
                count += await self._remove_key(key)
            finally:
                with self._reads_lock:
                    self._deleting[key] -= 1
                    if not self._deleting[key]:
                        del self._deleting[key]
        self._buffer.delete(keys)
        if publish and keys and self._bus is not None:
            await self._guard("broadcast", self._bus.publish(keys), None, always=True)
        return count

    async def _remove_key(self, key: str) -> bool:
        removed = self._drop_local(key)
        write = self._writing.get(key)
        if write is not None:
            # Its move is being written: once the write has landed and been undone, the
            # key is gone everywhere when this returns (a delete is read-your-own).
            await write.done.wait()
            removed = True
        for name in TIERS:
            tier = self._tier(name)
            if isinstance(tier, RamTier):
                continue
            if await self._guard(name, tier.delete(key), False, always=True):
                removed = True
        return removed

    async def _purge(self, selectors: list[Tags], keys: list[str]) -> int:
        found: dict[str, None] = dict.fromkeys(keys)
        if selectors:
            await self._flush_tracking()
            entries = [item.entry for item in list(self._pending.values())]
            for ram in (self._hot_ram, self._cold_ram):
                if ram is not None:
                    entries += ram.entries()
            for pairs in selectors:
                tracked = await self._guard(
                    "tracking", self.tracking.keys_with_tags(pairs), [], always=True
                )
                found.update(dict.fromkeys(tracked))
                wanted = set(pairs)
                found.update((e.key, None) for e in entries if wanted <= set(e.tags))
        return await self._remove_keys(list(found))

    async def _flush(self, names: tuple[str, ...]) -> None:
        with self._queue_lock:
            for key, item in list(self._pending.items()):
                # A move also bound for a tier not flushed still goes there: with a shared
                # cold tier, (cold, dry) is how an entry leaving hot reaches dry at all.
                kept = tuple(name for name in item.targets if name not in names)
                if not kept:
                    del self._pending[key]
                elif kept != item.targets:
                    item.targets = kept
        # Moves already being written land before the flush, not after it.
        for write in list(self._writing.values()):
            await write.done.wait()
        for name in names:
            tier = self._tier(name)
            if isinstance(tier, RamTier):
                tier.clear()
            else:
                await self._guard(name, tier.flush(), None, always=True)
        await self._flush_tracking()
        if names == TIERS:
            await self._guard("tracking", self.tracking.clear(), None, always=True)
        else:
            for name in names:
                await self._guard("tracking", self.tracking.clear(name), None, always=True)

    # ---- background ----------------------------------------------------------------------
    async def _flush_tracking(self) -> None:
        lock = self._tracking_lock
        if lock is None:
            return
        async with lock:
            hot = self._hot_ram
            ops, hit_counts = self._buffer.take(hot.take_first_hits() if hot is not None else [])
            if not ops and not hit_counts:
                return
            now = time.time()
            sets = [(k, *op) for k, op in ops.items() if op is not None]
            deletes = [k for k, op in ops.items() if op is None]
            hits = {key: (n, now) for key, n in hit_counts.items()}
            try:
                await self._write_tracking(sets, deletes, hits)
            except asyncio.CancelledError:
                # close() cancelled this flush: its own last flush writes these instead. Writing
                # one again is harmless (upserts and deletes); hit counts are best effort.
                self._buffer.give_back(ops)
                raise

    async def _write_tracking(
        self,
        sets: list[tuple[str, str, Tags, int, float]],
        deletes: list[str],
        hits: dict[str, tuple[int, float]],
    ) -> None:
        batch = getattr(self.tracking, "record_batch", None)
        if batch is not None:
            await self._guard("tracking", batch(sets=sets, deletes=deletes, hits=hits), None)
            return
        tracking = self.tracking
        if deletes:
            await self._guard("tracking", tracking.record_delete(deletes), None)
        for key, tier, tags, size, at in sets:
            await self._guard("tracking", tracking.record_set(key, tier, tags, size, at), None)
        if hits:
            await self._guard("tracking", tracking.record_hits(hits), None)

    async def _tracking_forever(self) -> None:
        interval = max(0.01, self.config.tracking.flush_interval_seconds)
        while not self._closing:
            await asyncio.sleep(interval)
            await self._flush_tracking()

    async def _sweep_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(SWEEP_INTERVAL)
            await self._sweep()

    async def _sweep(self) -> None:
        """Move entries past their residency down, and trim a dry tier that asks for it."""
        for ram in (self._hot_ram, self._cold_ram):
            if ram is not None:
                ram.sweep()
        if isinstance(self.dry, LocalTier):
            await self._guard("dry", self.dry.touch_read(), None)
        trim = getattr(self.dry, "trim", None)
        max_bytes = self.config.dry.max_size_bytes
        if self._dry_dirty and trim is not None and max_bytes is not None:
            self._dry_dirty = False
            await self._flush_tracking()
            # Its own name at the fault boundary: the trim asks the tracking index as much as
            # the dry tier, and a stuck index must not have the dry tier's reads skipped.
            await self._guard("dry_trim", trim(max_bytes, self.tracking), 0)

    async def _stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "hot_hits": self._hot_hits + (self._hot_ram.hits if self._hot_ram is not None else 0),
            "cold_hits": self._cold_hits,
            "dry_hits": self._dry_hits,
            "misses": self._misses,
            "demotions": self._demotions,
            "promotions": self._promotions,
            "demotions_dropped": self._dropped,
            "pending_demotions": len(self._pending),
        }
        for name in TIERS:
            tier = self._tier(name)
            tier_stats = await self._guard(name, tier.stats(), TierStats(0, 0))
            stats[f"{name}_entries"] = tier_stats.entries
            stats[f"{name}_size_bytes"] = tier_stats.size_bytes
            stats[f"{name}_backend"] = getattr(getattr(self.config, name), "backend", "")
        for name in (*TIERS, "tracking", "broadcast", "dry_trim"):
            stats[f"{name}_errors"] = self._errors[name]
        return stats

    async def _lookup_slow(self, key: str) -> tuple[Entry, str] | None:
        read = self._begin_read(key)
        try:
            found = await self._lookup_below(key, read)
        finally:
            self._end_read(key, read)
        if found is None:
            self._misses += 1
        return found

    def _begin_read(self, key: str) -> _Read:
        """Register a read below RAM, before it starts: a delete from now on marks it."""
        with self._reads_lock:
            read = self._reading.get(key)
            if read is None:
                read = self._reading[key] = _Read()
            if key in self._deleting:
                # It may still find the file, and outlast the delete: never promote it then.
                read.removed = True
            read.count += 1
            return read

    def _end_read(self, key: str, read: _Read) -> None:
        with self._reads_lock:
            read.count -= 1
            if read.count == 0 and self._reading.get(key) is read:
                del self._reading[key]

    def _still_there(self, key: str, read: _Read) -> bool:
        """False when the key was deleted while it was being read, a delete of it is under
        way (its file may not be unlinked yet), or the copy read is one a delete is about to
        undo: promoting it would bring a deleted key back."""
        write = self._writing.get(key)
        return (
            not read.removed and key not in self._deleting and (write is None or not write.deleted)
        )

    def _promote_if_still_there(self, key: str, read: _Read, entry: Entry) -> bool:
        with self._reads_lock:
            if not self._still_there(key, read):
                return False
            self._promote(entry)
            return True

    async def _lookup_below(self, key: str, read: _Read) -> tuple[Entry, str] | None:
        if self._hot_ram is None:
            entry = await self._guard("hot", self.hot.get(key), None)
            if entry is not None and self._still_there(key, read):
                self._hot_hits += 1
                self._buffer.count_hit(entry)
                return entry, "hot"
        if self._cold_ram is None:
            entry = await self._guard("cold", self.cold.get(key), None)
            if entry is not None and self._promote_if_still_there(key, read, entry):
                self._cold_hits += 1
                return entry, "cold"
        entry = await self._guard("dry", self.dry.get(key), None)
        if entry is not None and self._promote_if_still_there(key, read, entry):
            self._dry_hits += 1
            return entry, "dry"
        return None

    # ---- the fault boundary ----------------------------------------------------------------
    async def _guard(
        self, name: str, awaitable: Awaitable[T], default: T, *, always: bool = False
    ) -> T:
        """Every backend call: an exception or a timeout is logged, counted, and a miss.

        For `SKIP_AFTER_TIMEOUT` after a call to `name` timed out, calls to it are not made
        and return `default` at once (counted and logged as errors): a stuck server, one that
        accepts connections and never answers, would cost every call its timeout, and close()
        draining thousands of demotions into it would take hours. A refused connection or
        another error opens no such window: it fails fast by itself, and a restarted server
        is used again at once. Once the window has passed, one call tries the backend again
        while the others keep skipping until it ends: its answer closes the window, its
        timeout opens a new one (else every call arriving meanwhile would wait a timeout).
        `always` marks a call made even in the window: a close (skipped, it would leave the
        client open and bound to a loop about to stop) and a removal (a delete, flush or
        purge skipped would leave other processes serving what was removed; they are rare
        and asked for, so each may cost its timeout).
        """
        probe = False
        timed_out = self._timed_out.get(name)
        if timed_out is not None and not always:
            since = time.monotonic() - timed_out[0]
            if since < SKIP_AFTER_TIMEOUT or name in self._probing:
                if isinstance(awaitable, Coroutine):
                    awaitable.close()  # never started: no "was never awaited" warning
                self._count_skip(name, since, timed_out[1])
                return default
            probe = True
            self._probing.add(name)
        try:
            # Not asyncio.wait_for: before Python 3.12 it returns the result when a cancel
            # lands in the loop iteration the call completes in, and close() then waits
            # forever for a background task that never saw its cancel.
            async with asyncio.timeout(BACKEND_TIMEOUT):
                result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _is_timeout(exc):
                self._timed_out[name] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            elif probe:
                self._timed_out.pop(name, None)  # it answers, if only with an error
            self._count_error(name, exc)
            return default
        finally:
            if probe:
                self._probing.discard(name)
        if probe:
            self._timed_out.pop(name, None)
        return result

    def _count_error(self, name: str, exc: BaseException) -> None:
        if self._count(name):
            then = f" and skipped for {SKIP_AFTER_TIMEOUT:g} s" if _is_timeout(exc) else ""
            log.warning(
                "tiercache: %s backend failed (%d errors so far), treated as a miss%s: %s: %s",
                name,
                self._errors[name],
                then,
                type(exc).__name__,
                exc,
            )

    def _count_skip(self, name: str, since: float, error: str) -> None:
        if self._count(name):
            log.warning(
                "tiercache: %s backend skipped after a timeout %.1f s ago (%d errors so far), "
                "treated as a miss: %s",
                name,
                since,
                self._errors[name],
                error,
            )

    def _count(self, name: str) -> bool:
        """Count an error of `name`'s; True when it is to be logged (once per interval)."""
        self._errors[name] += 1
        now = time.monotonic()
        if now - self._logged.get(name, -math.inf) < ERROR_LOG_INTERVAL:
            return False
        self._logged[name] = now
        return True


def _is_timeout(exc: BaseException) -> bool:
    """A backend's own timeout or `_guard`'s; a refused connection is never one. The
    clients' timeout errors that do not derive from the builtin TimeoutError are named one
    by one (a name match would catch asyncpg's idle-session errors, which a server that
    answers sends); their modules are looked up, not imported: a backend in use has them."""
    if isinstance(exc, TimeoutError):
        return True
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is not None and isinstance(exc, redis_errors.TimeoutError):
        return True
    botocore_errors = sys.modules.get("botocore.exceptions")
    return botocore_errors is not None and isinstance(
        exc, (botocore_errors.ConnectTimeoutError, botocore_errors.ReadTimeoutError)
    )

"""Store-level measurements: RAM bytes per entry, budgets under churn, SIEVE vs LRU hit ratios
on Zipf and scan traces, and hot-hit latency while the dry tier absorbs demotions.

These drive the store's own objects (RamTier, TierCache.make_entry, CacheMiddleware) directly,
so each figure isolates the part of the cache its target talks about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import linecache
import multiprocessing
import os
import statistics
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench import subjects as s
from tests.bench.inprocess import asgi_scope, settle

__all__ = [
    "BudgetResult",
    "DryLoadResult",
    "EvictionResult",
    "MemoryResult",
    "measure_budget",
    "measure_dry_load",
    "measure_eviction",
    "measure_memory",
]


# ---- RAM bytes per entry ------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryResult:
    entries: int
    body_bytes: int  # per entry
    header_bytes: int  # per entry: the characters of names and values
    traced_per_entry: float  # tracemalloc: everything allocated, per entry
    overhead_per_entry: float  # traced minus body and header characters
    rss_overhead_per_entry: float  # the same from RSS growth, in a process without tracemalloc
    accounted_per_entry: float  # what the tier's budget counts per entry
    breakdown: list[tuple[str, float]]  # source line -> bytes per entry, largest first


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _empty_cache(tmp: str) -> Any:
    from tiercache_mw import TierCache

    return TierCache.from_dict(s.tiercache_config(Path(tmp), hot_bytes=1 << 40))


def _fill_ram(cache: Any, n: int, body_size: int) -> tuple[int, int]:
    """Store n HTTP responses in the hot RAM tier, built the way the middleware stores them:
    a StoredResponse with fresh header objects and timing floats, a url tag, a Residency from
    the tag rules.
    Returns the header characters per entry and the bytes the budget counts."""
    from tiercache_mw.store.entry import StoredResponse

    ram = cache.hot
    body_template = os.urandom(body_size)
    max_age = 3600
    header_chars = 0
    for i in range(n):
        url = f"http://bench.local/item/{i}"
        body = (b"%08d" % i) + body_template[8:]  # a distinct object, as each response has
        # Fresh objects, as the middleware gets them from each response (names lowercased).
        headers = [
            (b"Content-Type".lower(), b"%s" % b"application/json"),
            (b"Content-Length".lower(), b"%d" % body_size),
            (b"Cache-Control".lower(), b"%s" % b"public, max-age=3600"),
        ]
        if i == 0:
            header_chars = sum(len(k) + len(v) for k, v in headers)
        # Timing floats of its own, as build_stored_response derives them for each response.
        request_time = time.time()
        response_time = time.time()
        stored = StoredResponse(
            status=200, headers=headers, body=body, response_time=response_time,
            freshness_lifetime=float(max_age), initial_age=response_time - request_time,
        )  # fmt: skip
        key = f"http://bench.local/item/{i}"  # the engine builds key and url apart
        # The url tag engine._tags adds; the Entry derives it from the key rather than keep it.
        tags = (("url", url),)
        ram.put(cache.make_entry(key, stored, tags, cache.residency_for(tags)))
    return header_chars, ram.size_bytes


def _where(filename: str, lineno: int) -> str:
    code = linecache.getline(filename, lineno).strip()
    return f"{Path(filename).name}:{lineno} `{code[:60]}`"


def _memory_child(n: int, body_size: int, tmp: str, traced: bool, queue: Any) -> None:
    cache = _empty_cache(tmp)
    _fill_ram(cache, 10, 64)  # first-use allocations (index, interned names) out of the count
    cache.hot.clear()
    gc.collect()
    if traced:
        tracemalloc.start(1)
    base_rss = _rss_bytes()
    base_traced = tracemalloc.get_traced_memory()[0] if traced else 0
    snap0 = tracemalloc.take_snapshot() if traced else None
    header_chars, accounted = _fill_ram(cache, n, body_size)
    gc.collect()
    result: dict[str, Any] = {
        "rss": _rss_bytes() - base_rss,
        "header_chars": header_chars,
        "accounted": accounted,
        "entries": len(cache.hot),
    }
    if traced:
        result["traced"] = tracemalloc.get_traced_memory()[0] - base_traced
        snap1 = tracemalloc.take_snapshot()
        assert snap0 is not None
        lines = snap1.compare_to(snap0, "lineno")
        result["breakdown"] = [
            (_where(d.traceback[0].filename, d.traceback[0].lineno), d.size_diff)
            for d in lines[:14]
            if d.size_diff > 0
        ]
        tracemalloc.stop()
    queue.put(result)


def _get_from(proc: Any, queue: Any, timeout: float) -> Any:
    """The child's answer, or an error as soon as it dies without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.2)
        except Exception:  # queue.Empty
            if not proc.is_alive() and queue.empty():
                raise RuntimeError(f"child process exited with {proc.exitcode}") from None
    raise TimeoutError("child process gave no answer")


def _in_child(*args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=_memory_child, args=(*args, queue))
    proc.start()
    try:
        result: dict[str, Any] = _get_from(proc, queue, 600)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return result


def measure_memory(n: int, tmp: Path, body_size: int = 64) -> MemoryResult:
    """Bytes per entry at n entries, each in a fresh process (one traced, one by RSS)."""
    traced = _in_child(n, body_size, str(tmp / "mem-traced"), True)
    rss = _in_child(n, body_size, str(tmp / "mem-rss"), False)
    payload = body_size + traced["header_chars"]
    entries = traced["entries"]
    return MemoryResult(
        entries=entries,
        body_bytes=body_size,
        header_bytes=traced["header_chars"],
        traced_per_entry=traced["traced"] / entries,
        overhead_per_entry=traced["traced"] / entries - payload,
        rss_overhead_per_entry=rss["rss"] / entries - payload,
        accounted_per_entry=traced["accounted"] / entries,
        breakdown=[(line, size / entries) for line, size in traced["breakdown"]],
    )


# ---- budgets under churn -------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetResult:
    entries_written: int
    samples: int
    hot_max_bytes: int
    cold_max_bytes: int
    hot_peak_ratio: float  # largest hot_size_bytes / max seen
    cold_peak_ratio: float
    heap_peak_ratio: float  # largest traced heap growth / (hot + cold budgets)
    hot_final_ratio: float
    cold_final_ratio: float
    pending_peak: int  # entries waiting in the demotion queue (RAM outside both budgets)
    dropped: int  # demotions dropped by the full queue


async def _churn(n: int, tmp: Path, hot_max: int, cold_max: int, every: int) -> BudgetResult:
    from tiercache_mw import TierCache

    cache = TierCache.from_dict(s.tiercache_config(tmp, hot_bytes=hot_max, cold_bytes=cold_max))
    await cache.start()
    gc.collect()
    tracemalloc.start(1)
    base = tracemalloc.get_traced_memory()[0]
    hot_peak = cold_peak = heap_peak = 0.0
    samples = pending_peak = 0
    stats: dict[str, Any] = {}
    body = os.urandom(1024)
    try:
        for i in range(n):
            await cache.set(f"churn:{i}", body[:-8] + b"%08d" % i)
            if i % every == every - 1:
                stats = await cache.stats()
                samples += 1
                hot_peak = max(hot_peak, stats["hot_size_bytes"] / hot_max)
                cold_peak = max(cold_peak, stats["cold_size_bytes"] / cold_max)
                pending_peak = max(pending_peak, stats.get("pending_demotions", 0))
                heap = tracemalloc.get_traced_memory()[0] - base
                heap_peak = max(heap_peak, heap / (hot_max + cold_max))
    finally:
        tracemalloc.stop()
        await cache.close()
    return BudgetResult(
        entries_written=n,
        samples=samples,
        hot_max_bytes=hot_max,
        cold_max_bytes=cold_max,
        hot_peak_ratio=hot_peak,
        cold_peak_ratio=cold_peak,
        heap_peak_ratio=heap_peak,
        hot_final_ratio=stats.get("hot_size_bytes", 0) / hot_max,
        cold_final_ratio=stats.get("cold_size_bytes", 0) / cold_max,
        pending_peak=pending_peak,
        dropped=stats.get("demotions_dropped", 0),
    )


def measure_budget(n: int, tmp: Path, *, hot_max: int, cold_max: int, every: int) -> BudgetResult:
    return asyncio.run(_churn(n, tmp, hot_max, cold_max, every))


# ---- SIEVE vs LRU --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvictionResult:
    trace: str
    capacity_pct: float
    policy: str
    requests: int
    hit_ratio: float
    ns_per_hit: float  # get_now on a present key
    ns_per_request: float  # the whole replay (lookups, and a put per miss)


def zipf_trace(keys: int, requests: int, alpha: float, seed: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, keys + 1, dtype=np.float64) ** alpha
    ranks = rng.choice(keys, size=requests, p=weights / weights.sum())
    ids: list[int] = rng.permutation(keys)[ranks].tolist()  # popularity unrelated to key order
    return ids


def scan_trace(keys: int, requests: int, seed: int) -> list[int]:
    """Zipf 0.9 traffic with a one-off scan (keys never seen again) of 5 % of the key space
    after every 10 % of the requests."""
    base = zipf_trace(keys, requests, 0.9, seed)
    out: list[int] = []
    step = max(1, requests // 10)
    scan = max(1, keys // 20)
    fresh = keys
    for start in range(0, requests, step):
        out.extend(base[start : start + step])
        out.extend(range(fresh, fresh + scan))
        fresh += scan
    return out


def _replay(policy: str, trace: list[int], capacity: int) -> tuple[EvictionResult, Any]:
    """The trace replayed through a RAM tier of `capacity` entries: lookup, and put on a
    miss. Returns the result (its `ns_per_hit` left to `_hit_costs`) and the tier."""
    from tiercache_mw.config import TierConfig
    from tiercache_mw.store.entry import Entry, Residency
    from tiercache_mw.store.ram import RamTier

    size = 100
    tier = RamTier(
        "bench",
        TierConfig(
            backend="ram", ttl_seconds=None, max_size_bytes=capacity * size, eviction=policy
        ),
        clock=lambda: 0.0,
    )
    top = max(trace) + 1
    names = [f"k{i}" for i in range(top)]
    residency = Residency(None, None, None)
    entries = [Entry(name, None, (), residency, size, 0.0, 0.0) for name in names]
    keys = [names[i] for i in trace]
    get, put = tier.get_now, tier.put
    hits = 0
    gc.collect()
    t0 = time.perf_counter_ns()
    for i, key in enumerate(keys):
        if get(key) is not None:
            hits += 1
        else:
            put(entries[trace[i]])
    elapsed = time.perf_counter_ns() - t0
    result = EvictionResult(
        trace="",
        capacity_pct=0.0,
        policy=policy,
        requests=len(keys),
        hit_ratio=hits / len(keys),
        ns_per_hit=0.0,
        ns_per_request=elapsed / len(keys),
    )
    return result, tier


def _hit_costs(tiers: dict[str, Any], keys: list[str], rounds: int = 6) -> dict[str, float]:
    """ns per `get_now` of each tier on the same keys, all present in every tier, in rounds
    that alternate between the tiers (ABBA), so drift in machine load lands on all of them."""
    present = [key for key in dict.fromkeys(keys) if all(key in tier for tier in tiers.values())]
    if not present:
        raise ValueError("no key is held by every tier: nothing to time hits on")
    # At least ~20,000 lookups a round, however few keys both tiers hold.
    present *= max(1, 20_000 // len(present))
    order = list(tiers)
    costs: dict[str, list[float]] = {name: [] for name in order}
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            get = tiers[name].get_now
            t0 = time.perf_counter_ns()
            for key in present:
                get(key)
            costs[name].append((time.perf_counter_ns() - t0) / len(present))
    return {name: statistics.median(values) for name, values in costs.items()}


def measure_eviction(
    keys: int, requests: int, capacities: tuple[float, ...] = (0.01, 0.1), seed: int = 5
) -> list[EvictionResult]:
    traces = {f"zipf {alpha}": zipf_trace(keys, requests, alpha, seed) for alpha in (0.7, 0.9, 1.1)}
    traces["zipf 0.9 + scans"] = scan_trace(keys, requests, seed)
    results = []
    for name, trace in traces.items():
        for fraction in capacities:
            replayed = {
                policy: _replay(policy, trace, max(1, int(keys * fraction)))
                for policy in ("sieve", "lru")
            }
            tiers = {policy: tier for policy, (_, tier) in replayed.items()}
            # The trace's last keys: the ones most likely still held by both.
            costs = _hit_costs(tiers, [f"k{i}" for i in trace[-50_000:]])
            for policy, (r, _) in replayed.items():
                results.append(
                    dataclasses.replace(
                        r, trace=name, capacity_pct=fraction * 100, ns_per_hit=costs[policy]
                    )
                )
    return results


# ---- hot hits while dry absorbs demotions -------------------------------------------------------
@dataclass(frozen=True)
class DryLoadResult:
    seconds: float
    target_rate: float  # entries/s the background writer pushes through hot towards dry
    puts_per_s: float  # what it reached
    demotions_per_s: float  # measured from stats(): hot->cold and cold->dry both count
    dry_writes_per_s: float  # dry_entries growth
    dropped: int  # demotions dropped by a full queue
    quiet_p50_us: float
    quiet_p99_us: float
    busy_p50_us: float
    busy_p99_us: float
    not_hot: Counter[str] = field(default_factory=Counter)  # busy responses not from hot
    # busy p99 / quiet p99 of each pair of neighbouring phases: how far one run can move
    pair_ratios: tuple[float, ...] = ()

    @property
    def p99_ratio(self) -> float:
        return self.busy_p99_us / self.quiet_p99_us


async def _hits_for(app: Any, seconds: float) -> tuple[list[float], Counter[str]]:
    window: deque[dict[str, Any]] = deque(maxlen=200)  # a server keeps no responses

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        window.append(message)

    scope = asgi_scope("/item")
    latencies: list[float] = []
    not_hot: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            t0 = time.perf_counter_ns()
            await app(scope.copy(), receive, send)
            latencies.append((time.perf_counter_ns() - t0) / 1000)
            await asyncio.sleep(0)  # lets the writer run between hits, as other requests would
        for message in window:
            if message["type"] == "http.response.start":
                status = dict(message["headers"]).get(b"cache-status", b"").decode()
                if "detail=hot" not in status:
                    not_hot[status] += 1
        window.clear()
    return latencies, not_hot


# Quiet and busy phases alternate, so drift on a shared machine hits both; many short pairs
# rather than a few long ones, because one run's ratio moves by ±0.2 on a 2-CPU machine.
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


DRY_LOAD_PHASES = 12
# A put every millisecond (uvloop's timer resolution): the writer's work spread over the
# phase, as requests arrive, not in bursts that fill the drain's batches unevenly.
PUT_INTERVAL = 0.001


async def _dry_load(seconds: float, rate: float, tmp: Path) -> DryLoadResult:
    from tiercache_mw import CacheMiddleware, TierCache

    # Hot holds ~64 entries; a cold tier smaller than one entry sends every hot eviction
    # straight to the dry queue, so each put below is one demotion for the dry tier to absorb.
    config = s.tiercache_config(tmp, hot_bytes=64 * 2000, cold_bytes=1000)
    cache = TierCache.from_dict(config)
    app = CacheMiddleware(s.counted_asgi("dry-load", s.CACHE_CONTROL), cache=cache)
    quiet: list[float] = []
    busy: list[float] = []
    not_hot: Counter[str] = Counter()
    busy_seconds = 0.0
    written = 0
    try:
        await cache.start()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            return None

        await app(asgi_scope("/item"), receive, send)  # stored in hot
        body = os.urandom(1024)
        batch = max(1, round(rate * PUT_INTERVAL))

        async def writer(stop: asyncio.Event) -> None:
            nonlocal written
            next_at = time.monotonic()
            while not stop.is_set():
                for _ in range(batch):
                    value = body[:-8] + b"%08d" % written
                    key = f"bg:{written}"
                    cache.put(cache.make_entry(key, value, (), cache.residency_for(())))
                    written += 1
                next_at += batch / rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        before = await cache.stats()
        phase = seconds / DRY_LOAD_PHASES
        pair_ratios = []
        for _ in range(DRY_LOAD_PHASES):
            # Untimed: a quiet phase with the drain still writing would not be quiet.
            await settle(cache)
            quiet_latencies, _ = await _hits_for(app, phase)
            quiet += quiet_latencies
            stop = asyncio.Event()
            task = asyncio.create_task(writer(stop))
            t0 = time.monotonic()
            latencies, missed = await _hits_for(app, phase)
            busy_seconds += time.monotonic() - t0
            stop.set()
            await task
            busy += latencies
            not_hot += missed
            pair_ratios.append(pct(latencies, 0.99) / pct(quiet_latencies, 0.99))
        after = await cache.stats()
    finally:
        await cache.close()

    # Rates are per second of busy phase; demotions queued at a phase's end are written
    # before the next quiet phase starts, which is why dry writes can reach the put rate.
    return DryLoadResult(
        seconds=busy_seconds,
        target_rate=rate,
        puts_per_s=written / busy_seconds,
        demotions_per_s=(after["demotions"] - before["demotions"]) / busy_seconds,
        dry_writes_per_s=(after["dry_entries"] - before["dry_entries"]) / busy_seconds,
        dropped=after.get("demotions_dropped", 0) - before.get("demotions_dropped", 0),
        quiet_p50_us=pct(quiet, 0.5),
        quiet_p99_us=pct(quiet, 0.99),
        busy_p50_us=pct(busy, 0.5),
        busy_p99_us=pct(busy, 0.99),
        not_hot=not_hot,
        pair_ratios=tuple(pair_ratios),
    )


def measure_dry_load(seconds: float, tmp: Path, rate: float = 5000.0) -> DryLoadResult:
    return asyncio.run(_dry_load(seconds, rate, tmp))

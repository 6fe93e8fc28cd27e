"""The one protocol every tier backend implements (ram, memcached, redis, local, s3).

A backend raises `BackendError` (or lets its client's exception out) on faults; the
`TierCache` catches them at this boundary, logs, counts and treats them as misses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tiercache_mw.store.entry import Entry

__all__ = ["EvictCallback", "Tier", "TierStats"]

# Called with an entry that leaves a tier that can tell (RAM, local disk), so that the
# TierCache can move it one tier down.
EvictCallback = Callable[[Entry], None]


@dataclass(slots=True, frozen=True)
class TierStats:
    entries: int
    size_bytes: int


@runtime_checkable
class Tier(Protocol):
    name: str  # "hot" | "cold" | "dry"
    # False for tiers whose server expires entries silently (memcached, redis): the
    # TierCache then writes through to dry on demotion instead of waiting for an eviction.
    reports_evictions: bool

    async def get(self, key: str) -> Entry | None: ...

    async def set(self, entry: Entry) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def flush(self) -> None:
        """Remove every entry of this tier and only of this tier (prefixes, not flush_all)."""

    async def stats(self) -> TierStats: ...

    async def close(self) -> None: ...

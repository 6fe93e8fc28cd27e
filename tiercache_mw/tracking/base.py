"""The protocol of the tracking index (sqlite, redis, postgres): key -> tier, tags, size,
hits, last use. It answers tag purges and stats; the request path never waits on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tiercache_mw.store.entry import Tags

__all__ = ["TrackedEntry", "Tracking"]


@dataclass(slots=True, frozen=True)
class TrackedEntry:
    key: str
    tier: str
    tags: Tags
    size: int
    hits: int
    last_used: float  # time.time()


@runtime_checkable
class Tracking(Protocol):
    async def start(self) -> None:
        """Connect and create the schema if missing."""

    async def record_set(self, key: str, tier: str, tags: Tags, size: int, now: float) -> None:
        """Upsert one key: where it lives now, its tags and size."""

    async def record_hits(self, hits: Mapping[str, tuple[int, float]]) -> None:
        """Add hit counts and last-use times, batched: key -> (hits, last_used)."""

    async def record_move(self, key: str, tier: str) -> None: ...

    async def record_delete(self, keys: Iterable[str]) -> None: ...

    async def keys_with_tags(self, tags: Tags) -> list[str]:
        """Every key that carries all of these (name, value) pairs."""

    async def keys_in_tier(self, tier: str) -> list[str]: ...

    async def get(self, key: str) -> TrackedEntry | None: ...

    async def oldest(self, tier: str, limit: int) -> list[TrackedEntry]:
        """Least recently used entries of a tier first: for size-capped cleanup."""

    async def totals(self) -> dict[str, tuple[int, int]]:
        """tier -> (entries, size_bytes)."""

    async def clear(self, tier: str | None = None) -> None: ...

    async def close(self) -> None: ...

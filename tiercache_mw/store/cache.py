"""TierCache: the tiered store (hot -> cold -> dry, promotion on hit) and the original
smartcache key/value API.

CONTRACT SKELETON: signatures below are what the HTTP engine, the middleware and the
backends code against. Bodies are being written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiercache_mw.config import Config
from tiercache_mw.store.entry import Entry, Residency, Tags

__all__ = ["TierCache"]

TagsArg = Mapping[str, str] | Tags | None


class TierCache:
    def __init__(self, config: Config | None = None) -> None:
        raise NotImplementedError

    @classmethod
    def from_yaml(cls, path: str | Path) -> TierCache:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TierCache:
        raise NotImplementedError

    config: Config

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Idempotent; every other method calls it on first use."""

    async def close(self) -> None:
        """Drain pending demotions and tracking writes, persist hot and cold RAM to dry."""

    # ---- the original key/value API ---------------------------------------------------
    async def get(self, key: str, default: Any = None) -> Any: ...
    async def set(
        self, key: str, value: Any, *, ttl_hours: float | None = None,
        ttl_seconds: float | None = None, tags: TagsArg = None,
    ) -> None: ...  # fmt: skip
    async def delete(self, key: str) -> bool: ...
    async def flush(self, tier: str = "all") -> None: ...
    async def stats(self) -> dict[str, Any]: ...
    async def purge(
        self, *, tags: TagsArg = None, url: str | None = None, keys: list[str] | None = None
    ) -> int: ...

    # ---- entry-level API for the HTTP engine --------------------------------------------
    def residency_for(self, tags: Tags, *, ttl_seconds: float | None = None) -> Residency:
        """Per-call ttl > tag rule > tier default > global default, per tier."""
        raise NotImplementedError

    def make_entry(self, key: str, value: Any, tags: Tags, residency: Residency) -> Entry:
        raise NotImplementedError

    def get_hot(self, key: str) -> Entry | None:
        """Hot RAM only: no I/O, no await, safe from any thread. Counts a hot hit."""
        raise NotImplementedError

    async def lookup(self, key: str) -> tuple[Entry, str] | None:
        """Hot, then cold, then dry; a hit below hot is promoted. Returns (entry, tier)."""
        raise NotImplementedError

    def lookup_blocking(self, key: str) -> tuple[Entry, str] | None:
        """`lookup` for sync callers (WSGI): hot inline, slower tiers on the cache's loop."""
        raise NotImplementedError

    def put(self, entry: Entry) -> None:
        """Store into hot now (sync, RAM only); evictions and tracking go to the background."""
        raise NotImplementedError

    def run_sync(self, coro: Any) -> Any:
        """Run a coroutine on the cache's long-lived loop thread and wait for its result."""
        raise NotImplementedError

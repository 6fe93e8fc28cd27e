"""Config -> tier and tracking objects. Each backend module is imported only when a config
names it, so a missing optional dependency fails here with the extra to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from tiercache_mw.config import (
    Config,
    MemcachedConfig,
    PostgresConfig,
    RedisConfig,
    S3Config,
    TierConfig,
)
from tiercache_mw.errors import ConfigError, MissingExtraError
from tiercache_mw.store.base import EvictCallback, Tier
from tiercache_mw.tracking.base import Tracking

__all__ = ["make_tier", "make_tracking", "resolve_path"]

_SECTION = {"hot": "hot_cache", "cold": "cold_cache", "dry": "dry_cache"}
_TIER_BACKENDS = {
    "hot": ("ram", "memcached", "redis"),
    "cold": ("ram", "memcached", "redis"),
    "dry": ("local", "s3"),
}
# backend -> (module, the distribution it needs, the extra that installs it)
_EXTRAS = {
    "memcached": ("aiomcache", "memcached"),
    "redis": ("redis", "redis"),
    "s3": ("aiobotocore", "s3"),
    "postgres": ("asyncpg", "postgres"),
}


def resolve_path(config: Config, path: str) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else config.base_dir / resolved


def _load(module: str, backend: str, config: Config, key_path: str) -> ModuleType:
    needed = _EXTRAS.get(backend)
    if needed is not None:
        try:
            importlib.import_module(needed[0])
        except ImportError as exc:
            raise MissingExtraError(config.source, key_path, backend, needed[1]) from exc
    return importlib.import_module(module)


def make_tier(
    role: str, tier_config: TierConfig, config: Config, on_evict: EvictCallback | None
) -> Tier:
    """The tier for `role` ("hot", "cold", "dry") as `tier_config` describes it."""
    backend = tier_config.backend
    key_path = f"{_SECTION.get(role, role)}.backend"
    if backend not in _TIER_BACKENDS.get(role, ()):
        raise ConfigError(config.source, key_path, f"one of {_TIER_BACKENDS.get(role)}", backend)
    tier: Any
    if backend == "ram":
        from tiercache_mw.store.ram import RamTier

        tier = RamTier(role, tier_config, on_evict)
    elif backend == "local":
        from tiercache_mw.store.local import LocalTier

        root = resolve_path(config, tier_config.path or ".tiercache/dry")
        tier = LocalTier(role, tier_config, root)
    elif backend == "memcached":
        module = _load("tiercache_mw.store.memcached", backend, config, key_path)
        tier = module.MemcachedTier(role, tier_config, config.memcached or MemcachedConfig())
    elif backend == "redis":
        module = _load("tiercache_mw.store.redis", backend, config, key_path)
        tier = module.RedisTier(role, tier_config, config.redis or RedisConfig())
    else:
        module = _load("tiercache_mw.store.s3", backend, config, key_path)
        tier = module.S3Tier(role, tier_config, config.s3 or S3Config())
    assert isinstance(tier, Tier)
    return tier


def make_tracking(config: Config) -> Tracking:
    backend = config.tracking.backend
    key_path = "tracking.backend"
    tracking: Any
    if backend == "sqlite":
        from tiercache_mw.tracking.sqlite import SqliteTracking

        tracking = SqliteTracking(resolve_path(config, config.tracking.path))
    elif backend == "redis":
        module = _load("tiercache_mw.tracking.redis", backend, config, key_path)
        tracking = module.RedisTracking(config.redis or RedisConfig())
    elif backend == "postgres":
        module = _load("tiercache_mw.tracking.postgres", backend, config, key_path)
        tracking = module.PostgresTracking(config.postgres or PostgresConfig())
    else:
        raise ConfigError(
            config.source, key_path, "one of ('sqlite', 'redis', 'postgres')", backend
        )
    assert isinstance(tracking, Tracking)
    return tracking

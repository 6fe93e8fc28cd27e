"""YAML / dict configuration -> typed, frozen objects, validated once at load.

Every mistake raises one `ConfigError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiercache_mw.store.entry import Tags

__all__ = [
    "Config",
    "HttpConfig",
    "MemcachedConfig",
    "PostgresConfig",
    "RedisConfig",
    "RouteRule",
    "S3Config",
    "TierConfig",
    "TrackingConfig",
    "TtlRule",
    "load_config",
]

HOUR = 3600.0
GB = 1024**3


@dataclass(frozen=True, slots=True)
class TierConfig:
    backend: str  # hot/cold: ram | memcached | redis; dry: local | s3
    ttl_seconds: float | None  # residency since last use; None = no limit
    max_size_bytes: int | None  # None = no cap
    path: str | None = None  # local dry tier directory
    eviction: str = "sieve"  # RAM tiers: sieve | lru


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    backend: str = "sqlite"  # sqlite | redis | postgres
    path: str = ".tiercache/index.db"  # sqlite file
    flush_interval_seconds: float = 0.5  # how long writes may wait to be batched


@dataclass(frozen=True, slots=True)
class RedisConfig:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    url: str | None = None  # wins over host/port/db when set
    password: str | None = None
    prefix: str = "tiercache:"  # every key and the purge channel live under it


@dataclass(frozen=True, slots=True)
class MemcachedConfig:
    host: str = "localhost"
    port: int = 11211
    prefix: str = "tiercache:"


@dataclass(frozen=True, slots=True)
class S3Config:
    bucket: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None  # else the usual AWS environment variables
    secret_key: str | None = None
    prefix: str = "tiercache/"


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = "postgresql://localhost/postgres"
    table: str = "tiercache_index"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    cache_name: str = "tiercache"  # the name in Cache-Status
    max_entry_bytes: int = 10 * 1024 * 1024  # larger bodies stream through, never buffered
    targeted_cache_control: str | None = None  # e.g. "Tiercache-Cache-Control" (RFC 9213)
    collapse_timeout_seconds: float = 10.0
    expose_surrogate_keys: bool = False
    debug_key: bool = False  # add key= to Cache-Status
    store_set_cookie: bool = False  # store responses that carry Set-Cookie (Set-Cookie is kept)
    heuristic_fraction: float = 0.1  # of (Date - Last-Modified), RFC 9111 §4.2.2
    heuristic_max_seconds: float = 86400.0
    default_ttl_seconds: float = 0.0  # freshness when neither the response nor a rule sets it


@dataclass(frozen=True, slots=True)
class RouteRule:
    pattern: str
    tags: Tags = ()
    cache: bool = True
    regex: Any = None  # compiled re.Pattern[str], set by the loader


@dataclass(frozen=True, slots=True)
class TtlRule:
    tag: Tags  # matches entries carrying all of these pairs; () matches every entry
    ttl_seconds: float | None = None  # HTTP freshness when the response sets none
    override_origin: bool = False  # ttl_seconds wins over the response's own freshness
    hot_ttl_seconds: float | None = None  # residency per tier; None = tier default
    cold_ttl_seconds: float | None = None
    dry_ttl_seconds: float | None = None
    stale_while_revalidate_seconds: float | None = None
    stale_if_error_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    hot: TierConfig = TierConfig("ram", 4 * HOUR, 2 * GB)
    cold: TierConfig = TierConfig("ram", 24 * HOUR, 10 * GB)
    dry: TierConfig = TierConfig("local", None, 100 * GB, path=".tiercache/dry")
    tracking: TrackingConfig = TrackingConfig()
    http: HttpConfig = HttpConfig()
    routes: tuple[RouteRule, ...] = ()
    ttl_rules: tuple[TtlRule, ...] = ()
    redis: RedisConfig | None = None
    memcached: MemcachedConfig | None = None
    s3: S3Config | None = None
    postgres: PostgresConfig | None = None
    source: str = "<defaults>"  # the file path or "<dict>": where errors point
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths resolve against it


def load_config(source: str | Path | dict[str, Any] | None = None) -> Config:
    """Load a YAML file path or a dict; None gives the embedded defaults."""
    raise NotImplementedError

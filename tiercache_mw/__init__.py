"""tiercache_mw: a tiered HTTP response cache for ASGI and WSGI apps.

Hot RAM, then cold RAM / memcached / redis, then dry local disk / S3; RFC 9111 shared-cache
semantics and an RFC 9211 Cache-Status header on every response.
"""

from __future__ import annotations

from tiercache_mw.asgi import CacheMiddleware
from tiercache_mw.config import Config, load_config
from tiercache_mw.errors import BackendError, ConfigError, MissingExtraError, TierCacheError
from tiercache_mw.store.cache import TierCache
from tiercache_mw.wsgi import WSGICacheMiddleware

__all__ = [
    "BackendError",
    "CacheMiddleware",
    "Config",
    "ConfigError",
    "MissingExtraError",
    "TierCache",
    "TierCacheError",
    "WSGICacheMiddleware",
    "load_config",
]

__version__ = "0.2.0"

"""Every exception tiercache_mw raises on purpose.

TierCacheError
├── ConfigError           the user's configuration is wrong (file, key path, expectation)
│   └── MissingExtraError a configured backend needs an optional extra that is not installed
└── BackendError          a tier or tracking backend failed; caught at the tier boundary,
                          logged, counted and turned into a miss, never shown to a client
"""

from __future__ import annotations

__all__ = ["BackendError", "ConfigError", "MissingExtraError", "TierCacheError"]


class TierCacheError(Exception):
    """Base class of every error raised by tiercache_mw."""


class ConfigError(TierCacheError):
    """A configuration value is wrong.

    The message always names where (`source`: a file path or ``<dict>``), which key
    (`key_path`, dotted: ``hot_cache.max_size_gb``, ``routes[2].pattern``) and what was
    expected, so one error is enough to fix the file.
    """

    def __init__(self, source: str, key_path: str, expected: str, got: object = None) -> None:
        self.source = source
        self.key_path = key_path
        self.expected = expected
        self.got = got
        where = f"{source}: {key_path}" if key_path else source
        message = f"{where}: expected {expected}"
        if got is not None:
            message += f", got {got!r}"
        super().__init__(message)


class MissingExtraError(ConfigError):
    """The configuration names a backend whose optional dependency is not installed."""

    def __init__(self, source: str, key_path: str, backend: str, extra: str) -> None:
        super().__init__(
            source,
            key_path,
            f"the {extra!r} extra for backend {backend!r}: pip install 'tiercache-mw[{extra}]'",
        )
        self.extra = extra


class BackendError(TierCacheError):
    """A backend (memcached, redis, S3, disk, database) failed an operation."""

"""Loading and validating configuration (tiercache_mw.config)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache_mw import config as config_module
from tiercache_mw.config import (
    GB,
    HOUR,
    MB,
    Config,
    MemcachedConfig,
    PostgresConfig,
    RedisConfig,
    describe_config,
    load_config,
)
from tiercache_mw.errors import ConfigError, MissingExtraError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


# ---- defaults ---------------------------------------------------------------------------------
def test_no_source_gives_the_embedded_defaults_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.source == "<defaults>"
    assert config.base_dir == tmp_path
    assert (config.hot.backend, config.hot.ttl_seconds, config.hot.max_size_bytes) == (
        "ram",
        4 * HOUR,
        2 * GB,
    )
    assert (config.cold.backend, config.cold.ttl_seconds, config.cold.max_size_bytes) == (
        "ram",
        24 * HOUR,
        10 * GB,
    )
    assert config.hot.eviction == config.cold.eviction == "sieve"
    assert (config.dry.backend, config.dry.ttl_seconds, config.dry.max_size_bytes) == (
        "local",
        None,
        100 * GB,
    )
    assert config.dry.path == str(tmp_path / ".tiercache" / "dry")
    assert config.tracking.backend == "sqlite"
    assert config.tracking.path == str(tmp_path / ".tiercache" / "index.db")
    assert (config.redis, config.memcached, config.s3, config.postgres) == (None,) * 4
    assert config.routes == ()
    assert config.ttl_rules == ()
    assert config.http == Config().http


def test_empty_dict_and_empty_file_give_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    from_file = load_config(path)
    assert from_file.source == str(path)
    assert from_file.hot == load_config({}).hot == Config().hot
    assert from_file.dry.path == str(tmp_path / ".tiercache" / "dry")


def test_config_is_frozen() -> None:
    config = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hot = config.cold  # type: ignore[misc]


# ---- every key and alias ----------------------------------------------------------------------
Get = Callable[[Config], Any]


@pytest.mark.parametrize(
    ("section", "read", "expected"),
    [
        # tiers: backends, durations in hours or seconds, sizes in gb / mb / kb / bytes
        ({"hot_cache": {"ttl_hours": 1.5}}, lambda c: c.hot.ttl_seconds, 5400.0),
        ({"hot_cache": {"ttl_seconds": 90}}, lambda c: c.hot.ttl_seconds, 90.0),
        ({"hot_cache": {"ttl_hours": None}}, lambda c: c.hot.ttl_seconds, None),
        ({"hot_cache": {"max_size_gb": 0.5}}, lambda c: c.hot.max_size_bytes, GB // 2),
        ({"hot_cache": {"max_size_mb": 10}}, lambda c: c.hot.max_size_bytes, 10 * MB),
        ({"hot_cache": {"max_size_kb": 1.5}}, lambda c: c.hot.max_size_bytes, 1536),
        ({"hot_cache": {"max_size_bytes": 1000}}, lambda c: c.hot.max_size_bytes, 1000),
        ({"hot_cache": {"max_size_bytes": "1e6"}}, lambda c: c.hot.max_size_bytes, 10**6),
        ({"hot_cache": {"max_size_gb": 0}}, lambda c: c.hot.max_size_bytes, 0),
        ({"hot_cache": {"eviction": "lru"}}, lambda c: c.hot.eviction, "lru"),
        ({"hot_cache": {"backend": "memcached"}}, lambda c: c.hot.backend, "memcached"),
        ({"cold_cache": {"backend": "redis"}}, lambda c: c.cold.backend, "redis"),
        ({"cold_cache": {"ttl_hours": 48}}, lambda c: c.cold.ttl_seconds, 48 * HOUR),
        ({"cold_cache": {"max_size_gb": 1}}, lambda c: c.cold.max_size_bytes, GB),
        ({"cold_cache": {"eviction": "lru"}}, lambda c: c.cold.eviction, "lru"),
        ({"dry_cache": {"ttl_hours": 720}}, lambda c: c.dry.ttl_seconds, 720 * HOUR),
        ({"dry_cache": {"ttl_seconds": 60}}, lambda c: c.dry.ttl_seconds, 60.0),
        ({"dry_cache": {"ttl_hours": None}}, lambda c: c.dry.ttl_seconds, None),
        ({"dry_cache": {"max_size_gb": None}}, lambda c: c.dry.max_size_bytes, None),
        ({"dry_cache": {"max_size_mb": 5}}, lambda c: c.dry.max_size_bytes, 5 * MB),
        ({"dry_cache": {"path": "/var/cache/tc"}}, lambda c: c.dry.path, "/var/cache/tc"),
        # tracking
        ({"tracking": {"backend": "redis"}}, lambda c: c.tracking.backend, "redis"),
        ({"tracking": {"path": "/tmp/i.db"}}, lambda c: c.tracking.path, "/tmp/i.db"),
        (
            {"tracking": {"flush_interval_seconds": 2}},
            lambda c: c.tracking.flush_interval_seconds,
            2.0,
        ),
        (
            {"tracking": {"flush_interval_hours": 0.5}},
            lambda c: c.tracking.flush_interval_seconds,
            1800.0,
        ),
        # http: every HttpConfig field
        ({"http": {"cache_name": "edge-1"}}, lambda c: c.http.cache_name, "edge-1"),
        ({"http": {"max_entry_bytes": 1024}}, lambda c: c.http.max_entry_bytes, 1024),
        ({"http": {"max_entry_mb": 1}}, lambda c: c.http.max_entry_bytes, MB),
        (
            {"http": {"targeted_cache_control": "Tiercache-Cache-Control"}},
            lambda c: c.http.targeted_cache_control,
            "Tiercache-Cache-Control",
        ),
        (
            {"http": {"targeted_cache_control": None}},
            lambda c: c.http.targeted_cache_control,
            None,
        ),
        (
            {"http": {"collapse_timeout_seconds": 2.5}},
            lambda c: c.http.collapse_timeout_seconds,
            2.5,
        ),
        ({"http": {"expose_surrogate_keys": True}}, lambda c: c.http.expose_surrogate_keys, True),
        ({"http": {"debug_key": True}}, lambda c: c.http.debug_key, True),
        ({"http": {"store_set_cookie": True}}, lambda c: c.http.store_set_cookie, True),
        ({"http": {"heuristic_fraction": 0.2}}, lambda c: c.http.heuristic_fraction, 0.2),
        ({"http": {"heuristic_max_hours": 1}}, lambda c: c.http.heuristic_max_seconds, HOUR),
        ({"http": {"heuristic_max_seconds": 60}}, lambda c: c.http.heuristic_max_seconds, 60.0),
        ({"http": {"default_ttl_seconds": 5}}, lambda c: c.http.default_ttl_seconds, 5.0),
        # shared backends' sections
        ({"redis": {"host": "r1"}}, lambda c: c.redis.host, "r1"),
        ({"redis": {"port": 6380}}, lambda c: c.redis.port, 6380),
        ({"redis": {"db": 3}}, lambda c: c.redis.db, 3),
        ({"redis": {"url": "redis://r:1/2"}}, lambda c: c.redis.url, "redis://r:1/2"),
        ({"redis": {"password": "pw"}}, lambda c: c.redis.password, "pw"),
        ({"redis": {"prefix": "app1:"}}, lambda c: c.redis.prefix, "app1:"),
        ({"redis": None}, lambda c: c.redis, RedisConfig()),
        ({"memcached": {"host": "m1"}}, lambda c: c.memcached.host, "m1"),
        ({"memcached": {"port": 11212}}, lambda c: c.memcached.port, 11212),
        ({"memcached": {"prefix": "x:"}}, lambda c: c.memcached.prefix, "x:"),
        ({"s3": {"bucket": "b"}}, lambda c: c.s3.bucket, "b"),
        (
            {"s3": {"endpoint_url": "http://127.0.0.1:9000"}},
            lambda c: c.s3.endpoint_url,
            "http://127.0.0.1:9000",
        ),
        ({"s3": {"region": "eu-west-1"}}, lambda c: c.s3.region, "eu-west-1"),
        ({"s3": {"access_key": "AK"}}, lambda c: c.s3.access_key, "AK"),
        ({"s3": {"secret_key": "SK"}}, lambda c: c.s3.secret_key, "SK"),
        ({"s3": {"prefix": "cache/"}}, lambda c: c.s3.prefix, "cache/"),
        (
            {"postgres": {"dsn": "postgresql://u@h/db"}},
            lambda c: c.postgres.dsn,
            "postgresql://u@h/db",
        ),
        ({"postgres": {"table": "cache.idx"}}, lambda c: c.postgres.table, "cache.idx"),
        # a backend named without its section runs on that section's defaults
        ({"cold_cache": {"backend": "redis"}}, lambda c: c.redis, RedisConfig()),
        ({"cold_cache": {"backend": "memcached"}}, lambda c: c.memcached, MemcachedConfig()),
        ({"tracking": {"backend": "postgres"}}, lambda c: c.postgres, PostgresConfig()),
        # routes and ttl rules
        ({"routes": [{"pattern": "/a"}]}, lambda c: c.routes[0].tags, ()),
        ({"routes": [{"pattern": "/a"}]}, lambda c: c.routes[0].cache, True),
        ({"routes": [{"pattern": "/a", "cache": False}]}, lambda c: c.routes[0].cache, False),
        (
            {"routes": [{"pattern": "/a", "tags": {"type": "x", "lang": "en"}}]},
            lambda c: c.routes[0].tags,
            (("type", "x"), ("lang", "en")),
        ),
        (
            {"routes": [{"pattern": "/a/{id}"}]},
            lambda c: c.routes[0].regex.pattern,
            r"^/a/(?P<id>[^/]+)\Z",
        ),
        ({"ttl_rules": [{"ttl_seconds": 5}]}, lambda c: c.ttl_rules[0].tag, ()),
        ({"ttl_rules": [{"tag": {"t": "p"}}]}, lambda c: c.ttl_rules[0].tag, (("t", "p"),)),
        ({"ttl_rules": [{"ttl_hours": 1}]}, lambda c: c.ttl_rules[0].ttl_seconds, HOUR),
        (
            {"ttl_rules": [{"ttl_seconds": 5, "override_origin": True}]},
            lambda c: c.ttl_rules[0].override_origin,
            True,
        ),
        ({"ttl_rules": [{"hot_ttl_hours": 1}]}, lambda c: c.ttl_rules[0].hot_ttl_seconds, HOUR),
        ({"ttl_rules": [{"hot_ttl_seconds": 7}]}, lambda c: c.ttl_rules[0].hot_ttl_seconds, 7.0),
        (
            {"ttl_rules": [{"cold_ttl_hours": 6}]},
            lambda c: c.ttl_rules[0].cold_ttl_seconds,
            6 * HOUR,
        ),
        ({"ttl_rules": [{"cold_ttl_seconds": 8}]}, lambda c: c.ttl_rules[0].cold_ttl_seconds, 8.0),
        (
            {"ttl_rules": [{"dry_ttl_hours": 720}]},
            lambda c: c.ttl_rules[0].dry_ttl_seconds,
            720 * HOUR,
        ),
        ({"ttl_rules": [{"dry_ttl_seconds": 9}]}, lambda c: c.ttl_rules[0].dry_ttl_seconds, 9.0),
        (
            {"ttl_rules": [{"stale_while_revalidate_seconds": 30}]},
            lambda c: c.ttl_rules[0].stale_while_revalidate_seconds,
            30.0,
        ),
        (
            {"ttl_rules": [{"stale_while_revalidate_hours": 0.5}]},
            lambda c: c.ttl_rules[0].stale_while_revalidate_seconds,
            1800.0,
        ),
        (
            {"ttl_rules": [{"stale_if_error_seconds": 3600}]},
            lambda c: c.ttl_rules[0].stale_if_error_seconds,
            3600.0,
        ),
        (
            {"ttl_rules": [{"stale_if_error_hours": 2}]},
            lambda c: c.ttl_rules[0].stale_if_error_seconds,
            7200.0,
        ),
    ],
)
def test_each_key_and_alias_sets_its_field(
    section: dict[str, Any], read: Get, expected: Any
) -> None:
    assert read(load_config(section)) == expected


def test_unset_fields_keep_their_defaults_beside_set_ones() -> None:
    config = load_config({"hot_cache": {"ttl_hours": 1}, "s3": {"bucket": "b"}})
    assert config.hot.max_size_bytes == 2 * GB
    assert config.hot.backend == "ram"
    assert config.s3 is not None
    assert config.s3.prefix == "tiercache/"


def test_yaml_file_paths_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "tiercache.yaml").write_text(
        "dry_cache: {path: data/dry}\ntracking: {path: ../index.db}\n"
        "hot_cache: {max_size_gb: 0.25, ttl_hours: 0.5}\n"
    )
    monkeypatch.chdir(tmp_path)
    for source in ("conf/tiercache.yaml", Path("conf/tiercache.yaml")):
        config = load_config(source)
        assert config.source == "conf/tiercache.yaml"
        assert config.base_dir == conf
        assert config.dry.path == str(conf / "data" / "dry")
        assert config.tracking.path == str(tmp_path / "index.db")
        assert config.hot.max_size_bytes == GB // 4
        assert config.hot.ttl_seconds == 1800.0


def test_dict_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "abs" / "i.db")
    config = load_config({"dry_cache": {"path": "d"}, "tracking": {"path": absolute}})
    assert config.source == "<dict>"
    assert config.dry.path == str(tmp_path / "d")
    assert config.tracking.path == absolute


def test_yaml_merge_keys_work(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(
        "hot_cache: &ram {backend: ram, eviction: lru, ttl_hours: 1}\n"
        + "cold_cache: {<<: *ram, ttl_hours: 2}\n"
    )
    config = load_config(path)
    assert config.cold.eviction == "lru"
    assert config.cold.ttl_seconds == 2 * HOUR


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "key_path", "says"),
    [
        (
            {"hot_cache": {"max_size_gb": "lots"}},
            "hot_cache.max_size_gb",
            "number of gigabytes >= 0",
        ),
        ({"hot_cache": {"max_size_gb": -1}}, "hot_cache.max_size_gb", ">= 0, got -1"),
        ({"hot_cache": {"max_size_gb": None}}, "hot_cache.max_size_gb", "got null"),
        ({"hot_cache": {"max_size_mb": True}}, "hot_cache.max_size_mb", "got True"),
        ({"hot_cache": {"max_size_gb": float("inf")}}, "hot_cache.max_size_gb", ">= 0"),
        ({"hot_cache": {"ttl_hours": -2}}, "hot_cache.ttl_hours", "number of hours >= 0"),
        (
            {"hot_cache": {"ttl_hours": 1, "ttl_seconds": 5}},
            "hot_cache.ttl_seconds",
            "only one of ttl_hours and ttl_seconds",
        ),
        (
            {"hot_cache": {"max_size_gb": 1, "max_size_mb": 5}},
            "hot_cache.max_size_mb",
            "only one of max_size_gb and max_size_mb",
        ),
        ({"hot_cache": {"backend": "floppy"}}, "hot_cache.backend", "one of ram, memcached, redis"),
        ({"cold_cache": {"backend": "s3"}}, "cold_cache.backend", "one of ram, memcached, redis"),
        ({"dry_cache": {"backend": "ram"}}, "dry_cache.backend", "one of local, s3"),
        ({"tracking": {"backend": "mysql"}}, "tracking.backend", "one of sqlite, redis, postgres"),
        ({"hot_cache": {"eviction": "fifo"}}, "hot_cache.eviction", "one of sieve, lru"),
        ({"hot_cache": {"max_sise_gb": 1}}, "hot_cache.max_sise_gb", "did you mean max_size_gb?"),
        ({"hot_cache": {"path": "x"}}, "hot_cache.path", "one of the keys backend, eviction,"),
        (
            {"dry_cache": {"eviction": "lru"}},
            "dry_cache.eviction",
            "one of the keys backend, max_size_bytes",
        ),
        ({"hot_cahce": {}}, "hot_cahce", "did you mean hot_cache?"),
        ({"hot_cache": 3}, "hot_cache", "a mapping with keys backend, eviction"),
        ({"hot_cache": ["ram"]}, "hot_cache", "got a list"),
        ({"dry_cache": {"path": ""}}, "dry_cache.path", "a directory or file path"),
        ({"dry_cache": {"path": 5}}, "dry_cache.path", "a directory or file path"),
        (
            {"tracking": {"flush_interval_seconds": None}},
            "tracking.flush_interval_seconds",
            "seconds >= 0, got null",
        ),
        ({"http": {"debug_key": 1}}, "http.debug_key", "true or false, got 1"),
        ({"http": {"debug_key": "yes"}}, "http.debug_key", "true or false"),
        ({"http": {"cache_name": "my cache"}}, "http.cache_name", "a token"),
        (
            {"http": {"targeted_cache_control": "Bad Header"}},
            "http.targeted_cache_control",
            "header field name",
        ),
        ({"http": {"heuristic_fraction": 1.5}}, "http.heuristic_fraction", "from 0 to 1"),
        ({"http": {"max_entry_bytes": "10MB"}}, "http.max_entry_bytes", "number of bytes"),
        (
            {"http": {"colapse_timeout_seconds": 1}},
            "http.colapse_timeout_seconds",
            "did you mean collapse_timeout_seconds?",
        ),
        ({"routes": {"pattern": "/a"}}, "routes", "a list of mappings"),
        ({"routes": ["/a"]}, "routes[0]", "a mapping with keys cache, pattern, tags"),
        ({"routes": [{"pattern": "/a"}, {"tags": {"t": "x"}}]}, "routes[1].pattern", "got nothing"),
        ({"routes": [{"pattern": "/a"}, {"pattern": 42}]}, "routes[1].pattern", "route pattern"),
        (
            {"routes": [{"pattern": "/a"}, {"pattern": "/b"}, {"pattern": "/x/{id:slug}"}]},
            "routes[2].pattern",
            "unknown convertor 'slug'",
        ),
        ({"routes": [{"pattern": "a/b"}]}, "routes[0].pattern", "starts with '/'"),
        ({"routes": [{"pattern": "/a", "tags": ["t"]}]}, "routes[0].tags", "mapping of tag names"),
        (
            {"routes": [{"pattern": "/a", "tags": {"v": 2}}]},
            "routes[0].tags.v",
            "a string (quote numbers",
        ),
        ({"routes": [{"pattern": "/a", "cache": "no"}]}, "routes[0].cache", "true or false"),
        (
            {"routes": [{"pattern": "/a", "ttl": 5}]},
            "routes[0].ttl",
            "one of the keys cache, pattern, tags",
        ),
        ({"ttl_rules": [{"tag": {"t": "p"}, "ttl": 5}]}, "ttl_rules[0].ttl", "did you mean ttl_"),
        ({"ttl_rules": [{"ttl_seconds": "5m"}]}, "ttl_rules[0].ttl_seconds", "number of seconds"),
        (
            {"ttl_rules": [{"ttl_hours": 1, "ttl_seconds": 1}]},
            "ttl_rules[0].ttl_seconds",
            "only one of",
        ),
        (
            {"ttl_rules": [{"tag": {"t": "p"}, "override_origin": True}]},
            "ttl_rules[0].override_origin",
            "ttl_seconds beside override_origin",
        ),
        ({"redis": {"port": True}}, "redis.port", "a port number"),
        ({"redis": {"port": 70000}}, "redis.port", "from 1 to 65535"),
        ({"redis": {"port": "6379"}}, "redis.port", "a port number"),
        ({"redis": {"db": -1}}, "redis.db", "a database number"),
        ({"redis": {"url": "http://r"}}, "redis.url", "redis://"),
        ({"redis": {"user": "x"}}, "redis.user", "one of the keys db, host, password"),
        ({"memcached": {"prefix": "a b"}}, "memcached.prefix", "without spaces"),
        ({"s3": {"endpoint_url": "minio:9000"}}, "s3.endpoint_url", "http:// or https://"),
        ({"s3": {"bucket": "a/b"}}, "s3.bucket", "a bucket name"),
        (
            {"dry_cache": {"backend": "s3"}},
            "s3.bucket",
            "a bucket name, since dry_cache.backend is s3",
        ),
        ({"dry_cache": {"backend": "s3"}, "s3": {"region": "x"}}, "s3.bucket", "a bucket name"),
        ({"postgres": {"table": "idx; drop table x"}}, "postgres.table", "a table name"),
        # URLs and hosts every connection would fail on (the clients parse with urllib.parse)
        ({"redis": {"url": "redis://r:abc/0"}}, "redis.url", "port is a number from 0 to 65535"),
        ({"redis": {"url": "redis://r:70000"}}, "redis.url", "port is a number from 0 to 65535"),
        ({"redis": {"url": "redis://[::1:6379"}}, "redis.url", "URL that parses (Invalid IPv6"),
        ({"redis": {"url": "unix://"}}, "redis.url", "with the socket's path"),
        ({"redis": {"url": "redis://red is:6379"}}, "redis.url", "whose host is a host name"),
        ({"redis": {"host": "localhost:6379"}}, "redis.host", "alone (no scheme, port, path"),
        ({"redis": {"host": "redis://localhost"}}, "redis.host", "alone (no scheme, port, path"),
        ({"redis": {"host": "::1:x"}}, "redis.host", "a host name or IP address alone"),
        ({"memcached": {"host": "localhost:11211"}}, "memcached.host", "a host name or IP"),
        ({"memcached": {"host": "/run/memcached.sock"}}, "memcached.host", "no scheme, port, path"),
        ({"memcached": {"host": "mc 1"}}, "memcached.host", "or spaces"),
        ({"s3": {"endpoint_url": "http://:9000"}}, "s3.endpoint_url", "URL with a host name"),
        ({"s3": {"endpoint_url": "http://minio:90000"}}, "s3.endpoint_url", "from 0 to 65535"),
        ({"s3": {"endpoint_url": "http://minio:port"}}, "s3.endpoint_url", "from 0 to 65535"),
        ({"s3": {"endpoint_url": "http://minio/ x"}}, "s3.endpoint_url", "without spaces"),
        ({"postgres": {"dsn": "host=db dbname=app"}}, "postgres.dsn", "a postgresql:// or"),
        ({"postgres": {"dsn": "mysql://db/app"}}, "postgres.dsn", "postgres:// DSN"),
    ],
)
def test_each_mistake_raises_one_config_error_with_its_key_path(
    data: dict[str, Any], key_path: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    error = info.value
    assert not isinstance(error, MissingExtraError)
    assert (error.source, error.key_path) == ("<dict>", key_path)
    assert str(error).startswith(f"<dict>: {key_path}: expected ")
    assert says in str(error)


@pytest.mark.parametrize(
    "data",
    [
        {"redis": {"url": "redis://:s3cretpw@cache.internal:63790x/0"}},
        {"redis": {"url": "rediss://app:s3cretpw@bad host/0"}},
        {"postgres": {"dsn": "host=db dbname=app password=s3cretpw"}},
        {"redis": {"url": "redis://:s3@cretpw@cache.internal:63790x/0"}},
        {"redis": {"url": "redis://app:s3/cretpw@cache.internal:6379x/0"}},
        {"postgres": {"dsn": "host=db password='s3 cretpw' dbname=app"}},
    ],
)
def test_an_error_on_a_url_or_dsn_masks_its_password(data: dict[str, Any]) -> None:
    """Config errors end up in logs: the value is shown as check-config shows it, even when
    the password holds an "@", a "/" or a space."""
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert "cretpw" not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("data", "read", "expected"),
    [
        ({"redis": {"url": "redis://[::1]:6379/0"}}, lambda c: c.redis.url, "redis://[::1]:6379/0"),
        (
            {"redis": {"url": "rediss://u:p w@r:6380/1"}},
            lambda c: c.redis.url,
            "rediss://u:p w@r:6380/1",
        ),
        (
            {"redis": {"url": "unix:///run/redis.sock"}},
            lambda c: c.redis.url,
            "unix:///run/redis.sock",
        ),
        ({"redis": {"url": None}}, lambda c: c.redis.url, None),
        ({"redis": {"host": "::1"}}, lambda c: c.redis.host, "::1"),
        ({"redis": {"host": "fe80::1%eth0"}}, lambda c: c.redis.host, "fe80::1%eth0"),
        ({"redis": {"host": "10.0.0.7"}}, lambda c: c.redis.host, "10.0.0.7"),
        (
            {"memcached": {"host": "cache-1.internal"}},
            lambda c: c.memcached.host,
            "cache-1.internal",
        ),
        (
            {"s3": {"endpoint_url": "http://[::1]:9000"}},
            lambda c: c.s3.endpoint_url,
            "http://[::1]:9000",
        ),
        (
            {"s3": {"endpoint_url": "https://s3.eu-west-1.amazonaws.com"}},
            lambda c: c.s3.endpoint_url,
            "https://s3.eu-west-1.amazonaws.com",
        ),
        (
            {"postgres": {"dsn": "postgres://app@db1:5432,db2:5433/app"}},
            lambda c: c.postgres.dsn,
            "postgres://app@db1:5432,db2:5433/app",
        ),
    ],
)
def test_urls_and_hosts_the_clients_take_load(
    data: dict[str, Any], read: Get, expected: Any
) -> None:
    assert read(load_config(data)) == expected


def test_the_message_reads_file_key_expected_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tiercache.yaml").write_text("hot_cache:\n  max_size_gb: lots\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("conf/tiercache.yaml")
    assert str(info.value) == (
        "conf/tiercache.yaml: hot_cache.max_size_gb: expected a number of gigabytes >= 0,"
        " got 'lots'"
    )


@pytest.mark.parametrize(
    ("text", "key_path", "says"),
    [
        ("hot_cache: {max_size_gb: [1\ncold_cache: {}\n", "line 2, column 11", "valid YAML"),
        ("hot_cache:\n  ttl_hours: 1\n   bad: indent\n", "line 3, column 7", "valid YAML"),
        (
            "hot_cache:\n  ttl_hours: 1\n  ttl_hours: 2\n",
            "line 3, column 3",
            "duplicate key 'ttl_hours'",
        ),
        ("- hot_cache\n- cold_cache\n", "", "a mapping of sections (cold_cache, dry_cache,"),
        ("just a string\n", "", "got 'just a string'"),
        ("routes:\n  - {pattern: /a}\n  - {pattern: 42}\n", "routes[1].pattern", "got 42"),
        ("dry_cache: {ttl_hours: forever}\n", "dry_cache.ttl_hours", "or null for no expiry"),
    ],
)
def test_file_errors_name_the_file_and_where(
    tmp_path: Path, text: str, key_path: str, says: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.key_path == key_path
    assert str(info.value).startswith(f"{path}: {key_path}: " if key_path else f"{path}: ")
    assert says in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "missing.yaml", "expected an existing YAML file, got no such file"),
        (lambda d: d, "expected a YAML file, got a directory"),
        (lambda d: _write_bytes(d / "latin1.yaml", b"http: {cache_name: caf\xe9}\n"), "UTF-8"),
    ],
)
def test_unreadable_files_raise_config_error_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], says: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: expected ")
    assert says in str(info.value)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_source_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="a file path, a dict or None"):
        load_config(42)  # type: ignore[arg-type]


# ---- local paths: a path no write could use fails at load ------------------------------------
def _file(path: Path, text: str = "") -> Path:
    path.write_text(text)
    return path


def _dangling_symlink(directory: Path) -> Path:
    link = directory / "link"
    link.symlink_to(directory / "gone")
    return link


@pytest.mark.parametrize(
    ("section", "make", "says"),
    [
        ("dry_cache", lambda d: _file(d / "dry"), "(it is a file)"),
        ("dry_cache", lambda d: _file(d / "f") / "cache" / "dry", "/f is a file)"),
        ("dry_cache", _dangling_symlink, "(it is a symlink that cannot be followed"),
        ("dry_cache", lambda d: _dangling_symlink(d) / "dry", "/link is a symlink that cannot"),
        ("tracking", lambda d: d, "(it is a directory)"),
        ("tracking", lambda d: _file(d / "f") / "index.db", "/f is a file)"),
        (
            "tracking",
            lambda d: _file(d / "notes.txt", "hot_cache: {ttl_hours: 1}\n"),
            "(it is a file that is not an SQLite database)",
        ),
    ],
)
def test_a_path_no_write_could_use_fails_at_load_naming_file_key_and_why(
    tmp_path: Path, section: str, make: Callable[[Path], Path], says: str
) -> None:
    target = make(tmp_path)
    config_file = tmp_path / "tiercache.yaml"
    config_file.write_text(f"{section}:\n  path: {json.dumps(str(target))}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file)
    assert info.value.key_path == f"{section}.path"
    assert str(info.value).startswith(f"{config_file}: {section}.path: expected ")
    assert f"got {str(target)!r} (" in str(info.value)
    assert says in str(info.value)


def test_a_relative_path_is_checked_where_it_resolves_and_shown_as_written(
    tmp_path: Path,
) -> None:
    _file(tmp_path / "data")
    config_file = tmp_path / "tiercache.yaml"
    config_file.write_text("dry_cache: {path: data/dry}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file)
    assert str(info.value) == (
        f"{config_file}: dry_cache.path: expected a directory this process can create or"
        f" write in, got 'data/dry' ({tmp_path / 'data'} is a file)"
    )


NOBODY = 65534  # the unprivileged user and group on Linux


@pytest.fixture
def searchable_dir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is private to its owner)."""
    with tempfile.TemporaryDirectory() as name:
        os.chmod(name, 0o755)
        yield Path(name)


def _load_error_as_unprivileged_user(data: dict[str, Any], cwd: Path) -> str:
    """The ConfigError message load_config(data) raises for a user without root's rights
    ("" when it loads). Root may write anywhere, so as root the load runs in a child process
    whose effective user is nobody; this process keeps its rights."""
    if os.geteuid() != 0:
        try:
            load_config(data)
        except ConfigError as exc:
            return str(exc)
        return ""
    code = (
        "import json, os, sys\n"
        "from tiercache_mw.config import load_config\n"
        "from tiercache_mw.errors import ConfigError\n"
        f"os.setegid({NOBODY})\n"
        f"os.seteuid({NOBODY})\n"
        "try:\n"
        "    load_config(json.loads(sys.argv[1]))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    package_root = str(Path(config_module.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(data)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": package_root},  # the tiercache_mw under test
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("section", "under_locked", "says"),
    [
        ("dry_cache", "dry", "locked is a directory this process may not write in)"),
        ("dry_cache", "a/b/dry", "locked is a directory this process may not write in)"),
        ("tracking", "index.db", "locked is a directory this process may not write in)"),
        ("tracking", "existing.db", "(it is a file this process may not write)"),
    ],
)
def test_a_path_this_user_may_not_write_fails_at_load(
    searchable_dir: Path, section: str, under_locked: str, says: str
) -> None:
    locked = searchable_dir / "locked"
    locked.mkdir()
    sqlite3.connect(locked / "existing.db").close()
    os.chmod(locked / "existing.db", 0o444)
    os.chmod(locked, 0o555)
    data = {section: {"path": str(locked / under_locked)}}
    if os.geteuid() == 0:
        load_config(data)  # root itself may write there
    message = _load_error_as_unprivileged_user(data, searchable_dir)
    assert message.startswith(f"<dict>: {section}.path: expected ")
    assert message.endswith(says)


def test_paths_that_can_work_load_and_loading_creates_nothing(tmp_path: Path) -> None:
    database = tmp_path / "db" / "index.db"
    database.parent.mkdir()
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    (tmp_path / "empty.db").touch()  # sqlite makes an empty file a database
    # Another process creating the database this moment: a part of the header, then zeros.
    (tmp_path / "being-written.db").write_bytes(b"SQLite f" + bytes(100))
    (tmp_path / "dry").mkdir()
    before = sorted(tmp_path.rglob("*"))
    for dry, tracking in [
        (tmp_path / "new" / "deeper" / "dry", tmp_path / "new" / "index.db"),
        (tmp_path / "dry", database),
        (tmp_path / "dry", tmp_path / "empty.db"),
        (tmp_path / "dry", tmp_path / "being-written.db"),
    ]:
        config = load_config({"dry_cache": {"path": str(dry)}, "tracking": {"path": str(tracking)}})
        assert (config.dry.path, config.tracking.path) == (str(dry), str(tracking))
    assert sorted(tmp_path.rglob("*")) == before


def test_a_path_is_checked_only_for_the_backend_that_uses_it(tmp_path: Path) -> None:
    a_file = _file(tmp_path / "f")
    config = load_config(
        {
            "dry_cache": {"backend": "s3", "path": str(a_file)},
            "s3": {"bucket": "b"},
            "tracking": {"backend": "redis", "path": str(tmp_path)},
        }
    )
    assert (config.dry.backend, config.tracking.backend) == ("s3", "redis")


def test_paths_left_at_their_defaults_are_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TierCache() must still start in a directory where the default paths cannot be made:
    # the dry tier then fails its writes (logged, counted), as it always did.
    _file(tmp_path / ".tiercache")
    monkeypatch.chdir(tmp_path)
    assert load_config({}).dry.path == str(tmp_path / ".tiercache" / "dry")
    with pytest.raises(ConfigError, match=r"dry_cache\.path: .*\.tiercache is a file"):
        load_config({"dry_cache": {"path": ".tiercache/dry"}})


# ---- optional extras --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "module", "key_path", "extra"),
    [
        ({"hot_cache": {"backend": "memcached"}}, "aiomcache", "hot_cache.backend", "memcached"),
        ({"cold_cache": {"backend": "memcached"}}, "aiomcache", "cold_cache.backend", "memcached"),
        ({"cold_cache": {"backend": "redis"}}, "redis", "cold_cache.backend", "redis"),
        ({"tracking": {"backend": "redis"}}, "redis", "tracking.backend", "redis"),
        ({"redis": {"host": "localhost"}}, "redis", "redis", "redis"),
        (
            {"dry_cache": {"backend": "s3"}, "s3": {"bucket": "b"}},
            "aiobotocore",
            "dry_cache.backend",
            "s3",
        ),
        ({"tracking": {"backend": "postgres"}}, "asyncpg", "tracking.backend", "postgres"),
    ],
)
def test_backend_without_its_client_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, data: dict[str, Any], module: str, key_path: str, extra: str
) -> None:
    load_config(data)  # installed here: loads
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == module else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingExtraError) as info:
        load_config(data)
    assert info.value.key_path == key_path
    assert info.value.extra == extra
    assert f"pip install 'tiercache-mw[{extra}]'" in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_embedded_backends_need_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    assert load_config({}).hot.backend == "ram"


# ---- describe_config --------------------------------------------------------------------------
def test_describe_config_lists_routes_and_rules_in_order_and_masks_secrets() -> None:
    config = load_config(
        {
            "routes": [
                {"pattern": "/account/**", "cache": False},
                {"pattern": "/products/{id}", "tags": {"type": "product"}},
            ],
            "ttl_rules": [
                {"tag": {"type": "product"}, "ttl_seconds": 300, "hot_ttl_hours": 1},
                {"ttl_seconds": 5, "override_origin": True},
            ],
            "redis": {"url": "redis://user:hunter2@r:6379/0"},
            "s3": {"bucket": "b", "access_key": "AK", "secret_key": "topsecret"},
            "postgres": {"dsn": "postgresql://app:pgsecret@db/app"},
        }
    )
    text = describe_config(config)
    assert re.search(r"1\. /account/\*\*\s+cache: false", text)
    assert re.search(r"2\. /products/\{id\}\s+cached, tags type=product", text)
    assert "1. type=product: ttl 300 s (when the response sets none), hot residency 1 h" in text
    assert "2. (every entry): ttl 5 s (always)" in text
    assert "purges broadcast" in text
    for secret in ("hunter2", "topsecret", "pgsecret", "AK"):
        assert secret not in text


def test_describe_config_says_purges_stay_local_without_redis() -> None:
    text = describe_config(load_config({}))
    assert "purges stay in this process" in text
    assert "routes: none" in text


# ---- the reference stays complete -------------------------------------------------------------
def test_docs_example_loads_and_every_key_is_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DOCS.read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert example is not None
    path = tmp_path / "tiercache.yaml"
    path.write_text(example.group(1))
    monkeypatch.chdir(tmp_path)
    config = load_config(path)
    assert config.routes
    assert config.ttl_rules
    sections = {
        name: getattr(config_module, attr)
        for name, attr in (
            ("hot_cache", "_HOT_COLD"),
            ("dry_cache", "_DRY"),
            ("tracking", "_TRACKING"),
            ("http", "_HTTP"),
            ("routes", "_ROUTE"),
            ("ttl_rules", "_TTL_RULE"),
            ("redis", "_REDIS"),
            ("memcached", "_MEMCACHED"),
            ("s3", "_S3"),
            ("postgres", "_POSTGRES"),
        )
    }
    missing = [
        f"{name}.{key}"
        for name, section in sections.items()
        for key in section.keys
        if f"`{key}`" not in text
    ]
    assert missing == []
    assert os.path.isabs(config.dry.path or "")

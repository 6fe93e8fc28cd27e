"""Session-wide real servers (memcached, redis, PostgreSQL, S3) for the `services` tests.

A server that cannot start fails the tests that need it with a message naming the program
and `bash .ci/install-services.sh`; TIERCACHE_SKIP_SERVICES=1 skips them instead.
Tests share one server per kind and keep apart by a unique prefix, bucket or table.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.services import (
    PostgresServer,
    S3Server,
    ServerProcess,
    ServiceUnavailable,
    start_memcached,
    start_postgres,
    start_redis,
    start_s3,
)

if TYPE_CHECKING:  # imported lazily below: a broken package must not break collection
    from tiercache_mw.config import MemcachedConfig, PostgresConfig, RedisConfig, S3Config

SKIP_ENV = "TIERCACHE_SKIP_SERVICES"


def services_skipped() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not services_skipped():
        return
    skip = pytest.mark.skip(reason=f"{SKIP_ENV}=1: tests that need real servers are skipped")
    for item in items:
        if item.get_closest_marker("services") is not None:
            item.add_marker(skip)


def _unavailable(error: ServiceUnavailable) -> None:
    if services_skipped():
        pytest.skip(str(error))
    pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[ServerProcess]:
    try:
        server = start_memcached()
    except ServiceUnavailable as error:
        _unavailable(error)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ServerProcess]:
    try:
        server = start_redis()
    except ServiceUnavailable as error:
        _unavailable(error)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = start_postgres()
    except ServiceUnavailable as error:
        _unavailable(error)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        server = start_s3()
    except ServiceUnavailable as error:
        _unavailable(error)
    yield server
    server.stop()


@pytest.fixture
def private_servers() -> Iterator[Callable[[str], ServerProcess]]:
    """Start a server of one's own (`"redis"` or `"memcached"`) that a test may kill."""
    started: list[ServerProcess] = []
    starters = {"redis": start_redis, "memcached": start_memcached}

    def start(kind: str) -> ServerProcess:
        try:
            server = starters[kind]()
        except ServiceUnavailable as error:
            _unavailable(error)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def unique() -> str:
    """A name no other test uses: prefixes, buckets, tables."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_settings(redis_server: ServerProcess, unique: str) -> RedisConfig:
    from tiercache_mw.config import RedisConfig

    return RedisConfig(host="127.0.0.1", port=redis_server.port, prefix=f"{unique}:")


@pytest.fixture
def memcached_settings(memcached_server: ServerProcess, unique: str) -> MemcachedConfig:
    from tiercache_mw.config import MemcachedConfig

    return MemcachedConfig(host="127.0.0.1", port=memcached_server.port, prefix=f"{unique}:")


@pytest.fixture
def s3_settings(s3_server: S3Server, unique: str) -> S3Config:
    from tiercache_mw.config import S3Config

    return S3Config(**s3_server.config(bucket=unique))


@pytest.fixture
def postgres_settings(postgres_server: PostgresServer, unique: str) -> PostgresConfig:
    from tiercache_mw.config import PostgresConfig

    return PostgresConfig(dsn=postgres_server.dsn, table=f"idx_{unique}")

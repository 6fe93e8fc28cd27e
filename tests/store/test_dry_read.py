"""Dry hits read on the caller's thread (hot and cold in RAM, dry on local disk): served while
the cache's loop thread is busy, and still a miss for a key being deleted, a corrupt file or
an expired one. The page-cache-only read (`LocalTier.read_cached`) against the real kernel."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.store.test_cache import MISSING, config, settle
from tiercache_mw.store.cache import TierCache
from tiercache_mw.store.entry import Entry
from tiercache_mw.store.local import READ_IN_THREAD, LocalTier, ReadInThread

VALUE = b"v" * 100


def page_cache_reads(directory: Path) -> bool:
    """Whether reads from the page cache only (`preadv2` with `RWF_NOWAIT`) work on the
    filesystem of `directory`: ext4, xfs and btrfs take them; tmpfs and overlayfs (Docker,
    a Fedora /tmp) refuse them and macOS has no such flag, so `read_cached` hands every hit
    to a worker thread there. Asked of the kernel, not of the code under test."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None or not hasattr(os, "preadv"):
        return False
    probe = directory / "rwf-nowait-probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, flag)
    except BlockingIOError:
        return True  # supported, only not cached
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)
        probe.unlink()
    return True


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[TierCache]:
    made = TierCache(config(tmp_path))
    await made.start()
    yield made
    await made.close()


async def in_dry_only(cache: TierCache, key: str, value: bytes = VALUE) -> LocalTier:
    """Store `key` in the dry tier alone (written through the tier, so in the page cache)."""
    dry = cache.dry
    assert isinstance(dry, LocalTier)
    await dry.set(cache.make_entry(key, value, (), cache.residency_for(())))
    return dry


def with_dry_tier(tmp_path: Path, tier: type[LocalTier]) -> TierCache:
    """A cache whose local dry tier is an instance of `tier` (a gated subclass), installed
    where the caller's-thread reads look for it too."""
    cache = TierCache(config(tmp_path))
    cache.dry = tier("dry", cache.config.dry, tmp_path / "dry")
    cache._dry_below_ram = cache.dry
    return cache


@pytest.fixture
def busy_loop(cache: TierCache) -> Iterator[threading.Event]:
    """The cache's loop thread stuck in a blocking call until the event yielded is set, at
    the latest when the test ends."""
    release = threading.Event()
    stuck = threading.Event()

    async def block() -> None:
        stuck.set()
        release.wait(30)  # deliberately blocking: nothing else runs on that loop meanwhile

    cache._loop.submit(block())
    assert stuck.wait(10)
    yield release
    release.set()


async def test_a_dry_hit_is_served_while_the_loop_thread_is_busy(
    cache: TierCache, busy_loop: threading.Event, tmp_path: Path
) -> None:
    dry = await in_dry_only(cache, "k")  # written from a worker thread of this test's loop
    if page_cache_reads(tmp_path):
        found = await asyncio.wait_for(cache.lookup("k"), 5)
    else:
        # No page-cache read here: the hit goes through the loop thread to a worker, and is
        # served once the loop is free.
        assert dry.read_cached("k") is READ_IN_THREAD
        looking = asyncio.ensure_future(cache.lookup("k"))
        busy_loop.set()
        found = await asyncio.wait_for(looking, 5)
    assert found is not None
    assert (found[0].value, found[1]) == (VALUE, "dry")
    assert cache.get_hot("k") is found[0], "promoted to hot"


async def test_a_blocking_dry_hit_is_served_while_the_loop_thread_is_busy(
    cache: TierCache, busy_loop: threading.Event
) -> None:
    await in_dry_only(cache, "k")
    found = await asyncio.wait_for(asyncio.to_thread(cache.lookup_blocking, "k"), 5)
    assert found is not None
    assert (found[0].value, found[1]) == (VALUE, "dry")
    assert cache.get_hot("k") is found[0], "promoted to hot"


@pytest.mark.parametrize("blocking", [False, True], ids=["lookup", "lookup_blocking"])
async def test_a_lookup_during_a_delete_does_not_bring_the_key_back(
    tmp_path: Path, blocking: bool
) -> None:
    """The lookup starts after the delete marked the reads under way but before the dry
    file is unlinked: it may find the file, and must not promote it to hot."""
    unlinking = threading.Event()
    gate = threading.Event()

    class GatedDry(LocalTier):
        def _delete(self, key: str) -> bool:
            unlinking.set()
            gate.wait(10)
            return super()._delete(key)

    cache = with_dry_tier(tmp_path, GatedDry)
    try:
        await cache.start()
        await in_dry_only(cache, "k")
        deleting = asyncio.ensure_future(cache.delete("k"))
        await asyncio.to_thread(unlinking.wait, 10)
        if blocking:
            found = await asyncio.to_thread(cache.lookup_blocking, "k")
        else:
            found = await cache.lookup("k")
        assert found is None
        gate.set()
        assert await deleting is True
        assert await cache.get("k", MISSING) is MISSING
        assert cache.get_hot("k") is None
    finally:
        gate.set()
        await cache.close()


@pytest.mark.parametrize("blocking", [False, True], ids=["lookup", "lookup_blocking"])
async def test_a_corrupt_dry_file_is_a_logged_miss_and_removed(
    cache: TierCache, blocking: bool, caplog: pytest.LogCaptureFixture
) -> None:
    dry = await in_dry_only(cache, "k")
    dry.path_for("k").write_bytes(b"\x93\x01truncated")
    with caplog.at_level(logging.WARNING):
        if blocking:
            found = await asyncio.to_thread(cache.lookup_blocking, "k")
        else:
            found = await cache.lookup("k")
    assert found is None
    assert "removing unreadable cache file" in caplog.text
    assert not dry.path_for("k").exists()
    stats = await cache.stats()
    assert (stats["misses"], stats["dry_hits"], stats["dry_errors"]) == (1, 0, 0)


async def test_an_expired_dry_file_is_a_miss_and_removed(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path))
    try:
        await cache.start()
        dry = cache.dry
        assert isinstance(dry, LocalTier)
        residency = cache.residency_for((), ttl_seconds=60.0)
        await dry.set(cache.make_entry("k", VALUE, (), residency))
        old = time.time() - 120
        os.utime(dry.path_for("k"), (old, old))
        assert dry.read_cached("k") is READ_IN_THREAD, "removing it is a worker thread's job"
        assert await cache.lookup("k") is None
        assert not dry.path_for("k").exists()
    finally:
        await cache.close()


async def test_a_hit_read_on_the_callers_thread_touches_its_file_later(
    cache: TierCache, tmp_path: Path
) -> None:
    dry = await in_dry_only(cache, "k")
    path = dry.path_for("k")
    old = time.time() - 1000
    os.utime(path, (old, old))
    if not page_cache_reads(tmp_path):
        # No read on the caller's thread here: the worker that reads the file touches it.
        assert dry.read_cached("k") is READ_IN_THREAD
        assert await cache.lookup("k") is not None
        assert path.stat().st_mtime == pytest.approx(time.time(), abs=5)
        return
    assert dry.read_cached("k") is not READ_IN_THREAD
    assert path.stat().st_mtime == pytest.approx(old), "no metadata write on the caller's thread"
    await cache._call(cache._sweep())
    assert path.stat().st_mtime == pytest.approx(time.time(), abs=5)


async def test_read_cached_leaves_a_file_not_in_the_page_cache_to_a_thread(
    cache: TierCache,
) -> None:
    dry = await in_dry_only(cache, "k")
    fd = os.open(dry.path_for("k"), os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages only can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert dry.read_cached("k") is READ_IN_THREAD
    found = await cache.lookup("k")  # read in a worker thread instead
    assert found is not None
    assert (found[0].value, found[1]) == (VALUE, "dry")


async def test_read_cached_answers_none_for_a_missing_key_and_reads_packed_entries(
    cache: TierCache, tmp_path: Path
) -> None:
    dry = cache.dry
    assert isinstance(dry, LocalTier)
    residency = cache.residency_for(())
    entries = [cache.make_entry(f"p{n}", b"%d" % n * 50, (), residency) for n in range(5)]
    assert await dry.set_many(entries) == [None] * 5
    assert os.stat(dry.path_for("p0")).st_nlink > 1, "written as one pack"
    assert dry.read_cached("absent") is None
    on_this_thread = page_cache_reads(tmp_path)
    for n in range(5):
        cached = dry.read_cached(f"p{n}")
        if on_this_thread:
            assert cached is not READ_IN_THREAD
            entry = cached
        else:  # no page-cache read here: a worker reads the pack instead
            assert cached is READ_IN_THREAD
            entry = await dry.get(f"p{n}")
        assert entry is not None
        assert entry.value == b"%d" % n * 50
    await settle(cache)


async def test_a_miss_without_page_cache_reads_needs_no_worker_thread(
    cache: TierCache, busy_loop: threading.Event
) -> None:
    """Where the filesystem refused `RWF_NOWAIT` (tmpfs, overlayfs) or the platform has none,
    a hit goes to a worker, but a miss is still answered on the caller's thread by one stat:
    served while the loop thread, which would hand it to a worker, is stuck."""
    dry = await in_dry_only(cache, "k")
    dry._read_cached = False  # what a refused `preadv2` leaves, whatever this filesystem is
    assert dry.read_cached("k") is READ_IN_THREAD
    assert dry.read_cached("absent") is None
    assert await asyncio.wait_for(cache.lookup("absent"), 5) is None
    assert cache._misses == 1


@pytest.mark.parametrize("blocking", [False, True], ids=["lookup", "lookup_blocking"])
async def test_a_read_that_outlasts_a_delete_does_not_bring_the_key_back(
    tmp_path: Path, blocking: bool
) -> None:
    """The lookup starts while a delete is under way, reads the file before it is unlinked,
    and is still reading when the delete has finished: it must not promote what it read."""
    unlinking, unlink_gate = threading.Event(), threading.Event()
    read_done, read_gate = threading.Event(), threading.Event()

    class GatedDry(LocalTier):
        def _delete(self, key: str) -> bool:
            unlinking.set()
            unlink_gate.wait(10)
            return super()._delete(key)

        def _read(self, key: str) -> Entry | None:
            entry = super()._read(key)
            read_done.set()
            read_gate.wait(10)  # a slow disk: the delete finishes meanwhile
            return entry

        def read_cached(self, key: str) -> Entry | ReadInThread | None:
            return READ_IN_THREAD  # every read through the gated `_read`

    cache = with_dry_tier(tmp_path, GatedDry)
    try:
        await cache.start()
        await in_dry_only(cache, "k")
        deleting = asyncio.ensure_future(cache.delete("k"))
        await asyncio.to_thread(unlinking.wait, 10)
        if blocking:
            looking = asyncio.ensure_future(asyncio.to_thread(cache.lookup_blocking, "k"))
        else:
            looking = asyncio.ensure_future(cache.lookup("k"))
        assert await asyncio.to_thread(read_done.wait, 10)
        unlink_gate.set()
        assert await deleting is True
        read_gate.set()
        await looking  # it may answer with what it read; it must not keep it
        assert cache.get_hot("k") is None
        assert await cache.get("k", MISSING) is MISSING
    finally:
        unlink_gate.set()
        read_gate.set()
        await cache.close()

"""TierCache close never hangs on a cancellation that lands as a backend call completes,
and the guard around every backend call that this depends on.

close (`await close()` and `close_sync()` both run `_close_on_loop`) stops the background
tasks by cancelling them and awaiting them. A cancel that reaches a task in the same loop
iteration as its backend call's result used to be swallowed (asyncio.wait_for before
Python 3.12 returns the result instead of raising), so the task lived on and close waited
for it forever. Every wait here is bounded and fails naming what hung.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.store.test_cache import config
from tiercache_mw.store import cache as cache_module
from tiercache_mw.store.cache import TierCache
from tiercache_mw.tracking.sqlite import SqliteTracking

BOUND = 5.0  # seconds; a close on the embedded backends takes milliseconds


class _Tracking(SqliteTracking):
    """Real sqlite tracking with two hooks into a flush once it has been written:
    `on_flushed` runs in the very loop iteration that delivers the flush's result to the
    tracking task; with `swallow_cancel`, the flush then lingers like a slow client that
    swallows a cancel (returns instead of raising), and `lingering` is set meanwhile."""

    def __init__(self, path: Path, *, swallow_cancel: bool = False) -> None:
        super().__init__(path)
        self.on_flushed: Callable[[], None] | None = None
        self.swallow_cancel = swallow_cancel
        self.lingering = threading.Event()

    async def record_batch(self, *args: Any, **kwargs: Any) -> None:
        await super().record_batch(*args, **kwargs)
        callback, self.on_flushed = self.on_flushed, None
        if callback is not None:
            # Queued before this call returns: it runs ahead of the wake-up of the task
            # that awaits this flush, which is when a cancel used to be swallowed.
            asyncio.get_running_loop().call_soon(callback)
        if self.swallow_cancel:
            self.swallow_cancel = False
            self.lingering.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(BOUND)


def test_close_as_a_tracking_flush_lands_returns(tmp_path: Path) -> None:
    cache = TierCache(config(tmp_path))
    tracking = cache.tracking = _Tracking(tmp_path / "index.db")
    closing: concurrent.futures.Future[asyncio.Task[None]] = concurrent.futures.Future()

    def start_close() -> None:
        closing.set_result(asyncio.get_running_loop().create_task(cache._close_on_loop()))

    tracking.on_flushed = start_close
    cache.set_sync("k", b"v")  # the next tracking flush writes it, then the close starts
    try:
        close_task = closing.result(BOUND)

        async def wait_closed() -> None:
            await close_task

        try:
            cache._loop.run(wait_closed(), timeout=BOUND)
        except TimeoutError:
            pending = [t for t in cache._tasks if not t.done()]
            pytest.fail(
                f"close hung for {BOUND}s waiting for the background tasks it cancelled as a "
                f"tracking flush landed; still running: {pending}"
            )
    finally:
        cache._stop_loop()
    assert cache._tasks == []


@pytest.mark.parametrize("yields", [0, 1, 2, 3])
async def test_guard_never_loses_a_cancel_that_lands_with_the_result(
    tmp_path: Path, yields: int
) -> None:
    """Whatever the loop iteration the cancel lands in relative to the backend's result:
    either the task had finished (cancel() is False) or it is cancelled."""
    cache = TierCache(config(tmp_path))
    backend_call: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(cache._guard("tracking", backend_call, "default"))
    await asyncio.sleep(0)  # the task now awaits the backend call
    backend_call.set_result("result")
    for _ in range(yields):
        await asyncio.sleep(0)
    outcome: Any
    if task.cancel():
        try:
            outcome = await asyncio.wait_for(task, BOUND)
        except asyncio.CancelledError:
            return
        pytest.fail(f"a cancel accepted by the task was lost: it returned {outcome!r}")
    assert await task == "result"


def _close_sync_in_a_thread(cache: TierCache) -> None:
    """close_sync from a thread running an event loop, as a WSGI app's shutdown in an
    async harness does; bounded."""

    async def close_inside_a_loop() -> None:
        cache.close_sync()

    closer = threading.Thread(target=asyncio.run, args=(close_inside_a_loop(),), daemon=True)
    closer.start()
    closer.join(BOUND)
    if closer.is_alive():
        pytest.fail(f"close_sync() hung for {BOUND}s: {cache._tasks}")


async def _await_close(cache: TierCache) -> None:
    try:
        await asyncio.wait_for(cache.close(), BOUND)
    except TimeoutError:
        pytest.fail(f"await close() hung for {BOUND}s: {cache._tasks}")


@pytest.mark.parametrize("close", ["close_sync", "await close"])
async def test_close_returns_when_a_backend_swallows_the_cancel(tmp_path: Path, close: str) -> None:
    cache = TierCache(config(tmp_path))
    tracking = cache.tracking = _Tracking(tmp_path / "index.db", swallow_cancel=True)
    await cache.set("k", b"v")
    assert await asyncio.to_thread(tracking.lingering.wait, BOUND), "no tracking flush ran"
    try:
        if close == "close_sync":
            _close_sync_in_a_thread(cache)
        else:
            await _await_close(cache)
    finally:
        await asyncio.to_thread(cache._stop_loop)
    assert cache._tasks == []


async def test_guard_turns_a_stuck_backend_call_into_a_counted_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "BACKEND_TIMEOUT", 0.05)
    cache = TierCache(config(tmp_path))
    stuck: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    guarded = cache._guard("cold", stuck, "default")
    assert await asyncio.wait_for(guarded, BOUND) == "default"
    assert cache._errors["cold"] == 1
    assert stuck.cancelled()  # the call is abandoned, not left running


class _SlowTracking(SqliteTracking):
    """Real sqlite tracking whose next flush, once armed, waits before it writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.armed = False
        self.flushing = threading.Event()

    async def record_batch(self, *args: Any, **kwargs: Any) -> None:
        if self.armed:
            self.armed = False
            self.flushing.set()
            await asyncio.sleep(0.3)  # close() starts meanwhile and cancels the flush's task
        await super().record_batch(*args, **kwargs)


def test_close_during_a_tracking_flush_keeps_its_writes(tmp_path: Path) -> None:
    """A delete recorded by a flush that close() interrupts must still reach the index, or
    the key's row would outlive its entry (close's own flush finds the buffer empty)."""
    cache = TierCache(config(tmp_path))
    tracking = cache.tracking = _SlowTracking(tmp_path / "index.db")
    cache.set_sync("gone", b"v")
    cache.set_sync("kept", b"v")
    assert cache._loop.run(_until_tracked(tracking, "gone"), timeout=BOUND)
    tracking.armed = True
    cache.delete_sync("gone")
    assert tracking.flushing.wait(BOUND), "no tracking flush started after the delete"
    cache.close_sync()

    reopened = SqliteTracking(tmp_path / "index.db")

    async def rows() -> tuple[Any, Any]:
        await reopened.start()
        try:
            return await reopened.get("gone"), await reopened.get("kept")
        finally:
            await reopened.close()

    gone, kept = asyncio.run(rows())
    assert kept is not None
    assert gone is None, "the interrupted flush's delete was lost"


async def _until_tracked(tracking: SqliteTracking, key: str) -> bool:
    for _ in range(int(BOUND / 0.01)):
        if await tracking.get(key) is not None:
            return True
        await asyncio.sleep(0.01)
    return False

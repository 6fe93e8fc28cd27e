"""The one long-lived event loop thread a TierCache runs its backends on.

Backend clients (redis.asyncio, asyncpg, aiomcache, aiobotocore) are bound to the loop that
created them, so every one of them lives on this loop for the cache's whole life, whichever
loop or thread the caller is on. Sync callers block on it; async callers on another loop
await it through `asyncio.wrap_future`; no call ever uses `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "OnLoopThreadError"]

T = TypeVar("T")

_STOP_TIMEOUT = 10.0


class OnLoopThreadError(RuntimeError):
    """A blocking call was made from the loop thread it would wait for (a deadlock)."""


class LoopThread:
    """A daemon thread running one event loop; `start()` is idempotent and thread-safe."""

    def __init__(self, name: str = "tiercache-loop") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                started = threading.Event()
                new_loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(started.set)
                    new_loop.run_forever()

                thread = threading.Thread(target=run, name=self.name, daemon=True)
                thread.start()
                started.wait()
                self._thread = thread
                self._loop = new_loop
            return self._loop

    def in_loop_thread(self) -> bool:
        thread = self._thread
        return thread is not None and thread is threading.current_thread()

    def on_this_loop(self) -> bool:
        """True when the caller runs inside this loop (a coroutine or callback of it)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.start())

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` on this loop from any loop (directly when already on it)."""
        if self.on_this_loop():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Block the calling thread until `coro` has run on this loop."""
        if self.in_loop_thread():
            coro.close()
            raise OnLoopThreadError(
                "a blocking tiercache call (a *_sync method, run_sync or lookup_blocking) was "
                "made from the cache's own loop thread, where it would wait for itself: "
                "await the async method instead"
            )
        return self.submit(coro).result(timeout)

    def call_soon(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        """Stop the loop and wait for its thread (not from the loop thread itself)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = None
            self._thread = None
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():
            raise OnLoopThreadError("the cache's loop thread cannot stop itself")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_STOP_TIMEOUT)
        if not thread.is_alive():
            loop.close()

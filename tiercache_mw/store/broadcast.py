"""Purges across processes over redis pub/sub.

Every process subscribes to ``{prefix}purge``. When one deletes or purges keys it publishes
them; every other process drops its RAM copies of those keys (`on_keys`). Each bus has a
random per-process id and ignores its own messages, since the publisher already dropped
its copies. Without redis configured there is no bus and purges stay in their process.

Pub/sub is fire-and-forget: a process cut off from redis misses the purges sent meanwhile
(the listener reconnects by itself). Its RAM copies then live until their residency ends,
which is why hot residency should stay short when several processes share a cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tiercache_mw.config import RedisConfig
from tiercache_mw.store.redis import make_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisPurgeBus"]

log = logging.getLogger(__name__)

RECONNECT_DELAY = 0.5
_POLL_SECONDS = 1.0
_KEYS_PER_MESSAGE = 1000  # keeps one message well under any proxy's size limit


class RedisPurgeBus:
    """Publish and receive purged keys; `on_keys` runs on the loop that called `start()`."""

    def __init__(self, settings: RedisConfig, on_keys: Callable[[list[str]], None]) -> None:
        self.settings = settings
        self.on_keys = on_keys
        self.channel = f"{settings.prefix}purge"
        self.origin = uuid.uuid4().hex
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    async def start(self) -> None:
        """Start listening in the background; never raises when redis is down (it retries)."""
        if self._task is not None:
            return
        self._client = make_client(self.settings)
        self._subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._listen(), name=f"tiercache purge bus {self.origin}")

    async def wait_subscribed(self, seconds: float) -> bool:
        """True once the subscription is live (tests, and callers wanting a warm start)."""
        if self._subscribed is None:
            return False
        try:
            async with asyncio.timeout(seconds):  # not wait_for: it can drop a cancel (< 3.12)
                await self._subscribed.wait()
        except TimeoutError:
            return False
        return True

    async def publish(self, keys: list[str]) -> None:
        if not keys:
            return
        if self._client is None:
            self._client = make_client(self.settings)
        for start in range(0, len(keys), _KEYS_PER_MESSAGE):
            message = json.dumps(
                {"origin": self.origin, "keys": keys[start : start + _KEYS_PER_MESSAGE]}
            )
            await self._client.publish(self.channel, message)

    async def _listen(self) -> None:
        assert self._client is not None
        assert self._subscribed is not None
        logged = False
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                logged = False
                while True:
                    message = await pubsub.get_message(timeout=_POLL_SECONDS)
                    if message is not None:
                        self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any redis or socket fault: reconnect after a pause
                self._subscribed.clear()
                if not logged:
                    log.warning("purge bus on %s lost redis, retrying: %s", self.channel, exc)
                    logged = True
                await asyncio.sleep(RECONNECT_DELAY)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.reset()

    def _deliver(self, message: dict[str, Any]) -> None:
        try:
            payload = json.loads(message["data"])
            if payload.get("origin") == self.origin:
                return
            keys = [str(key) for key in payload["keys"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("purge bus on %s: ignored a malformed message", self.channel)
            return
        try:
            self.on_keys(keys)
        except Exception:
            log.exception("purge bus on %s: on_keys failed", self.channel)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

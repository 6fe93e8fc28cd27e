"""The local-disk dry tier: one msgpack file per entry, under a hashed name.

``{root}/ab/cd/abcd...ef.tce`` where the name is the sha256 of the key: no key ever becomes a
path, whatever it holds (``..``, NUL, 10 KB of query string). A write goes to a temp file in
the same directory and is renamed over the target (`os.replace`), so a reader sees the old
file or the new one, never half of one. The file's mtime is its last use: a hit touches it,
and residency (the entry's dry TTL) is checked against it on read. When the files pass
`max_size_bytes`, the least recently used are removed down to a low-water mark.

A file that does not decode (corrupt, truncated, foreign) is a miss, is removed and logged.
Every file operation runs in a worker thread, never on an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tiercache_mw.config import TierConfig
from tiercache_mw.store.base import TierStats
from tiercache_mw.store.codec import CodecError, decode_entry, encode_entry
from tiercache_mw.store.entry import Entry

__all__ = ["LocalTier"]

log = logging.getLogger(__name__)

SUFFIX = ".tce"
TEMP_PREFIX = ".tmp-"
# Cleanup goes below the cap, so that a full tier does not sort its index on every write.
LOW_WATER = 0.9
_HEX = frozenset("0123456789abcdef")
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() + SUFFIX


class LocalTier:
    """Files on local disk; see the module docstring."""

    # Entries leave by size cleanup and residency only; dry is the last tier, so the
    # TierCache hears about removals through `on_remove` (for the tracking index).
    reports_evictions = True

    def __init__(
        self,
        name: str,
        tier: TierConfig,
        root: str | Path,
        *,
        on_remove: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.tier = tier
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self._dirs: set[str] = set()  # fan-out directories known to exist
        self._temp_ids = itertools.count()
        self.max_bytes = tier.max_size_bytes
        self.on_remove = on_remove
        self.clock = clock
        self._lock = threading.Lock()
        self._scanned = False
        # relative path -> (bytes, last use); keys where this process knows them
        self._files: dict[str, tuple[int, float]] = {}
        self._keys: dict[str, str] = {}
        self._size = 0

    # ---- paths and index -------------------------------------------------------------------
    def relative_path(self, key: str) -> str:
        name = file_name(key)
        return os.path.join(name[:2], name[2:4], name)

    def path_for(self, key: str) -> Path:
        return self.root / self.relative_path(key)

    def may_contain(self, key: str) -> bool:
        """False only when no file holds `key`: one stat, no thread hop, and right across
        processes sharing the directory (the in-memory index only knows this process's
        writes). A file found may still be expired or foreign; `get` decides that."""
        name = file_name(key)
        try:
            os.stat(os.path.join(self._root, name[:2], name[2:4], name))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True  # unsure (permissions, I/O): let the real read find out
        return True

    def _scan(self) -> None:
        with self._lock:
            if self._scanned:
                return
            files: dict[str, tuple[int, float]] = {}
            if self.root.is_dir():
                for top in os.scandir(self.root):
                    if not (top.is_dir() and len(top.name) == 2 and set(top.name) <= _HEX):
                        continue
                    for sub in os.scandir(top.path):
                        if not sub.is_dir():
                            continue
                        for item in os.scandir(sub.path):
                            rel = os.path.join(top.name, sub.name, item.name)
                            if item.name.startswith(TEMP_PREFIX):
                                with contextlib.suppress(OSError):
                                    os.unlink(item.path)  # left by a crash mid-write
                            elif item.name.endswith(SUFFIX):
                                with contextlib.suppress(OSError):
                                    stat = item.stat()
                                    files[rel] = (stat.st_size, stat.st_mtime)
            self._files = files
            self._size = sum(size for size, _ in files.values())
            self._scanned = True

    def _record(self, rel: str, size: int, used: float, key: str | None) -> None:
        with self._lock:
            old = self._files.get(rel)
            if old is not None:
                self._size -= old[0]
            self._files[rel] = (size, used)
            self._size += size
            if key is not None:
                self._keys[rel] = key

    def _forget(self, rel: str) -> str | None:
        with self._lock:
            old = self._files.pop(rel, None)
            if old is not None:
                self._size -= old[0]
            return self._keys.pop(rel, None)

    def _remove(self, rel: str) -> bool:
        self._forget(rel)
        try:
            os.unlink(self.root / rel)
        except FileNotFoundError:
            return False
        return True

    # ---- blocking bodies (run in a worker thread) ---------------------------------------------
    def _read(self, key: str) -> Entry | None:
        self._scan()
        rel = self.relative_path(key)
        path = self.root / rel
        try:
            with open(path, "rb") as handle:
                data = handle.read()
                mtime = os.fstat(handle.fileno()).st_mtime
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            entry = decode_entry(data)
        except CodecError as exc:
            log.warning("dry tier: removing unreadable cache file %s: %s", path, exc)
            self._remove(rel)
            return None
        if entry.key != key:
            log.warning("dry tier: removing %s, it holds another key", path)
            self._remove(rel)
            return None
        now = self.clock()
        ttl = self._ttl(entry)
        if ttl is not None and now - mtime > ttl:
            self._remove(rel)
            if self.on_remove is not None:
                self.on_remove([key])
            return None
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))
        self._record(rel, len(data), now, key)
        entry.last_used = now
        return entry

    def _write(self, entry: Entry) -> None:
        self._scan()
        now = self.clock()
        data = encode_entry(entry, last_used=now)
        rel = self.relative_path(entry.key)
        path = os.path.join(self._root, rel)
        directory = os.path.dirname(path)
        # Each syscall here releases the GIL and waits to take it back behind busy request
        # threads, so a write makes as few as it can: no mkdir for a directory already made,
        # a temp name without mkstemp's retries, no utime when the file's mtime is already now.
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)
        temp = os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{next(self._temp_ids)}")
        try:
            fd = os.open(temp, _CREATE_FLAGS, 0o600)
        except FileNotFoundError:  # another process flushed the directory away
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temp, _CREATE_FLAGS, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            if self.clock is not time.time:
                os.utime(temp, (now, now))
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._record(rel, len(data), now, entry.key)
        if self.max_bytes is not None and self._size > self.max_bytes:
            self._cleanup(self.max_bytes)

    def _write_many(self, entries: list[Entry]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for entry in entries:
            try:
                self._write(entry)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def _cleanup(self, max_bytes: int) -> None:
        """Remove least recently used files until the tier is under its low-water mark."""
        target = int(max_bytes * LOW_WATER)
        with self._lock:
            oldest = sorted(self._files.items(), key=lambda item: item[1][1])
        removed_keys: list[str] = []
        for rel, _ in oldest:
            if self._size <= target:
                break
            key = self._keys.get(rel)
            with contextlib.suppress(OSError):
                self._remove(rel)
            if key is not None:
                removed_keys.append(key)
        if removed_keys and self.on_remove is not None:
            self.on_remove(removed_keys)

    def _delete(self, key: str) -> bool:
        self._scan()
        return self._remove(self.relative_path(key))

    def _flush(self) -> None:
        with self._lock:
            self._dirs.clear()
            self._files.clear()
            self._keys.clear()
            self._size = 0
            self._scanned = True
        if not self.root.is_dir():
            return
        for top in os.scandir(self.root):
            # Only the fan-out directories: the root may sit beside other files.
            if top.is_dir() and len(top.name) == 2 and set(top.name) <= _HEX:
                shutil.rmtree(top.path, ignore_errors=True)

    def _ttl(self, entry: Entry) -> float | None:
        if self.name in ("hot", "cold", "dry"):
            return entry.residency.for_tier(self.name)
        return self.tier.ttl_seconds

    # ---- the Tier protocol ---------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._scan)

    async def get(self, key: str) -> Entry | None:
        return await asyncio.to_thread(self._read, key)

    async def set(self, entry: Entry) -> None:
        await asyncio.to_thread(self._write, entry)

    async def set_many(self, entries: list[Entry]) -> list[BaseException | None]:
        """Write several entries in one worker-thread hop (a thread hop per file capped the
        tier at ~900 writes/s); one failure does not stop the others. Returns, per entry,
        None or the exception its write raised."""
        return await asyncio.to_thread(self._write_many, entries)

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, key)

    async def flush(self) -> None:
        await asyncio.to_thread(self._flush)

    async def stats(self) -> TierStats:
        await asyncio.to_thread(self._scan)
        return TierStats(entries=len(self._files), size_bytes=self._size)

    async def close(self) -> None:
        return None

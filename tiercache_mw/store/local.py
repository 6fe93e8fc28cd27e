"""The local-disk dry tier: one path per entry, under a hashed name.

``{root}/ab/abcd...ef.tce`` where the name is the sha256 of the key: no key ever becomes a
path, whatever it holds (``..``, NUL, 10 KB of query string). One level of 256 directories,
not more: a directory is an inode, and a new inode is the dear part of a write (see
`store.pack`). A write goes to a temp file in the same directory and is renamed over the
target (`os.replace`), so a reader sees the old file or the new one, never half of one.

A batch (`set_many`) is written as one pack file (`store.pack`) and each key's path is a hard
link to it: one inode per batch instead of one per entry. A plain file's mtime is its last
use: a hit touches it. A packed entry's mtime is its batch's write time and a hit does not
touch it (that would touch its pack-mates); the TierCache promotes it on a hit and writes it
again when it comes back down. Residency (the entry's dry TTL) is checked against the mtime
on read. When the files pass `max_size_bytes`, the least recently used are removed down to a
low-water mark; a pack's bytes are freed once all its keys are gone, and pack-mates share
their write time, so they tend to leave together.

A file that does not decode (corrupt, truncated, foreign) is a miss, is removed and logged.
Every file operation runs in a worker thread, never on an event loop, with one exception:
`read_cached` reads an entry on the caller's thread when the kernel can answer from its page
cache (`preadv2` with `RWF_NOWAIT` fails instead of waiting for the device), because a dry hit
through the thread pool costs ~300 µs of thread hand-offs for a ~20 µs read. Where the
filesystem refuses `RWF_NOWAIT` (tmpfs, overlayfs) or the platform has none (macOS), hits go
to `get`, and `read_cached` still answers a miss with one stat. Anything else (data not
cached, a large entry, a file to remove or log) is left to `get`, in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import hashlib
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

from tiercache_mw.config import TierConfig
from tiercache_mw.store import pack
from tiercache_mw.store.base import TierStats
from tiercache_mw.store.codec import CodecError, decode_entry, encode_entry
from tiercache_mw.store.entry import Entry

__all__ = ["LocalTier"]

log = logging.getLogger(__name__)

SUFFIX = ".tce"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 60.0  # a write or a pack's links take milliseconds
# Cleanup goes below the cap, so that a full tier does not sort its index on every write.
LOW_WATER = 0.9
READ_CHUNK = 1 << 16  # a pack's header (44 B a record) and small records come in one read
_HEX = frozenset("0123456789abcdef")
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
# `read_cached` copies and decodes at most this much on the caller's thread: a bigger record
# costs more than the thread hop it would save, and holds the caller's loop as long.
CACHED_READ_MAX = 256 * 1024
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
_temp_ids = itertools.count()


class ReadInThread(enum.Enum):
    """What `read_cached` answers when only `get` (a worker thread) can: see there."""

    TOKEN = "read in a worker thread"


READ_IN_THREAD: Final = ReadInThread.TOKEN


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def file_name(key: str) -> str:
    return key_digest(key).hex() + SUFFIX


def _relative(digest: bytes) -> str:
    """The path, under the root, of the file for the key with this digest."""
    name = digest.hex() + SUFFIX
    return os.path.join(name[:2], name)


def _pack_id(stat: os.stat_result) -> int | None:
    """The inode that files linked to one pack share; None for a file of its own (a pack
    down to one key is one too: its bytes go with that key)."""
    return stat.st_ino if stat.st_nlink > 1 else None


def _is_fan_out(name: str) -> bool:
    return len(name) == 2 and set(name) <= _HEX


def _temp_name(directory: str) -> str:
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{next(_temp_ids)}")


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`, fewer only at the end of the file; may wait for the disk."""
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        length -= len(part)
    return b"".join(parts)


def _pread_cached(fd: int, offset: int, length: int) -> bytes:
    """`_pread_all` from the page cache only: BlockingIOError where it would wait."""
    assert _RWF_NOWAIT is not None
    if length > CACHED_READ_MAX:
        raise BlockingIOError(errno.EAGAIN, "too large to read on the caller's thread")
    buffer = bytearray(length)
    # A short read means part of the range is not cached: the file itself never shrinks
    # (writes go to a new file renamed or linked over the path).
    if length and os.preadv(fd, [buffer], offset, _RWF_NOWAIT) < length:
        raise BlockingIOError(errno.EAGAIN, "not all in the page cache")
    return bytes(buffer)


def _entry_bytes(read_at: Callable[[int, int], bytes], size: int, digest: bytes) -> bytes:
    """The entry bytes for the key with `digest` in a plain or pack file of `size` bytes;
    `read_at(offset, length)` reads the file (short only at its end)."""
    head = read_at(0, READ_CHUNK)
    if not pack.is_pack(head):
        return head if len(head) >= size else head + read_at(len(head), size - len(head))
    need = pack.header_length(head)
    if need > len(head):
        head += read_at(len(head), need - len(head))
    where = pack.locate(head, digest)
    if where is None:
        raise CodecError("its pack holds no record for this key")
    offset, length = where
    data = head[offset : offset + length]
    if len(data) < length:
        data = read_at(offset, length)
        if len(data) < length:
            raise CodecError("truncated pack record")
    return data


def _load(
    path: str, digest: bytes, pread: Callable[[int, int, int], bytes]
) -> tuple[Entry, os.stat_result]:
    """The entry for the key with `digest` in the file at `path`, and the file's stat.
    Raises FileNotFoundError (no file), CodecError (not an entry) or another OSError."""
    fd = os.open(path, _READ_FLAGS)
    try:
        stat = os.fstat(fd)
        size = stat.st_size

        def read_at(offset: int, length: int) -> bytes:
            # Never past the end: a corrupt pack header may claim gigabytes.
            return pread(fd, offset, max(0, min(length, size - offset)))

        data = _entry_bytes(read_at, size, digest)
    finally:
        os.close(fd)
    return decode_entry(data), stat


def _no_hard_links(failure: BaseException | None) -> bool:
    """True for the error of a filesystem that does not take hard links (FAT, some mounts)."""
    return isinstance(failure, OSError) and failure.errno in (errno.EPERM, errno.EOPNOTSUPP)


def _outcome(call: Callable[..., object], *args: Any) -> BaseException | None:
    """None when `call(*args)` returns, else the exception it raised."""
    try:
        call(*args)
    except Exception as exc:
        return exc
    return None


def _lift(old: str, new: str) -> list[str]:
    """Move the files of a directory of the two-level layout of earlier versions
    (``ab/cd/abcd...ef.tce``) up to their path in this one; one already there is newer and
    stays. Returns the names moved."""
    moved = []
    for item in os.scandir(old):
        if item.name.endswith(SUFFIX):
            with contextlib.suppress(OSError):
                os.link(item.path, os.path.join(new, item.name))
                moved.append(item.name)
    shutil.rmtree(old, ignore_errors=True)
    return moved


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
        self._packs = True  # False once the filesystem refused a hard link
        self.max_bytes = tier.max_size_bytes
        self.on_remove = on_remove
        self.clock = clock
        self._lock = threading.Lock()
        self._scanned = False
        # relative path -> (bytes its removal frees, last use); keys where this process knows
        # them. A packed key frees nothing alone: its pack's bytes are counted once, by inode,
        # until its last key goes, so that `_size` is what the files hold on disk.
        self._files: dict[str, tuple[int, float]] = {}
        self._keys: dict[str, str] = {}
        self._pack_of: dict[str, int] = {}  # relative path -> inode of its pack
        self._pack_bytes: dict[int, list[int]] = {}  # inode -> [pack size, keys linked]
        self._size = 0
        self._read_cached = _RWF_NOWAIT is not None  # False once the filesystem refused it
        # Files `read_cached` hit, for `touch_read`.
        self._untouched: collections.deque[str] = collections.deque()

    # ---- paths and index -------------------------------------------------------------------
    def relative_path(self, key: str) -> str:
        return _relative(key_digest(key))

    def path_for(self, key: str) -> Path:
        return self.root / self.relative_path(key)

    def may_contain(self, key: str) -> bool:
        """False only when no file holds `key`: one stat, no thread hop, and right across
        processes sharing the directory (the in-memory index only knows this process's
        writes). A file found may still be expired or foreign; `get` decides that."""
        name = file_name(key)
        try:
            os.stat(os.path.join(self._root, name[:2], name))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True  # unsure (permissions, I/O): let the real read find out
        return True

    def _scan(self) -> None:
        with self._lock:
            if self._scanned:
                return
            found: dict[str, os.stat_result] = {}
            if self.root.is_dir():
                for top in os.scandir(self.root):
                    if top.is_dir() and _is_fan_out(top.name):
                        self._scan_fan_out(top.path, top.name, found)
            for rel, stat in found.items():
                self._count(rel, stat.st_size, stat.st_mtime, _pack_id(stat))
            self._scanned = True

    def _scan_fan_out(self, path: str, name: str, found: dict[str, os.stat_result]) -> None:
        names: list[str] = []
        for item in os.scandir(path):
            if item.name.endswith(SUFFIX):
                names.append(item.name)
            elif item.name.startswith(TEMP_PREFIX):
                # Left by a crash mid-write, unless recent: another process may be linking a
                # pack under its keys right now.
                with contextlib.suppress(OSError):
                    if time.time() - item.stat().st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(item.path)
            elif item.is_dir() and _is_fan_out(item.name):
                names += _lift(item.path, path)
        for file in names:
            with contextlib.suppress(OSError):
                found[os.path.join(name, file)] = os.stat(os.path.join(path, file))

    def _record(
        self, rel: str, size: int, used: float, key: str | None, pack_id: int | None = None
    ) -> None:
        """Index `rel`: a file of `size` bytes, or with `pack_id` one key of that pack (then
        `size` is the whole pack's)."""
        with self._lock:
            self._count(rel, size, used, pack_id)
            if key is not None:
                self._keys[rel] = key

    def _count(self, rel: str, size: int, used: float, pack_id: int | None) -> None:
        """`_record` under the lock, without the key."""
        self._uncount(rel)
        if pack_id is None:
            self._files[rel] = (size, used)
            self._size += size
            return
        self._files[rel] = (0, used)
        self._pack_of[rel] = pack_id
        linked = self._pack_bytes.get(pack_id)
        if linked is None:
            self._pack_bytes[pack_id] = [size, 1]
            self._size += size
        else:
            linked[1] += 1

    def _uncount(self, rel: str) -> None:
        """Take `rel` out of the index and the size, under the lock; its pack's bytes leave
        with its last key."""
        old = self._files.pop(rel, None)
        if old is not None:
            self._size -= old[0]
        pack_id = self._pack_of.pop(rel, None)
        if pack_id is not None:
            linked = self._pack_bytes[pack_id]
            linked[1] -= 1
            if not linked[1]:
                del self._pack_bytes[pack_id]
                self._size -= linked[0]

    def _forget(self, rel: str) -> str | None:
        with self._lock:
            self._uncount(rel)
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
        digest = key_digest(key)
        rel = _relative(digest)
        path = os.path.join(self._root, rel)
        try:
            entry, stat = _load(path, digest, _pread_all)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except CodecError as exc:
            log.warning("dry tier: removing unreadable cache file %s: %s", path, exc)
            self._remove(rel)
            return None
        if entry.key != key:
            log.warning("dry tier: removing %s, it holds another key", path)
            self._remove(rel)
            return None
        now = self.clock()
        if self._expired(entry, stat, now):
            self._remove(rel)
            if self.on_remove is not None:
                self.on_remove([key])
            return None
        if stat.st_nlink == 1:  # a file of its own; a pack's mtime belongs to all its keys
            with contextlib.suppress(OSError):
                os.utime(path, (now, now))
        self._record(rel, stat.st_size, now, key, _pack_id(stat))
        entry.last_used = now
        return entry

    def read_cached(self, key: str) -> Entry | Literal[ReadInThread.TOKEN] | None:
        """`get` on the caller's thread where the data need not come from the device: the
        entry, or None when no file holds `key` (one failed open, or the stat of
        `may_contain`). Opening and statting the file may still wait on its metadata (an
        inode not in memory), as any path lookup can; the read itself takes only what the
        page cache holds (`preadv2` with `RWF_NOWAIT`).
        READ_IN_THREAD when `get` must answer instead: the data is not in the page cache,
        the filesystem or platform has no `RWF_NOWAIT` (tmpfs, overlayfs, macOS), the
        record is large, the file is corrupt, foreign or expired (`get` removes and logs
        it), the index is not scanned yet, or the tier's read body is replaced (a test's
        gated tier). A hit on a file of its own is touched later, by `touch_read`, as a
        utime is a metadata write the caller must not wait for."""
        if getattr(self._read, "__func__", None) is not LocalTier._read:
            return READ_IN_THREAD
        if not self._scanned or not self._read_cached:
            # Only `get` can read the file, but a miss needs no thread hop: one stat says it.
            return READ_IN_THREAD if self.may_contain(key) else None
        digest = key_digest(key)
        rel = _relative(digest)
        try:
            entry, stat = _load(os.path.join(self._root, rel), digest, _pread_cached)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, CodecError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._read_cached = False  # a filesystem without RWF_NOWAIT: threads only
            return READ_IN_THREAD
        now = self.clock()
        if entry.key != key or self._expired(entry, stat, now):
            return READ_IN_THREAD
        if stat.st_nlink == 1:
            self._untouched.append(rel)
        self._record(rel, stat.st_size, now, key, _pack_id(stat))
        entry.last_used = now
        return entry

    def _expired(self, entry: Entry, stat: os.stat_result, now: float) -> bool:
        ttl = self._ttl(entry)
        return ttl is not None and now - stat.st_mtime > ttl

    def _touch(self) -> None:
        """Give the files `read_cached` hit their last use as mtime (a worker thread)."""
        untouched: dict[str, None] = {}
        with contextlib.suppress(IndexError):  # popleft, not a swap: appends race this
            while True:
                untouched[self._untouched.popleft()] = None
        now = self.clock()
        for rel in untouched:
            with contextlib.suppress(OSError):
                os.utime(os.path.join(self._root, rel), (now, now))

    def _mtime(self, now: float) -> float | None:
        # A new file's mtime is already now: a utime only for an injected clock.
        return None if self.clock is time.time else now

    def _write(self, entry: Entry) -> None:
        self._scan()
        now = self.clock()
        data = encode_entry(entry, last_used=now)
        rel = self.relative_path(entry.key)
        path = os.path.join(self._root, rel)
        temp = self._write_temp(os.path.dirname(path), data, self._mtime(now))
        try:
            os.replace(temp, path)
        except BaseException:
            _unlink_quietly(temp)
            raise
        self._record(rel, len(data), now, entry.key)
        self._keep_cap()

    def _write_many(self, entries: list[Entry]) -> list[BaseException | None]:
        if (
            len(entries) < 2
            or not self._packs
            or getattr(self._write, "__func__", None) is not LocalTier._write
        ):
            # A pack of one saves nothing. A subclass or instance that replaced the per-entry
            # body (an instrumented or gated tier, as tests use) keeps one call per entry.
            return [_outcome(self._write, entry) for entry in entries]
        self._scan()
        now = self.clock()
        results: list[BaseException | None] = [None] * len(entries)
        # The last entry for a key wins, as if written one by one; a pack holds it once.
        latest: dict[str, tuple[int, bytes]] = {}
        for index, entry in enumerate(entries):
            try:
                latest[entry.key] = (index, encode_entry(entry, last_used=now))
            except Exception as exc:
                results[index] = exc
        if not latest:
            return results
        # Per entry, the least work that holds the GIL: this runs beside request threads.
        digests = {key: key_digest(key) for key in latest}
        records = [
            (_relative(digests[key]), key, index, data) for key, (index, data) in latest.items()
        ]
        try:
            blob = pack.build([(digests[key], data) for _, key, _, data in records])
            temp = self._write_temp(
                os.path.dirname(os.path.join(self._root, records[0][0])), blob, self._mtime(now)
            )
        except Exception as exc:
            for _, _, index, _ in records:
                results[index] = exc
            return results
        try:
            pack_id = os.stat(temp).st_ino
            for rel, _, index, _ in records:
                results[index] = _outcome(self._link, temp, rel)
        finally:
            _unlink_quietly(temp)  # the pack lives on through its keys' links
        with self._lock:
            for rel, key, index, _ in records:
                if results[index] is None:
                    self._count(rel, len(blob), now, pack_id)
                    self._keys[rel] = key
        self._keep_cap()
        unlinkable = [i for _, _, i, _ in records if _no_hard_links(results[i])]
        if unlinkable:
            if self._packs:
                log.warning(
                    "dry tier: no hard links in %s, one file per entry from now on: %s",
                    self._root,
                    results[unlinkable[0]],
                )
            self._packs = False
            for index in unlinkable:
                results[index] = _outcome(self._write, entries[index])
        return results

    def _write_temp(self, directory: str, data: bytes, mtime: float | None) -> str:
        """A new file in `directory` holding `data`: its path, to be renamed or linked."""
        # Each syscall costs a GIL round trip behind busy request threads, so as few as can
        # be: no mkdir for a directory already made, no mkstemp retries, no needless utime.
        self._ensure_dir(directory)
        temp = _temp_name(directory)
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
            if mtime is not None:
                os.utime(temp, (mtime, mtime))
        except BaseException:
            _unlink_quietly(temp)
            raise
        return temp

    def _link(self, temp: str, rel: str) -> None:
        """Give the file at `temp` the path `rel` too, replacing whatever was there."""
        path = os.path.join(self._root, rel)
        directory = os.path.dirname(path)
        self._ensure_dir(directory)
        try:
            os.link(temp, path)
            return
        except FileNotFoundError:  # another process flushed the directory away
            os.makedirs(directory, exist_ok=True)
        except FileExistsError:
            pass
        # Beside it, then renamed over it: an older copy is replaced, as a plain write does.
        beside = _temp_name(directory)
        os.link(temp, beside)
        try:
            os.replace(beside, path)
        except BaseException:
            _unlink_quietly(beside)
            raise

    def _ensure_dir(self, directory: str) -> None:
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)

    def _keep_cap(self) -> None:
        if self.max_bytes is not None and self._size > self.max_bytes:
            self._cleanup(self.max_bytes)

    def _cleanup(self, max_bytes: int) -> None:
        """Remove least recently used files until the tier is under its low-water mark."""
        target = int(max_bytes * LOW_WATER)
        with self._lock:
            files = list(self._files.items())
        # Sorted outside the lock: dry hits on a request's thread record under it.
        oldest = sorted(files, key=lambda item: item[1][1])
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
            self._pack_of.clear()
            self._pack_bytes.clear()
            self._size = 0
            self._scanned = True
        if not self.root.is_dir():
            return
        for top in os.scandir(self.root):
            # Only the fan-out directories: the root may sit beside other files.
            if top.is_dir() and _is_fan_out(top.name):
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

    async def touch_read(self) -> None:
        """Touch the files `read_cached` hit since the last call (no thread hop when none)."""
        if self._untouched:
            await asyncio.to_thread(self._touch)

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

"""Pack files: the entries of one batch of dry writes in one file, so a batch costs one inode.

Creating an inode (a file or a directory) is what a dry write pays for: ~550 µs of kernel CPU
on the benchmark VM's ext4, against 2-16 µs for a write, a rename or a hard link (measured).
So `LocalTier` writes a batch as one pack and gives every key its usual path as a hard link
to it: lookups (one stat, one open), deletes and other processes sharing the directory still
go by one path per key, and the filesystem frees a pack when its last key is removed. Chosen
over a writer process of its own (measured no faster: the time is the kernel's, not the
GIL's) and over segment files with an index (which other processes would have to follow).
Measured again for the hot-hit p99 under 5,000 demotions/s (issue 5): a helper process that
wrote each pack and its links (three syscalls a batch in the cache's process instead of one a
key) made the busy/quiet p99 ratio worse, whether the drain's thread waited for it (1.9-2.3x
against 1.4-1.7x in-process, alternating runs) or the cache's loop did (1.95-2.13x against
1.35-1.87x). The bench's batches hold ~5 keys, and the request thread's sleeps on the GIL
fell only from ~3,700/s to ~3,100-3,300/s: most come from other hand-offs, not the links.

Layout: MAGIC, u32 count, count x (sha256 digest of the key 32 B, u64 offset, u32 length),
then each record (an `encode_entry` blob) at its offset. A plain entry file starts with a
msgpack array byte, never with MAGIC's NUL, so a reader tells the two apart by the first bytes.
"""

from __future__ import annotations

import struct

from tiercache_mw.store.codec import CodecError

__all__ = ["MAGIC", "build", "header_length", "is_pack", "locate"]

MAGIC = b"\x00TCPACK1"
_COUNT = struct.Struct("<I")
_SLOT = struct.Struct("<32sQI")
_PREFIX = len(MAGIC) + _COUNT.size


def build(records: list[tuple[bytes, bytes]]) -> bytes:
    """One pack of (key digest, record) pairs; digests must be distinct."""
    offset = _PREFIX + _SLOT.size * len(records)
    slots = []
    for digest, data in records:
        slots.append(_SLOT.pack(digest, offset, len(data)))
        offset += len(data)
    return b"".join([MAGIC, _COUNT.pack(len(records)), *slots, *(data for _, data in records)])


def is_pack(head: bytes) -> bool:
    return head.startswith(MAGIC)


def header_length(head: bytes) -> int:
    """Bytes from the start of the file that `locate` needs; `head` holds at least MAGIC."""
    if len(head) < _PREFIX:
        raise CodecError("truncated pack header")
    count: int = _COUNT.unpack_from(head, len(MAGIC))[0]
    return _PREFIX + _SLOT.size * count


def locate(head: bytes, digest: bytes) -> tuple[int, int] | None:
    """(offset, length) of the record for `digest`, None when the pack does not hold it.
    `head` holds at least `header_length(head)` bytes."""
    end = header_length(head)
    if len(head) < end:
        raise CodecError("truncated pack header")
    for position in range(_PREFIX, end, _SLOT.size):
        found, offset, length = _SLOT.unpack_from(head, position)
        if found == digest:
            return offset, length
    return None

"""Entry <-> bytes for the tiers that leave the process (memcached, redis, disk, S3).

msgpack, never pickle: a cache file or a shared server must not be a way to run code.
The first element is a format version so that an old or foreign blob is a miss, not a crash.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack

from tiercache_mw.store.entry import NO_EXTRA, Entry, Residency, StoredResponse, intern_headers

__all__ = ["CodecError", "decode_entry", "encode_entry"]

FORMAT_VERSION = 1
_KIND_VALUE = 0  # msgpack-able Python value (None included)
_KIND_BYTES = 1
_KIND_RESPONSE = 2


@functools.lru_cache(maxsize=1024)
def _residency(hot: float | None, cold: float | None, dry: float | None) -> Residency:
    """Entries read back under one rule share one Residency, as in `TierCache.residency_for`."""
    return Residency(hot, cold, dry)


class CodecError(ValueError):
    """The bytes are not an entry this version can read (corrupt, truncated, foreign)."""


def _response_to_wire(response: StoredResponse) -> list[Any]:
    return [
        response.status,
        [[name, value] for name, value in response.headers],
        response.body,
        response.response_time,  # where request_time was: only initial_age needed it
        response.response_time,
        response.freshness_lifetime,
        response.initial_age,
        response.stale_while_revalidate,
        response.stale_if_error,
        response.requires_validation,
        response.must_revalidate,
        response.etag,
        response.last_modified,
        list(response.vary),
        dict(response.extra),
    ]


def _response_from_wire(wire: list[Any]) -> StoredResponse:
    (status, headers, body, _request_time, response_time, lifetime, initial_age, swr, sie,
     requires_validation, must_revalidate, etag, last_modified, vary, extra) = wire  # fmt: skip
    return StoredResponse(
        status=int(status),
        headers=intern_headers([(bytes(name), bytes(value)) for name, value in headers]),
        body=bytes(body),
        response_time=float(response_time),
        freshness_lifetime=float(lifetime),
        initial_age=float(initial_age),
        stale_while_revalidate=float(swr),
        stale_if_error=float(sie),
        requires_validation=bool(requires_validation),
        must_revalidate=bool(must_revalidate),
        etag=etag,
        last_modified=last_modified,
        vary=tuple(vary),
        extra=dict(extra) if extra else NO_EXTRA,
    )


def encode_entry(entry: Entry, *, last_used: float) -> bytes:
    """Encode an entry; `last_used` is wall-clock time (RAM tiers keep a monotonic one)."""
    value = entry.value
    payload: Any
    if isinstance(value, StoredResponse):
        kind, payload = _KIND_RESPONSE, _response_to_wire(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        kind, payload = _KIND_BYTES, bytes(value)
    else:
        kind, payload = _KIND_VALUE, value
    residency = entry.residency
    wire = [
        FORMAT_VERSION,
        entry.key,
        kind,
        payload,
        [list(pair) for pair in entry.tags],
        [residency.hot, residency.cold, residency.dry],
        entry.size,
        last_used,  # where created_at was: no reader kept it, so neither does Entry
        last_used,
    ]
    try:
        packed: bytes = msgpack.packb(wire, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"cache value for {entry.key!r} is not bytes or msgpack-able: {exc}"
        ) from exc
    return packed


def decode_entry(data: bytes) -> Entry:
    """Decode bytes from `encode_entry`; anything else raises CodecError."""
    try:
        wire = msgpack.unpackb(data, raw=False, strict_map_key=False)
        version, key, kind, payload, tags, residency, size, _created_at, last_used = wire
        if version != FORMAT_VERSION:
            raise CodecError(f"entry format {version!r}, expected {FORMAT_VERSION}")
        if kind == _KIND_RESPONSE:
            value: Any = _response_from_wire(payload)
        elif kind == _KIND_BYTES:
            value = bytes(payload)
        elif kind == _KIND_VALUE:
            value = payload
        else:
            raise CodecError(f"unknown value kind {kind!r}")
        hot, cold, dry = residency
        return Entry(
            key=str(key),
            value=value,
            tags=tuple((str(name), str(tag)) for name, tag in tags),
            residency=_residency(hot, cold, dry),
            # Bytes and responses are sized afresh: the stored size is the writer's estimate.
            size=None if kind != _KIND_VALUE else int(size),
            last_used=float(last_used),
        )
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises many types on garbage; all mean "not an entry"
        raise CodecError(f"not a tiercache entry: {exc.__class__.__name__}: {exc}") from exc

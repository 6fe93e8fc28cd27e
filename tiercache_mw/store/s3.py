"""S3 dry tier (aiobotocore): AWS S3, MinIO, Cloudflare R2 or any S3-compatible endpoint.

One object per entry at ``{prefix}{tier}/{sha256(key)}`` (hashed: keys are URLs of any length and
alphabet), holding the msgpack entry bytes. S3 has no per-object TTL a hit could extend, so
residency is checked on read from object metadata (``tc-last-used``, ``tc-residency``): an
expired object is a miss and is deleted then. A hit rewrites the metadata in place
(server-side copy, no body transfer) only once a tenth of the residency has passed, so a
hot object costs one extra request per tenth of its residency, not one per hit.

``reports_evictions`` is False: objects expire silently (on read) and dry is the last tier,
so there is nothing to move an evicted entry down to anyway.

The size cap (`TierConfig.max_size_bytes`) is not enforced on `set`: listing a bucket per
write costs too much. `TierCache` calls `trim(max_bytes, tracking)`, which deletes the
least recently used entries by the tracking index's `oldest()` until the tier fits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from tiercache_mw.config import S3Config, TierConfig
from tiercache_mw.store.base import TierStats
from tiercache_mw.store.codec import CodecError, decode_entry, encode_entry
from tiercache_mw.store.entry import Entry

if TYPE_CHECKING:
    from tiercache_mw.tracking.base import Tracking

__all__ = ["S3Tier"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 0.5  # a down endpoint costs a request at most about this long
READ_TIMEOUT = 5.0  # objects can be megabytes over a real network
REFRESH_FRACTION = 0.1
_META_LAST_USED = "tc-last-used"
_META_RESIDENCY = "tc-residency"
_MISSING = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket", "404", "NotFound"}
_DELETE_BATCH = 1000  # the DeleteObjects limit
_TRIM_BATCH = 200


class S3Tier:
    """The dry tier in an S3 bucket; see the module docstring."""

    reports_evictions = False

    def __init__(self, name: str, tier: TierConfig, settings: S3Config) -> None:
        self.name = name
        self.tier = tier
        self.settings = settings
        self.bucket = settings.bucket
        # The tier name keeps two tiers in one bucket and prefix apart (flush, stats).
        self.prefix = f"{settings.prefix}{name}/"
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._bucket_checked = False
        self._lock: asyncio.Lock | None = None

    # ---- connection -------------------------------------------------------------------------

    async def _s3(self) -> Any:
        """The client, created on first use inside the loop TierCache runs backends on."""
        if self._client is not None and self._bucket_checked:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                options: dict[str, Any] = {
                    "region_name": self.settings.region
                    or ("us-east-1" if self.settings.endpoint_url else None),
                    "endpoint_url": self.settings.endpoint_url,
                    "config": AioConfig(
                        connect_timeout=CONNECT_TIMEOUT,
                        read_timeout=READ_TIMEOUT,
                        retries={"mode": "standard", "total_max_attempts": 1},
                    ),
                }
                # Without explicit keys botocore reads AWS_ACCESS_KEY_ID & co. itself.
                if self.settings.access_key and self.settings.secret_key:
                    options["aws_access_key_id"] = self.settings.access_key
                    options["aws_secret_access_key"] = self.settings.secret_key
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client("s3", **options)
                )
                self._stack = stack
            if not self._bucket_checked:
                await self._ensure_bucket(self._client)
                self._bucket_checked = True
        return self._client

    async def _ensure_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except client.exceptions.ClientError as exc:
            if _code(exc) not in _NO_BUCKET:
                raise
        create: dict[str, Any] = {"Bucket": self.bucket}
        region = self.settings.region
        if region and region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await client.create_bucket(**create)
        except client.exceptions.ClientError as exc:
            # No right to create it (or a race with another process): use it as it is.
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                log.warning("s3 bucket %s is missing and cannot be created: %s", self.bucket, exc)

    def object_key(self, key: str) -> str:
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()

    def _residency(self, entry: Entry) -> float | None:
        seconds = entry.residency.for_tier(self.name)
        return self.tier.ttl_seconds if seconds is None else seconds

    # ---- the Tier protocol -----------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        client = await self._s3()
        object_key = self.object_key(key)
        try:
            response = await client.get_object(Bucket=self.bucket, Key=object_key)
        except client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        meta = response.get("Metadata") or {}
        now = time.time()
        last_used = _float(meta.get(_META_LAST_USED))
        residency = _float(meta.get(_META_RESIDENCY))
        async with response["Body"] as stream:
            if residency is not None and last_used is not None and now - last_used > residency:
                expired = True
                data = b""
            else:
                expired = False
                data = await stream.read()
        if expired:
            await client.delete_object(Bucket=self.bucket, Key=object_key)
            return None
        try:
            entry = decode_entry(data)
        except CodecError:
            return None
        if entry.key != key:
            return None
        if residency is not None and (
            last_used is None or now - last_used > residency * REFRESH_FRACTION
        ):
            await client.copy_object(
                Bucket=self.bucket,
                Key=object_key,
                CopySource={"Bucket": self.bucket, "Key": object_key},
                Metadata=_metadata(now, residency),
                MetadataDirective="REPLACE",
            )
        return entry

    async def set(self, entry: Entry) -> None:
        client = await self._s3()
        now = time.time()
        await client.put_object(
            Bucket=self.bucket,
            Key=self.object_key(entry.key),
            Body=encode_entry(entry, last_used=now),
            ContentType="application/msgpack",
            Metadata=_metadata(now, self._residency(entry)),
        )

    async def delete(self, key: str) -> bool:
        client = await self._s3()
        object_key = self.object_key(key)
        # S3 DeleteObject succeeds for absent keys; HEAD tells whether there was one.
        try:
            await client.head_object(Bucket=self.bucket, Key=object_key)
        except client.exceptions.ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        await client.delete_object(Bucket=self.bucket, Key=object_key)
        return True

    async def _listing(self) -> list[tuple[str, int]]:
        client = await self._s3()
        found: list[tuple[str, int]] = []
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            found += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
        return found

    async def flush(self) -> None:
        """Delete every object under this tier's prefix, and nothing else in the bucket."""
        client = await self._s3()
        keys = [key for key, _ in await self._listing()]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            await client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )

    async def stats(self) -> TierStats:
        """Lists the prefix: one request per 1000 objects (exact, including expired ones)."""
        listing = await self._listing()
        return TierStats(entries=len(listing), size_bytes=sum(size for _, size in listing))

    async def trim(self, max_bytes: int, tracking: Tracking) -> int:
        """Delete least recently used entries (by the tracking index) until the tier's bytes
        by that index are at most `max_bytes`; removes them from the index too.

        Returns how many entries were deleted. Meant to run in the background after writes.
        """
        total = (await tracking.totals()).get(self.name, (0, 0))[1]
        removed = 0
        while total > max_bytes:
            rows = await tracking.oldest(self.name, _TRIM_BATCH)
            if not rows:
                break
            victims: list[str] = []
            for row in rows:
                if total <= max_bytes:
                    break
                victims.append(row.key)
                total -= row.size
            client = await self._s3()
            await client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self.object_key(k)} for k in victims], "Quiet": True},
            )
            await tracking.record_delete(victims)
            removed += len(victims)
        return removed

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        self._client = None
        self._bucket_checked = False
        if stack is not None:
            await stack.aclose()


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _float(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _metadata(last_used: float, residency: float | None) -> dict[str, str]:
    meta = {_META_LAST_USED: repr(last_used)}
    if residency is not None:
        meta[_META_RESIDENCY] = repr(float(residency))
    return meta

"""S3 backend (AWS S3, MinIO, Ceph RGW, SeaweedFS): several mirror replicas share one bucket.

Objects live at `{prefix}/{key}` in one bucket. boto3 is synchronous, so every call runs in this
store's own bounded thread pool and the event loop never blocks. Credentials come from the standard
AWS chain (environment, profiles, instance roles) unless given explicitly (tests).

Writers publish atomically: small objects with one PUT, larger ones as a multipart upload whose
parts go up while the bytes arrive (up to `parts_in_flight` at once: one PUT stream is slower than
the store) and which becomes visible only when completed on `commit`
(after the fill verified the hash). Two writers of one key run two independent uploads, and the
last one completed wins whole. Unfinished uploads are invisible to readers and listings; the ones
a crashed fill leaves behind are aborted at start once they are older than `stale_upload_age`.

Parts of an unfinished upload cannot be read back, and a 20 GB shard must not be copied to local
disk, so `read_written` serves only a bounded window held in memory: the part being uploaded (or
last uploaded) and the one being filled. Older offsets raise WindowPassed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, TypeVar

import boto3.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from mirror.storage.base import (
    BlobWriter,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageUnavailable,
    WindowPassed,
    check_key,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

READ_CHUNK = 1024 * 1024
MIB = 1024 * 1024
# S3 refuses parts below 5 MiB (except the last) and allows at most 10,000 parts per upload. The
# writer does not know the object's size, so parts double in size every PARTS_PER_SIZE parts: small
# parts (little memory per fill) for the usual files, and no size limit that matters (8 MiB parts
# reach 80 GB after 10,000 parts without doubling, and far beyond with it).
MIN_PART_SIZE = 5 * MIB
DEFAULT_PART_SIZE = 8 * MIB
PARTS_PER_SIZE = 1000
# Errors that mean "the object store failed" rather than "this object does not exist".
_STORE_ERRORS = (BotoCoreError, ClientError, OSError)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) in _NOT_FOUND_CODES


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or status
        message = error.get("Message") or ""
        return f"{code} {message}".strip()
    return str(exc) or type(exc).__name__


class S3Writer(BlobWriter):
    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self.written = 0
        self._storage = storage
        self._object_key = storage.object_key(key)
        # The part being filled, and where it starts in the object.
        self._buffer = bytearray()
        self._buffer_start = 0
        # The part handed to the store last (in flight or done), kept so followers just behind the
        # writer can still read it; together with _buffer this is the in-memory window.
        self._previous: bytearray = bytearray()
        self._previous_start = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []  # completed parts
        self._parts_sent = 0
        self._uploading: set[asyncio.Future[None]] = set()  # part uploads in flight
        self._state = "open"  # "open" | "committed" | "aborted"

    @property
    def window_start(self) -> int:
        """The oldest offset `read_written` can still serve."""
        return self._previous_start if self._previous else self._buffer_start

    async def write(self, data: bytes) -> None:
        if self._state != "open":
            raise StorageUnavailable(f"s3 storage: writer of {self.key} is {self._state}")
        self._buffer += data
        self.written += len(data)
        if len(self._buffer) >= self._storage.part_size_of(self._parts_sent + 1):
            await self._send_buffer()

    async def _send_buffer(self) -> None:
        """Start uploading the full buffer as the next part, once fewer than parts_in_flight are."""
        await self._wait_upload(keep=self._storage.parts_in_flight - 1)
        if self._upload_id is None:
            response = await self._storage.call(
                "start an upload of " + self.key,
                self._storage.client.create_multipart_upload,
                Bucket=self._storage.bucket,
                Key=self._object_key,
            )
            self._upload_id = str(response["UploadId"])
            if self._state != "open":
                # Aborted while the upload was being created: abort() saw no upload to discard.
                self._state = "open"
                await self.abort()
                raise StorageUnavailable(f"s3 storage: writer of {self.key} was aborted")
        self._parts_sent += 1
        part, number = self._buffer, self._parts_sent
        self._previous, self._previous_start = part, self._buffer_start
        self._buffer, self._buffer_start = bytearray(), self.written
        self._uploading.add(asyncio.ensure_future(self._upload_part(number, part)))

    async def _upload_part(self, number: int, part: bytearray) -> None:
        response = await self._storage.call(
            f"upload part {number} of {self.key}",
            self._storage.client.upload_part,
            Bucket=self._storage.bucket,
            Key=self._object_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=part,
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    async def _wait_upload(self, keep: int = 0) -> None:
        """Wait until at most `keep` part uploads are in flight; a failed one raises here."""
        while self._uploading:
            finished = {upload for upload in self._uploading if upload.done()}
            if not finished:
                if len(self._uploading) <= keep:
                    return
                await asyncio.wait(self._uploading, return_when=asyncio.FIRST_COMPLETED)
                continue
            self._uploading -= finished
            for upload in finished:
                upload.result()

    async def read_written(self, offset: int, length: int) -> bytes:
        if self._state != "open":
            raise StorageUnavailable(f"s3 storage: writer of {self.key} is {self._state}")
        end = min(offset + length, self.written)
        if end <= offset:
            return b""
        if offset < self.window_start:
            raise WindowPassed(self.key, offset, self.window_start)
        pieces = []
        previous_end = self._previous_start + len(self._previous)
        if offset < previous_end:
            pieces.append(self._previous[offset - self._previous_start : min(end, previous_end) - self._previous_start])
            offset = previous_end
        if offset < end:
            pieces.append(self._buffer[offset - self._buffer_start : end - self._buffer_start])
        return b"".join(pieces)

    async def commit(self) -> ObjectInfo:
        if self._state != "open":
            raise StorageUnavailable(f"s3 storage: writer of {self.key} is {self._state}")
        storage = self._storage
        try:
            if self._upload_id is None:
                # Smaller than one part: a single PUT is atomic and costs one request.
                await storage.call(
                    "publish " + self.key,
                    storage.client.put_object,
                    Bucket=storage.bucket,
                    Key=self._object_key,
                    Body=self._buffer,
                )
            else:
                await self._wait_upload()
                if self._buffer:
                    await self._send_buffer()
                    await self._wait_upload()
                parts = sorted(self._parts, key=lambda p: int(p["PartNumber"]))
                # Completing is the one atomic step: before it readers see the old object or none.
                await storage.call(
                    "publish " + self.key,
                    storage.client.complete_multipart_upload,
                    Bucket=storage.bucket,
                    Key=self._object_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            await self.abort()
            raise
        self._state = "committed"
        self._release()
        return ObjectInfo(self.key, self.written, time.time())

    async def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        uploading, self._uploading = self._uploading, set()
        await asyncio.gather(*uploading, return_exceptions=True)
        self._release()
        if self._upload_id is None:
            return
        try:
            await self._storage.call(
                "abort the upload of " + self.key,
                self._storage.client.abort_multipart_upload,
                Bucket=self._storage.bucket,
                Key=self._object_key,
                UploadId=self._upload_id,
            )
        except StorageUnavailable as exc:
            # Never published, so nothing is visible; the next start() aborts it once it is stale.
            log.warning("%s; the unfinished upload is cleaned up later", exc.message)

    def _release(self) -> None:
        self._buffer, self._previous = bytearray(), bytearray()


class S3Storage(Storage):
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        prefix: str = "",
        region: str = "us-east-1",
        part_size: int = DEFAULT_PART_SIZE,
        stale_upload_age: float = 24 * 3600,
        max_concurrency: int = 32,
        parts_in_flight: int = 2,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        access_key: str | None = None,
        secret_key: str | None = None,
        presigned_redirects: bool = False,
        presigned_expiry: int = 3600,
        public_endpoint: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 part size must be at least {MIN_PART_SIZE} bytes")
        self.bucket = bucket
        self.endpoint = endpoint
        self.prefix = check_key(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.stale_upload_age = stale_upload_age
        self._where = f"{endpoint or 'AWS S3'}, bucket {bucket}"
        # A session of our own: boto3's module-level default session would be global state.
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self.client: Any = session.client(
            "s3",
            endpoint_url=endpoint or None,
            config=BotoConfig(
                # Path-style works with every S3-compatible store and needs no wildcard DNS.
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=max_concurrency,
                # Newer botocore adds CRC checksums by default, which several S3-compatible stores
                # reject; the fill verifies content hashes itself.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="s3")
        self.presigned_expiry = presigned_expiry
        # Presigning is local computation (no request), but SigV4 signs the Host, so URLs for
        # clients that reach the store elsewhere need a client configured with that endpoint.
        self._presigner: Any = None
        if presigned_redirects:
            self._presigner = session.client(
                "s3",
                endpoint_url=public_endpoint or endpoint or None,
                config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
            )

    def part_size_of(self, number: int) -> int:
        """The size of multipart part `number` (1-based)."""
        return self.part_size << ((number - 1) // PARTS_PER_SIZE)

    # -- plumbing ----------------------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def call(self, what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Run one blocking boto3 call in the pool; store failures become StorageUnavailable."""
        try:
            return await self._run(functools.partial(fn, **kwargs))
        except _STORE_ERRORS as exc:
            raise self.unavailable(exc, what) from exc

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def unavailable(self, exc: BaseException, what: str) -> StorageUnavailable:
        return StorageUnavailable(f"s3 storage ({self._where}): cannot {what}: {_describe(exc)}")

    # -- lifetime ----------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            aborted = await self.abort_stale_uploads()
        except StorageUnavailable as exc:
            # Start anyway: /readyz reports the store, and every request retries it, so the mirror
            # recovers by itself once the store is back.
            log.warning("%s; starting without cleaning up unfinished uploads", exc.message)
            return
        if aborted:
            log.info("aborted %d unfinished S3 uploads left by earlier fills", aborted)

    async def abort_stale_uploads(self, older_than: float | None = None) -> int:
        """Abort unfinished multipart uploads under the prefix older than `older_than` seconds
        (default `stale_upload_age`).

        Uploads younger than that may belong to fills running on other replicas sharing the bucket.
        """
        age = self.stale_upload_age if older_than is None else older_than
        cutoff = datetime.now(timezone.utc).timestamp() - age
        aborted = 0
        markers: dict[str, str] = {}
        while True:
            page = await self.call(
                "list unfinished uploads",
                self.client.list_multipart_uploads,
                Bucket=self.bucket,
                Prefix=self.prefix,
                **markers,
            )
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() <= cutoff:
                    await self.call(
                        "abort a stale upload",
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    async def close(self) -> None:
        # Threads still blocked on the network finish on their own; nothing waits for them.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        if self._presigner is not None:
            self._presigner.close()

    def download_url(self, key: str, content_disposition: str) -> str | None:
        if self._presigner is None:
            return None
        return str(
            self._presigner.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self.object_key(key),
                    "ResponseContentDisposition": content_disposition,
                },
                ExpiresIn=self.presigned_expiry,
            )
        )

    # -- objects -----------------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        object_key = self.object_key(key)
        try:
            head = await self._run(functools.partial(self.client.head_object, Bucket=self.bucket, Key=object_key))
        except _STORE_ERRORS as exc:
            if _is_not_found(exc):
                return None
            raise self.unavailable(exc, f"stat {key}") from exc
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    async def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        object_key = self.object_key(key)
        if end is not None and end <= start:
            if await self.stat(key) is None:
                raise ObjectNotFound(key)
            return
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": object_key}
        if start > 0 or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = await self._run(functools.partial(self.client.get_object, **request))
        except _STORE_ERRORS as exc:
            if _is_not_found(exc):
                raise ObjectNotFound(key) from None
            if _error_code(exc) == "InvalidRange":
                return  # the object exists and ends before `start` (or is empty)
            raise self.unavailable(exc, f"read {key}") from exc
        body = response["Body"]
        try:
            # One GET streamed in chunks: memory stays one chunk whatever the object size.
            while True:
                try:
                    data = await self._run(functools.partial(body.read, READ_CHUNK))
                except _STORE_ERRORS as exc:
                    raise self.unavailable(exc, f"read {key}") from exc
                if not data:
                    return
                yield data
        finally:
            body.close()

    async def get_bytes(self, key: str) -> bytes | None:
        object_key = self.object_key(key)

        def fetch() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            with response["Body"] as body:
                return bytes(body.read())

        try:
            return await self._run(fetch)
        except _STORE_ERRORS as exc:
            if _is_not_found(exc):
                return None
            raise self.unavailable(exc, f"read {key}") from exc

    async def put_bytes(self, key: str, data: bytes) -> None:
        # One PUT replaces the object atomically.
        await self.call("write " + key, self.client.put_object, Bucket=self.bucket, Key=self.object_key(key), Body=data)

    async def create_exclusive(self, key: str, data: bytes) -> bool:
        # If-None-Match: * makes the PUT conditional (AWS S3 since 2024, MinIO, SeaweedFS).
        try:
            await self._run(
                functools.partial(
                    self.client.put_object, Bucket=self.bucket, Key=self.object_key(key), Body=data, IfNoneMatch="*"
                )
            )
        except _STORE_ERRORS as exc:
            # 412: the key exists; 409: a concurrent conditional write of it is in progress.
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise self.unavailable(exc, "create " + key) from exc
        return True

    async def open_writer(self, key: str) -> BlobWriter:
        check_key(key)
        return S3Writer(self, key)

    async def delete(self, key: str) -> bool:
        # DELETE succeeds whether or not the key existed; the HEAD tells which.
        existed = await self.stat(key) is not None
        if existed:
            await self.call("delete " + key, self.client.delete_object, Bucket=self.bucket, Key=self.object_key(key))
        return existed

    async def list(self, prefix: str) -> AsyncIterator[str]:
        async for info in self._listing(prefix):
            yield info.key

    async def list_info(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        # Listings carry sizes and times: one request per 1,000 objects instead of a HEAD each.
        async for info in self._listing(prefix):
            yield info

    async def clean_staging(self, older_than: float) -> tuple[int, int]:
        # Parts of unfinished uploads are not listed with their sizes here: the count says enough.
        return await self.abort_stale_uploads(older_than), 0

    async def usage(self, prefix: str) -> tuple[int, int]:
        # Listings carry sizes: one request per 1,000 objects instead of a HEAD per object.
        count = total = 0
        async for info in self._listing(prefix):
            count += 1
            total += info.size
        return count, total

    async def _listing(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        if prefix.strip("/"):
            check_key(prefix.rstrip("/"))
        elif prefix:
            raise ValueError(f"invalid storage prefix {prefix!r}")
        token: dict[str, str] = {}
        while True:
            page = await self.call(
                "list " + (prefix or "objects"),
                self.client.list_objects_v2,
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                **token,
            )
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(self.prefix) :]
                try:
                    check_key(key)
                except ValueError:
                    continue  # folder markers ("a/") some stores list; never objects of ours
                modified = item.get("LastModified")
                yield ObjectInfo(key, int(item.get("Size", 0)), modified.timestamp() if modified else 0.0)
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def check_writable(self) -> None:
        key = f"health/{uuid.uuid4().hex}"
        await self.put_bytes(key, b"ok")
        if await self.get_bytes(key) != b"ok":
            raise StorageUnavailable(f"s3 storage ({self._where}): read-back mismatch")
        await self.delete(key)

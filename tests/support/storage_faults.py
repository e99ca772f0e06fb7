"""A Storage wrapper that fails or hangs chosen operations, for fault-injection tests.

It wraps a real backend (local or S3), so everything that does not fail behaves exactly as that
backend does. Faults are armed and cleared from the test thread while the mirror's loop uses the
storage; hanging operations wait on an event that `clear()` releases, or until they are cancelled
(a caller's timeout).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from mirror.storage import BlobWriter, Storage
from mirror.storage.base import ObjectInfo, StorageUnavailable

OPERATIONS = ("open_writer", "write", "commit", "abort", "put_bytes", "create_exclusive", "get_bytes", "stat")


class StorageFaults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fail_writes_after: int | None = None  # blob bytes accepted before writes fail
        self.failing: set[str] = set()
        self.hanging: set[str] = set()
        self.message = "disk full"
        self.key_contains = ""  # only keys containing this are affected
        self.write_delay = 0.0  # seconds each blob write takes (a store slower than upstream)
        self.blob_bytes = 0  # blob bytes accepted since the last clear()
        self.injected = 0  # faults injected so far
        self._released = threading.Event()

    def fail(self, *operations: str, message: str = "disk full", key_contains: str = "") -> None:
        assert set(operations) <= set(OPERATIONS), operations
        with self._lock:
            self.failing.update(operations)
            self.message, self.key_contains = message, key_contains

    def hang(self, *operations: str, key_contains: str = "") -> None:
        assert set(operations) <= set(OPERATIONS), operations
        with self._lock:
            self.hanging.update(operations)
            self.key_contains = key_contains
            self._released.clear()

    def slow(self, seconds: float) -> None:
        """Each blob write takes this long: upstream outruns the store and the fill's queue fills."""
        self.write_delay = seconds

    def fail_after(self, nbytes: int, message: str = "disk full") -> None:
        """Blob writes fail once `nbytes` more bytes have been written (a disk filling up)."""
        with self._lock:
            self.fail_writes_after, self.blob_bytes, self.message = nbytes, 0, message

    def clear(self) -> None:
        with self._lock:
            self.fail_writes_after = None
            self.write_delay = 0.0
            self.failing.clear()
            self.hanging.clear()
            self.key_contains = ""
            self._released.set()

    async def check(self, operation: str, key: str, nbytes: int = 0) -> None:
        """Raise or hang if `operation` on `key` is to fail; account `nbytes` of blob data."""
        if self.key_contains and self.key_contains not in key:
            return
        if operation == "write" and self.write_delay:
            await asyncio.sleep(self.write_delay)
        with self._lock:
            hang = operation in self.hanging
            fail = operation in self.failing
            if operation == "write" and self.fail_writes_after is not None:
                if self.blob_bytes + nbytes > self.fail_writes_after:
                    fail = True
                else:
                    self.blob_bytes += nbytes
            if hang or fail:
                self.injected += 1
        if hang:
            # Until cleared or cancelled: a caller with a timeout gives up, one without hangs.
            while not self._released.is_set():
                await asyncio.sleep(0.05)
        elif fail:
            raise StorageUnavailable(f"injected fault: cannot {operation} {key}: {self.message}")


class FaultyWriter(BlobWriter):
    def __init__(self, inner: BlobWriter, faults: StorageFaults) -> None:
        self.inner = inner
        self.faults = faults
        self.key = inner.key

    @property
    def written(self) -> int:  # type: ignore[override]
        return self.inner.written

    @property
    def window_start(self) -> int | None:
        return getattr(self.inner, "window_start", None)

    async def write(self, data: bytes) -> None:
        await self.faults.check("write", self.key, len(data))
        await self.inner.write(data)

    async def read_written(self, offset: int, length: int) -> bytes:
        return await self.inner.read_written(offset, length)

    async def commit(self) -> ObjectInfo:
        await self.faults.check("commit", self.key)
        return await self.inner.commit()

    async def abort(self) -> None:
        await self.faults.check("abort", self.key)
        await self.inner.abort()


class FaultyStorage(Storage):
    def __init__(self, inner: Storage, faults: StorageFaults | None = None) -> None:
        self.inner = inner
        self.faults = faults or StorageFaults()
        self.name = inner.name

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        self.faults.clear()
        await self.inner.close()

    async def stat(self, key: str) -> ObjectInfo | None:
        await self.faults.check("stat", key)
        return await self.inner.stat(key)

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.read_range(key, start, end)

    async def get_bytes(self, key: str) -> bytes | None:
        await self.faults.check("get_bytes", key)
        return await self.inner.get_bytes(key)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self.faults.check("put_bytes", key)
        await self.inner.put_bytes(key, data)

    async def create_exclusive(self, key: str, data: bytes) -> bool:
        await self.faults.check("create_exclusive", key)
        return await self.inner.create_exclusive(key, data)

    async def open_writer(self, key: str) -> BlobWriter:
        await self.faults.check("open_writer", key)
        return FaultyWriter(await self.inner.open_writer(key), self.faults)

    async def delete(self, key: str) -> bool:
        return await self.inner.delete(key)

    def list(self, prefix: str) -> AsyncIterator[str]:
        return self.inner.list(prefix)

    async def check_writable(self) -> None:
        await self.inner.check_writable()

    async def usage(self, prefix: str) -> tuple[int, int]:
        return await self.inner.usage(prefix)

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    def download_url(self, key: str, content_disposition: str) -> str | None:
        return self.inner.download_url(key, content_disposition)

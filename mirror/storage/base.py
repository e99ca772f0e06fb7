"""The one storage interface the cache uses for blobs and metadata.

Every backend implements `Storage`, and tests/support/storage_suite.py checks each against the same
behaviours: put/get/stat/delete/list, ranged reads, atomic publish, concurrent writers of one key,
missing keys, typed errors. Storage knows nothing about HTTP or the Hub; keys are plain strings
such as "blobs/sha256/ab/abcdef...".
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import StorageError

_KEY_RE = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")


class ObjectNotFound(KeyError):
    """The key holds no published object."""


class StorageUnavailable(StorageError):
    """The backend failed (disk full, permission, store down); nothing was half-published."""


class WindowPassed(StorageError):
    """`read_written` was asked for bytes the writer no longer holds.

    Backends that cannot read an unpublished object back (S3: parts of an unfinished multipart
    upload are not readable) keep only a bounded window of the most recent bytes in memory. A
    follower further behind than that must get those bytes elsewhere (the published object once
    the writer commits, or its own upstream request); retrying `read_written` cannot succeed.
    """

    def __init__(self, key: str, offset: int, window_start: int) -> None:
        super().__init__(
            f"storage writer of {key}: bytes from {offset} are no longer held in memory"
            f" (the window starts at {window_start})"
        )
        self.key = key
        self.offset = offset
        self.window_start = window_start


def check_key(key: str) -> str:
    if not _KEY_RE.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


class BlobWriter(abc.ABC):
    """An object being written. Invisible to readers of the key until `commit`.

    `read_written` lets readers follow a fill while it is in progress (stream-while-filling)
    without the writer buffering anything in memory.
    """

    key: str
    written: int

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def read_written(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of what was written so far."""

    @property
    def window_start(self) -> int | None:
        """The oldest offset `read_written` can still serve, for writers that keep only a window
        of recent bytes (S3); None when every written byte can be read back."""
        return None

    @abc.abstractmethod
    async def commit(self) -> ObjectInfo:
        """Publish atomically: readers see the whole object or nothing."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard everything written; safe to call more than once and after commit."""


class Storage(abc.ABC):
    name: str

    async def start(self) -> None:
        """Prepare the backend (create folders, clean what a crash left behind)."""

    async def close(self) -> None:
        """Release resources."""

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def read_range(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of a published object; raises ObjectNotFound."""

    @abc.abstractmethod
    async def get_bytes(self, key: str) -> bytes | None:
        """A whole small object (metadata), or None when missing."""

    @abc.abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Publish a small object atomically, replacing any previous one."""

    @abc.abstractmethod
    async def create_exclusive(self, key: str, data: bytes) -> bool:
        """Publish a small object only if the key holds none; True if this call created it.

        Atomic: of several callers racing on one key (in any process), exactly one gets True.
        Replicas use it for leases (one fill of a blob across replicas).
        """

    @abc.abstractmethod
    async def open_writer(self, key: str) -> BlobWriter: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove an object; True if it existed."""

    @abc.abstractmethod
    def list(self, prefix: str) -> AsyncIterator[str]:
        """Keys that start with `prefix` (a folder-like prefix ending in '/' or empty)."""

    async def list_info(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Size and modification time of each object under `prefix`, as `list` finds them (objects
        removed meanwhile are left out). Backends whose listings carry sizes override it."""
        async for key in self.list(prefix):
            info = await self.stat(key)
            if info is not None:
                yield info

    async def clean_staging(self, older_than: float) -> tuple[int, int]:
        """Remove what unfinished writers left behind more than `older_than` seconds ago (a crash,
        a writer whose abort failed): (count, bytes where known). Younger leftovers may belong to
        writers still running, on this process or on another replica."""
        return 0, 0

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise StorageUnavailable unless an object can be written and read back now."""

    async def usage(self, prefix: str) -> tuple[int, int]:
        """(object count, total bytes) under a prefix. Backends may override with something cheaper."""
        count = total = 0
        async for key in self.list(prefix):
            info = await self.stat(key)
            if info is not None:
                count += 1
                total += info.size
        return count, total

    def local_path(self, key: str) -> Path | None:
        """A filesystem path of the published object, when the backend has one (sendfile)."""
        return None

    def download_url(self, key: str, content_disposition: str) -> str | None:
        """A URL that clients may fetch the published object from directly, or None.

        Backends return one only when configured to (S3 presigned redirects). Making it must not
        touch the network; the caller checks that the object exists.
        """
        return None

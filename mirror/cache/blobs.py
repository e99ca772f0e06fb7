"""Blob lookup for serving: a cache hit reads the store, a miss joins (or starts) the fill.

Both produce the same BlobBody, so the response code path is the same for hits and misses. A blob
whose bytes have all arrived and matched counts as cached while it is being published (the moment
between the last byte and the fsync/rename or multipart completion): serving it needs no upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from mirror.cache.entries import FileEntry
from mirror.cache.fill import Filler
from mirror.errors import IntegrityError
from mirror.storage import Storage


@dataclass
class BlobBody:
    source: str  # "cache" | "fill"
    path: Path | None = None  # a local file to sendfile from
    chunks: AsyncIterator[bytes] | None = None
    url: str | None = None  # an object-store URL the client may fetch the blob from itself


class Blobs:
    def __init__(self, storage: Storage, filler: Filler) -> None:
        self.storage = storage
        self.filler = filler

    async def is_cached(self, entry: FileEntry) -> bool:
        if self.filler.finished(entry.blob_key) is not None:
            return True
        return await self.storage.stat(entry.blob_key) is not None

    async def open(
        self, entry: FileEntry, token: str | None, start: int, end: int, disposition: str | None = None
    ) -> BlobBody:
        """The bytes [start, end) of the entry's blob, from the cache or from a fill.

        With `disposition` (the Content-Disposition the client should get), a cached blob that the
        store can hand out directly comes back as a URL instead.
        """
        if await self.storage.stat(entry.blob_key) is not None:
            if disposition is not None:
                url = self.storage.download_url(entry.blob_key, disposition)
                if url is not None:
                    return BlobBody(source="cache", url=url)
            path = self.storage.local_path(entry.blob_key)
            if path is not None:
                return BlobBody(source="cache", path=path)
            return BlobBody(source="cache", chunks=self.storage.read_range(entry.blob_key, start, end))
        finished = self.filler.finished(entry.blob_key)
        if finished is not None:
            return BlobBody(source="cache", chunks=finished.stream(start, end))
        if start > 0 and self.filler.recently_failed_verification(entry.blob_key):
            raise IntegrityError(
                f"the last upstream copy of {entry.path} failed verification; refusing to resume a partial "
                "download of it. Start the download again from the beginning."
            )
        fill = self.filler.join(entry, token)
        # Early failures (upstream down, access revoked) become a proper error status, not a cut body.
        await fill.wait_readable(start)
        return BlobBody(source="fill", chunks=fill.stream(start, end))

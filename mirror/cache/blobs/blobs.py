"""Blob lookup for serving: a cache hit reads the store, a miss joins (or starts) the fill.

Both produce the same BlobBody, so the response code path is the same for hits and misses. A blob
whose bytes have all arrived and matched counts as cached while it is being published (the moment
between the last byte and the fsync/rename or multipart completion): serving it needs no upstream.
With fill leases (replicas sharing storage), a miss that another replica is filling is streamed
from that replica (source "peer"); if it cannot be reached, this replica takes the fill over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from mirror.cache import keys
from mirror.cache.blobs.access import AccessLog
from mirror.cache.blobs.fill import Fill, Filler
from mirror.replicas import Replicas
from mirror.repo import Fetchable
from mirror.storage import Storage


@dataclass
class BlobBody:
    source: str  # "cache" | "fill" | "peer"
    path: Path | None = None  # a local file to sendfile from
    chunks: AsyncIterator[bytes] | None = None
    url: str | None = None  # an object-store URL the client may fetch the blob from itself
    # Ends the read (the blob may be evicted again); the caller calls it once the body is sent.
    release: Callable[[], None] = lambda: None


class Blobs:
    def __init__(
        self, storage: Storage, filler: Filler, replicas: Replicas | None = None, access: AccessLog | None = None
    ) -> None:
        self.storage = storage
        self.access = access
        self.filler = filler
        self.replicas = replicas

    async def is_cached(self, entry: Fetchable) -> bool:
        """Servable without upstream: published, or complete in a fill being published."""
        return self.filler.finished(keys.blob_key(entry.etag)) is not None or await self.is_stored(entry)

    async def resume_unsafe(self, entry: Fetchable) -> bool:
        """Whether Range requests for this blob must get the whole file (see cache/blobs/poison.py)."""
        return self.filler.poison is not None and await self.filler.poison.resume_unsafe(entry.etag)

    async def is_stored(self, entry: Fetchable) -> bool:
        """Published in storage: durable, whatever happens to a fill still publishing it."""
        return await self.storage.stat(keys.blob_key(entry.etag)) is not None

    async def open(
        self,
        entry: Fetchable,
        token: str | None,
        start: int,
        end: int,
        disposition: str | None = None,
        *,
        may_proxy: bool = True,
    ) -> BlobBody:
        """The bytes [start, end) of the entry's blob, from the cache, a fill, or a peer's fill.

        With `disposition` (the Content-Disposition the client should get), a cached blob that the
        store can hand out directly comes back as a URL instead. `may_proxy` is False for requests
        from other replicas, which are never passed on again. The caller calls the body's `release`
        once it is sent: until then the blob counts as being read (never evicted under it).
        """
        if self.access is None:
            return await self._open(entry, token, start, end, disposition, may_proxy)
        release = await self.access.begin_read(keys.blob_key(entry.etag))
        try:
            body = await self._open(entry, token, start, end, disposition, may_proxy)
        except BaseException:
            release()
            raise
        body.release = release
        return body

    async def _open(
        self, entry: Fetchable, token: str | None, start: int, end: int, disposition: str | None, may_proxy: bool
    ) -> BlobBody:
        key = keys.blob_key(entry.etag)
        may_proxy = may_proxy and self.replicas is not None
        unreachable: frozenset[str] = frozenset()
        while True:
            if await self.storage.stat(key) is not None:
                if disposition is not None:
                    url = self.storage.download_url(key, disposition)
                    if url is not None:
                        return BlobBody(source="cache", url=url)
                path = self.storage.local_path(key)
                if path is not None:
                    return BlobBody(source="cache", path=path)
                return BlobBody(source="cache", chunks=self.storage.read_range(key, start, end))
            finished = self.filler.finished(key)
            if finished is not None:
                return BlobBody(source="cache", chunks=finished.stream(start, end))
            started = await self.filler.start(entry, token, may_proxy=may_proxy, unreachable=unreachable)
            if started is None:
                continue  # published meanwhile: the next look finds it in storage
            if isinstance(started, Fill):
                return await self._from_fill(started, start, end)
            assert self.replicas is not None
            chunks = await self.replicas.open(started.url, entry, token, start, end)
            if chunks is not None:
                return BlobBody(source="peer", chunks=chunks)
            # The holder cannot serve it: look once more (it may have just published), else fill here
            # or stream from the replica that takes the fill over instead (never back to this holder).
            unreachable |= {started.url}

    @staticmethod
    async def _from_fill(fill: Fill, start: int, end: int) -> BlobBody:
        # Early failures (upstream down, access revoked) become a proper error status, not a cut body.
        await fill.wait_readable(start)
        return BlobBody(source="fill", chunks=fill.stream(start, end))

"""When each blob was last read, and which blobs are being read: what eviction must know.

A read costs a dict write: times are flushed to storage in batches every `flush_interval` seconds,
into 256 shard records (by the blob's first hash byte) merged with what is there (the later time
wins), so the request path never writes storage and replicas sharing S3 see each other's reads.
Two replicas flushing one shard at once may lose one's update: the blob then looks older than it
is, which costs at worst an early eviction and a refill, never a wrong byte.

While a blob is being read here it is "in use": eviction and quarantine wait for no reader but take
it away only through `remove`, which refuses (or, forced, holds new readers back for the delete),
and every flush marks blobs in use as read now, so other replicas see them as recently read until
the read ends (eviction there keeps blobs read within cache.evict_min_idle).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from mirror.cache import keys
from mirror.errors import StorageError
from mirror.storage import Storage
from mirror.tasks import stop, within

log = logging.getLogger(__name__)


class AccessLog:
    def __init__(self, storage: Storage, flush_interval: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.flush_interval = flush_interval
        self.clock = clock
        self._reads: dict[str, float] = {}  # blob key -> last read here, not yet flushed
        self._reading: Counter[str] = Counter()
        self._removing: dict[str, asyncio.Event] = {}
        self._removed: set[str] = set()  # to drop from the shards at the next flush
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    # -- the request path ----------------------------------------------------------------------

    async def begin_read(self, blob_key: str) -> Callable[[], None]:
        """Mark the blob read now and in use; returns the call that ends the read (idempotent).

        Waits only while the blob is being removed, so the reader then finds it gone (a miss)
        rather than half there.
        """
        while (removing := self._removing.get(blob_key)) is not None:
            await removing.wait()
        self._reading[blob_key] += 1
        self._reads[blob_key] = self.clock()
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._reading[blob_key] -= 1
                if self._reading[blob_key] <= 0:
                    del self._reading[blob_key]

        return end

    def in_use(self, blob_key: str) -> bool:
        return blob_key in self._reading

    # -- eviction and quarantine -----------------------------------------------------------------

    async def remove(self, blob_key: str, *, force: bool = False) -> bool:
        """Delete a stored blob unless it is being read here (`force`: even then; readers that
        already opened it keep their copy on local disk, S3 readers may be cut and retry). Readers
        arriving during the delete wait for it and then find the blob gone. True if removed."""
        if (self.in_use(blob_key) and not force) or blob_key in self._removing:
            return False
        done = self._removing[blob_key] = asyncio.Event()
        try:
            removed = await self.storage.delete(blob_key)
        finally:
            del self._removing[blob_key]
            done.set()
        self._reads.pop(blob_key, None)
        self._removed.add(blob_key)
        return removed

    async def last_reads(self) -> dict[str, float]:
        """Every blob's last read known to any replica (flushed), and this replica's unflushed ones."""
        found: dict[str, float] = {}
        async for key in self.storage.list(keys.ACCESS):
            for blob_key, when in (await self._read_shard(key)).items():
                if when > found.get(blob_key, 0.0):
                    found[blob_key] = when
        now = self.clock()
        for blob_key, when in [*self._reads.items(), *((k, now) for k in self._reading)]:
            if when > found.get(blob_key, 0.0):
                found[blob_key] = when
        return found

    # -- flushing ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="access-flush")

    async def close(self) -> None:
        await stop(self._flusher)
        try:
            await within(self.flush(), 10)
        except (asyncio.TimeoutError, StorageError) as exc:
            log.warning("could not record the last reads of blobs at shutdown: %s", exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except StorageError as exc:
                log.warning("could not record the last reads of blobs (kept for the next try): %s", exc)

    async def flush(self) -> None:
        """Merge the reads since the last flush (and blobs in use, as read now) into the shards."""
        async with self._flush_lock:
            now = self.clock()
            reads, self._reads = self._reads, {}
            for blob_key in self._reading:
                reads[blob_key] = now
            removed, self._removed = self._removed, set()
            by_shard: dict[str, dict[str, float | None]] = {}
            for blob_key, when in reads.items():
                by_shard.setdefault(keys.access_shard_key(blob_key), {})[blob_key] = when
            for blob_key in removed:
                by_shard.setdefault(keys.access_shard_key(blob_key), {}).setdefault(blob_key, None)
            try:
                for shard, changes in by_shard.items():
                    await self._merge(shard, changes)
                    for blob_key in changes:
                        reads.pop(blob_key, None)
                        removed.discard(blob_key)
            finally:
                # What could not be written waits for the next flush (newer reads win).
                for blob_key, when in reads.items():
                    self._reads[blob_key] = max(when, self._reads.get(blob_key, 0.0))
                self._removed |= removed

    async def forget(self, blob_keys: set[str]) -> None:
        """Drop the records of blobs no longer stored (gc): shards only hold blobs that exist."""
        self._removed |= blob_keys
        await self.flush()

    async def _merge(self, shard: str, changes: dict[str, float | None]) -> None:
        current = await self._read_shard(shard)
        for blob_key, when in changes.items():
            if when is None:
                current.pop(blob_key, None)
            elif when > current.get(blob_key, 0.0):
                current[blob_key] = when
        await self.storage.put_bytes(shard, json.dumps(current, separators=(",", ":")).encode())

    async def _read_shard(self, shard: str) -> dict[str, float]:
        data = await self.storage.get_bytes(shard)
        if not data:
            return {}
        try:
            value = json.loads(data)
        except ValueError:
            log.warning("access record %s is damaged; starting it again", shard)
            return {}
        if not isinstance(value, dict):
            return {}
        return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float))}


async def stored_blobs(storage: Storage) -> AsyncIterator[tuple[str, int, float]]:
    """(blob key, size, modification time) of every stored blob, streamed."""
    async for info in storage.list_info(keys.BLOBS):
        if keys.etag_of_blob(info.key) is not None:
            yield info.key, info.size, info.mtime

"""Filling a blob from upstream while streaming it to every client that wants it.

One Fill per blob key, however many clients ask at once (single-flight). The fill writes through a
storage BlobWriter (nothing is buffered in memory beyond one chunk), hashes while it streams the
file's bytes from the transport (which resumes broken transfers with Range), and publishes only if
the hash and size match. Followers read what has been written so far through the writer; the last byte is held back
until the hash matches, so no client can complete a download of bytes that failed the check. The
publish (fsync and rename, or completing a multipart upload) happens after that: clients do not wait
for the disk, and a blob is visible to other readers only once it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from mirror.cache import keys
from mirror.cache.blobs.hashing import blob_hasher
from mirror.cache.blobs.poison import PoisonLedger
from mirror.cache.blobs.xetfill import XetBody, XetSource
from mirror.cache.leases import Lease, Leases, LeaseUnavailable
from mirror.cache.metadata.entries import FileEntry
from mirror.config import CacheConfig, UpstreamConfig
from mirror.errors import HubError, IntegrityError, StorageError, UpstreamUnavailable
from mirror.metrics import Metrics, current_stats
from mirror.repo import Fetchable
from mirror.storage import BlobWriter, Storage
from mirror.storage.base import StorageUnavailable, WindowPassed
from mirror.tasks import stop, within
from mirror.upstream import Upstream

log = logging.getLogger(__name__)
T = TypeVar("T")


class Throttle(Protocol):
    async def consume(self, amount: int) -> None: ...


RECENT_CHUNKS = 4
# Granularity at which bytes fetched for a follower outside the fill are checked against the fill's.
BLOCK = 1024 * 1024
# A follower behind an S3 writer's window waits for the publish when the fill should end within
# this many seconds (well under huggingface_hub's 10 s read timeout), rather than fetching upstream.
FOLLOWER_WAIT = 4.0
PIPELINE_CHUNKS = 4


class BlockMismatch(Exception):
    """A block fetched for a follower differs from the same block of the fill's bytes."""


async def _hand_over(queue: asyncio.Queue[bytes | None], item: bytes | None, store: asyncio.Task[None]) -> None:
    """Queue `item` for the storing task; if that task has stopped, raise its error instead.

    Waiting on a full queue whose consumer died (disk full, object store down) would freeze the
    fill, and every client of the blob with it, until a restart.
    """
    while True:
        if store.done():
            store.result()  # raises the storage error that ended it
            raise StorageUnavailable("the fill's storing task ended before the last chunk")
        if not queue.full():
            queue.put_nowait(item)
            return
        put = asyncio.ensure_future(queue.put(item))
        try:
            await asyncio.wait({put, store}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if put.done() and not put.cancelled():
            return


class Fill:
    def __init__(
        self,
        entry: Fetchable,
        token: str | None,
        storage: Storage,
        upstream: Upstream,
        chunk_size: int,
        resume_attempts: int,
        metrics: Metrics | None = None,
        throttle: Throttle | None = None,
        storage_timeout: float = 120.0,
        poison: PoisonLedger | None = None,
        xet: XetSource | None = None,
    ) -> None:
        self.entry = entry
        # Files the upstream stores in Xet come by chunks, reusing cached ones (cache/blobs/xetfill.py).
        self.xet_body: XetBody | None = None
        if xet is not None and isinstance(entry, FileEntry) and entry.xet_hash:
            self.xet_body = xet.body(entry, token, chunk_size)
            self.xet_body.on_change = self._notify  # clients of the mirror's CAS wait on verified bytes
        self.blob_key = keys.blob_key(entry.etag)
        self.poison = poison
        # End offset of the furthest byte this fill handed to a client before it was verified.
        self.handed_out = 0
        self.storage_timeout = storage_timeout
        self.metrics = metrics
        self.throttle = throttle
        self.token = token
        self.storage = storage
        self.upstream = upstream
        self.chunk_size = chunk_size
        self.resume_attempts = resume_attempts
        self.written = 0
        # complete: every byte arrived and the hash matched (servable from the writer);
        # verified: also published in storage, so the writer is gone and storage serves it.
        self.complete = False
        self.verified = False
        self.error: HubError | StorageError | None = None
        self.writer: BlobWriter | None = None
        self._changed = asyncio.Event()
        # The last few chunks stay in memory so followers close behind the fill (the usual case)
        # get them without a disk read; memory per fill stays bounded by RECENT_CHUNKS chunks.
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=RECENT_CHUNKS)
        # sha256 of each BLOCK of the fill's bytes, kept when the writer cannot read them back (S3):
        # a follower that falls behind is then served from its own upstream request (_catch_up),
        # whose bytes the blob's hash does not cover; each of its blocks must match the fill's.
        self._blocks: list[bytes] | None = None
        self._started = time.monotonic()
        self._block_hasher = hashlib.sha256()
        self._block_len = 0
        self._hashed = 0

    @property
    def done(self) -> bool:
        return self.verified or self.error is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        try:
            if await self.storage.stat(self.blob_key) is not None:
                # Another fill published it between the caller's lookup and now.
                self.written = self.entry.size
            else:
                self.writer = await self._bounded(self.storage.open_writer(self.blob_key), "open a writer")
                if self.writer.window_start is not None:
                    self._blocks = []
                await self._download(self.writer)
                self.complete = True
                self._notify()  # followers may send the last byte while the blob is made durable
                if self.xet_body is not None:
                    # Verified: its terms are recorded before the blob becomes visible, so whoever
                    # finds the blob in storage finds them too (readers check the blob first).
                    try:
                        await self._bounded(self.xet_body.remember(), "record the file's Xet terms")
                    except StorageUnavailable as exc:  # the blob is still worth keeping: HTTP serves it
                        log.warning("publishing %s without its Xet terms: %s", self.blob_key, exc.message)
                # A publish moves the whole blob (fsync, or the last parts): allow it more time.
                await self._bounded(self.writer.commit(), "publish", self.storage_timeout * 5)
            self.complete = self.verified = True
        except asyncio.CancelledError:
            self.error = StorageError("fill cancelled: the mirror is shutting down")
            raise
        except (HubError, StorageError) as exc:
            self.error = exc
            if isinstance(exc, IntegrityError) and self.handed_out and self.poison is not None:
                # Before the followers hear of it (finally: _notify), so no resume can slip in.
                self.poison.mark(self.entry.etag, self.handed_out, exc.message)
        except Exception as exc:  # storage or programming errors must still end the followers
            log.exception("fill of %s failed", self.blob_key)
            self.error = StorageError(f"fill failed: {type(exc).__name__}")
        finally:
            if not self.verified and self.writer is not None:
                # Staging bytes must not outlive a failed fill (a full disk stays full otherwise),
                # but a hanging store must not keep the fill from ending either.
                try:
                    await self._bounded(self.writer.abort(), "discard the staging object")
                except (StorageError, OSError) as exc:
                    log.warning("could not discard the staging object of %s: %s", self.blob_key, exc)
            self._notify()

    async def _bounded(self, operation: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """A storage operation of this fill, failed as StorageUnavailable if it hangs."""
        limit = self.storage_timeout if timeout is None else timeout
        try:
            return await within(operation, limit)
        except asyncio.TimeoutError:
            raise StorageUnavailable(f"storage did not {what} for {self.blob_key} within {limit:.0f} s") from None

    async def _download(self, writer: BlobWriter) -> None:
        """Receive from upstream while a second task hashes and writes, through a small queue.

        The queue overlaps network reads with hashing and disk writes; it holds at most
        PIPELINE_CHUNKS chunks, so memory stays bounded.
        """
        entry = self.entry
        hasher = blob_hasher(entry.etag, entry.size)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=PIPELINE_CHUNKS)
        store = asyncio.create_task(self._store(queue, hasher, writer))
        try:
            await self._receive(queue, store)
            await _hand_over(queue, None, store)
            await store
        finally:
            if not store.done():
                await stop(store)
        digest = hasher.hexdigest()
        if digest != entry.etag:
            raise IntegrityError(f"upstream bytes of {entry.label} hash to {digest}, expected {entry.etag}; discarded")

    async def _store(self, queue: asyncio.Queue[bytes | None], hasher: Any, writer: BlobWriter) -> None:
        while (chunk := await queue.get()) is not None:
            # hashlib releases the GIL: hash in a worker while the writer writes.
            await asyncio.gather(
                asyncio.to_thread(self._digest, hasher, chunk), self._bounded(writer.write(chunk), "write")
            )
            self._recent.append((self.written, chunk))
            self.written += len(chunk)
            self._notify()

    def _digest(self, hasher: Any, chunk: bytes) -> None:
        """Hash a chunk into the blob's hash and, when kept, the block digests (in a worker thread)."""
        hasher.update(chunk)
        if self._blocks is None:
            return
        view = memoryview(chunk)
        while view:
            take = min(len(view), BLOCK - self._block_len)
            self._block_hasher.update(view[:take])
            self._block_len += take
            self._hashed += take
            view = view[take:]
            if self._block_len == BLOCK or self._hashed == self.entry.size:
                self._blocks.append(self._block_hasher.digest())
                self._block_hasher, self._block_len = hashlib.sha256(), 0

    async def _receive(self, queue: asyncio.Queue[bytes | None], store: asyncio.Task[None]) -> None:
        # The transport resumes broken transfers; what reaches here is the file's bytes in order.
        if self.xet_body is not None:
            body = self.xet_body.chunks()
        else:
            body = self.upstream.body(self.entry, self.token, 0, chunk_size=self.chunk_size)
        async with contextlib.aclosing(body) as chunks:
            async for chunk in chunks:
                await _hand_over(queue, chunk, store)
                if self.throttle is not None:
                    await self.throttle.consume(len(chunk))

    def _readable(self) -> int:
        if self.complete:
            return self.entry.size
        return max(0, min(self.written, self.entry.size - 1))

    def _sendable(self, end: int, hold_last: bool = True) -> int:
        """How far a response ending at `end` may go now: its last byte waits for the hash.

        Every response, a Range of the middle of the file too, holds back its own last byte until
        the whole blob is verified, so no client completes any download, or any segment of one,
        with bytes that then fail the check. Bytes verified otherwise (xet_verified) need not wait.
        """
        if self.complete:
            return end
        if not hold_last:
            return min(self.written, end)
        return max(0, min(self.written, end - 1))

    def xet_verified(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are written and verified: by the blob's hash, or, while a Xet
        fill runs, by their xorb's hash (cache/blobs/xetplan.py)."""
        if self.complete:
            return True
        body = self.xet_body
        return body is not None and self.written >= end and body.chunk_map.verified(start, end)

    def _handed(self, pos: int) -> None:
        if not self.complete and pos > self.handed_out:
            self.handed_out = pos

    async def wait_progress(self, timeout: float) -> None:
        """Return when more bytes arrived or the fill ended (or after `timeout` seconds)."""
        if not self.done:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def wait_readable(self, start: int) -> None:
        """Wait until a byte at `start` can be served, or the fill has ended."""
        while not self.done and self._readable() <= start:
            await self._changed.wait()
        if self.error is not None and not self.verified:
            raise self.error

    def _from_memory(self, pos: int, limit: int) -> bytes:
        for offset, chunk in self._recent:
            if offset <= pos < offset + len(chunk):
                return chunk[pos - offset : limit - offset] if pos < limit else b""
        return b""

    async def stream(self, start: int, end: int, *, hold_last: bool = True) -> AsyncIterator[bytes]:
        """Bytes [start, end) as they become available and safe to send; `hold_last=False` only for
        bytes the caller knows are verified (xet_verified)."""
        pos = start
        while pos < end:
            if self.verified:
                async for chunk in self.storage.read_range(self.blob_key, pos, end):
                    yield chunk
                return
            if self.error is not None:
                raise self.error
            limit = self._sendable(end, hold_last)
            recent = self._from_memory(pos, limit)
            if recent:
                pos += len(recent)
                self._handed(pos)
                yield recent
                continue
            if pos < limit and self.writer is not None:
                changed = self._changed
                try:
                    data = await self.writer.read_written(pos, min(self.chunk_size, limit - pos))
                except WindowPassed:
                    # The store cannot read these bytes back before publishing (S3). If the fill
                    # ends soon, wait for it and read them from storage: no upstream byte twice
                    # (a replica asking mid-fill lands here). Otherwise waiting could outlast the
                    # client's read timeout: fetch them ourselves.
                    if await self._published_soon():
                        continue
                    caught_up = pos
                    async for data in self._catch_up(pos, end - 1 if hold_last else end):
                        pos += len(data)
                        self._handed(pos)
                        yield data
                    if pos == caught_up:
                        await changed.wait()  # only the held-back last byte is left: wait for the publish
                    continue
                except StorageError:
                    if self.done:
                        continue  # the writer closed because the fill ended; look again
                    raise
                if not data:
                    await changed.wait()
                    continue
                pos += len(data)
                self._handed(pos)
                yield data
            else:
                await self._changed.wait()

    def _expected_wait(self) -> float:
        """Seconds until every byte is in, at the fill's rate so far (infinite while unknown)."""
        elapsed = time.monotonic() - self._started
        if self.written <= 0 or elapsed <= 0:
            return float("inf")
        return (self.entry.size - self.written) / (self.written / elapsed)

    async def _published_soon(self) -> bool:
        """Wait for the fill to be verified and published if that takes under FOLLOWER_WAIT (a hard
        cap of twice that); True if it was, False to serve the follower some other way."""
        if self._expected_wait() > FOLLOWER_WAIT:
            return False
        deadline = time.monotonic() + 2 * FOLLOWER_WAIT
        while not self.verified and self.error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.wait_progress(left)
        return True

    def _back_in_window(self, pos: int) -> bool:
        window_start = self.writer.window_start if self.writer is not None else None
        return window_start is not None and window_start <= pos < self._readable()

    async def _catch_up(self, pos: int, limit: int) -> AsyncIterator[bytes]:
        """Serve a follower that fell behind the writer's window straight from upstream.

        Ends when the follower is back inside the window, the fill is published (storage serves the
        rest), or it reached `limit` (the response's held-back last byte). These bytes come from a request of
        their own, which the blob's hash does not cover: they go out a block at a time, each block
        only once it matches the sha256 of the same block of the fill's bytes (a mismatch is
        fetched again, up to `resume_attempts` times). The fill's hash then vouches for them too.
        """
        entry = self.entry
        mismatches = 0
        while pos < limit and not self.verified and not self._back_in_window(pos):
            if self.error is not None:
                raise self.error
            block_start = pos - pos % BLOCK
            buffer = bytearray()
            body = self.upstream.body(entry, self.token, block_start, chunk_size=self.chunk_size)
            try:
                async with contextlib.aclosing(body) as chunks:
                    async for chunk in chunks:
                        buffer += chunk
                        while len(buffer) >= (block_len := min(BLOCK, entry.size - block_start)):
                            block = bytes(buffer[:block_len])
                            del buffer[:block_len]
                            await self._check_block(block_start, block)
                            piece = block[pos - block_start : max(0, min(limit, block_start + block_len) - block_start)]
                            block_start += block_len
                            if piece:
                                pos += len(piece)
                                if self.metrics is not None:
                                    self.metrics.catch_up_bytes.inc(len(piece))
                                yield piece
                            if pos >= limit or self.verified or self._back_in_window(pos):
                                return
            except BlockMismatch as exc:
                mismatches += 1
                if mismatches > self.resume_attempts:
                    raise UpstreamUnavailable(f"upstream bytes of {entry.label} keep differing: {exc}") from exc

    async def _check_block(self, start: int, block: bytes) -> None:
        """Raise unless `block` (the bytes at `start`) equals the fill's bytes there."""
        blocks = self._blocks
        if blocks is None:
            raise StorageUnavailable("a follower fell behind a writer that keeps no block digests")
        index = start // BLOCK
        while len(blocks) <= index:
            if self.error is not None:
                raise self.error
            await self._changed.wait()
        if await asyncio.to_thread(lambda: hashlib.sha256(block).digest()) != blocks[index]:
            log.warning("upstream bytes %d-%d of %s differ from the fill's; fetching them again", start,
                        start + len(block), self.entry.label)  # fmt: skip
            raise BlockMismatch(f"bytes at {start} differ from the verified fill's")


class Filler:
    """Starts and tracks fills; at most one per blob key (and, with leases, one across replicas)."""

    def __init__(
        self,
        storage: Storage,
        upstream: Upstream,
        cache: CacheConfig,
        upstream_cfg: UpstreamConfig,
        metrics: Metrics | None = None,
        leases: Leases | None = None,
        poison: PoisonLedger | None = None,
        xet: XetSource | None = None,
    ) -> None:
        self.metrics = metrics
        self.xet = xet
        self.leases = leases
        self._leased: set[str] = set()  # blob keys whose fill lease this replica holds
        self.storage = storage
        self.upstream = upstream
        self.cache = cache
        self.upstream_cfg = upstream_cfg
        self.poison = poison
        self._fills: dict[str, Fill] = {}
        self._tasks: dict[asyncio.Task[None], Fill] = {}
        self.started = 0

    async def start(
        self, entry: Fetchable, token: str | None, *, may_proxy: bool = True, unreachable: frozenset[str] = frozenset()
    ) -> Fill | Lease | None:
        """The fill of this blob, joined or started here, or the live lease of another replica; None
        when the blob turned out to be published already (the caller reads it from storage).

        Without leases (no server.advertise_url) this is join(). With them, a fill started here
        holds the blob's lease while it runs. When another replica holds it, its lease is returned
        if `may_proxy` (the caller streams the blob from that replica) unless its URL is one of
        `unreachable`; otherwise this replica takes the lease over. Replicas that found the same
        holder unreachable take it over at about the same time: the last write wins, and the others
        stream from the winner rather than fetch the blob from upstream again.
        """
        key = keys.blob_key(entry.etag)
        lease_key = keys.fill_lease_key(key)
        if self.leases is None or key in self._fills:
            return self.join(entry, token)
        try:
            holder = await self.leases.claim(lease_key)
            if holder is not None:
                if may_proxy and holder.url not in unreachable:
                    return holder
                await self.leases.take(lease_key)  # filling here anyway: the others should come here
                if may_proxy:
                    winner = await self._settle_takeover(lease_key, unreachable)
                    if winner is not None:
                        return winner
        except LeaseUnavailable as exc:
            # Leases only save upstream traffic: without the store's answer, fill here unleased.
            log.warning("filling %s without a lease: %s", key, exc.message)
            return self.join(entry, token)
        if key in self._fills:
            return self.join(entry, token)  # a fill started here while the lease was claimed
        if await self._published(key):
            # Its filler published it and released the lease between the caller's look and the claim.
            await self.leases.release(lease_key)
            return None
        self._leased.add(key)
        return self.join(entry, token)

    async def _published(self, key: str) -> bool:
        try:
            return await within(self.storage.stat(key), self.cache.storage_timeout) is not None
        except (StorageError, asyncio.TimeoutError):
            return False  # the fill will look again, and fail or fetch

    async def _settle_takeover(self, lease_key: str, unreachable: frozenset[str]) -> Lease | None:
        """After taking a lease over: the replica whose takeover won, if not this one."""
        assert self.leases is not None
        current = self.leases.elsewhere(await self.leases.settle(lease_key))
        return None if current is None or current.url in unreachable else current

    def join(self, entry: Fetchable, token: str | None, throttle: Throttle | None = None) -> Fill:
        """The fill of this blob, started if none runs; `throttle` caps a new fill's bandwidth."""
        fill = self._fills.get(keys.blob_key(entry.etag))
        if fill is not None:
            stats = current_stats()
            if stats is not None:
                stats.joined_fill = True
            return fill
        fill = Fill(
            entry,
            token,
            self.storage,
            self.upstream,
            self.cache.chunk_size,
            self.upstream_cfg.resume_attempts,
            self.metrics,
            throttle,
            self.cache.storage_timeout,
            self.poison,
            self.xet,
        )
        self._fills[fill.blob_key] = fill
        self.started += 1
        task = asyncio.create_task(self._run(fill), name=f"fill:{fill.blob_key}")
        self._tasks[task] = fill
        task.add_done_callback(self._forget_task)
        return fill

    async def _run(self, fill: Fill) -> None:
        started = time.monotonic()
        key = fill.blob_key
        renewal = asyncio.create_task(self._renew(key)) if self.leases is not None else None
        try:
            await fill.run()
        finally:
            if self._fills.get(key) is fill:
                del self._fills[key]
            # Counted before anything below yields: a client cut by this fill may read the metrics at once.
            integrity = isinstance(fill.error, IntegrityError)
            if self.metrics is not None:
                outcome = "ok" if fill.verified else ("integrity" if integrity else "error")
                self.metrics.fill_duration.labels(outcome).observe(time.monotonic() - started)
                if integrity:
                    self.metrics.hash_mismatches.inc()
            if renewal is not None:
                renewal.cancel()
                await asyncio.gather(renewal, return_exceptions=True)
            if self.leases is not None and key in self._leased:
                self._leased.discard(key)
                # After the publish: a replica that reads the lease now finds the blob first.
                await self.leases.release(keys.fill_lease_key(key))
            if integrity and self.poison is not None:
                await self.poison.flush()  # durable before the fill counts as ended (settle, shutdown)

    async def _renew(self, key: str) -> None:
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.leases.ttl / 3)
            if key in self._leased and not await self.leases.renew(keys.fill_lease_key(key)):
                self._leased.discard(key)  # taken over by a replica that could not reach us

    async def holder(self, blob_key: str) -> Lease | None:
        """The live lease of another replica filling this blob: None when none does, this replica
        does, leases are off, or the lease store cannot say (the caller then does without)."""
        if self.leases is None:
            return None
        try:
            lease = self.leases.elsewhere(await self.leases.read(keys.fill_lease_key(blob_key)))
        except LeaseUnavailable:
            return None
        return lease if lease is not None and lease.url else None

    def running(self, blob_key: str) -> Fill | None:
        """The fill of this blob running on this replica, if any."""
        return self._fills.get(blob_key)

    def finished(self, blob_key: str) -> Fill | None:
        """The fill of this blob if all its bytes arrived and matched, and it is being published."""
        fill = self._fills.get(blob_key)
        return fill if fill is not None and fill.complete else None

    @property
    def in_flight(self) -> int:
        return len(self._fills)

    async def wait_idle(self) -> None:
        """Return once every fill running now has ended (published, or failed and discarded)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def close(self, publish_grace: float = 0.0) -> None:
        """Stop: fills still downloading are cancelled at once; fills whose bytes all arrived and
        matched get up to `publish_grace` seconds to publish them (a download that completed just
        before a shutdown stays cached)."""
        publishing = [task for task, fill in self._tasks.items() if fill.complete]
        for task in self._tasks:
            if task not in publishing:
                task.cancel()
        if publishing and publish_grace > 0:
            await asyncio.wait(publishing, timeout=publish_grace)
        for task in publishing:
            if not task.done():
                log.warning("shutdown: publishing %s did not finish in time; it will be fetched again", task.get_name())
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

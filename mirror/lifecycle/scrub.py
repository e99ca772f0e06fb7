"""Scrubbing: re-hash stored blobs against the hash their key names, and quarantine the ones that differ.

A blob is verified once, while it is filled. Afterwards a disk can rot, a RAID controller or an
object store can return other bytes, or someone can edit a file under the cache: the mirror would
then serve wrong bytes as a cache hit for good. The scrub reads each blob back, hashes it as the
fill did (sha256 for LFS, the git blob sha1 with its `blob <size>\\0` header for the rest), and a
blob whose fully computed digest differs is quarantined: a JSON record of what was found is written
under `quarantine/`, and the bytes are removed. A quarantined blob is then simply missing, so the
next request for it is an ordinary miss that refills it from upstream, verified.

Only a digest computed over every byte the store says the object holds can condemn a blob. A read
that fails, times out or ends short is an error: logged, counted, and the blob left alone, so a
flaky store never empties the cache.

The same Scrubber runs in the background on the replica holding the maintenance lease
(`run_forever`, paced at `cache.scrub_rate` bytes per second) and in `hub-mirror verify` (`verify`,
unpaced, next to a running mirror if need be: it only reads, writes quarantine records and removes
blobs that are wrong anyway).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from mirror.cache import keys
from mirror.cache.blobs.hashing import blob_hasher
from mirror.errors import StorageError
from mirror.metrics import Metrics
from mirror.storage import Storage
from mirror.storage.base import ObjectInfo, ObjectNotFound
from mirror.sync.bandwidth import Bandwidth
from mirror.tasks import within

log = logging.getLogger(__name__)
T = TypeVar("T")

OK = "ok"
CORRUPT = "corrupt"
# Listed (or named by a file entry) but not stored by the time it is read: evicted, collected,
# quarantined by another scrub, or never downloaded. Not an error.
MISSING = "missing"
# The store failed, hung or returned fewer bytes than it says the object has: nothing is concluded.
ERROR = "error"

# Between two background passes: rot is slow, and a small cache should not be re-read all day.
PASS_PAUSE = 3600.0
# A pass that could not list the blobs (store down) is retried sooner.
RETRY_PAUSE = 60.0
# Corrupt keys a report names; the counts stay exact beyond it.
REPORT_KEYS = 1000


class Throttle(Protocol):
    async def consume(self, amount: int) -> None: ...


@dataclass
class ScrubReport:
    checked: int = 0  # blob keys looked at, whatever the outcome
    ok: int = 0
    corrupt: int = 0  # digest differed (quarantined unless the scrubber only reports)
    quarantined: int = 0  # corrupt ones whose bytes were removed
    missing: int = 0
    errors: int = 0
    bytes: int = 0  # bytes read and hashed
    corrupt_keys: list[str] = field(default_factory=list)  # the first REPORT_KEYS of them
    # Why the list of keys ended early (the store failed while listing); None for a complete run.
    aborted: str | None = None

    @property
    def clean(self) -> bool:
        """Every blob checked was intact or absent, and every one listed was checked."""
        return self.corrupt == 0 and self.errors == 0 and self.aborted is None


class _Changed(Exception):
    """The object was replaced or shrank while it was hashed: its digest condemns nothing."""


class Scrubber:
    def __init__(
        self,
        storage: Storage,
        metrics: Metrics | None = None,
        *,
        rate: float = 0,
        remove: Callable[[str], Awaitable[bool]] | None = None,
        source: str = "scrub",
        quarantine: bool = True,
        step_timeout: float | None = None,
        pause: float = PASS_PAUSE,
        throttle: Throttle | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """
        `rate`: bytes per second to read at (0: as fast as the store gives them); `throttle`
        replaces the token bucket it makes. `remove` takes a corrupt blob's key away (default
        `storage.delete`; the server passes one that lets current readers finish). `source` says
        in quarantine records and logs who found it (a replica, `hub-mirror verify`). With
        `quarantine` False mismatches are only reported. `step_timeout` bounds each storage
        operation (a stat, one chunk, a record, the default removal); `pause` is the rest between passes
        of `run_forever`, taken through `sleep`.
        """
        self.storage = storage
        self.metrics = metrics
        self.rate = rate
        self.remove = remove or storage.delete
        # A removal of the caller's own may wait for readers as long as it must: it bounds itself.
        self._bound_removal = remove is None
        self.source = source
        self.quarantine = quarantine
        self.step_timeout = step_timeout
        self.pause = pause
        self.throttle = throttle if throttle is not None else (Bandwidth(rate) if rate > 0 else None)
        self.sleep = sleep

    # -- one blob ------------------------------------------------------------------------------

    async def check(self, blob_key: str) -> str:
        """Re-hash one blob: "ok", "corrupt" (quarantined unless only reporting), "missing" or "error"."""
        return await self._check(blob_key, None, ScrubReport())

    async def _check(self, key: str, progress: Callable[[int], None] | None, report: ScrubReport) -> str:
        etag = keys.etag_of_blob(key)
        if etag is None:
            raise ValueError(f"not a blob key: {key!r}")
        outcome = await self._outcome(key, etag, progress, report)
        report.checked += 1
        if outcome == OK:
            report.ok += 1
        elif outcome == MISSING:
            report.missing += 1
        elif outcome == ERROR:
            report.errors += 1
        else:
            report.corrupt += 1
            if len(report.corrupt_keys) < REPORT_KEYS:
                report.corrupt_keys.append(key)
        if self.metrics is not None:
            self.metrics.scrub_blobs.labels(outcome=outcome).inc()
        return outcome

    async def _outcome(self, key: str, etag: str, progress: Callable[[int], None] | None, report: ScrubReport) -> str:
        try:
            # Twice at most: a blob replaced while it was read (quarantined by another scrub, then
            # refilled) is checked again as it is now.
            for _ in range(2):
                info = await self._step(self.storage.stat(key))
                if info is None:
                    return MISSING
                try:
                    digest = await self._hash(key, etag, info, progress, report)
                    if digest == etag:
                        return OK
                    if await self._step(self.storage.stat(key)) != info:
                        raise _Changed
                except _Changed:
                    continue
                await self._quarantine(key, etag, digest, info, report)
                return CORRUPT
            log.warning("scrub: %s changed while it was read, twice; left for the next pass", key)
            return ERROR
        except ObjectNotFound:
            return MISSING
        except (StorageError, asyncio.TimeoutError) as exc:
            # Never a reason to quarantine: the bytes were not all seen.
            log.warning("scrub: cannot check %s: %s", key, exc or type(exc).__name__)
            return ERROR

    async def _hash(
        self, key: str, etag: str, info: ObjectInfo, progress: Callable[[int], None] | None, report: ScrubReport
    ) -> str:
        """The digest of the stored object, read once, chunk by chunk (memory: two chunks)."""
        hasher = blob_hasher(etag, info.size)
        hashed = 0
        chunks = self.storage.read_range(key)
        reader = chunks.__aiter__()
        try:
            chunk = await self._step(anext(reader, None))
            while chunk is not None:
                if self.throttle is not None:
                    await self.throttle.consume(len(chunk))
                # hashlib releases the GIL: hash this chunk in a worker while the next one is read.
                _, following = await asyncio.gather(
                    asyncio.to_thread(hasher.update, chunk), self._step(anext(reader, None))
                )
                hashed += len(chunk)
                report.bytes += len(chunk)
                if self.metrics is not None:
                    self.metrics.scrub_bytes.inc(len(chunk))
                if progress is not None:
                    progress(len(chunk))
                chunk = following
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if hashed != info.size:
            now = await self._step(self.storage.stat(key))
            if now is None:
                raise ObjectNotFound(key)
            if now != info:
                raise _Changed
            # The sha1 header takes the size from stat: a short read would look like corruption.
            raise StorageError(f"read {hashed} bytes of {key}, the store says it holds {info.size}")
        return hasher.hexdigest()

    async def _quarantine(self, key: str, etag: str, found: str, info: ObjectInfo, report: ScrubReport) -> None:
        if not self.quarantine:
            log.warning("scrub: %s hashes to %s, not %s (%d bytes); reported only", key, found, etag, info.size)
            return
        record = {
            "key": key,
            "reason": "hash mismatch",
            "expected": etag,
            "found": found,
            "algorithm": "sha256" if len(etag) == 64 else "git-blob-sha1",
            "size": info.size,
            "stored_at": info.mtime,
            "when": time.time(),
            "by": self.source,
        }
        try:
            await self._step(self.storage.put_bytes(keys.quarantine_key(etag), json.dumps(record).encode()))
        except (StorageError, asyncio.TimeoutError) as exc:
            # The bytes must go all the same: the log line keeps what the record would have.
            log.warning("scrub: cannot write the quarantine record of %s: %s", key, exc or type(exc).__name__)
        try:
            removal = self.remove(key)
            await (self._step(removal) if self._bound_removal else removal)
        except (StorageError, asyncio.TimeoutError) as exc:
            log.error(
                "scrub: %s hashes to %s, not %s, and cannot be removed: %s; it is still served",
                key, found, etag, exc or type(exc).__name__,
            )  # fmt: skip
            return
        report.quarantined += 1
        if self.metrics is not None:
            self.metrics.quarantined_blobs.inc()
        log.warning(
            "scrub: %s hashes to %s, not %s (%d bytes): quarantined and removed; the next request refills it",
            key, found, etag, info.size,
        )  # fmt: skip

    async def _step(self, operation: Awaitable[T]) -> T:
        if self.step_timeout is None:
            return await operation
        return await within(operation, self.step_timeout)

    # -- many blobs ----------------------------------------------------------------------------

    async def verify(
        self,
        blob_keys: AsyncIterable[str] | Iterable[str],
        progress: Callable[[int], None] | None = None,
        *,
        concurrency: int = 1,
    ) -> ScrubReport:
        """Check every blob key of `blob_keys` (other keys are skipped), `concurrency` at a time.

        Keys are pulled one by one, so a listing of any length costs memory for `concurrency`
        blobs' chunks only. `progress` is called with the size of each chunk hashed. A failure of
        `blob_keys` itself (the store's listing) ends the run with `aborted` set in the report.
        """
        report = ScrubReport()
        source = _aiter(blob_keys)
        pulling = asyncio.Lock()  # an async iterator takes one `anext` at a time

        async def work() -> None:
            while True:
                async with pulling:
                    if report.aborted is not None:
                        return
                    try:
                        key = await anext(source, None)
                    except StorageError as exc:
                        report.aborted = str(exc) or type(exc).__name__
                        return
                if key is None:
                    return
                if keys.etag_of_blob(key) is not None:
                    await self._check(key, progress, report)

        workers = [asyncio.ensure_future(work()) for _ in range(max(1, concurrency))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        return report

    async def run_forever(self) -> None:
        """Endless passes over every stored blob, paced at `rate`; cancel to stop (at any await).

        Sets `scrub_last_pass` after each complete pass. Returns at once when no rate is set: an
        unpaced endless scrub would take the store's whole bandwidth.
        """
        if self.throttle is None:
            log.info("scrub: off (cache.scrub_rate is 0)")
            return
        while True:
            started = time.monotonic()
            try:
                report = await self.verify(self.storage.list(keys.BLOBS))
            except Exception:
                # A bug must not end the scrub for the life of the process; the next pass may pass.
                log.exception("scrub: pass failed")
                await self.sleep(RETRY_PAUSE)
                continue
            if report.aborted is not None:
                log.warning("scrub: pass ended early, cannot list blobs: %s", report.aborted)
                await self.sleep(min(self.pause, RETRY_PAUSE))
                continue
            if self.metrics is not None:
                self.metrics.scrub_last_pass.set(time.time())
            log.info(
                "scrub: pass done in %.0f s: %d blobs, %d bytes, %d corrupt (%d quarantined), %d missing, %d errors",
                time.monotonic() - started, report.checked, report.bytes, report.corrupt, report.quarantined,
                report.missing, report.errors,
            )  # fmt: skip
            await self.sleep(self.pause)


async def _aiter(items: AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
    if not isinstance(items, AsyncIterable):
        for item in items:
            yield item
        return
    try:
        async for item in items:
            yield item
    finally:
        # A listing stopped early (cancelled, or a worker failed) releases its pages or handles now.
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()

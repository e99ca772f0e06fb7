"""Keeping the blobs under cache.max_bytes: least recently read first, pinned ones never.

Past `evict_high` of the limit, blobs are removed in order of their last read (any replica's, see
cache/blobs/access.py; the publish time for blobs never read since) until the total is under
`evict_low` of it. Never removed: blobs reachable from pins in force (what sync keeps), blobs being
read here, and blobs read anywhere within `evict_min_idle` (a download on another replica, or a
client holding a presigned URL, must still find its object). Their file entries stay: a request
for an evicted file is an ordinary miss and refills it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mirror.cache.blobs.access import AccessLog, stored_blobs
from mirror.config import CacheConfig
from mirror.errors import StorageError
from mirror.lifecycle.inventory import pinned_blobs
from mirror.metrics import Metrics
from mirror.policy.allowlist import AllowList
from mirror.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class EvictionReport:
    total: int  # bytes of blobs stored before the pass
    limit: int
    pinned: int = 0  # bytes of pinned blobs (known only when the pass had to evict)
    evicted: int = 0
    evicted_bytes: int = 0
    kept_recent: int = 0  # bytes not evictable because read within evict_min_idle or in use
    pinned_over_limit: bool = False

    @property
    def remaining(self) -> int:
        return self.total - self.evicted_bytes


class Evictor:
    def __init__(
        self,
        storage: Storage,
        access: AccessLog,
        allowlist: AllowList,
        config: CacheConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.access = access
        self.allowlist = allowlist
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.last: EvictionReport | None = None
        if metrics is not None:
            metrics.cache_limit_bytes.set(config.max_bytes)

    async def run_once(self) -> EvictionReport:
        """One pass: measure, and evict if over the high watermark."""
        limit = self.config.max_bytes
        sizes: dict[str, tuple[int, float]] = {}
        total = 0
        async for blob_key, size, mtime in stored_blobs(self.storage):
            sizes[blob_key] = (size, mtime)
            total += size
        report = EvictionReport(total=total, limit=limit)
        if not limit or total <= self.config.evict_high * limit:
            self._done(report, "under_limit")
            return report
        pinned = await pinned_blobs(self.storage, self.allowlist)
        report.pinned = sum(size for key, (size, _) in sizes.items() if key in pinned)
        if report.pinned > limit:
            report.pinned_over_limit = True
            log.warning(
                "pinned blobs alone (%d bytes) exceed cache.max_bytes (%d): they are kept; raise the limit"
                " or the storage, or pin fewer revisions",
                report.pinned,
                limit,
            )
        reads = await self.access.last_reads()
        now = self.clock()
        idle_since = now - self.config.evict_min_idle
        candidates: list[tuple[float, str, int]] = []
        for blob_key, (size, mtime) in sizes.items():
            if blob_key in pinned:
                continue
            last = max(reads.get(blob_key, 0.0), mtime)
            if last > idle_since or self.access.in_use(blob_key):
                report.kept_recent += size
                continue
            candidates.append((last, blob_key, size))
        del sizes
        candidates.sort()
        target = self.config.evict_low * limit
        for _, blob_key, size in candidates:
            if report.remaining <= target:
                break
            try:
                removed = await self.access.remove(blob_key)
            except StorageError as exc:
                log.warning("eviction stopped: cannot remove %s: %s", blob_key, exc.message)
                break
            if removed:
                report.evicted += 1
                report.evicted_bytes += size
                if self.metrics is not None:
                    self.metrics.evicted_blobs.inc()
                    self.metrics.evicted_bytes.inc(size)
        if report.remaining > target:
            log.warning(
                "cache still holds %d bytes after eviction (limit %d, target %d): %d bytes pinned, %d bytes"
                " read within cache.evict_min_idle",
                report.remaining,
                limit,
                int(target),
                report.pinned,
                report.kept_recent,
            )
        elif report.evicted:
            log.info("evicted %d blobs (%d bytes); the cache holds %d bytes", report.evicted,
                     report.evicted_bytes, report.remaining)  # fmt: skip
        try:
            await self.access.flush()  # the removed blobs leave the access records
        except StorageError as exc:
            log.warning("could not update the access records after eviction: %s", exc.message)
        self._done(report, "ok")
        return report

    def _done(self, report: EvictionReport, outcome: str) -> None:
        self.last = report
        if self.metrics is not None:
            self.metrics.eviction_runs.labels(outcome).inc()
            self.metrics.pinned_over_limit.set(1 if report.pinned_over_limit else 0)
            if report.pinned or outcome == "ok":
                self.metrics.pinned_bytes.set(report.pinned)

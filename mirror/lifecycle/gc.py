"""Garbage collection: what no file refers to any more, and what interrupted work left behind.

Removed: blobs no file entry names (a purged repo's; content is shared, so only once no repo's
entry names it), staging leftovers and unfinished multipart uploads, fill leases long expired,
purges that were interrupted (their tombstone says which repo), and access records, Xet split
records and Xet chunk-index entries of blobs no longer stored. Anything younger than `grace` is
left alone (a fill or a purge may still be running), and so is any blob read within `min_idle` or
being read here. Every step streams its listing; what is kept in memory is the set of referenced
blob keys (and of the blobs kept).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from mirror.cache import keys
from mirror.cache.blobs.access import AccessLog, stored_blobs
from mirror.errors import StorageError
from mirror.lifecycle.inventory import read_records, referenced_blobs
from mirror.metrics import Metrics
from mirror.repo import API_TYPES, OID_RE, RepoRef
from mirror.storage import Storage

log = logging.getLogger(__name__)

KINDS = ("blob", "staging", "lease", "purge", "access", "xet_record")
# A fill lease this long past its expiry belongs to no running fill (leases are renewed every third
# of their TTL while the fill runs).
LEASE_SLACK = 300.0


class Progress(Protocol):
    def update(self, n: float = 1) -> object: ...


@dataclass
class GcReport:
    apply: bool
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    blobs_seen: int = 0
    referenced: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, kind: str, count: int = 1, size: int = 0) -> None:
        self.counts[kind] += count
        self.sizes[kind] += size

    def summary(self) -> str:
        verb = "removed" if self.apply else "would remove"
        parts = [f"{n} {k.replace('_', ' ')}{'s' if n != 1 else ''}" for k in KINDS if (n := self.counts[k])]
        what = ", ".join(parts) if parts else "nothing"
        size = self.sizes["blob"] + self.sizes["staging"]
        return f"{verb} {what} ({size} bytes) after checking {self.blobs_seen} blobs, {self.referenced} referenced"


class GarbageCollector:
    def __init__(
        self,
        storage: Storage,
        access: AccessLog,
        grace: float,
        min_idle: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.access = access
        self.grace = grace
        self.min_idle = min_idle
        self.metrics = metrics
        self.clock = clock

    async def run(self, *, apply: bool, progress: Progress | None = None) -> GcReport:
        report = GcReport(apply=apply)
        await self._purges(report)
        stored = await self._blobs(report, progress)
        await self._xet(report, stored)
        await self._staging(report)
        await self._leases(report)
        if apply and self.metrics is not None:
            for kind in KINDS:
                if report.counts[kind]:
                    self.metrics.gc_removed.labels(kind).inc(report.counts[kind])
            self.metrics.gc_removed_bytes.inc(report.sizes["blob"])
            if not report.errors:
                self.metrics.gc_last_success.set(self.clock())
        return report

    async def _remove(self, report: GcReport, key: str) -> bool:
        if not report.apply:
            return True
        try:
            return await self.storage.delete(key)
        except StorageError as exc:
            report.errors.append(f"cannot remove {key}: {exc.message}")
            return False

    async def _purges(self, report: GcReport) -> None:
        """Finish purges a restart or a failure interrupted (first: their blobs then count as unreferenced)."""
        cutoff = self.clock() - self.grace
        async for key, record in read_records(self.storage, self.storage.list(keys.PURGES)):
            repo_type, repo_id, started = record.get("repo_type"), record.get("repo_id"), record.get("at", 0)
            if not isinstance(repo_type, str) or f"{repo_type}s" not in API_TYPES or not isinstance(repo_id, str):
                continue
            if not isinstance(started, (int, float)) or started > cutoff:
                continue  # may still be running
            repo = RepoRef(repo_type, repo_id)
            async for leftover in self.storage.list(keys.repo_prefix(repo)):
                await self._remove(report, leftover)
            if await self._remove(report, key):
                report.add("purge")

    async def _blobs(self, report: GcReport, progress: Progress | None) -> set[str]:
        """Remove unreferenced blobs; the blob keys kept."""
        referenced = await referenced_blobs(self.storage)
        report.referenced = len(referenced)
        reads = await self.access.last_reads()
        now = self.clock()
        stored: set[str] = set()
        async for blob_key, size, mtime in stored_blobs(self.storage):
            report.blobs_seen += 1
            if progress is not None:
                progress.update(1)
            if blob_key in referenced:
                stored.add(blob_key)
                continue
            recent = max(mtime + self.grace, reads.get(blob_key, 0.0) + self.min_idle) > now
            if recent or self.access.in_use(blob_key):
                stored.add(blob_key)
                continue
            if not report.apply:
                report.add("blob", size=size)
                continue
            try:
                if await self.access.remove(blob_key):
                    report.add("blob", size=size)
                else:
                    stored.add(blob_key)
            except StorageError as exc:
                report.errors.append(f"cannot remove {blob_key}: {exc.message}")
                stored.add(blob_key)
        del referenced
        stale_records = {key for key in reads if key not in stored}
        report.add("access", len(stale_records))
        if report.apply and stale_records:
            try:
                await self.access.forget(stale_records)
            except StorageError as exc:
                report.errors.append(f"cannot update the access records: {exc.message}")
        return stored

    async def _gone(self, etag: str, stored: set[str]) -> bool:
        """Whether the blob of `etag` is not stored (looked up again: it may have been published since)."""
        if not OID_RE.fullmatch(etag):
            return True
        key = keys.blob_key(etag)
        return key not in stored and await self.storage.stat(key) is None

    async def _xet(self, report: GcReport, stored: set[str]) -> None:
        """Xet records of blobs no longer stored: split records older than the grace (a fill writes
        its record just before publishing, and one whose publish failed leaves it behind), and
        chunk-index holders (the index is rewritten without them, or removed when none is left)."""
        cutoff = self.clock() - self.grace
        async for info in self.storage.list_info(keys.XET_FILES):
            etag = info.key.rsplit("/", 1)[-1].removesuffix(".json")
            if info.mtime <= cutoff and await self._gone(etag, stored) and await self._remove(report, info.key):
                report.add("xet_record")
        async for key, record in read_records(self.storage, self.storage.list(keys.XET_XORBS)):
            holders = record.get("holders")
            if not isinstance(holders, list):
                continue
            kept = [h for h in holders if isinstance(h, dict) and not await self._gone(str(h.get("etag")), stored)]
            if len(kept) == len(holders):
                continue
            if report.apply:
                try:
                    if kept:
                        await self.storage.put_bytes(key, json.dumps({"holders": kept}).encode())
                    else:
                        await self.storage.delete(key)
                except StorageError as exc:
                    report.errors.append(f"cannot update {key}: {exc.message}")
                    continue
            report.add("xet_record")

    async def _staging(self, report: GcReport) -> None:
        if not report.apply:
            return  # backends tell what they removed only by removing it
        try:
            count, size = await self.storage.clean_staging(self.grace)
        except StorageError as exc:
            report.errors.append(f"cannot clean staging: {exc.message}")
            return
        report.add("staging", count, size)

    async def _leases(self, report: GcReport) -> None:
        cutoff = self.clock() - LEASE_SLACK
        async for key, record in read_records(self.storage, self.storage.list(keys.FILL_LEASES)):
            expires = record.get("expires")
            if isinstance(expires, (int, float)) and expires < cutoff and await self._remove(report, key):
                report.add("lease")

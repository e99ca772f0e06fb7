"""Sync jobs: mirror allow-listed repos ahead of demand.

A job resolves each wanted revision to a commit, lists the commit's tree, fills every missing
blob through the same single-flight fill path as client requests (a client asking meanwhile
shares the download), and only when every wanted file is present publishes the branch pin.
Failures are recorded on the job with a reason; nothing published is touched, and the next run
retries. Jobs and per-entry sync state live in storage, so they survive restarts and every
replica sees them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from mirror.cache import keys
from mirror.cache.blobs.blobs import Blobs
from mirror.cache.blobs.fill import Filler
from mirror.cache.metadata.entries import Entries
from mirror.cache.metadata.listings import Metadata
from mirror.cache.metadata.revisions import Revisions
from mirror.cache.records import Records
from mirror.config import SyncConfig
from mirror.errors import BadRequest, HubError, NotFound, StorageError
from mirror.metrics import Metrics
from mirror.policy.allowlist import AllowEntry, AllowList
from mirror.repo import RepoRef, is_commit
from mirror.storage import Storage
from mirror.sync.bandwidth import Bandwidth
from mirror.sync.pins import Pins
from mirror.sync.ratelimit import with_rate_limit
from mirror.tasks import stop
from mirror.upstream import Upstream

log = logging.getLogger(__name__)

KEEP_JOBS = 200
PROGRESS_SAVE_SECONDS = 2.0
_JOB_ID_RE = re.compile(r"[0-9a-f]{12}")
# Repo x revision pairs one job may sync. Entries are capped one by one, but a glob can match a
# whole namespace; past this the job stops adding targets and says so instead of hammering upstream.
MAX_JOB_TARGETS = 5000


@dataclass
class FileProgress:
    path: str
    size: int
    done: int = 0
    state: str = "pending"  # pending, cached, downloading, done, failed
    error: str | None = None


@dataclass
class RevisionProgress:
    repo_type: str
    repo: str
    revision: str
    commit: str | None = None
    state: str = "pending"  # pending, running, succeeded, failed
    files: list[FileProgress] = field(default_factory=list)
    error: str | None = None


@dataclass
class SyncJob:
    id: str
    trigger: str  # "api" or "schedule"
    repo_type: str | None
    repo: str | None
    entry_ids: list[str]
    state: str = "queued"  # queued, running, succeeded, failed
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    targets: list[RevisionProgress] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for t in self.targets for f in t.files)

    @property
    def bytes_done(self) -> int:
        return sum(f.done for t in self.targets for f in t.files)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes_total"] = self.bytes_total
        data["bytes_done"] = self.bytes_done
        return data


class SyncManager:
    def __init__(
        self,
        config: SyncConfig,
        *,
        upstream_token: str,
        records: Records,
        storage: Storage,
        upstream: Upstream,
        revisions: Revisions,
        listings: Metadata,
        entries: Entries,
        blobs: Blobs,
        filler: Filler,
        metrics: Metrics,
        allowlist: AllowList,
        pins: Pins,
    ) -> None:
        self.token = upstream_token or None  # scheduled work has no client token of its own
        self.records = records
        self.storage = storage
        self.upstream = upstream
        self.revisions = revisions
        self.listings = listings
        self.entries = entries
        self.blobs = blobs
        self.filler = filler
        self.metrics = metrics
        self.allowlist = allowlist
        self.pins = pins
        self.config = config
        self.jobs: OrderedDict[str, SyncJob] = OrderedDict()
        self._queue: asyncio.Queue[SyncJob] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # One cap for all of this replica's sync downloads. A client that asks for a file a sync is
        # filling shares that fill, and so its pace; files clients start are never capped.
        self.bandwidth = Bandwidth(self.config.bandwidth_limit) if self.config.bandwidth_limit else None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="sync-worker")

    async def close(self) -> None:
        await stop(self._worker)

    async def submit(
        self,
        trigger: str,
        repo_type: str | None = None,
        repo: str | None = None,
        entries: list[AllowEntry] | None = None,
    ) -> SyncJob:
        if entries is None:
            all_entries = await self.allowlist.entries()
            if repo is not None:
                ref = RepoRef(repo_type or "model", repo)
                entries = [e for e in all_entries if e.matches(ref)]
                if not entries:
                    raise BadRequest(f"{ref.repo_type} {repo} is not on the allow-list; add it first")
            else:
                entries = [e for e in all_entries if repo_type is None or e.repo_type == repo_type]
        job = SyncJob(
            id=secrets.token_hex(6), trigger=trigger, repo_type=repo_type, repo=repo, entry_ids=[e.id for e in entries]
        )
        self._remember(job)
        await self._save(job)
        await self._queue.put(job)
        return job

    def active_entry_ids(self) -> set[str]:
        return {i for j in self.jobs.values() if j.state in ("queued", "running") for i in j.entry_ids}

    def _remember(self, job: SyncJob) -> None:
        self.jobs[job.id] = job
        while len(self.jobs) > KEEP_JOBS:
            self.jobs.popitem(last=False)

    async def get(self, job_id: str) -> dict[str, Any]:
        if not _JOB_ID_RE.fullmatch(job_id):
            # Checked before it becomes part of a storage key.
            raise BadRequest("a sync job id is 12 hexadecimal digits (see GET /admin/sync)")
        if job_id in self.jobs:
            return self.jobs[job_id].to_json()
        record = await self.records.get(keys.sync_job_key(job_id))
        if record is None:
            raise NotFound(f"no sync job {job_id}")
        return dict(record)

    async def list(self) -> list[dict[str, Any]]:
        """Every job in storage (any replica's), newest first."""
        jobs: dict[str, dict[str, Any]] = {}
        async for key in self.storage.list(keys.SYNC_JOBS):
            record = await self.records.get(key)
            if record is not None:
                jobs[record["id"]] = record
        for job in self.jobs.values():
            jobs[job.id] = job.to_json()
        return sorted(jobs.values(), key=lambda j: j["created_at"], reverse=True)

    async def _save(self, job: SyncJob) -> None:
        await self.records.put(keys.sync_job_key(job.id), job.to_json())

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.run(job)
            except Exception:  # a bug in one job must not stop the worker
                log.exception("sync job %s crashed", job.id)

    async def run(self, job: SyncJob) -> None:
        job.state, job.started_at = "running", time.time()
        await self._save(job)
        metrics = self.metrics
        entries = [e for e in await self.allowlist.entries() if e.id in job.entry_ids]
        targets = 0
        capped = False
        for entry in entries:
            ok = True
            try:
                repos = await self._repos_of(entry, job)
            except (HubError, StorageError) as exc:
                job.errors.append(f"{entry.pattern}: {exc.message}")
                repos, ok = [], False
            for repo in repos:
                for revision in entry.revisions:
                    if targets >= MAX_JOB_TARGETS:
                        if not capped:
                            job.errors.append(
                                f"stopped at {MAX_JOB_TARGETS} repo revisions in one job; "
                                "narrow the allow-list entries or sync them one repo at a time"
                            )
                            capped = True
                        ok = False
                        break
                    targets += 1
                    target = RevisionProgress(repo.repo_type, repo.repo_id, revision)
                    job.targets.append(target)
                    ok = await self._sync_revision(job, entry, repo, target) and ok
            await self._record_entry(entry, ok, job)
        job.state = "failed" if job.errors else "succeeded"
        job.finished_at = time.time()
        metrics.sync_runs.labels(job.state).inc()
        await self._save(job)
        log.info("sync job %s %s: %d bytes, %d errors", job.id, job.state, job.bytes_done, len(job.errors))

    async def _repos_of(self, entry: AllowEntry, job: SyncJob) -> list[RepoRef]:
        if job.repo is not None:
            return [RepoRef(entry.repo_type, job.repo)]
        if entry.is_exact:
            return [RepoRef(entry.repo_type, entry.pattern)]
        namespace, _, _ = entry.pattern.partition("/")
        if not _ or any(c in namespace for c in "*?["):
            raise BadRequest("a glob pattern needs a literal namespace ('org/name-*') to be enumerated for sync")
        upstream = self.upstream
        token = self.token
        listing, _headers = await with_rate_limit(
            lambda: upstream.api_json(f"/api/{entry.repo_type}s?author={quote(namespace)}&limit=1000", token),
            self.config.rate_limit_retries,
        )
        ids = [item["id"] for item in listing if isinstance(item, dict) and isinstance(item.get("id"), str)]
        return [RepoRef(entry.repo_type, i) for i in sorted(ids) if entry.matches(RepoRef(entry.repo_type, i))]

    async def _sync_revision(self, job: SyncJob, entry: AllowEntry, repo: RepoRef, target: RevisionProgress) -> bool:
        token = self.token
        retries = self.config.rate_limit_retries
        target.state = "running"
        try:
            if is_commit(target.revision):
                commit = target.revision
            else:
                info = await with_rate_limit(lambda: self.revisions.fetch_info(repo, target.revision, token), retries)
                commit = str(info["sha"])
            target.commit = commit
            _, listing = await with_rate_limit(
                lambda: self.listings.tree(repo, commit, "", True, False, token), retries
            )
            target.files = [
                FileProgress(e["path"], int(e.get("size", 0)))
                for e in listing
                if e.get("type") == "file" and entry.wants_file(e["path"])
            ]
            semaphore = asyncio.Semaphore(self.config.concurrency)
            saver = asyncio.create_task(self._save_progress(job))
            try:
                await asyncio.gather(*(self._fetch(repo, commit, f, token, semaphore) for f in target.files))
            finally:
                saver.cancel()
        except (HubError, StorageError) as exc:
            target.state, target.error = "failed", exc.message
            job.errors.append(f"{repo.repo_id}@{target.revision}: {exc.message}")
            return False
        failed = [f for f in target.files if f.state == "failed"]
        if failed:
            target.state = "failed"
            target.error = f"{len(failed)} of {len(target.files)} files failed; {target.revision} not switched"
            job.errors.extend(f"{repo.repo_id}@{target.revision}/{f.path}: {f.error}" for f in failed)
            return False
        # Every wanted file is in the cache: only now does the mirror report the new commit.
        await self.pins.publish(repo, target.revision, commit)
        target.state = "succeeded"
        return True

    async def _fetch(
        self, repo: RepoRef, commit: str, item: FileProgress, token: str | None, semaphore: asyncio.Semaphore
    ) -> None:
        async with semaphore:
            try:
                entry = await with_rate_limit(
                    lambda: self.entries.get(repo, commit, item.path, token), self.config.rate_limit_retries
                )
                item.size = entry.size
                # Stored, not merely cached: the branch moves only once every blob is durable.
                if await self.blobs.is_stored(entry):
                    item.state, item.done = "cached", entry.size
                    return
                item.state = "downloading"
                fill = self.filler.join(entry, token, self.bandwidth)
                while not fill.done:
                    item.done = fill.written
                    await fill.wait_progress(1.0)
                if fill.error is not None and not fill.verified:
                    raise fill.error
                item.state, item.done = "done", entry.size
                self.metrics.sync_bytes.inc(entry.size)
            except (HubError, StorageError) as exc:
                item.state, item.error = "failed", exc.message

    async def _save_progress(self, job: SyncJob) -> None:
        while True:
            await asyncio.sleep(PROGRESS_SAVE_SECONDS)
            await self._save(job)

    async def _record_entry(self, entry: AllowEntry, ok: bool, job: SyncJob) -> None:
        key = keys.sync_entry_key(entry.id)
        state = await self.records.get(key) or {}
        now = time.time()
        state.update({"entry_id": entry.id, "last_attempt": now, "last_job": job.id})
        if ok:
            state["last_success"] = now
            state.pop("last_error", None)
            self.metrics.sync_last_success.labels(entry.id).set(now)
        else:
            state["last_error"] = "; ".join(job.errors[-3:]) or "failed"
        await self.records.put(key, state)

"""What the cache holds and what refers to what: read from storage by streaming its listings.

File entries (repos/<type>s/<id>/entries/<commit>/...) name the blob each file at a commit is, LFS
object records (repos/<type>s/<id>/lfs/...) the blobs git-lfs asked for by hash; pins name the
commit a sync fixed a branch at. Everything here walks listings one object at a time and reads
records with a bounded number in flight, so memory grows with what is kept (a set of blob keys),
never with a listing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mirror.cache import keys
from mirror.errors import StorageError
from mirror.policy.allowlist import AllowList
from mirror.repo import API_TYPES, RepoRef, is_commit
from mirror.storage import Storage

log = logging.getLogger(__name__)

_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# The kinds of repo record that name a blob: file entries at a commit, and LFS objects by hash.
BLOB_KINDS = ("entries", "lfs")
# Records read at once: S3 answers each GET in milliseconds, and 100,000 of them one by one take minutes.
READ_CONCURRENCY = 16


async def read_records(
    storage: Storage, names: AsyncIterable[str], concurrency: int = READ_CONCURRENCY
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(key, record) for each key whose object holds a JSON object; others are skipped."""

    async def read(key: str) -> tuple[str, dict[str, Any] | None]:
        try:
            data = await storage.get_bytes(key)
            value = json.loads(data) if data else None
        except (StorageError, ValueError) as exc:
            log.warning("cannot read the record %s: %s", key, exc)
            return key, None
        return key, value if isinstance(value, dict) else None

    pending: set[asyncio.Task[tuple[str, dict[str, Any] | None]]] = set()
    try:
        async for key in names:
            pending.add(asyncio.ensure_future(read(key)))
            if len(pending) >= concurrency:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    found, record = task.result()
                    if record is not None:
                        yield found, record
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                found, record = task.result()
                if record is not None:
                    yield found, record
    finally:
        for task in pending:
            task.cancel()


async def _keys_of_kind(storage: Storage, prefix: str, *kinds: str) -> AsyncIterator[str]:
    async for key in storage.list(prefix):
        parsed = keys.parse_repo_key(key)
        if parsed is not None and parsed[1] in kinds:
            yield key


@dataclass(frozen=True)
class Pin:
    repo: RepoRef
    revision: str
    commit: str


async def pins_in_force(storage: Storage, allowlist: AllowList) -> list[Pin]:
    """Pins of allow-listed repos whose entry still names the pinned revision (what sync keeps)."""
    entries = await allowlist.entries()
    prefixes: set[str] = set()
    for entry in entries:
        if entry.is_exact:
            prefixes.add(keys.repo_prefix(RepoRef(entry.repo_type, entry.pattern)) + "pins/")
        else:
            prefixes.add(f"{keys.REPOS}{entry.repo_type}s/")
    found: list[Pin] = []
    for prefix in sorted(prefixes):
        async for key, record in read_records(storage, _keys_of_kind(storage, prefix, "pins")):
            parsed = keys.parse_repo_key(key)
            revision, commit = record.get("revision"), record.get("commit")
            if parsed is None or not isinstance(revision, str) or not isinstance(commit, str):
                continue
            repo = parsed[0]
            if any(e.matches(repo) and revision in e.revisions for e in entries):
                found.append(Pin(repo, revision, commit))
    return found


async def blobs_at(storage: Storage, repo: RepoRef, commit: str) -> AsyncIterator[tuple[str, int]]:
    """(blob key, size) of each file entry of a repo at a commit."""
    prefix = f"{keys.repo_prefix(repo)}entries/{commit}/"
    async for _, record in read_records(storage, storage.list(prefix)):
        blob = _blob_of(record)
        if blob is not None:
            yield blob


async def pinned_blobs(storage: Storage, allowlist: AllowList) -> dict[str, int]:
    """Blob key -> size of every blob a pin in force reaches: never evicted."""
    pinned: dict[str, int] = {}
    for pin in await pins_in_force(storage, allowlist):
        async for blob_key, size in blobs_at(storage, pin.repo, pin.commit):
            pinned[blob_key] = size
    return pinned


async def repo_blobs(storage: Storage, repo: RepoRef) -> AsyncIterator[tuple[str, int]]:
    """(blob key, size) of each file entry of a repo, at every cached commit, and of each LFS object
    git-lfs asked for (all may be served)."""

    async def names() -> AsyncIterator[str]:
        for kind in BLOB_KINDS:
            async for key in storage.list(f"{keys.repo_prefix(repo)}{kind}/"):
                # repos/models/org/entries/... also lists the records of a repo "org/entries": not ours.
                parsed = keys.parse_repo_key(key)
                if parsed is not None and parsed[0] == repo and parsed[1] == kind and _names_blob(kind, parsed[2]):
                    yield key

    async for _, record in read_records(storage, names()):
        blob = _blob_of(record)
        if blob is not None:
            yield blob


def _names_blob(kind: str, rest: list[str]) -> bool:
    """Whether a record of this kind, at these parts after the kind, names a blob."""
    if kind == "entries":
        return bool(rest) and is_commit(rest[0])
    return kind == "lfs" and len(rest) == 2


def _blob_of(record: dict[str, Any]) -> tuple[str, int] | None:
    """(blob key, size) of a file entry record; None for "no such file" and damaged records."""
    etag, size = record.get("etag"), record.get("size")
    if record.get("missing") or not isinstance(etag, str) or not isinstance(size, int):
        return None
    if not _ETAG.fullmatch(etag):
        return None
    return keys.blob_key(etag), size


@dataclass
class RepoFiles:
    """What the records of one repo name: the blobs of its files, and its known revisions."""

    repo: RepoRef
    blobs: dict[str, int] = field(default_factory=dict)  # blob key -> size
    commits: dict[str, list[int]] = field(default_factory=dict)  # commit -> [files, bytes]
    revisions: dict[str, str] = field(default_factory=dict)  # revision -> commit


async def repo_files(storage: Storage, repo_type: str | None = None) -> dict[RepoRef, RepoFiles]:
    """Every repo with records in storage (of one type, or all), read in one streamed pass."""
    prefix = keys.REPOS if repo_type is None else f"{keys.REPOS}{repo_type}s/"
    repos: dict[RepoRef, RepoFiles] = {}

    async def wanted() -> AsyncIterator[str]:
        async for key in storage.list(prefix):
            parsed = keys.parse_repo_key(key)
            if parsed is None:
                continue
            repo, kind, _ = parsed
            repos.setdefault(repo, RepoFiles(repo))
            if kind in ("entries", "lfs", "refs", "pins"):
                yield key

    async for key, record in read_records(storage, wanted()):
        parsed = keys.parse_repo_key(key)
        if parsed is None:
            continue
        repo, kind, rest = parsed
        files = repos[repo]
        if kind == "entries" and rest:
            blob = _blob_of(record)
            if blob is not None:
                files.blobs[blob[0]] = blob[1]
                counts = files.commits.setdefault(rest[0], [0, 0])
                counts[0] += 1
                counts[1] += blob[1]
        elif kind == "lfs":
            blob = _blob_of(record)
            if blob is not None:
                files.blobs[blob[0]] = blob[1]  # of no commit: git-lfs asked for it by its hash
        elif record.get("revision") is not None and isinstance(record.get("commit"), str):
            # Pins are read after refs or before them, in key order: a pin wins (it is what clients get).
            revision = str(record["revision"]) or "(default)"
            if kind == "pins" or revision not in files.revisions:
                files.revisions[revision] = str(record["commit"])
    return repos


async def referenced_blobs(storage: Storage) -> set[str]:
    """Every blob some file entry or LFS object record of some repo names (gc keeps exactly these)."""
    referenced: set[str] = set()
    for api_type in API_TYPES:
        async for _, record in read_records(storage, _keys_of_kind(storage, f"{keys.REPOS}{api_type}/", *BLOB_KINDS)):
            blob = _blob_of(record)
            if blob is not None:
                referenced.add(blob[0])
    return referenced

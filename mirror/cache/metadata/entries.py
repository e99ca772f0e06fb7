"""The map (repo, commit, path) -> blob: which content a file at a commit is, and how big.

Filled from the upstream's resolve HEAD, which names the content hash (git blob sha1 or LFS
sha256) and size. Commits are immutable, so entries, and "no such file" answers, are kept for good
(in memory only, if storage cannot take them: the answer does not depend on the write).
"""

from __future__ import annotations

from dataclasses import dataclass

from mirror.cache import keys
from mirror.cache.memo import Memo
from mirror.cache.records import Records
from mirror.cache.singleflight import SingleFlight
from mirror.errors import EntryNotFound
from mirror.repo import RepoRef
from mirror.tokens import fingerprint
from mirror.upstream import Upstream

MEMORY_ENTRIES = 50_000


@dataclass(frozen=True)
class FileEntry:
    repo: RepoRef
    commit: str
    path: str
    etag: str  # sha256 (LFS) or git blob sha1
    size: int
    xet_hash: str | None = None  # the upstream stores it in Xet: its file hash there (X-Xet-Hash)

    @property
    def is_lfs(self) -> bool:
        return len(self.etag) == 64

    @property
    def blob_key(self) -> str:
        return keys.blob_key(self.etag)

    @property
    def label(self) -> str:
        return f"{self.repo.repo_id}/{self.path}"


def _entry_of(repo: RepoRef, commit: str, path: str, record: dict) -> FileEntry:
    xet = record.get("xet")
    return FileEntry(repo, commit, path, record["etag"], record["size"], xet if isinstance(xet, str) else None)


def missing_entry(path: str, commit: str) -> EntryNotFound:
    return EntryNotFound(f"Entry not found: {path} does not exist at commit {commit}", commit=commit)


class Entries:
    def __init__(self, upstream: Upstream, records: Records) -> None:
        self.upstream = upstream
        self.records = records
        self._flight: SingleFlight[FileEntry] = SingleFlight()
        # A small in-memory front so hot files cost no storage read per request.
        self._memory: Memo[tuple[RepoRef, str, str], FileEntry | None] = Memo(MEMORY_ENTRIES)

    async def get(self, repo: RepoRef, commit: str, path: str, token: str | None) -> FileEntry:
        mem_key = (repo, commit, path)
        if mem_key in self._memory:
            entry = self._memory[mem_key]
            if entry is None:
                raise missing_entry(path, commit)
            return entry
        record = await self.records.get(keys.entry_key(repo, commit, path))
        if record is not None:
            entry = None if record.get("missing") else _entry_of(repo, commit, path, record)
            self._remember(mem_key, entry)
            if entry is None:
                raise missing_entry(path, commit)
            return entry
        flight_key = (repo, commit, path, fingerprint(token))
        return await self._flight.do(flight_key, lambda: self._fetch(repo, commit, path, token))

    async def _fetch(self, repo: RepoRef, commit: str, path: str, token: str | None) -> FileEntry:
        key = keys.entry_key(repo, commit, path)
        try:
            meta = await self.upstream.file_meta(repo, commit, path, token)
        except EntryNotFound:
            await self.records.put_best_effort(key, {"path": path, "missing": True})
            self._remember((repo, commit, path), None)
            raise missing_entry(path, commit) from None
        entry = FileEntry(repo, commit, path, meta.etag, meta.size, meta.xet_hash)
        record = {"path": path, "etag": meta.etag, "size": meta.size}
        await self.records.put_best_effort(key, record | ({"xet": meta.xet_hash} if meta.xet_hash else {}))
        if meta.xet_hash:
            # What a Xet client will ask the mirror's CAS for: this file, by its Xet hash.
            where = {"etag": meta.etag, "size": meta.size, "commit": commit, "path": path}
            await self.records.put_best_effort(keys.xet_file_key(repo, meta.xet_hash), where)
        self._remember((repo, commit, path), entry)
        return entry

    def forget(self, repo: RepoRef) -> None:
        self._memory.forget(lambda key: key[0] == repo)

    def _remember(self, key: tuple[RepoRef, str, str], entry: FileEntry | None) -> None:
        self._memory.put(key, entry)

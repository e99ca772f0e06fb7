"""Forgetting a repo everywhere: its records in storage and every in-memory cache that holds it.

Each cache registers its own `forget(repo)` when it is built (app.py), so a purge reaches all of
them without a list that must be kept in step by hand. Blobs stay: other repos may share them
(gc removes those no repo's entries name any more).

A purge first writes a tombstone naming the repo and removes it last: if the mirror stops half
way, gc finishes the purge (a repo half purged would otherwise serve from half its records).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from mirror.cache import keys
from mirror.cache.records import Records
from mirror.errors import RepoNotFound
from mirror.repo import RepoRef
from mirror.storage import Storage


class Purge:
    def __init__(self, storage: Storage, records: Records) -> None:
        self.storage = storage
        self.records = records
        self._forgetters: list[Callable[[RepoRef], None]] = []

    def register(self, forget: Callable[[RepoRef], None]) -> None:
        self._forgetters.append(forget)

    async def repo(self, repo: RepoRef) -> int:
        """Remove a repo's records (mappings and metadata); the count removed."""
        prefix = keys.repo_prefix(repo)
        async for _ in self.storage.list(prefix):
            break
        else:
            raise RepoNotFound(f"nothing cached for {repo.repo_type} {repo.repo_id}")
        tombstone = keys.purge_key(repo)
        record = {"repo_type": repo.repo_type, "repo_id": repo.repo_id, "at": time.time()}
        await self.storage.put_bytes(tombstone, json.dumps(record).encode())
        removed = 0
        self.forget(repo)  # nothing half-removed is served from memory meanwhile
        async for key in self.storage.list(prefix):
            removed += await self.storage.delete(key)
        self.forget(repo)
        await self.storage.delete(tombstone)
        return removed

    def forget(self, repo: RepoRef) -> None:
        """Drop what memory holds of a repo (its records and every registered cache)."""
        self.records.forget(keys.repo_prefix(repo))
        for forget in self._forgetters:
            forget(repo)


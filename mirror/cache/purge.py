"""Forgetting a repo everywhere: its records in storage and every in-memory cache that holds it.

Each cache registers its own `forget(repo)` when it is built (app.py), so a purge reaches all of
them without a list that must be kept in step by hand. Blobs stay: other repos may share them.
"""

from __future__ import annotations

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
        found = [key async for key in self.storage.list(prefix)]
        if not found:
            raise RepoNotFound(f"nothing cached for {repo.repo_type} {repo.repo_id}")
        removed = 0
        for key in found:
            removed += await self.storage.delete(key)
        self.forget(repo)
        return removed

    def forget(self, repo: RepoRef) -> None:
        """Drop what memory holds of a repo (its records and every registered cache)."""
        self.records.forget(keys.repo_prefix(repo))
        for forget in self._forgetters:
            forget(repo)

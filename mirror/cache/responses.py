"""Serialised API answers for a commit, kept in memory.

Turning a 2000-entry tree page or a model info with 2000 siblings back into JSON (xet fields
stripped) costs milliseconds per request; the bytes never change for a commit, so they are kept
in a bounded LRU. Keys start with the repo, so a purge can drop them.
"""

from __future__ import annotations

from collections.abc import Hashable

from mirror.cache.memo import Memo
from mirror.repo import RepoRef

BUDGET = 32 * 1024 * 1024


class ResponseCache:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self._items: Memo[tuple[RepoRef, Hashable], bytes] = Memo(budget, sizeof=len)

    def get(self, repo: RepoRef, key: Hashable) -> bytes | None:
        return self._items.get((repo, key))

    def put(self, repo: RepoRef, key: Hashable, body: bytes) -> None:
        self._items.put((repo, key), body)

    def forget(self, repo: RepoRef) -> None:
        self._items.forget(lambda key: key[0] == repo)

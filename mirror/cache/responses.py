"""Serialised API answers for a commit, kept in memory.

Turning a 2000-entry tree page or a model info with 2000 siblings back into JSON (xet fields
stripped) costs milliseconds per request; the bytes never change for a commit, so they are kept
in a bounded LRU. Keys start with the repo, so a purge can drop them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from mirror.repo import RepoRef

BUDGET = 32 * 1024 * 1024


class ResponseCache:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self._items: OrderedDict[tuple[RepoRef, Hashable], bytes] = OrderedDict()
        self._size = 0

    def get(self, repo: RepoRef, key: Hashable) -> bytes | None:
        body = self._items.get((repo, key))
        if body is not None:
            self._items.move_to_end((repo, key))
        return body

    def put(self, repo: RepoRef, key: Hashable, body: bytes) -> None:
        if len(body) > self.budget // 8:
            return
        old = self._items.pop((repo, key), None)
        self._size -= len(old) if old is not None else 0
        self._items[(repo, key)] = body
        self._size += len(body)
        while self._size > self.budget:
            _, dropped = self._items.popitem(last=False)
            self._size -= len(dropped)

    def forget(self, repo: RepoRef) -> None:
        for item in [k for k in self._items if k[0] == repo]:
            self._size -= len(self._items.pop(item))

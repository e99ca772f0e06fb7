"""Small JSON records in storage, with an in-memory front for the immutable ones.

Answers for a commit (info, trees, paths-info, commit pages, file entries) never change once
written, so parsed copies are kept in a bounded LRU: a hot tree of thousands of entries is then
not re-read and re-parsed on every request. Values handed out are shared: callers must not
mutate them.

Records written while answering a read (branch -> commit, info, listings, entries, visibility)
are a cache of upstream: `put_best_effort` stores them when storage can, and otherwise keeps them
in memory, so a full disk never fails a read that can be answered.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mirror.cache import keys
from mirror.cache.memo import Memo
from mirror.errors import StorageError
from mirror.metrics import LogLimit, Metrics
from mirror.storage import Storage

log = logging.getLogger(__name__)

MEMORY_BUDGET = 64 * 1024 * 1024  # bytes of serialised JSON kept parsed in memory
# Records that storage refused, held until a later write of the key succeeds (or pushed out).
UNSAVED_BUDGET = 16 * 1024 * 1024


class Records:
    def __init__(self, storage: Storage, memory_budget: int = MEMORY_BUDGET, metrics: Metrics | None = None) -> None:
        self.storage = storage
        self.memory_budget = memory_budget
        self.metrics = metrics
        # (value, size of its JSON) of immutable records, parsed once.
        self._memory: Memo[str, tuple[Any, int]] = Memo(memory_budget, sizeof=_second)
        # Newer than what storage holds for the key, so read before it.
        self._unsaved: Memo[str, tuple[Any, int]] = Memo(UNSAVED_BUDGET, sizeof=_second)
        self._write_failures = LogLimit(log)

    async def get(self, key: str) -> Any | None:
        unsaved = self._unsaved.get(key)
        if unsaved is not None:
            return unsaved[0]
        hit = self._memory.get(key)
        if hit is not None:
            return hit[0]
        data = await self.storage.get_bytes(key)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            # A record is published atomically, so this is damage from outside; treat as missing.
            return None
        self._remember(key, value, len(data))
        return value

    async def put(self, key: str, value: Any) -> None:
        """Store a record; raises StorageError (for records that must not be lost: admin, sync)."""
        data = json.dumps(value, separators=(",", ":")).encode()
        await self.storage.put_bytes(key, data)
        self._unsaved.pop(key)
        self._memory.pop(key)
        self._remember(key, value, len(data))

    async def put_best_effort(self, key: str, value: Any) -> bool:
        """Store a record the answer in hand does not depend on; False if storage refused it.

        A refused record is kept in memory (get returns it), counted and logged, at most a line a
        minute: on a full disk every request would otherwise fail or log.
        """
        try:
            await self.put(key, value)
        except StorageError as exc:
            size = len(json.dumps(value, separators=(",", ":")))
            self._unsaved.put(key, (value, size))
            if self.metrics is not None:
                self.metrics.metadata_write_failures.inc()
            self._write_failures.warning(
                "write", "cannot store metadata record %s (%s); answering from memory", key, exc.message
            )
            return False
        return True

    def forget(self, prefix: str) -> None:
        """Drop cached copies under a prefix (after a purge)."""
        self._memory.forget(lambda key: key.startswith(prefix))
        self._unsaved.forget(lambda key: key.startswith(prefix))

    def _remember(self, key: str, value: Any, size: int) -> None:
        if keys.is_immutable(key):
            self._memory.put(key, (value, size))


def _second(item: tuple[Any, int]) -> int:
    return item[1]

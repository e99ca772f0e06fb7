"""Small JSON records in storage, with an in-memory front for the immutable ones.

Answers for a commit (info, trees, paths-info, commit pages, file entries) never change once
written, so parsed copies are kept in a bounded LRU: a hot tree of thousands of entries is then
not re-read and re-parsed on every request. Values handed out are shared: callers must not
mutate them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from mirror.cache import keys
from mirror.storage import Storage

MEMORY_BUDGET = 64 * 1024 * 1024  # bytes of serialised JSON kept parsed in memory


class Records:
    def __init__(self, storage: Storage, memory_budget: int = MEMORY_BUDGET) -> None:
        self.storage = storage
        self.memory_budget = memory_budget
        self._memory: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._memory_size = 0

    async def get(self, key: str) -> Any | None:
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
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
        data = json.dumps(value, separators=(",", ":")).encode()
        await self.storage.put_bytes(key, data)
        self._forget_key(key)
        self._remember(key, value, len(data))

    def forget(self, prefix: str) -> None:
        """Drop cached copies under a prefix (after a purge)."""
        for key in [k for k in self._memory if k.startswith(prefix)]:
            self._forget_key(key)

    def _remember(self, key: str, value: Any, size: int) -> None:
        if not keys.is_immutable(key) or size > self.memory_budget // 4:
            return
        self._memory[key] = (value, size)
        self._memory_size += size
        while self._memory_size > self.memory_budget:
            _, (_, dropped) = self._memory.popitem(last=False)
            self._memory_size -= dropped

    def _forget_key(self, key: str) -> None:
        hit = self._memory.pop(key, None)
        if hit is not None:
            self._memory_size -= hit[1]

"""Bounded in-memory caches: one implementation (cachetools' LRU) for every cache the mirror keeps.

Bounded by a count of items, or by a budget of bytes with each value's size given by `sizeof`.
Least recently used items go first; an item larger than a quarter of the budget is not kept at all,
so one huge answer cannot flush everything else. `forget` drops every item a predicate selects, for
purges.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import cachetools

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    def __init__(self, maxsize: int, sizeof: Callable[[V], int] | None = None) -> None:
        self.maxsize = maxsize
        self._sizeof = sizeof
        self._items: cachetools.LRUCache[K, V] = cachetools.LRUCache(maxsize=maxsize, getsizeof=sizeof)

    def get(self, key: K) -> V | None:
        """The value (now the most recently used), or None."""
        return self._items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        size = self._sizeof(value) if self._sizeof is not None else 1
        if self._sizeof is not None and size > self.maxsize // 4:
            self._items.pop(key, None)  # too large to keep; and an older copy must not outlive it
            return
        self._items[key] = value

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def forget(self, selects: Callable[[K], bool]) -> None:
        for key in [k for k in self._items if selects(k)]:
            self._items.pop(key, None)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> float:
        """Bytes held (with `sizeof`), or items held."""
        return self._items.currsize

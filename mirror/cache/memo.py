"""Bounded in-memory caches: one implementation (cachetools' LRU) for every cache the mirror keeps.

Bounded by a count of items, or by a budget of bytes with each value's size given by `sizeof`.
Least recently used items go first; an item larger than a quarter of the budget is not kept at all,
so one huge answer cannot flush everything else. `forget` drops every item a predicate selects, for
purges.

`Aging` adds time on top: answers trusted for a TTL and kept past it as the last known answer.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Hit(Generic[V]):
    """A remembered answer, and whether it was still within its time when looked up."""

    value: V
    fresh: bool


class Aging(Generic[K, V]):
    """Answers trusted for a while, and kept past that as the last known answer.

    The pattern behind branches, visibility, access decisions and pins: an answer is trusted until
    its TTL runs out; after that it is still the best thing to serve while upstream (or storage) is
    asked again, so it is kept, not dropped. One loaded from storage is known but due for a refresh
    at once (`put_stale`). Bounded like every other cache here (`Memo`): the least recently used
    answers drop out when full, which only costs a reload from storage or upstream.

    Values may themselves be None (an access decision "allowed", a branch with no pin), so `get`
    tells "absent" (None) from "known to be None" (a `Hit` whose value is None); `fresh` and `known`
    are shorthands for values that are never None.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        self.clock = clock
        # key -> (value, clock time it is trusted until); -inf: known, and due for a refresh.
        self._items: Memo[K, tuple[V, float]] = Memo(maxsize)

    @property
    def maxsize(self) -> int:
        return self._items.maxsize

    def get(self, key: K) -> Hit[V] | None:
        """The answer however old, marked fresh or not (now the most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            return None
        value, until = item
        return Hit(value, until > self.clock())

    def fresh(self, key: K) -> V | None:
        """The value while it is trusted, else None."""
        hit = self.get(key)
        return hit.value if hit is not None and hit.fresh else None

    def known(self, key: K) -> V | None:
        """The value however old, or None."""
        hit = self.get(key)
        return hit.value if hit is not None else None

    def put(self, key: K, value: V, ttl: float) -> None:
        """Trust `value` for `ttl` seconds from now."""
        self._items.put(key, (value, self.clock() + ttl))

    def put_stale(self, key: K, value: V) -> None:
        """Keep `value` as known, but due for a refresh (e.g. read back from storage)."""
        self._items.put(key, (value, float("-inf")))

    def forget(self, selects: Callable[[K], bool]) -> None:
        self._items.forget(selects)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

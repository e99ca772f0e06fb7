"""Single-flight: concurrent callers asking for the same key share one execution."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from mirror.metrics import current_stats

V = TypeVar("V")


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[V]] = {}

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[V]]) -> V:
        future = self._calls.get(key)
        if future is None:
            future = asyncio.ensure_future(fn())
            self._calls[key] = future
            future.add_done_callback(lambda f: self._forget(key, f))
        else:
            stats = current_stats()
            if stats is not None:
                stats.coalesced = True
        # shield: one caller going away must not cancel the work the others wait for.
        return await asyncio.shield(future)

    def _forget(self, key: Hashable, future: asyncio.Future[V]) -> None:
        if self._calls.get(key) is future:
            del self._calls[key]
        if not future.cancelled():
            future.exception()  # mark retrieved; every waiter got it already

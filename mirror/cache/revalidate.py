"""Refreshing answers the cache already has, without making clients wait for a slow upstream.

Past a TTL, one background refresh runs per key (the access policy, branches, refs, listings and
manifests all use it); a client request waits for it at most `stale_wait` seconds in all, then
gets the last known answer, and the refresh stores the new one when it lands.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from mirror.errors import UpstreamUnavailable
from mirror.metrics import CURRENT_REQUEST, current_stats
from mirror.tasks import stop

V = TypeVar("V")
K = TypeVar("K")

STALE_WAIT = 1.0  # cache.stale_wait's default
# Keys whose last refresh failed, remembered so their callers stop waiting; more are forgotten.
FAILED_KEYS = 10_000


async def _detached(fetch: Callable[[], Awaitable[V]]) -> V:
    # The task runs in a copy of the caller's context: its upstream calls are no client request's.
    CURRENT_REQUEST.set(None)
    return await fetch()


class Revalidator:
    """Refreshes of answers the cache already has: one per key at a time, awaited only briefly.

    A caller whose answer is past its TTL waits for the refresh at most `wait` seconds from when
    the refresh started (and a client request `wait` in all), then serves the last known answer;
    the refresh goes on (bounded by the upstream timeouts and breaker) and stores the new answer
    itself when it lands. While a key's last refresh failed, callers do not wait at all. The owner
    calls `close` at shutdown.
    """

    def __init__(self, wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self.clock = clock
        self._running: dict[Hashable, tuple[asyncio.Task[Any], float]] = {}
        self._failed: OrderedDict[Hashable, None] = OrderedDict()
        self._closed = False

    async def latest(self, key: Hashable, fetch: Callable[[], Awaitable[V]], known: K) -> V | K:
        """Upstream's new answer if it came in time, else `known` (also when upstream is down).

        Other errors (the repo is gone, access was withdrawn) reach the caller.
        """
        done = await self.refresh(key, fetch)
        if done is None:
            return known
        try:
            return done.result()
        except UpstreamUnavailable:
            return known

    async def refresh(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> asyncio.Task[V] | None:
        """The finished refresh (read its result or error), or None: serve the last known answer."""
        if self._closed:
            return None
        running = self._running.get(key)
        if running is None:
            task: asyncio.Task[Any] = asyncio.ensure_future(_detached(fetch))
            running = (task, self.clock())
            self._running[key] = running
            task.add_done_callback(functools.partial(self._done, key))
        task, started = running
        if not task.done() and key not in self._failed:
            now = self.clock()
            deadline = started + self.wait
            stats = current_stats()
            if stats is not None:
                # One client request waits `wait` in all, not once per stale answer it meets.
                if stats.stale_deadline is None:
                    stats.stale_deadline = now + self.wait
                deadline = min(deadline, stats.stale_deadline)
            remaining = deadline - now
            if remaining > 0:
                # asyncio.wait, unlike wait_for, leaves the task running when the time is up.
                await asyncio.wait({task}, timeout=remaining)
        return task if task.done() else None

    def _done(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._running.get(key, (None, 0.0))[0] is task:
            del self._running[key]
        if task.cancelled():
            return
        error = task.exception()  # retrieved here: nobody may be waiting any more
        if isinstance(error, UpstreamUnavailable):
            self._failed[key] = None
            self._failed.move_to_end(key)
            if len(self._failed) > FAILED_KEYS:
                self._failed.popitem(last=False)
        else:
            self._failed.pop(key, None)

    async def close(self) -> None:
        self._closed = True
        await stop(*[task for task, _ in self._running.values()])

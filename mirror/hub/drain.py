"""Shutdown with a grace period: clients keep being served, then are cut, and the process exits.

On SIGTERM aiohttp stops accepting connections and waits for the handlers in flight. A handler
stuck writing to a slow client does not end when aiohttp cancels it, so without help a shutdown
lasts about twice aiohttp's timeout. Here the grace starts when shutdown does: requests still
running at its end have their connections cut (the client sees a short body and resumes
elsewhere), and fills whose verified bytes are being published get until the same moment to
finish (cache/blobs/fill.py `Filler.close`), so a download that completed just before the signal is
kept in the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from mirror.tasks import stop

log = logging.getLogger(__name__)


class Drain:
    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self.deadline: float | None = None
        # Keyed by id(): aiohttp requests are mutable mappings, so not hashable.
        self._requests: dict[int, web.BaseRequest] = {}
        self._cutter: asyncio.Task[None] | None = None

    @web.middleware
    async def track(self, request: web.Request, handler: web.Handler) -> web.StreamResponse:
        self._requests[id(request)] = request
        try:
            return await handler(request)
        finally:
            self._requests.pop(id(request), None)

    def remaining(self) -> float:
        """Seconds left of the grace (all of it while no shutdown has begun)."""
        if self.deadline is None:
            return self.grace
        return max(0.0, self.deadline - self.clock())

    async def begin(self, app: web.Application) -> None:
        """aiohttp's on_shutdown: start the grace period, and the cut at its end."""
        if self.deadline is not None:
            return
        self.deadline = self.clock() + self.grace
        if self._requests:
            log.info("shutting down: %d requests in flight get %.0f s", len(self._requests), self.grace)
        self._cutter = asyncio.create_task(self._cut_at_deadline(), name="shutdown-cut")

    async def _cut_at_deadline(self) -> None:
        await asyncio.sleep(self.remaining())
        if self._requests:
            log.warning("shutdown grace over: cutting %d requests still in flight", len(self._requests))
        for request in list(self._requests.values()):
            if request.transport is not None:
                request.transport.abort()

    async def close(self) -> None:
        await stop(self._cutter)

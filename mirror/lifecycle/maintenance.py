"""The background upkeep of the cache, run by one replica for all: eviction, gc and the scrub.

Leadership is a lease in storage (cache/leases.py, the primitive fills and the sync scheduler use),
renewed every tick; a replica that stops renewing it (killed, partitioned) is replaced once it
expires. Every task is interruptible at any point: eviction and gc only ever delete whole objects
that nothing refers to or that are safe to refill, so a SIGKILL between two deletes leaves a
consistent cache, and the next leader simply starts again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from mirror.cache import keys
from mirror.cache.leases import Leases
from mirror.config import CacheConfig
from mirror.errors import StorageError
from mirror.lifecycle.evict import Evictor
from mirror.lifecycle.gc import GarbageCollector, GcReport
from mirror.metrics import Metrics
from mirror.tasks import stop

log = logging.getLogger(__name__)


class Scrub(Protocol):
    async def run_forever(self) -> None: ...


class Maintenance:
    def __init__(
        self,
        leases: Leases,
        config: CacheConfig,
        *,
        evictor: Evictor | None,
        gc: GarbageCollector | None,
        scrub: Scrub | None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.config = config
        self.evictor = evictor
        self.gc = gc
        self.scrub = scrub
        self.metrics = metrics
        self.clock = clock
        self.leader = False
        self._task: asyncio.Task[None] | None = None
        self._scrubbing: asyncio.Task[None] | None = None
        self._last_gc: float | None = None

    @property
    def tick(self) -> float:
        return self.config.evict_interval

    def start(self) -> None:
        if self.evictor is None and self.gc is None and self.scrub is None:
            return
        self._task = asyncio.create_task(self._loop(), name="maintenance")

    async def close(self) -> None:
        await stop(self._task, self._scrubbing)
        if self.leader:
            self._lead(False)
            await self.leases.release(keys.MAINTENANCE_LEASE)  # hand over at once

    async def _loop(self) -> None:
        # The first gc is one gc_interval after start: a fleet restarting together does not all
        # walk the store at once, and a mirror that restarts often does not gc on every start.
        self._last_gc = self.clock()
        while True:
            await asyncio.sleep(self.tick)
            try:
                self._lead(await self._hold_lease())
            except StorageError as exc:
                log.warning("maintenance lease: %s", exc.message)
                self._lead(False)
            if self.leader:
                await self._work()

    async def _hold_lease(self) -> bool:
        if self.leader:
            return await self.leases.renew(keys.MAINTENANCE_LEASE)
        if await self.leases.claim(keys.MAINTENANCE_LEASE) is not None:
            return False
        if not await self.leases.confirm(keys.MAINTENANCE_LEASE):
            return False
        log.info("cache maintenance: %s now holds the lease", self.leases.owner)
        return True

    def _lead(self, leader: bool) -> None:
        self.leader = leader
        if self.metrics is not None:
            self.metrics.maintenance_leader.set(1 if leader else 0)
        if leader and self.scrub is not None and (self._scrubbing is None or self._scrubbing.done()):
            self._scrubbing = asyncio.create_task(self.scrub.run_forever(), name="scrub")
        elif not leader and self._scrubbing is not None:
            self._scrubbing.cancel()
            self._scrubbing = None

    async def _work(self) -> None:
        if self.evictor is not None and self.config.max_bytes:
            await self._guarded("eviction", self.evictor.run_once)
        due = self._last_gc is not None and self.clock() - self._last_gc >= self.config.gc_interval
        if self.gc is not None and self.config.gc_interval and due:
            self._last_gc = self.clock()
            gc = self.gc
            report = await self._guarded("gc", lambda: gc.run(apply=True))
            if isinstance(report, GcReport):
                log.info("gc: %s", report.summary())

    async def _guarded(self, what: str, run: Callable[[], Awaitable[object]]) -> object | None:
        """Run one task; its failure is logged and retried next time, never the end of the loop."""
        try:
            return await run()
        except StorageError as exc:
            log.warning("%s failed (retried later): %s", what, exc.message)
            if self.metrics is not None and what == "eviction":
                self.metrics.eviction_runs.labels("error").inc()
        except Exception:
            log.exception("%s failed (retried later)", what)
            if self.metrics is not None and what == "eviction":
                self.metrics.eviction_runs.labels("error").inc()
        return None

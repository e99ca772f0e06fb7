"""The scheduler: starts sync jobs for allow-list entries that are due, on one replica at a time.

Leadership is a lease object in storage (owner + expiry, renewed every tick). A replica that
finds the lease expired takes it; after writing, it reads it back and leads only if its own
write survived, which settles two replicas that raced for an expired lease.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from mirror.cache import keys
from mirror.cache.leases import Leases
from mirror.cache.records import Records
from mirror.config import SyncConfig
from mirror.errors import StorageError
from mirror.metrics import Metrics
from mirror.policy.allowlist import AllowList
from mirror.sync.jobs import SyncManager
from mirror.tasks import stop

log = logging.getLogger(__name__)

JITTER = 0.1


class Scheduler:
    def __init__(
        self,
        manager: SyncManager,
        allowlist: AllowList,
        records: Records,
        leases: Leases,
        config: SyncConfig,
        metrics: Metrics,
    ) -> None:
        """`leases`: the lease primitive fills use too; one replica at a time holds the scheduler's."""
        self.manager = manager
        self.allowlist = allowlist
        self.records = records
        self.leases = leases
        self.config = config
        self.metrics = metrics
        self.owner = leases.owner
        self.leader = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sync-scheduler")

    async def close(self) -> None:
        await stop(self._task)
        if self.leader:
            # Hand over at once rather than after the lease runs out.
            await self.leases.release(keys.SCHEDULER_LEASE)

    async def _loop(self) -> None:
        while True:
            try:
                self.leader = await self.hold_lease()
                self.metrics.scheduler_leader.set(1 if self.leader else 0)
                if self.leader:
                    await self.start_due()
            except StorageError as exc:
                log.warning("sync scheduler: storage unavailable: %s", exc.message)
            await asyncio.sleep(self.config.tick)

    async def hold_lease(self) -> bool:
        if self.leader:
            return await self.leases.renew(keys.SCHEDULER_LEASE)
        if await self.leases.claim(keys.SCHEDULER_LEASE) is not None:
            return False  # another replica's live lease
        # A takeover of an expired lease may race another replica's: the last write wins.
        if not await self.leases.confirm(keys.SCHEDULER_LEASE):
            return False
        log.info("sync scheduler: %s now holds the lease", self.owner)
        return True

    async def start_due(self) -> None:
        now = time.time()
        active = self.manager.active_entry_ids()
        for entry in await self.allowlist.entries():
            if entry.id in active:
                continue
            state = await self.records.get(keys.sync_entry_key(entry.id)) or {}
            if now < state.get("next_due", 0):
                continue
            # Jitter spreads entries added together so they do not hit upstream in lockstep.
            state["next_due"] = now + entry.interval_seconds * random.uniform(1 - JITTER, 1 + JITTER)
            await self.records.put(keys.sync_entry_key(entry.id), state)
            await self.manager.submit("schedule", entries=[entry])

"""The scheduler: starts sync jobs for allow-list entries that are due, on one replica at a time.

Leadership is a lease object in storage (owner + expiry, renewed every tick). A replica that
finds the lease expired takes it; after writing, it reads it back and leads only if its own
write survived, which settles two replicas that raced for an expired lease.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import time

from mirror.cache.records import Records
from mirror.config import SyncConfig
from mirror.errors import StorageError
from mirror.metrics import Metrics
from mirror.policy.allowlist import AllowList
from mirror.sync.jobs import SyncManager, entry_state_key

log = logging.getLogger(__name__)

LEASE_KEY = "admin/sync/scheduler-lease.json"
JITTER = 0.1
SETTLE_SECONDS = 0.2


class Scheduler:
    def __init__(
        self, manager: SyncManager, allowlist: AllowList, records: Records, config: SyncConfig, metrics: Metrics
    ) -> None:
        self.manager = manager
        self.allowlist = allowlist
        self.records = records
        self.config = config
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.leader = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sync-scheduler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.leader:
            # Hand over at once rather than after the lease runs out.
            lease = await self.records.get(LEASE_KEY)
            if lease and lease.get("owner") == self.owner:
                await self.records.put(LEASE_KEY, {"owner": None, "expires": 0})

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
        now = time.time()
        lease = await self.records.get(LEASE_KEY)
        if lease and lease.get("owner") not in (None, self.owner) and lease.get("expires", 0) > now:
            return False
        await self.records.put(LEASE_KEY, {"owner": self.owner, "expires": now + self.config.lease_ttl})
        if not self.leader:
            await asyncio.sleep(SETTLE_SECONDS)
            lease = await self.records.get(LEASE_KEY)
            if not lease or lease.get("owner") != self.owner:
                return False
            log.info("sync scheduler: %s now holds the lease", self.owner)
        return True

    async def start_due(self) -> None:
        now = time.time()
        active = self.manager.active_entry_ids()
        for entry in await self.allowlist.entries():
            if entry.id in active:
                continue
            state = await self.records.get(entry_state_key(entry.id)) or {}
            if now < state.get("next_due", 0):
                continue
            # Jitter spreads entries added together so they do not hit upstream in lockstep.
            state["next_due"] = now + entry.interval_seconds * random.uniform(1 - JITTER, 1 + JITTER)
            await self.records.put(entry_state_key(entry.id), state)
            await self.manager.submit("schedule", entries=[entry])

"""Branch pins: what the mirror reports for a synced repo's branch.

A sync publishes a pin (repo, revision) -> commit only once every wanted file of that commit is in
the cache, so clients never see a half-synced snapshot when upstream has moved on. A pin counts
only while an allow-list entry for the repo still names that revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mirror.cache import keys
from mirror.cache.memo import Aging
from mirror.cache.records import Records
from mirror.policy.allowlist import AllowList
from mirror.repo import RepoRef

RELOAD_SECONDS = 5.0
# (repo, revision) pins (or their absence) kept in memory; older ones are read back from storage.
MEMORY_PINS = 10_000


class Pins:
    def __init__(self, records: Records, allowlist: AllowList, clock: Callable[[], float] = time.monotonic) -> None:
        self.records = records
        self.allowlist = allowlist
        self.clock = clock
        # (repo, revision) -> pinned commit, or None for "no pin"; read from storage again after
        # RELOAD_SECONDS, so a pin another replica on the same storage published is seen.
        self._memory: Aging[tuple[RepoRef, str], str | None] = Aging(MEMORY_PINS, clock)

    async def get(self, repo: RepoRef, revision: str) -> str | None:
        if not any(revision in e.revisions for e in await self.allowlist.matching(repo)):
            return None
        hit = self._memory.get((repo, revision))
        if hit is not None and hit.fresh:
            return hit.value
        record = await self.records.get(keys.pin_key(repo, revision))
        commit: str | None = record["commit"] if record else None
        self._memory.put((repo, revision), commit, RELOAD_SECONDS)
        return commit

    async def publish(self, repo: RepoRef, revision: str, commit: str) -> None:
        await self.records.put(
            keys.pin_key(repo, revision), {"revision": revision, "commit": commit, "at": time.time()}
        )
        self._memory.put((repo, revision), commit, RELOAD_SECONDS)

    def forget(self, repo: RepoRef) -> None:
        self._memory.forget(lambda key: key[0] == repo)

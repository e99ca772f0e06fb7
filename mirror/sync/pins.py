"""Branch pins: what the mirror reports for a synced repo's branch.

A sync publishes a pin (repo, revision) -> commit only once every wanted file of that commit is in
the cache, so clients never see a half-synced snapshot when upstream has moved on. A pin counts
only while an allow-list entry for the repo still names that revision.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mirror.cache import keys
from mirror.cache.records import Records
from mirror.policy.allowlist import AllowList
from mirror.repo import RepoRef

RELOAD_SECONDS = 5.0


class Pins:
    def __init__(self, records: Records, allowlist: AllowList, clock: Callable[[], float] = time.monotonic) -> None:
        self.records = records
        self.allowlist = allowlist
        self.clock = clock
        self._memory: dict[tuple[RepoRef, str], tuple[str | None, float]] = {}

    async def get(self, repo: RepoRef, revision: str) -> str | None:
        if not any(revision in e.revisions for e in await self.allowlist.matching(repo)):
            return None
        hit = self._memory.get((repo, revision))
        if hit is None or self.clock() - hit[1] > RELOAD_SECONDS:
            record = await self.records.get(keys.pin_key(repo, revision))
            hit = (record["commit"] if record else None, self.clock())
            self._memory[(repo, revision)] = hit
        return hit[0]

    async def publish(self, repo: RepoRef, revision: str, commit: str) -> None:
        await self.records.put(
            keys.pin_key(repo, revision), {"revision": revision, "commit": commit, "at": time.time()}
        )
        self._memory[(repo, revision)] = (commit, self.clock())

    def forget(self, repo: RepoRef) -> None:
        for key in [k for k in self._memory if k[0] == repo]:
            del self._memory[key]

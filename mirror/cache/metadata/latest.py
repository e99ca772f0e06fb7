"""Answers upstream may change at any moment: refs, repo listings, llama.cpp manifests.

Each answer is trusted for a TTL. Past it, the last known answer is revalidated the way a branch is
(`Revalidator`: one refresh per key, waited for only `stale_wait`), and served whenever upstream is
slow or down, so clients that already asked once keep working through an outage. Storage keeps
every last answer (across restarts); memory keeps the recently used ones up to a byte budget,
because listing queries are many and some answers are large.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mirror.cache.memo import Memo
from mirror.cache.records import Records
from mirror.cache.revalidate import STALE_WAIT, Revalidator
from mirror.cache.singleflight import SingleFlight
from mirror.tokens import fingerprint

MEMORY_BUDGET = 32 * 1024 * 1024  # bytes of serialised answers kept parsed in memory
MAX_STAMPS = 100_000  # keys whose "trusted until" time is remembered; older ones are asked again


class LatestAnswers:
    def __init__(
        self,
        records: Records,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        stale_wait: float = STALE_WAIT,
        budget: int = MEMORY_BUDGET,
    ) -> None:
        self.records = records
        self.ttl = ttl
        self.clock = clock
        self.budget = budget
        # storage key -> time its answer is trusted until. Kept apart from the answers, so that an
        # answer too large to keep in memory is still trusted for its TTL (and read from storage).
        self._until: Memo[str, float] = Memo(MAX_STAMPS)
        # storage key -> (answer, size): the last known answers, least recently used first.
        self._memory: Memo[str, tuple[Any, int]] = Memo(budget, sizeof=lambda item: item[1])
        self._flight: SingleFlight[Any] = SingleFlight()
        self._revalidator = Revalidator(stale_wait, clock)

    async def close(self) -> None:
        """Cancel refreshes still running (at shutdown, before the upstream session closes)."""
        await self._revalidator.close()

    def forget(self, prefix: str) -> None:
        """Drop what memory holds under a storage prefix (after a purge)."""
        self._until.forget(lambda key: key.startswith(prefix))
        self._memory.forget(lambda key: key.startswith(prefix))

    async def get(self, key: str, fetch: Callable[[], Awaitable[Any]], token: str | None) -> Any:
        """The answer stored under `key`: fresh, or upstream's new one, or the last known one.

        `fetch` asks upstream with `token`; callers with different tokens never share a fetch,
        since upstream may refuse one of them. An upstream error other than "unavailable" (the
        repo is gone, access was withdrawn) reaches the caller even when an answer is known.
        """
        known = self._recall(key)
        if (self._until.get(key) or 0.0) > self.clock():
            if known is None:
                known = await self.records.get(key)
            if known is not None:
                return known

        async def fetch_and_keep() -> Any:
            value = await fetch()
            self._stamp(key, self.clock() + self.ttl)
            self._remember(key, value)
            await self.records.put_best_effort(key, value)
            return value

        flight_key = (key, fingerprint(token))
        if known is None:
            known = await self.records.get(key)
            if known is None:
                return await self._flight.do(flight_key, fetch_and_keep)
            self._remember(key, known)  # known, and due for a refresh
        return await self._revalidator.latest(flight_key, fetch_and_keep, known)

    def _recall(self, key: str) -> Any | None:
        hit = self._memory.get(key)
        return None if hit is None else hit[0]

    def _stamp(self, key: str, until: float) -> None:
        self._until.put(key, until)

    def _remember(self, key: str, value: Any) -> None:
        # One too large to keep parsed is not kept (storage has it).
        self._memory.put(key, (value, len(json.dumps(value, separators=(",", ":")))))

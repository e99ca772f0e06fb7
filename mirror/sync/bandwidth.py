"""A token bucket that caps the bandwidth of sync downloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Bandwidth:
    """`consume(n)` waits until n more bytes fit under `rate` bytes per second (one second of burst)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._tokens = rate
        self._at = clock()
        self._lock = asyncio.Lock()

    async def consume(self, amount: int) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            now = self.clock()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= amount
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)

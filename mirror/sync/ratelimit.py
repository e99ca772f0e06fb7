"""Honour upstream 429s (Retry-After / RateLimit headers) with bounded retries."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mirror.errors import HubError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_WAIT = 120.0
_RATELIMIT_T = re.compile(r"\bt=(\d+)")


def retry_after(error: HubError, attempt: int) -> float:
    """Seconds to wait: Retry-After, else the RateLimit header's reset `t=`, else exponential."""
    value = error.headers.get("Retry-After")
    if value and value.strip().isdigit():
        return min(float(value), MAX_WAIT)
    match = _RATELIMIT_T.search(error.headers.get("RateLimit", ""))
    if match:
        return min(float(match.group(1)) + 1, MAX_WAIT)
    return min(2.0**attempt, MAX_WAIT)


async def with_rate_limit(call: Callable[[], Awaitable[T]], retries: int) -> T:
    attempt = 0
    while True:
        try:
            return await call()
        except HubError as exc:
            if exc.status != 429 or attempt >= retries:
                raise
            attempt += 1
            wait = retry_after(exc, attempt)
            log.warning("upstream rate limit (429); waiting %.1fs before retry %d/%d", wait, attempt, retries)
            await asyncio.sleep(wait)

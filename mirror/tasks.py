"""Bounding and stopping asyncio work the same way everywhere.

On Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives while the awaited
operation completes (CPython gh-86296): the cancelled task carries on as if nothing happened, and
whoever waits for it to end (a shutdown) waits for good. `within` uses `asyncio.timeout` where the
interpreter has it, which never does that, and `stop` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


async def within(operation: Awaitable[T], seconds: float) -> T:
    """Await `operation` for at most `seconds`; raises asyncio.TimeoutError past that."""
    if _timeout is None:  # Python 3.10: wait_for is all there is
        return await asyncio.wait_for(operation, seconds)
    # Unlike wait_for, no task per call either: fills call this for every chunk.
    async with _timeout(seconds):
        return await operation


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel background tasks and wait until they have ended, whatever they swallow."""
    pending = {task for task in tasks if task is not None}
    while pending := {task for task in pending if not task.done()}:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: a task that failed before it was stopped is not "never retrieved"

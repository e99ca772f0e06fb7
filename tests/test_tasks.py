"""mirror.tasks: bounded waits that never swallow a cancellation, and stopping tasks for sure.

The race behind a shutdown that hung in CI: a task is cancelled in the same loop iteration as the
operation it waits on completes. asyncio.wait_for on Python 3.11 then returns the result and the
cancellation is lost, so the task carries on (into a long sleep) and its owner waits for it forever.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from mirror.tasks import stop, within


async def cancelled_as_its_operation_completes(bounded: object) -> asyncio.Task[None]:
    operation: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def worker() -> None:
        await bounded(operation, 10)  # type: ignore[operator]
        await asyncio.sleep(3600)  # where a swallowed cancellation leaves it

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # the worker now waits on the operation
    operation.set_result(1)
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    return task


async def test_within_never_swallows_a_cancellation() -> None:
    task = await cancelled_as_its_operation_completes(within)
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was rewritten on asyncio.timeout in 3.12")
async def test_the_race_is_real_with_wait_for() -> None:
    task = await cancelled_as_its_operation_completes(asyncio.wait_for)
    try:
        assert not task.done(), "asyncio.wait_for swallowed no cancellation: the race did not happen"
    finally:
        await stop(task)
    assert task.cancelled()


async def test_stop_ends_a_task_that_swallows_cancellations() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop(task, None), 10)
    assert task.cancelled() and swallowed == 3


async def test_stop_retrieves_the_error_of_a_task_that_failed() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop(task)  # no "exception was never retrieved" later
    assert isinstance(task.exception(), RuntimeError)


async def test_within_times_out() -> None:
    with pytest.raises(asyncio.TimeoutError):
        await within(asyncio.sleep(10), 0.01)

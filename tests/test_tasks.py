"""relay.tasks.cancel_and_wait stops a task that shrugs off a cancellation
(as Python 3.11's wait_for can make any task do); the daemon hung on SIGTERM
with a single cancel()."""

from __future__ import annotations

import asyncio

from relay.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_still_stopped():
    swallowed = asyncio.Event()

    async def stubborn():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # carries on, as if the reply had won the race
        await asyncio.Event().wait()

    async def failing():
        raise ValueError("already failed")

    tasks = [asyncio.ensure_future(stubborn()), asyncio.ensure_future(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks), 10)
    assert swallowed.is_set() and all(t.done() for t in tasks)
    assert tasks[0].cancelled() and isinstance(tasks[1].exception(), ValueError)

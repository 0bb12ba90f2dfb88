"""Stopping asyncio tasks for sure.

On Python 3.11 a cancellation can be lost: `asyncio.wait_for` (which
aiosmtplib uses for every reply) swallows it when the awaited reply arrives
at the same moment (a known race of 3.11's wait_for, rewritten in 3.12),
and the task carries on
as if never cancelled.  A single `cancel()` followed by `await task` then
waits for ever; the daemon hung on SIGTERM this way right after a delivery.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

RECANCEL_INTERVAL = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel `tasks` and return once every one has finished, cancelling
    again any that shrugged a cancellation off."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_INTERVAL)
        for task in pending:
            task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning

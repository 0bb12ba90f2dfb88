"""What kept the garbage collector busy under load (bench/gc_probe.py): a
closed SMTP session must be freed by reference counting alone, never left
as a cycle for a full collection, and the start-up tuning must leave the
collector on (frozen start-up heap, young generation collected less often)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import aiosmtplib
import pytest

from relay.server import GC_YOUNG_THRESHOLD, RelayDaemon, freeze_startup_heap


async def _session_ref(relay: RelayDaemon) -> weakref.ref:
    for _ in range(200):
        if relay.handler.sessions:
            return weakref.ref(next(iter(relay.handler.sessions)))
        await asyncio.sleep(0.01)
    raise AssertionError("the session never opened")


async def _freed(ref: weakref.ref) -> bool:
    for _ in range(200):  # the session's task ends a few loop turns after the close
        if ref() is None:
            return True
        await asyncio.sleep(0.01)
    return False


@pytest.mark.parametrize("ending", ["quit", "disconnect_in_transaction"])
async def test_a_closed_session_is_freed_without_the_garbage_collector(daemon, ending):
    gc.collect()
    gc.disable()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
        await client.connect()
        ref = await _session_ref(daemon)
        await client.ehlo()
        await client.mail("bob@buyer.test")
        if ending == "quit":
            await client.quit()
        else:
            client.close()  # the session's task is cancelled half-way
        assert await _freed(ref), "the closed session is kept alive by a reference cycle"
    finally:
        gc.enable()


def test_start_up_tuning_freezes_the_heap_and_keeps_collecting():
    before = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

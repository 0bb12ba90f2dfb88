"""The group-commit writer (relay.store) on a real SQLite file: concurrent
transactions share a batch, a failing one does not fail its neighbours, and
closing the store commits everything already handed in, then returns."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from relay.aliases import mint_alias
from relay.store import StorageError, Store


async def test_close_commits_what_was_handed_in_and_returns(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    started = threading.Event()

    def slow(db):  # keeps the writer busy while more work and close() arrive
        started.set()
        time.sleep(0.3)
        db.execute("INSERT INTO optouts (address, created_at) VALUES ('slow@buyer.test', 'now')")

    first = asyncio.ensure_future(store.transact(slow))
    await asyncio.to_thread(started.wait, 5)
    pending = [asyncio.ensure_future(store.optout_add(f"b{i}@buyer.test")) for i in range(50)]
    await asyncio.sleep(0)  # handed in while the writer is busy
    closing = asyncio.ensure_future(store.close())
    done, _ = await asyncio.wait({closing}, timeout=10)  # a bound for a hang, not a timing
    assert closing in done, "close() never returned"
    assert first.done() and first.exception() is None
    assert all(task.done() and task.exception() is None for task in pending)
    with pytest.raises(StorageError):
        await store.optout_add("late@buyer.test")

    again = await Store.open(path)
    try:
        assert len(await again.optout_list()) == 51
    finally:
        await again.close()


async def test_a_failing_transaction_does_not_fail_its_batch(tmp_path):
    store = await Store.open(str(tmp_path / "relay.sqlite3"))
    try:
        await store.add_seller("s1", "Shop", ["sam@shop.example"])
        await store.add_seller("s2", "Other", ["olga@other.example"])
        await store.open_order("o1", "s1", "bob@buyer.test", None, mint_alias)
        results = await asyncio.gather(
            store.open_order("o2", "s1", "ann@buyer.test", None, mint_alias),
            store.open_order("o1", "s2", "bob@buyer.test", None, mint_alias),  # another seller: refused
            store.optout_add("ann@buyer.test"),
            return_exceptions=True)
        assert isinstance(results[1], ValueError)
        assert results[0].id == "o2" and results[2] is None
        assert (await store.get_order("o1")).seller_id == "s1"
        assert await store.is_opted_out("ann@buyer.test")
    finally:
        await store.close()


def test_two_processes_creating_the_store_at_once_both_open_it(tmp_path):
    """listen.workers = 2 on a first start: both processes create the store
    together.  While the new file is still in rollback-journal mode, SQLite
    answers one of them "database is locked" at once, without waiting for
    the busy timeout, when it switches to WAL (seen in about a third of such
    starts: the primary then exited).  Each process must wait its turn."""
    import os

    failures = 0
    for trial in range(15):
        path = str(tmp_path / f"s{trial}.sqlite3")
        children = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    Store._open_writer(path, 10.0).close()
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
        for pid in children:
            failures += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
    assert failures == 0

"""The group-commit writer (relay.store) on a real SQLite file: concurrent
transactions share a batch, a failing one does not fail its neighbours, and
closing the store commits everything already handed in, then returns."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from relay.aliases import mint_alias
from relay.checkpoint import WRITER_AUTOCHECKPOINT_PAGES
from relay.store import LAZY_COMMIT_DELAY, StorageError, Store, release_all_claims
from relay.storelock import WriteTurn


@contextlib.asynccontextmanager
async def _opened(path, **options):
    """The store at `path`, closed when the block ends however it ends."""
    store = await Store.open(str(path), **options)
    try:
        yield store
    finally:
        await store.close()


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

    async with _opened(path) as again:
        assert len(await again.optout_list()) == 51


async def test_a_failing_transaction_does_not_fail_its_batch(tmp_path):
    async with _opened(tmp_path / "relay.sqlite3") as store:
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



async def test_an_item_that_wrote_then_failed_leaves_nothing_and_its_neighbours_are_kept(tmp_path):
    """The batch runs without savepoints until an item fails; then it is
    rolled back and run again item by item, so the failed item's first
    insert must not survive while the items before and after it commit."""
    async with _opened(tmp_path / "relay.sqlite3") as store:
        started, release = threading.Event(), threading.Event()

        def hold(db):  # keeps the writer busy so that the next three share one batch
            started.set()
            release.wait(5)

        def half_then_duplicate(db):
            db.execute("INSERT INTO optouts (address, created_at) VALUES ('half@buyer.test', 'now')")
            db.execute("INSERT INTO optouts (address, created_at) VALUES ('before@buyer.test', 'now')")

        first = asyncio.ensure_future(store.transact(hold))
        await asyncio.to_thread(started.wait, 5)
        batch = [asyncio.ensure_future(store.optout_add("before@buyer.test")),
                 asyncio.ensure_future(store.transact(half_then_duplicate)),
                 asyncio.ensure_future(store.optout_add("after@buyer.test"))]
        await asyncio.sleep(0)  # all three handed in while the writer holds the first batch
        release.set()
        await first
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert await store.optout_list() == ["after@buyer.test", "before@buyer.test"]
        assert store.commits == 2  # the three did share one batch

def test_two_processes_creating_the_store_at_once_both_open_it(tmp_path):
    """listen.workers = 2 on a first start: both processes create the store
    together.  While the new file is still in rollback-journal mode, SQLite
    answers one of them "database is locked" at once, without waiting for
    the busy timeout, when it switches to WAL (seen in about a third of such
    starts: the primary then exited).  Each process must wait its turn."""
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


# ------------------------------------------------- the write turn (relay.storelock)

def _hold_the_turn(store_path: str) -> int:
    """Take the relay's write turn on `store_path` as another process would
    (flock locks belong to the open file, so one more open file is enough)."""
    fd = os.open(f"{store_path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def test_a_turn_kept_past_the_busy_timeout_is_a_storage_error_then_writes_resume(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path, busy_timeout=0.3) as store:
        held = _hold_the_turn(path)
        try:
            with pytest.raises(StorageError, match="locked"):  # the SMTP layer answers 451
                await store.optout_add("ann@buyer.test")
            # The waiting writer never took SQLite's own lock: others could still write.
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            other.close()
        finally:
            os.close(held)  # releases the turn
        await store.optout_add("ann@buyer.test")
        assert await store.is_opted_out("ann@buyer.test")


async def test_a_queue_for_the_turn_kept_past_the_busy_timeout_is_a_storage_error_too(tmp_path):
    """The right to wait for the turn (relay.storelock, `<store>-writer.queue`)
    kept by another process counts against the same busy timeout: 451, not a hang."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path, busy_timeout=0.3) as store:
        held = os.open(f"{path}-writer.queue", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            with pytest.raises(StorageError, match="locked"):
                await store.optout_add("ann@buyer.test")
        finally:
            os.close(held)
        await store.optout_add("ann@buyer.test")
        assert await store.is_opted_out("ann@buyer.test")


async def test_the_start_up_release_of_claims_takes_the_turn_like_any_writer(tmp_path, monkeypatch):
    """Its UPDATE is a write like any commit: another relay process that took
    the turn after the store's set-up makes it wait (and here give up)."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        await store.enqueue_notice("", "bob@buyer.test", b"Subject: x\r\n\r\nbody\r\n")
        assert len(await store.queue_claim("old.owner", time.time())) == 1
    set_up, holders = Store._open_writer, []

    def set_up_then_another_process_takes_the_turn(path, busy_timeout):
        conn = set_up(path, busy_timeout)
        holders.append(_hold_the_turn(path))
        return conn

    monkeypatch.setattr(Store, "_open_writer", staticmethod(set_up_then_another_process_takes_the_turn))
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            release_all_claims(path, busy_timeout=0.3)
    finally:
        monkeypatch.undo()
        for fd in holders:
            os.close(fd)
    assert release_all_claims(path, busy_timeout=0.3) == 1


async def test_a_process_that_dies_holding_the_turn_leaves_the_store_writable(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path, busy_timeout=5) as store:
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import fcntl, os, sys, time\n"
             f"fd = os.open({path + '-writer.lock'!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "print('held', flush=True)\n"
             "time.sleep(600)\n"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            writing = asyncio.ensure_future(store.optout_add("ann@buyer.test"))
            holder.kill()
            holder.wait()
            await asyncio.wait_for(writing, 10)  # a bound for a hang, not a timing
            assert await store.is_opted_out("ann@buyer.test")
        finally:
            holder.kill()
            holder.wait()


def test_a_writer_waiting_for_the_turn_gets_it_next_from_one_that_keeps_coming_back(tmp_path):
    """A busy writer lets the turn go and wants it again at once, batch after
    batch; another writer waiting for it must not wait through its turns
    (relay.storelock: the queue file)."""
    path = str(tmp_path / "relay.sqlite3")
    sqlite3.connect(path).close()
    busy, waiter = WriteTurn(path), WriteTurn(path)
    turns, stop, cycling = [], threading.Event(), threading.Event()

    def keep_coming_back():
        while not stop.is_set() and len(turns) < 2000:
            with busy.held(10):
                turns.append(time.monotonic())
                if len(turns) == 3:
                    cycling.set()
                time.sleep(0.002)  # a commit

    thread = threading.Thread(target=keep_coming_back)
    thread.start()
    try:
        assert cycling.wait(10)
        before = len(turns)
        with waiter.held(10):
            waited_through = len(turns) - before
    finally:
        stop.set()
        thread.join()
        busy.close()
        waiter.close()
    assert waited_through <= 2, waited_through


async def test_two_writers_on_one_store_take_turns_and_lose_nothing(tmp_path):
    """Two Store objects on one file, as the worker processes have: each takes
    the turn with its own open file, so they exclude each other."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as first, _opened(path) as second:
        for i in range(40):  # both want the turn at once, 40 times over
            results = await asyncio.gather(first.optout_add(f"first{i}@buyer.test"),
                                           second.optout_add(f"second{i}@buyer.test"), return_exceptions=True)
            assert results == [None, None]
        assert len(await first.optout_list()) == 80
        assert first.commits == second.commits == 40


# ----------------------------------- delivery outcomes share the next commit

def _optout(address: str):
    def work(db):
        db.execute("INSERT INTO optouts (address, created_at) VALUES (?, 'now')", (address,))
    return work


async def test_work_that_can_wait_shares_the_commit_of_the_next_urgent_work(tmp_path):
    async with _opened(tmp_path / "relay.sqlite3") as store:
        await store.optout_add("earlier@buyer.test")  # the writer is now waiting for work, as in a running relay
        before = store.commits
        lazy = asyncio.ensure_future(store.transact(_optout("lazy@buyer.test"), can_wait=True))
        # The lazy work is handed in and waits for company before the urgent work comes.  (Without
        # this step the urgent work was handed in first, and the writer thread, which runs by itself
        # since be4a2fb, could take it alone before the lazy task ran: 2 failures in 10.)
        await asyncio.sleep(0)
        assert store._lazy_wake is not None
        await store.optout_add("urgent@buyer.test")
        await lazy
        assert store.commits == before + 1
        assert await store.is_opted_out("lazy@buyer.test")


async def test_work_handed_in_while_another_process_holds_the_turn_shares_one_commit(tmp_path):
    """The writer takes what is pending once it holds the write turn, not
    before: what arrived while the other worker process committed goes out
    in the same commit (it used to wait for the next one, with its own fsync)."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        await store.optout_add("earlier@buyer.test")
        before = store.commits
        held = _hold_the_turn(path)
        try:
            first = asyncio.ensure_future(store.optout_add("first@buyer.test"))
            for _ in range(3):
                await asyncio.sleep(0)  # the writer is handed the work and waits for the turn
            later = [asyncio.ensure_future(store.optout_add(f"later{i}@buyer.test")) for i in range(2)]
            await asyncio.sleep(0)
        finally:
            os.close(held)
        await asyncio.gather(first, *later)
        assert store.commits == before + 1
        assert len(await store.optout_list()) == 4


async def test_work_that_can_wait_goes_out_after_its_delay_when_a_batch_took_the_work_before_it(tmp_path):
    """A delay that ends after its work already went out (taken by a batch
    that was waiting for the turn) does not keep the next waiting work from
    being given a delay of its own."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        held = _hold_the_turn(path)
        try:
            urgent = asyncio.ensure_future(store.optout_add("urgent@buyer.test"))
            for _ in range(3):
                await asyncio.sleep(0)
            waiting = asyncio.ensure_future(store.transact(_optout("first@buyer.test"), can_wait=True))
            await asyncio.sleep(0)
        finally:
            os.close(held)
        await asyncio.gather(urgent, waiting)
        await asyncio.sleep(LAZY_COMMIT_DELAY * 4)  # the first delay ends with nothing left to commit
        await asyncio.wait_for(store.transact(_optout("second@buyer.test"), can_wait=True), 5)
        assert len(await store.optout_list()) == 3


async def test_work_that_can_wait_is_committed_on_its_own_when_nothing_else_comes(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        before = store.commits
        await asyncio.wait_for(store.transact(_optout("alone@buyer.test"), can_wait=True), 10)
        assert store.commits == before + 1
        waiting = asyncio.ensure_future(store.transact(_optout("at-close@buyer.test"), can_wait=True))
        await asyncio.sleep(0)  # handed in, then the store closes before its delay is up
    await waiting
    async with _opened(path) as again:
        assert {"alone@buyer.test", "at-close@buyer.test"} <= set(await again.optout_list())


async def test_delivery_outcomes_are_recorded(tmp_path):
    async with _opened(tmp_path / "relay.sqlite3") as store:
        first = await store.enqueue_notice("", "bob@buyer.test", b"Subject: x\r\n\r\nbody\r\n")
        second = await store.enqueue_notice("", "ann@buyer.test", b"Subject: y\r\n\r\nbody\r\n")
        await asyncio.gather(store.mark_delivered_many([first]),
                             store.mark_deferred(second, "451 later", time.time() + 60))
        states = {entry.id: entry.state for entry in await store.queue_list()}
        assert states[first] == "delivered" and states[second] == "deferred"


# ------------------------------------------- WAL checkpoints (relay.checkpoint)

async def test_commits_leave_the_wal_checkpoint_to_the_background(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        assert await store.transact(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) \
            == WRITER_AUTOCHECKPOINT_PAGES
        six_mib = b"Subject: big\r\n\r\n" + b"x" * (6 << 20)  # 1,500 pages: past SQLite's default of 1,000
        await store.enqueue_notice("", "bob@buyer.test", six_mib)
        assert os.path.getsize(path) < (1 << 20)  # the commit did not copy its pages into the file
        await store.checkpointer.settled()
        assert store.checkpointer.done >= 1
        assert os.path.getsize(path) > (6 << 20)  # the background checkpoint did


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
async def test_the_turn_file_belongs_to_the_stores_owner_when_root_creates_it(tmp_path):
    """A CLI command run as root beside the service must not leave a lock
    file (the turn's, the queue's) that the service's user cannot open
    (SQLite does the same for -wal)."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path):
        pass
    for name in ("lock", "queue"):
        os.unlink(f"{path}-writer.{name}")
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o640)
    async with _opened(path) as store:  # as root
        await store.optout_add("ann@buyer.test")
    for name in ("lock", "queue"):
        lock = os.stat(f"{path}-writer.{name}")
        assert (lock.st_uid, lock.st_gid) == (65534, 65534)
        assert lock.st_mode & 0o777 == 0o640


async def test_the_writer_goes_on_to_the_next_batch_without_the_event_loop(tmp_path):
    """Work handed in during a commit goes out in the next commit as soon as
    that one ends, started by the writer thread: no pass of the event loop
    (milliseconds each under load) between one batch and the next.  Here the
    event loop is kept from running while the second batch commits."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        started, go = threading.Event(), threading.Event()

        def slow(db):
            started.set()
            go.wait(10)
            db.execute("INSERT INTO optouts (address, created_at) VALUES ('first@buyer.test', 'now')")

        first = asyncio.ensure_future(store.transact(slow))
        await asyncio.to_thread(started.wait, 10)
        second = asyncio.ensure_future(store.transact(_optout("second@buyer.test")))
        await asyncio.sleep(0)  # handed in while the first batch is being committed
        go.set()
        committed = False
        reader = sqlite3.connect(path)
        try:
            deadline = time.monotonic() + 10  # (a bound for a hang: the event loop does not run meanwhile)
            while not committed and time.monotonic() < deadline:
                committed = reader.execute("SELECT count(*) FROM optouts WHERE address = 'second@buyer.test'") \
                    .fetchone()[0] == 1
                time.sleep(0.005)
        finally:
            reader.close()
        await asyncio.gather(first, second)
        assert committed, "the second batch waited for the event loop"
        assert store.commits == 2


async def test_the_store_reports_each_commit_and_each_urgent_transactions_wait_for_it(tmp_path):
    """relay_store_commits_total and relay_store_commit_wait_seconds
    (relay.metrics) come from these hooks: every commit is reported, and
    every transaction a client waits on (an exchange's audit row) reports
    how long it waited, the wait for the write turn included; other work (a
    delivery's outcome, the CLI's changes) and work that fails report none."""
    path = str(tmp_path / "relay.sqlite3")
    async with _opened(path) as store:
        commits, waits = [], []
        store.on_commit, store.on_commit_wait = (lambda: commits.append(store.commits)), waits.append
        before = store.commits
        held = _hold_the_turn(path)
        try:
            handed_in = time.monotonic()
            urgent = [asyncio.ensure_future(store.transact(_optout(f"u{i}@buyer.test"), client_waits=True))
                      for i in range(3)]
            other = asyncio.ensure_future(store.optout_add("cli@buyer.test"))
            lazy = asyncio.ensure_future(store.transact(_optout("lazy@buyer.test"), can_wait=True))
            await asyncio.sleep(0.2)  # the other process keeps the turn this long at least
            held_for = time.monotonic() - handed_in
        finally:
            os.close(held)
        await asyncio.gather(*urgent, lazy, other)
        committed = store.commits
        assert commits == list(range(before + 1, committed + 1)) and len(commits) >= 1
        with pytest.raises(sqlite3.IntegrityError):
            await store.transact(_optout("u0@buyer.test"), client_waits=True)  # already there: rolled back
        assert len(waits) == 3
        assert all(held_for <= wait < 10 for wait in waits)
        assert commits[-1] == committed


def test_none_and_bytes_are_stored_as_null_and_blob_through_the_registered_adapters():
    """relay.store registers pass-through adapters for None and bytes (a
    cheaper way through sqlite3's adapter protocol): what is stored and read
    back must be exactly what it was without them."""
    import relay.store  # noqa: F401  (registers them)

    blob = bytes(range(256)) * 9
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a, b, c)")
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (None, blob, b""))
    assert db.execute("SELECT a IS NULL, typeof(b), b = ?, typeof(c), length(c) FROM t", (blob,)).fetchone() \
        == (1, "blob", 1, "blob", 0)
    assert db.execute("SELECT a, b, c FROM t").fetchone() == (None, blob, b"")
    assert type(db.execute("SELECT b FROM t").fetchone()[0]) is bytes

"""Accepted messages handed in together go into the store together
(relay.store._Acceptance): one statement for a batch, each message's rows as
the one-at-a-time path writes them, and a refused one refused alone, also
when another program writes the store in the middle of a batch."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import pytest

from relay import store as store_module
from relay.aliases import mint_alias
from relay.filters.policy import CommitGuard
from relay.store import AuditRecord, OrderChanged, StaleParties, Store

ALIAS_DOMAIN = "relay.example"


def _record(n: int, order_id: str | None = "o1", size: int = 2048) -> AuditRecord:
    return AuditRecord(received_at=f"2026-11-27T10:00:{n % 60:02d}.000Z", order_id=order_id, direction="b2s",
                       sender=f"bob{n}@buyer.test", recipient=f"alias{n}@{ALIAS_DOMAIN}", verdict="accepted",
                       reasons=[], findings=[{"code": "note", "fragment": str(n)}], subject=f"question {n}",
                       fingerprint=f"fp{n}", inbound=b"in %d " % n + b"x" * size, outbound=b"out %d " % n + b"y" * size)


async def _accept(store: Store, n: int, **overrides):
    options = dict(relay_id=f"<r{n}@mx.{ALIAS_DOMAIN}>", original_id=f"<m{n}@buyer.test>",
                   mail_from=f"bounce+t{n}@{ALIAS_DOMAIN}", rcpt_to="sam@shop.example", bounce_token=f"t{n}",
                   notify=f"bob{n}@buyer.test", notify_alias=f"alias{n}@{ALIAS_DOMAIN}", claim_owner="me.1")
    options.update(overrides)
    record = options.pop("record", None) or _record(n)
    return await store.accept_message(record, **options)


def _rows(path: str) -> tuple[list, list, list]:
    db = sqlite3.connect(path)
    try:
        audit = db.execute("SELECT id, received_at, order_id, direction, sender, recipient, verdict, reasons, "
                           "findings, critical, unsolicited, to_opted_out, subject, fingerprint, inbound, outbound "
                           "FROM audit ORDER BY id").fetchall()
        ids = db.execute("SELECT relay_id, original_id, order_id, direction, audit_id FROM message_ids "
                         "ORDER BY audit_id").fetchall()
        queue = db.execute("SELECT id, audit_id, kind, mail_from, rcpt_to, bounce_token, notify, notify_alias, state, "
                           "claimed_by FROM queue ORDER BY id").fetchall()
        return audit, ids, queue
    finally:
        db.close()


async def _shop(store: Store):
    await store.add_seller("s1", "Shop", ["sam@shop.example"])
    await store.open_order("o1", "s1", "bob@buyer.test", None, mint_alias)


async def test_a_batch_of_acceptances_writes_what_one_at_a_time_writes(tmp_path):
    together, alone = str(tmp_path / "together.sqlite3"), str(tmp_path / "alone.sqlite3")
    count = store_module.ROWS_PER_STATEMENT * 2 + 5  # more than one statement's worth of rows
    store = await Store.open(together)
    try:
        await _shop(store)
        results = await asyncio.gather(*(_accept(store, n) for n in range(count)))
    finally:
        await store.close()
    store = await Store.open(alone)
    try:
        await _shop(store)
        one_by_one = [await _accept(store, n) for n in range(count)]
    finally:
        await store.close()
    assert _rows(together) == _rows(alone)
    audit, ids, queue = _rows(together)
    assert [audit_id for audit_id, _ in results] == [row[0] for row in audit] == [row[4] for row in ids]
    assert [entry.id for _, entry in results] == [row[0] for row in queue]
    assert [(entry.audit_id, entry.rcpt_to, entry.notify) for _, entry in results] == \
        [(entry.audit_id, entry.rcpt_to, entry.notify) for _, entry in one_by_one]
    assert [row[1] for row in queue] == [row[0] for row in audit]


def _top_level(statements: list[str]) -> list[str]:
    """The statements a trace saw, each once: SQLite traces a statement again
    at the start of every trigger program it runs."""
    return [s for n, s in enumerate(statements) if n == 0 or s != statements[n - 1]]


async def test_a_batch_of_acceptances_is_one_read_and_one_insert(tmp_path):
    store = await Store.open(str(tmp_path / "relay.sqlite3"))
    statements: list[str] = []
    try:
        await _shop(store)
        commits_before = store.commits
        store._writer.set_trace_callback(statements.append)  # (called in the writer thread)
        gate = asyncio.Event()

        async def hand_in_together(n: int):
            await gate.wait()
            return await _accept(store, n)

        tasks = [asyncio.ensure_future(hand_in_together(n)) for n in range(40)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        store._writer.set_trace_callback(None)
        commits = store.commits - commits_before
    finally:
        await store.close()
    statements = _top_level(statements)
    kinds = [s.split(" (")[0].split(",")[0] for s in statements]
    assert kinds == ["SELECT coalesce((SELECT version FROM parties_version)", "INSERT INTO batch_row VALUES"] \
        * commits, kinds
    assert commits <= 2  # (the first may go out alone, before the others are handed in)
    assert len(_rows(store.path)[0]) == 40


async def test_a_stale_acceptance_is_refused_alone_and_its_batch_committed(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    try:
        await _shop(store)
        version = store.parties_seen[0]
        results = await asyncio.gather(_accept(store, 1, parties_version=version),
                                       _accept(store, 2, parties_version=version - 1),  # judged on old parties
                                       _accept(store, 3, parties_version=version),
                                       return_exceptions=True)
    finally:
        await store.close()
    assert isinstance(results[1], StaleParties)
    audit, ids, queue = _rows(path)
    assert [row[4] for row in audit] == ["bob1@buyer.test", "bob3@buyer.test"]
    assert [row[0] for row in ids] == [f"<r1@mx.{ALIAS_DOMAIN}>", f"<r3@mx.{ALIAS_DOMAIN}>"]
    assert [row[1] for row in queue] == [row[0] for row in audit]
    assert [audit_id for audit_id, _ in (results[0], results[2])] == [row[0] for row in audit]


async def test_a_duplicate_relay_id_fails_its_own_message_only(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    try:
        await _shop(store)
        await _accept(store, 1)
        results = await asyncio.gather(_accept(store, 2), _accept(store, 3, relay_id=f"<r1@mx.{ALIAS_DOMAIN}>"),
                                       _accept(store, 4), return_exceptions=True)
    finally:
        await store.close()
    assert isinstance(results[1], sqlite3.IntegrityError)
    audit, ids, queue = _rows(path)
    assert [row[4] for row in audit] == ["bob1@buyer.test", "bob2@buyer.test", "bob4@buyer.test"]
    assert len(ids) == len(queue) == 3


async def test_a_large_message_in_a_batch_keeps_its_copies_whole(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    big = store_module.LARGE_BLOB + 1000
    store = await Store.open(path)
    try:
        await _shop(store)
        results = await asyncio.gather(_accept(store, 1), _accept(store, 2, record=_record(2, size=big)),
                                       _accept(store, 3, record=_record(3, order_id=None)))
    finally:
        await store.close()
    audit, ids, queue = _rows(path)
    assert [row[0] for row in audit] == [audit_id for audit_id, _ in results]
    assert audit[1][14] == b"in 2 " + b"x" * big and audit[1][15] == b"out 2 " + b"y" * big
    assert [row[4] for row in ids] == [results[0][0], results[1][0]]  # the message without an order has no mapping
    assert [row[1] for row in queue] == [row[0] for row in audit]


def _seller_record(n: int, size: int = 2048, **fields) -> AuditRecord:
    return dataclasses.replace(_record(n, size=size), **{"direction": "seller_to_buyer", "unsolicited": True,
                                                          **fields})


@pytest.mark.parametrize("large", [False, True])
async def test_a_batch_commits_no_more_unsolicited_messages_than_their_guard_allows(tmp_path, large):
    """Three seller messages judged side by side with one accepted already,
    under a limit of two: the first in the batch fits, the others fail alone
    (OrderChanged), and so does a large message (its audit row is written
    before the batch's rows)."""
    path = str(tmp_path / "relay.sqlite3")
    guard = CommitGuard(unsolicited_limit=2)
    size = store_module.LARGE_BLOB + 10 if large else 2048
    store = await Store.open(path)
    try:
        await _shop(store)
        await _accept(store, 1, record=_seller_record(1), guard=guard)
        results = await asyncio.gather(*(_accept(store, n, record=_seller_record(n, size=size), guard=guard)
                                         for n in (2, 3, 4)), return_exceptions=True)
    finally:
        await store.close()
    assert not isinstance(results[0], BaseException)
    assert [type(r) for r in results[1:]] == [OrderChanged, OrderChanged]
    audit, ids, queue = _rows(path)
    assert [row[4] for row in audit] == ["bob1@buyer.test", "bob2@buyer.test"]
    assert len(ids) == len(queue) == 2


async def test_a_guard_lets_through_what_its_rules_allow(tmp_path):
    """Messages the buyer asked for (unsolicited = 0) do not count against the
    limit; a text may be sent again once the first copy failed for good; the
    critical budget counts only the seller's critical messages to opted-out
    buyers since the window's start."""
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    try:
        await _shop(store)
        await _accept(store, 1, record=_seller_record(1, unsolicited=False))
        await _accept(store, 2, record=_seller_record(2, critical=True, to_opted_out=True,
                                                      received_at="2026-10-01T00:00:00.000Z"))
        await _accept(store, 3, record=_seller_record(3, fingerprint="same"))
        db = sqlite3.connect(path)
        db.execute("UPDATE queue SET state = 'failed' WHERE audit_id = 3")
        db.commit()
        db.close()
        guard = CommitGuard(unsolicited_limit=3, duplicate=True, critical_since="2026-11-01T00:00:00.000Z",
                            critical_quota=1)
        await _accept(store, 4, record=_seller_record(4, fingerprint="same", critical=True, to_opted_out=True),
                      guard=guard)
        with pytest.raises(OrderChanged):  # the same text as 4, delivered (queued)
            await _accept(store, 5, record=_seller_record(5, fingerprint="same"), guard=CommitGuard(duplicate=True))
        with pytest.raises(OrderChanged):  # 4 used the budget of one
            await _accept(store, 6, record=_seller_record(6), guard=CommitGuard(
                critical_since="2026-11-01T00:00:00.000Z", critical_quota=1))
        with pytest.raises(OrderChanged):  # 2, 3 and 4 were unsolicited
            await _accept(store, 7, record=_seller_record(7), guard=CommitGuard(unsolicited_limit=3))
        await _accept(store, 8, record=_seller_record(8), guard=CommitGuard(unsolicited_limit=4))
    finally:
        await store.close()
    audit, _, _ = _rows(path)
    assert [row[4] for row in audit] == [f"bob{n}@buyer.test" for n in (1, 2, 3, 4, 8)]


@pytest.mark.parametrize("deleted", ["audit", "queue"])
async def test_ids_continue_from_the_largest_in_the_table(tmp_path, deleted):
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    try:
        await _shop(store)
        first = [await _accept(store, n) for n in range(3)]
        await store.transact(lambda db: db.execute(f"DELETE FROM {deleted} WHERE id = 1"))
        later = await asyncio.gather(_accept(store, 3), _accept(store, 4))
    finally:
        await store.close()
    assert [audit_id for audit_id, _ in first + list(later)] == [1, 2, 3, 4, 5]
    assert [entry.id for _, entry in first + list(later)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("meddling", ["takes_the_next_ids", "renames_the_seller"])
async def test_another_program_writing_between_a_batch_read_and_its_insert(tmp_path, meddling):
    """Another program (sqlite3, a backup tool) does not take the relay's
    write turn: it can commit between the read that numbers a batch and the
    INSERT that writes it.  The batch then runs the long way, numbered
    afresh, and a change of parties refuses what was judged on the old ones."""
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    statements: list[str] = []

    def meddle(statement: str) -> None:  # (in the writer thread, as the INSERT starts, before it locks the file)
        if statement.startswith("INSERT INTO batch_row") and "INSERT INTO batch_row" not in "".join(statements):
            other = sqlite3.connect(path, isolation_level=None)
            try:
                if meddling == "takes_the_next_ids":
                    other.execute("INSERT INTO audit (received_at, direction, sender, recipient, verdict, reasons, "
                                  "findings) VALUES ('2026-11-27T09:00:00.000Z', 'b2s', 'x@y.test', 'z@y.test', "
                                  "'rejected', '[]', '[]')")
                else:
                    other.execute("UPDATE sellers SET name = 'Shop and Co' WHERE id = 's1'")
            finally:
                other.close()
        statements.append(statement)

    try:
        await _shop(store)
        await _accept(store, 0)
        version = store.parties_seen[0]
        store._writer.set_trace_callback(meddle)
        gate = asyncio.Event()

        async def hand_in_together(n: int):
            await gate.wait()
            return await _accept(store, n, parties_version=version)

        tasks = [asyncio.ensure_future(hand_in_together(n)) for n in (1, 2, 3)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        store._writer.set_trace_callback(None)
    finally:
        await store.close()
    assert "BEGIN IMMEDIATE" in statements  # the long way was taken
    audit, ids, queue = _rows(path)
    if meddling == "takes_the_next_ids":
        assert [row[4] for row in audit] == ["bob0@buyer.test", "x@y.test", "bob1@buyer.test", "bob2@buyer.test",
                                             "bob3@buyer.test"]
        assert [audit_id for audit_id, _ in results] == [3, 4, 5] == [row[4] for row in ids[1:]]
        assert [entry.id for _, entry in results] == [2, 3, 4] == [row[0] for row in queue[1:]]
        assert [row[1] for row in queue] == [1, 3, 4, 5]
    else:
        assert all(isinstance(result, StaleParties) for result in results), results
        assert [row[4] for row in audit] == ["bob0@buyer.test"] and len(ids) == len(queue) == 1


async def test_delivered_entries_share_the_statement_of_the_accepted_messages(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    statements: list[str] = []
    try:
        await _shop(store)
        earlier = [entry.id for _, entry in [await _accept(store, n) for n in range(3)]]
        store._writer.set_trace_callback(statements.append)
        gate = asyncio.Event()

        async def together(job):
            await gate.wait()
            return await job()

        tasks = [asyncio.ensure_future(together(lambda: store.mark_delivered_many(earlier[:2])))]
        tasks += [asyncio.ensure_future(together(lambda n=n: _accept(store, n))) for n in (3, 4)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks)
        store._writer.set_trace_callback(None)
    finally:
        await store.close()
    assert [s.split(" (")[0].split(",")[0] for s in _top_level(statements)] == \
        ["SELECT coalesce((SELECT version FROM parties_version)", "INSERT INTO batch_row VALUES"]
    db = sqlite3.connect(path)
    try:
        states = db.execute("SELECT id, state, attempts, claimed_by, claimed_until, updated_at > created_at "
                            "FROM queue ORDER BY id").fetchall()
    finally:
        db.close()
    assert states == [(1, "delivered", 1, None, 0, 1), (2, "delivered", 1, None, 0, 1),
                      (3, "queued", 0, "me.1", states[2][4], 0), (4, "queued", 0, "me.1", states[3][4], 0),
                      (5, "queued", 0, "me.1", states[4][4], 0)]
    assert [entry.id for _, entry in results[1:]] == [4, 5]


async def test_batches_of_any_size_use_a_few_statement_shapes(tmp_path):
    """Each row count is a statement SQLite prepares and the connection
    caches; batches are padded to a power of two rows with rows that write
    nothing."""
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    statements: list[str] = []
    try:
        await _shop(store)
        store._writer.set_trace_callback(statements.append)
        n = 0
        for size in range(1, 21):
            gate = asyncio.Event()

            async def hand_in(n: int):
                await gate.wait()
                return await _accept(store, n)

            tasks = [asyncio.ensure_future(hand_in(n + k)) for k in range(size)]
            n += size
            await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(*tasks)
        store._writer.set_trace_callback(None)
    finally:
        await store.close()
    row_counts = {s.count("), (") + 1 for s in _top_level(statements) if s.startswith("INSERT INTO batch_row")}
    assert row_counts <= {1, 2, 4, 8, 16, 32} and len(row_counts) >= 4, row_counts
    audit, ids, queue = _rows(path)
    assert len(audit) == len(ids) == len(queue) == n == 210
    assert [row[4] for row in audit] == [f"bob{k}@buyer.test" for k in range(n)]

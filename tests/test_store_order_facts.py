"""What the filters ask the store about an order (Store.order_history: has the
buyer written, how many unsolicited seller messages, the fingerprints of the
seller's earlier texts) comes from one index alone, so its cost does not grow
with the audit table: each seller message read from the table was a page of a
file of gigabytes, and a long conversation read more of them a message.  A
store made by an older relay gets the index when it is first opened."""

from __future__ import annotations

import sqlite3

from relay import store as store_module
from relay.aliases import mint_alias
from relay.store import AuditRecord, Store

ALIAS_DOMAIN = "relay.example"


def _audit(n: int, direction: str, verdict: str = "accepted", unsolicited: bool = False,
           fingerprint: str | None = None) -> AuditRecord:
    return AuditRecord(received_at=f"2026-11-27T10:00:{n:02d}.000Z", order_id="o1", direction=direction,
                       sender=f"writer{n}@example.test", recipient=f"alias{n}@{ALIAS_DOMAIN}", verdict=verdict,
                       reasons=[], findings=[], subject=f"message {n}", unsolicited=unsolicited,
                       fingerprint=fingerprint, inbound=b"in", outbound=b"out")


async def _conversation(store: Store) -> None:
    """Seller messages accepted and refused, unsolicited and not, then the buyer's."""
    await store.add_seller("s1", "Shop", ["sam@shop.example"])
    await store.open_order("o1", "s1", "bob@buyer.test", None, mint_alias)
    await store.open_order("o2", "s1", "ann@buyer.test", None, mint_alias)
    rows = [_audit(1, "seller_to_buyer", unsolicited=True, fingerprint="f1"),
            _audit(2, "seller_to_buyer", unsolicited=True, fingerprint="f2"),
            _audit(3, "seller_to_buyer", verdict="rejected", unsolicited=True, fingerprint="f3"),
            _audit(4, "seller_to_buyer", unsolicited=False, fingerprint=None)]
    for n, record in enumerate(rows):
        if record.verdict == "rejected":
            await store.record_rejection(record)
            continue
        await store.accept_message(record, relay_id=f"<r{n}@mx.{ALIAS_DOMAIN}>", original_id=None,
                                   mail_from=f"bounce+t{n}@{ALIAS_DOMAIN}", rcpt_to="bob@buyer.test",
                                   bounce_token=f"t{n}", notify=None, notify_alias=None)


async def _facts(store: Store, order_id: str = "o1") -> dict:
    return await store.order_history(order_id, "bob@buyer.test")


async def test_the_facts_for_the_filters_are_read_from_an_index_alone(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    store = await Store.open(path)
    await store.close()
    db = sqlite3.connect(path)
    try:
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + store_module.ORDER_FACTS,
                                             {"o": "o1", "b": "bob@buyer.test"})]
    finally:
        db.close()
    searches = [step for step in plan if " audit " in f" {step} "]
    assert len(searches) == 3, plan
    assert all("INDEX audit_order_facts" in step for step in searches), plan
    # Whether the buyer wrote reads the first accepted buyer row of the order
    # (is it an automatic reply?); the counts and fingerprints read no row.
    assert sum("COVERING INDEX" in step for step in searches) == 2, plan
    # whether a previous message's delivery failed: its queue entry, by the queue_audit index
    assert any("INDEX queue_audit" in step for step in plan), plan


async def test_the_facts_count_only_what_the_rules_count(tmp_path):
    store = await Store.open(str(tmp_path / "relay.sqlite3"))
    try:
        await _conversation(store)
        facts = await _facts(store)
        assert facts["unsolicited_sent"] == 2  # the refused one does not count
        assert facts["previous_fingerprints"] == frozenset({"f1", "f2"})
        assert facts["buyer_has_written"] is False
        assert await _facts(store, "o2") == {"buyer_has_written": False, "unsolicited_sent": 0,
                                             "previous_fingerprints": frozenset(), "buyer_opted_out": False}
        await store.accept_message(_audit(5, "buyer_to_seller"), relay_id=f"<r5@mx.{ALIAS_DOMAIN}>",
                                   original_id=None, mail_from=f"bounce+t5@{ALIAS_DOMAIN}",
                                   rcpt_to="sam@shop.example", bounce_token="t5", notify=None, notify_alias=None)
        assert (await _facts(store))["buyer_has_written"] is True
    finally:
        await store.close()


def _schema_4_store(path: str) -> None:
    """A store as the relay before schema 5 left it, with an order's history in it."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        for script in store_module.MIGRATIONS[:4]:
            for statement in store_module._split_sql(script):
                db.execute(statement)
        db.execute("PRAGMA user_version = 4")
        db.execute("INSERT INTO sellers VALUES ('s1', 'Shop', '2026-11-01T00:00:00Z')")
        db.execute("INSERT INTO seller_emails VALUES ('s1', 'sam@shop.example', 0)")
        db.execute("INSERT INTO orders VALUES ('o1', 's1', 'bob@buyer.test', NULL, 'buyeralias', 'selleralias', "
                   "'2026-11-01T00:00:00Z')")
        for n, (direction, unsolicited, fingerprint) in enumerate(
                [("seller_to_buyer", 1, "old1"), ("seller_to_buyer", 1, "old2"), ("buyer_to_seller", 0, None)]):
            db.execute("INSERT INTO audit (received_at, order_id, direction, sender, recipient, verdict, reasons, "
                       "findings, unsolicited, fingerprint) VALUES (?, 'o1', ?, 'a@x.test', 'b@y.test', "
                       "'accepted', '[]', '[]', ?, ?)", (f"2026-11-01T00:00:0{n}Z", direction, unsolicited,
                                                         fingerprint))
    finally:
        db.close()


async def test_a_store_of_schema_4_gets_the_index_when_first_opened(tmp_path):
    path = str(tmp_path / "relay.sqlite3")
    _schema_4_store(path)
    store = await Store.open(path)
    try:
        assert await _facts(store) == {"buyer_has_written": True, "unsolicited_sent": 2,
                                       "previous_fingerprints": frozenset({"old1", "old2"}),
                                       "buyer_opted_out": False}
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(store_module.MIGRATIONS)
        indexes = {row[1] for row in db.execute("PRAGMA index_list(audit)")}
        assert "audit_order_facts" in indexes and "audit_order" not in indexes
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()

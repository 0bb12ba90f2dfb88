"""Alias lookups remembered in memory (relay.aliascache) never let a decision
rest on parties that have changed: a change made with the CLI reaches the
next RCPT, and one made between a message's RCPT and its commit is caught
by the commit, which judges the message again on the parties as they are."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import smtplib
import sqlite3
from email import message_from_bytes, policy

import pytest

from relay.aliascache import AliasCache
from relay.aliases import mint_alias
from relay.config import settings_from_dict
from relay.logs import configure_logging
from relay.pipeline import Pipeline
from relay.store import Store

BUYER = "bob@buyer.test"


def seller_message(sender: str, alias: str, subject: str = "About your order") -> str:
    return (f"From: <{sender}>\r\nTo: <{alias}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@shop.example>\r\n\r\nYour parcel leaves tomorrow.\r\n")


def buyer_message(alias: str, subject: str = "Question") -> str:
    return (f"From: <{BUYER}>\r\nTo: <{alias}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@buyer.test>\r\n\r\nWhen will it ship?\r\n")


@pytest.fixture
async def parties(tmp_path):
    """A pipeline on a store, the store a second program (the CLI) changes
    the parties through, and the order's seller alias and buyer alias."""
    configure_logging("warning")
    settings = settings_from_dict({"store": {"path": str(tmp_path / "relay.sqlite3")},
                                   "delivery": {"mode": "maildir"}})
    store = await Store.open(settings.store.path)
    cli = await Store.open(settings.store.path)
    try:
        await cli.add_seller("s1", "Shop", ["sam@shop.example", "orders@shop.example"])
        await cli.add_seller("s2", "Other shop", ["ann@other.example"])
        order = await cli.open_order("o1", "s1", BUYER, "Bob", mint_alias)
        domain = settings.relay.domain
        yield Pipeline(settings, store), cli, f"{order.seller_alias}@{domain}", f"{order.buyer_alias}@{domain}"
    finally:
        await cli.close()
        await store.close()


def audit_rows(path: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT sender, verdict, reasons FROM audit ORDER BY id").fetchall()


async def test_a_second_rcpt_to_an_alias_is_answered_from_memory(parties):
    pipeline, _, seller_alias, _ = parties
    first, _ = await pipeline.resolve_recipient(seller_alias)
    second, reply = await pipeline.resolve_recipient(seller_alias)
    assert reply.startswith("250")
    assert (pipeline.aliases.reads, pipeline.aliases.hits) == (1, 1)
    assert second.order == first.order and second.seller == first.seller


async def test_unknown_aliases_are_read_every_time_and_not_kept(parties):
    pipeline, _, _, _ = parties
    for _ in range(3):
        recipient, reply = await pipeline.resolve_recipient(f"{'k' * 18}@{pipeline.settings.relay.domain}")
        assert recipient is None and reply.startswith("550 5.1.1")
    assert (pipeline.aliases.reads, pipeline.aliases.hits) == (3, 0)
    assert pipeline.aliases._entries == {}


async def test_a_change_to_the_parties_is_read_again_once_a_commit_has_seen_it(parties):
    pipeline, cli, _, buyer_alias = parties
    await pipeline.resolve_recipient(buyer_alias)
    await cli.add_seller("s1", "Shop", ["sam@shop.example"])  # orders@ removed
    # Any commit of this process learns the new version (here a rejection of another exchange).
    outcome = await pipeline.process("nobody@else.example", (await pipeline.resolve_recipient(buyer_alias))[0],
                                     seller_message("nobody@else.example", buyer_alias).encode())
    assert outcome.verdict == "rejected"
    recipient, _ = await pipeline.resolve_recipient(buyer_alias)
    assert recipient.seller.emails == ("sam@shop.example",)
    assert not pipeline.sender_is_authorized(recipient, "orders@shop.example")


def rename_with_sqlite3(path: str, seller: str, name: str) -> None:
    """A change by another program: the triggers count it, no relay process notes it."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE sellers SET name = ? WHERE id = ?", (name, seller))


async def test_a_change_made_by_a_relay_process_reaches_the_next_rcpt(parties):
    pipeline, cli, _, buyer_alias = parties
    pipeline.aliases.fresh_for = 3600.0  # however recently this process saw the version
    await pipeline.resolve_recipient(buyer_alias)
    await cli.add_seller("s1", "Renamed shop", ["sam@shop.example"])
    recipient, _ = await pipeline.resolve_recipient(buyer_alias)
    assert recipient.seller.name == "Renamed shop" and recipient.seller.emails == ("sam@shop.example",)
    assert pipeline.aliases.hits == 0


async def test_a_change_by_another_program_is_read_once_the_version_seen_is_older_than_fresh_for(parties):
    pipeline, _, _, buyer_alias = parties
    await pipeline.resolve_recipient(buyer_alias)
    rename_with_sqlite3(pipeline.store.path, "s1", "Renamed shop")
    pipeline.aliases.fresh_for = 0.0  # as if the relay had been idle since its last read
    recipient, _ = await pipeline.resolve_recipient(buyer_alias)
    assert recipient.seller.name == "Renamed shop"
    assert pipeline.aliases.hits == 0


async def test_a_sender_removed_after_rcpt_is_refused_by_the_commit(parties):
    """RCPT was answered on the old parties; the commit finds the change, and
    the message is judged again: refused, audited once, never accepted."""
    pipeline, cli, _, buyer_alias = parties
    recipient, _ = await pipeline.resolve_recipient(buyer_alias)
    assert pipeline.sender_is_authorized(recipient, "orders@shop.example")
    await cli.add_seller("s1", "Shop", ["sam@shop.example"])
    outcome = await pipeline.process("orders@shop.example", recipient,
                                     seller_message("orders@shop.example", buyer_alias).encode())
    assert outcome.verdict == "rejected" and "[sender_not_authorized]" in outcome.reply
    rows = audit_rows(pipeline.store.path)
    assert [(sender, verdict) for sender, verdict, _ in rows] == [("orders@shop.example", "rejected")]
    assert json.loads(rows[0][2]) == ["sender_not_authorized"]


async def test_a_message_judged_on_old_parties_is_delivered_with_the_new_ones(parties):
    """The seller's first address (where buyer mail goes) changes between RCPT and commit."""
    pipeline, cli, seller_alias, _ = parties
    recipient, _ = await pipeline.resolve_recipient(seller_alias)
    await cli.add_seller("s1", "Shop", ["new@shop.example", "sam@shop.example"])
    outcome = await pipeline.process(BUYER, recipient, buyer_message(seller_alias).encode())
    assert outcome.verdict == "accepted", outcome.reply
    with sqlite3.connect(pipeline.store.path) as db:
        assert db.execute("SELECT rcpt_to FROM queue").fetchall() == [("new@shop.example",)]
    assert len(audit_rows(pipeline.store.path)) == 1


async def test_a_refusal_at_rcpt_is_decided_on_a_fresh_read(parties):
    """A remembered answer lacks the seller's new address; RCPT reads again before refusing."""
    pipeline, _, _, buyer_alias = parties
    await pipeline.resolve_recipient(buyer_alias)
    with sqlite3.connect(pipeline.store.path) as db:  # another program: no relay process notes it
        db.execute("INSERT INTO seller_emails (seller_id, address, position) VALUES ('s1', 'new@shop.example', 2)")
    recipient, _ = await pipeline.resolve_recipient(buyer_alias)
    assert pipeline.aliases.hits == 1 and not pipeline.sender_is_authorized(recipient, "new@shop.example")
    current, authorized = await pipeline.authorized_at_rcpt(recipient, "new@shop.example")
    assert authorized and "new@shop.example" in current.seller.emails


async def test_an_authenticated_sellers_other_address_survives_a_second_judgement(parties):
    """Submission port: the seller's unregistered address, allowed for this
    transaction, is kept when a change to another seller makes the commit
    judge the message again."""
    pipeline, cli, _, buyer_alias = parties
    recipient, _ = await pipeline.resolve_recipient(buyer_alias)
    recipient = dataclasses.replace(recipient, extra_senders=("laptop@home.example",))
    await cli.add_seller("s2", "Other shop", ["ann@other.example", "bo@other.example"])
    outcome = await pipeline.process("laptop@home.example", recipient,
                                     seller_message("laptop@home.example", buyer_alias).encode())
    assert outcome.verdict == "accepted", outcome.reply
    assert "laptop@home.example" not in outcome.outbound.decode()


async def test_a_message_is_deferred_when_the_parties_keep_changing(parties, monkeypatch):
    pipeline, cli, seller_alias, _ = parties
    recipient, _ = await pipeline.resolve_recipient(seller_alias)
    original = pipeline.store.accept_message
    calls = 0

    async def changing_first(*args, **kwargs):  # another program changes the parties before every commit
        nonlocal calls
        calls += 1
        await cli.add_seller("s2", "Other shop", ["ann@other.example", f"x{calls}@other.example"])
        return await original(*args, **kwargs)

    monkeypatch.setattr(pipeline.store, "accept_message", changing_first)
    outcome = await pipeline.process(BUYER, recipient, buyer_message(seller_alias).encode())
    assert outcome.verdict == "deferred" and outcome.reply.startswith("451 4.3.0")
    assert calls == 3 and audit_rows(pipeline.store.path) == []


async def test_only_changes_to_existing_parties_move_the_version(parties):
    pipeline, cli, _, _ = parties

    async def version() -> int:
        await cli.transact(lambda db: None)
        return cli.parties_seen[0]

    start = await version()
    await cli.open_order("o2", "s1", "carol@buyer.test", None, mint_alias)
    await cli.add_seller("s3", "New shop", [])
    assert await version() == start  # new orders and sellers change no existing alias
    await cli.open_order("o1", "s1", BUYER, "Robert", mint_alias)
    after_rename = await version()
    assert after_rename > start
    await cli.add_seller("s1", "Shop", ["sam@shop.example"])
    assert await version() > after_rename


async def test_at_most_max_entries_answers_are_kept_least_recently_used_first_out(parties):
    pipeline, cli, seller_alias, buyer_alias = parties
    other = await cli.open_order("o3", "s2", "dan@buyer.test", None, mint_alias)
    cache = AliasCache(pipeline.store, max_entries=2)
    await cache.find(seller_alias.partition("@")[0])
    await cache.find(buyer_alias.partition("@")[0])
    await cache.find(seller_alias.partition("@")[0])  # used again: the buyer alias is now the oldest
    await cache.find(other.seller_alias)
    assert list(cache._entries) == [seller_alias.partition("@")[0], other.seller_alias]


async def test_the_cli_removing_a_sellers_address_is_refused_at_the_next_rcpt(scenario):
    """Black box: mail from an address the seller no longer has is refused at
    RCPT right after `relay seller add` changed the list, though the relay
    had just accepted mail from it."""
    relay = scenario.relay
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.sendmail("orders@shop.example", [scenario.buyer_alias],
                        seller_message("orders@shop.example", scenario.buyer_alias, "first"))
    relay.add_seller("s1", scenario.seller_name, [scenario.seller_email])
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("orders@shop.example", [scenario.buyer_alias],
                            seller_message("orders@shop.example", scenario.buyer_alias, "second"))
    code, text = refused.value.recipients[scenario.buyer_alias]
    assert code == 550 and b"[sender_not_authorized]" in text


async def test_a_renamed_buyer_is_named_so_in_the_next_message(scenario, sink):
    relay = scenario.relay
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.sendmail(scenario.buyer_email, [scenario.seller_alias], buyer_message(scenario.seller_alias, "one"))
    relay.open_order(scenario.order, "s1", scenario.buyer_email, "Robert Buyer")
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.sendmail(scenario.buyer_email, [scenario.seller_alias], buyer_message(scenario.seller_alias, "two"))
    delivered = await sink.wait_for_count(2)
    names = sorted(message_from_bytes(m.data, policy=policy.default)["From"].addresses[0].display_name
                   for m in delivered)
    assert names == ["Bob Buyer", "Robert Buyer"]


async def test_with_two_workers_a_removed_address_is_refused_at_every_next_rcpt(relay_factory):
    """Both worker processes remember the alias (RCPTs spread over them);
    after `relay seller add` drops the address, every RCPT from it is refused."""
    from conftest import free_port

    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2}})
    relay.add_seller("s1", "Shop", ["sam@shop.example", "orders@shop.example"])
    buyer_alias = relay.open_order("o1", "s1", BUYER)["buyer_alias"]

    def rcpt_codes(n: int) -> list[int]:
        codes = []
        for _ in range(n):
            with smtplib.SMTP(*relay.mx, timeout=30) as client:
                client.ehlo("shop.example")
                client.mail("orders@shop.example")
                codes.append(client.rcpt(buyer_alias)[0])
        return codes

    assert rcpt_codes(12) == [250] * 12
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    assert rcpt_codes(12) == [550] * 12


async def test_a_store_whose_version_row_was_deleted_by_hand_still_takes_mail(parties):
    pipeline, _, seller_alias, _ = parties
    with sqlite3.connect(pipeline.store.path) as db:
        db.execute("DELETE FROM parties_version")
    recipient, reply = await pipeline.resolve_recipient(seller_alias)
    assert reply.startswith("250") and recipient.parties_version == 0
    outcome = await pipeline.process(BUYER, recipient, buyer_message(seller_alias).encode())
    assert outcome.verdict == "accepted", outcome.reply


async def test_while_another_program_keeps_changing_the_seller_every_message_goes_to_the_first_address_of_its_commit(
        parties):
    """A second store connection (the CLI) switches the seller's first
    address back and forth while buyer messages are judged, each switch
    committed with a marker row, at the time a message starts.  Every
    accepted message's queue entry names the first address of the latest
    switch before its own commit: no message is delivered on parties older
    than its commit."""
    pipeline, cli, seller_alias, _ = parties
    message_started = asyncio.Event()
    stop = False

    async def switch_back_and_forth() -> None:
        n = 0
        while True:
            await message_started.wait()
            message_started.clear()
            if stop:
                return
            first = ("a@shop.example", "b@shop.example")[n % 2]

            def work(db, first=first):
                db.execute("DELETE FROM seller_emails WHERE seller_id = 's1'")
                db.execute("INSERT INTO seller_emails (seller_id, address, position) VALUES ('s1', ?, 0)", (first,))
                db.execute("INSERT INTO audit (received_at, direction, sender, recipient, verdict, reasons, findings) "
                           "VALUES ('', 'marker', ?, '', 'marker', '[]', '[]')", (first,))

            await cli.transact(work)  # on the other store's writer thread, while the message is judged
            n += 1

    switcher = asyncio.create_task(switch_back_and_forth())
    outcomes = []
    try:
        for n in range(150):
            recipient, _ = await pipeline.resolve_recipient(seller_alias)
            if n % 2 == 0:
                message_started.set()
            outcome = await pipeline.process(BUYER, recipient, buyer_message(seller_alias, f"question {n}").encode())
            outcomes.append(outcome.verdict)
    finally:
        stop = True
        message_started.set()
        await switcher
    assert outcomes == ["accepted"] * 150, outcomes
    with sqlite3.connect(pipeline.store.path) as db:
        rows = db.execute("SELECT a.verdict, a.sender, q.rcpt_to FROM audit a LEFT JOIN queue q ON q.audit_id = a.id "
                          "ORDER BY a.id").fetchall()
    first, checked = "sam@shop.example", 0
    for verdict, sender, rcpt_to in rows:
        if verdict == "marker":
            first = sender
        elif verdict == "accepted":
            assert rcpt_to == first
            checked += 1
    assert checked == 150 and sum(verdict == "marker" for verdict, _, _ in rows) >= 30  # (starts may share one)

"""After 250 the message is ours (RFC 5321 section 6.1): restarts, kill -9,
downstream faults, retries, give-up and the neutral failure notice."""

from __future__ import annotations

import asyncio
import json
import smtplib
import sqlite3
from email import message_from_bytes, policy

from conftest import free_port
from leakcheck_basic import all_decoded_text

SELLER = "sam@shop.example"
BUYER = "bob@buyer.test"


def setup_order(relay) -> dict:
    relay.add_seller("s1", "Sam's Shop", [SELLER])
    return relay.open_order("o1", "s1", BUYER, "Bob")


def send_clean(relay, alias: str, subject: str = "Parcel", mid: str = "<m1@shop.example>") -> str:
    data = (f"From: {SELLER}\r\nTo: {alias}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n"
            f"Your parcel for {subject} leaves tomorrow.\r\n")
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.ehlo()
        client.mail(SELLER)
        client.rcpt(alias)
        code, reply = client.data(data)
    assert code == 250, reply
    return reply.decode()


def queue(relay) -> list[dict]:
    out = relay.cli("queue", "list", "--json", check=True).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


async def wait_until(predicate, timeout: float = 15, interval: float = 0.1):
    """Poll a condition that lives in another process (the relay's store)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def test_kill_9_right_after_250_then_restart_delivers(relay_factory, sink):
    dead_port = free_port()  # nothing listens there: delivery cannot happen yet
    relay = await relay_factory({"delivery": {"smarthost": f"127.0.0.1:{dead_port}"}})
    aliases = setup_order(relay)
    send_clean(relay, aliases["buyer_alias"])
    await relay.kill()  # SIGKILL: no clean shutdown
    assert sink.messages == []
    relay.rewrite_config({"delivery": {"smarthost": f"127.0.0.1:{sink.port}"}})
    await relay.start()
    (delivered,) = await sink.wait_for_count(1)
    assert delivered.rcpt_tos == [BUYER]
    rows = await wait_until(lambda: [r for r in relay.audit() if r["delivery"] == "delivered"])
    assert len(rows) == 1 and rows[0]["verdict"] == "accepted"


async def test_queue_survives_a_graceful_restart(relay_factory, sink):
    relay = await relay_factory({"delivery": {"retry_initial": 60.0}})
    aliases = setup_order(relay)
    sink.script("DATA", "451 4.3.0 try again later")
    send_clean(relay, aliases["buyer_alias"])
    await wait_until(lambda: any(e["state"] == "deferred" for e in queue(relay)))
    assert await relay.stop() == 0
    (entry,) = queue(relay)
    assert entry["state"] == "deferred" and entry["attempts"] == 1
    relay.cli("queue", "retry", check=True)
    await relay.start()
    (delivered,) = await sink.wait_for_count(1)
    assert delivered.rcpt_tos == [BUYER]


async def test_downstream_down_then_up_is_retried_with_backoff(relay_factory, sink):
    relay = await relay_factory()
    aliases = setup_order(relay)
    sink.script("DATA", "421 4.7.0 busy", "450 4.2.0 mailbox busy")
    send_clean(relay, aliases["buyer_alias"])
    (delivered,) = await sink.wait_for_count(1)
    entry = (await wait_until(lambda: [e for e in queue(relay) if e["state"] == "delivered"]))[0]
    assert entry["attempts"] == 3
    assert len(sink.messages) == 1  # delivered once


async def test_disconnect_after_data_is_retried(relay_factory, sink):
    relay = await relay_factory()
    aliases = setup_order(relay)
    sink.script("DATA", "DISCONNECT")
    send_clean(relay, aliases["buyer_alias"])
    (delivered,) = await sink.wait_for_count(1)
    assert delivered.rcpt_tos == [BUYER]


async def test_permanent_failure_fails_at_once_with_a_neutral_notice(relay_factory, sink):
    relay = await relay_factory()
    aliases = setup_order(relay)
    sink.script("RCPT", f"550 5.1.1 <{BUYER}>: mailbox unknown at mx.buyer.test")
    send_clean(relay, aliases["buyer_alias"])
    (notice,) = await sink.wait_for_count(1)
    assert notice.rcpt_tos == [SELLER]
    assert notice.mail_from in ("", "<>")
    text = all_decoded_text(notice.data)
    assert aliases["buyer_alias"] in text
    assert BUYER not in text and "buyer.test" not in text and "mailbox unknown" not in text
    states = sorted((e["kind"], e["state"]) for e in queue(relay))
    assert states == [("bounce", "delivered"), ("relay", "failed")]
    assert relay.audit()[0]["delivery"] == "failed"


async def test_a_stored_address_that_needs_smtputf8_fails_at_once_with_a_notice(relay_factory, sink):
    """The relay does not use SMTPUTF8; `order open` refuses a UTF-8 local
    part, but a store written before that check may hold one.  Such mail
    fails permanently (the seller gets the neutral notice) instead of being
    retried for ever (THREATS #57)."""
    relay = await relay_factory()
    aliases = setup_order(relay)
    with sqlite3.connect(relay.workdir / "relay.sqlite3") as db:
        db.execute("UPDATE orders SET buyer_address = ? WHERE id = 'o1'", ("jürgen@buyer.test",))
    send_clean(relay, aliases["buyer_alias"])
    (notice,) = await sink.wait_for_count(1)
    assert notice.rcpt_tos == [SELLER]
    assert "jürgen" not in all_decoded_text(notice.data)
    states = sorted((e["kind"], e["state"]) for e in queue(relay))
    assert states == [("bounce", "delivered"), ("relay", "failed")]
    assert not relay.events("delivery.error")


async def test_give_up_after_lifetime_sends_one_notice(relay_factory, sink):
    relay = await relay_factory({"delivery": {"lifetime": 0.5, "retry_initial": 0.1}})
    aliases = setup_order(relay)
    sink.script("DATA", *["451 4.3.0 later"] * 50)
    send_clean(relay, aliases["buyer_alias"])
    await wait_until(lambda: any(e["state"] == "failed" for e in queue(relay)))
    sink.scripted["DATA"].clear()
    (notice,) = await sink.wait_for_count(1)
    assert notice.rcpt_tos == [SELLER]
    msg = message_from_bytes(notice.data, policy=policy.default)
    assert aliases["buyer_alias"] in msg["Subject"]


async def test_queue_retry_forces_a_pass(relay_factory, sink):
    relay = await relay_factory({"delivery": {"retry_initial": 3600.0, "retry_max": 3600.0}})
    aliases = setup_order(relay)
    sink.script("DATA", "451 4.3.0 later")
    send_clean(relay, aliases["buyer_alias"])
    await wait_until(lambda: any(e["state"] == "deferred" for e in queue(relay)))
    result = relay.cli("queue", "retry", check=True)
    assert b"1 queue entry due now" in result.stdout
    (delivered,) = await sink.wait_for_count(1)
    assert delivered.rcpt_tos == [BUYER]


async def test_sigterm_exits_zero(relay):
    assert await relay.stop() == 0
    assert relay.events("relay.stopped")

"""The seller limits hold when a seller sends many messages at once.

A seller's mail system (a shop's bulk mailer, a help desk) opens many SMTP
sessions in parallel.  Each message is judged on what the store said about
the order and the seller when it was judged; without a check at its commit,
messages judged side by side each saw room under the limit and all got 250:
7 to 10 of 12 unsolicited messages to one order, 13 of 15 `[Important]`
messages to opted-out buyers against a budget of 10 (a black-box probe).
The commit now confirms what the judgement counted, and a message whose
order or budget changed meanwhile is judged again.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from email import policy
from email.message import EmailMessage

import pytest

from conftest import free_port

SELLER = "sam@shop.example"


def _message(alias: str, subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Sam <{SELLER}>"
    msg["To"] = alias
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes(policy=policy.SMTP)


def _send_all_at_once(port: int, messages: list[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
    """Each message in a session of its own, every session at its DATA
    before any sends its content, so the relay judges them side by side."""
    replies: list[tuple[int, bytes]] = [(0, b"")] * len(messages)
    at_data = threading.Barrier(len(messages), timeout=30)

    def one(k: int, rcpt: str, content: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo()
            client.mail(SELLER)
            code, text = client.rcpt(rcpt)
            if code != 250:
                at_data.abort()
                replies[k] = (code, text)
                return
            at_data.wait()
            replies[k] = client.data(content)

    threads = [threading.Thread(target=one, args=(k, rcpt, content)) for k, (rcpt, content) in enumerate(messages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def _codes(replies: list[tuple[int, bytes]], reason: str) -> tuple[int, int]:
    accepted = sum(1 for code, _ in replies if code == 250)
    refused = sum(1 for code, text in replies if code == 550 and f"[{reason}]".encode() in text)
    assert accepted + refused == len(replies), replies
    return accepted, refused


@pytest.mark.parametrize("workers", [1, 2])
async def test_parallel_unsolicited_messages_stop_at_the_limit(relay_factory, workers):
    # With two worker processes the messages are judged, and committed, by both.
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": workers}})
    relay.add_seller("s1", "Sam's Shop", [SELLER])
    alias = relay.open_order("o1", "s1", "bob@buyer.test", "Bob")["buyer_alias"]
    messages = [(alias, _message(alias, f"Note {k}", f"Parallel note number {k}, text {k * 101} apart."))
                for k in range(12)]
    replies = await asyncio.to_thread(_send_all_at_once, relay.mx[1], messages)
    assert _codes(replies, "too_many_messages") == (3, 9)
    rows = relay.audit("o1")
    assert sum(1 for r in rows if r["verdict"] == "accepted") == 3
    assert sum(1 for r in rows if r["reasons"] == ["too_many_messages"]) == 9


async def test_parallel_critical_messages_stop_at_the_sellers_budget(relay_factory):
    relay = await relay_factory({"filters": {"critical_quota": 4}})
    relay.add_seller("s1", "Sam's Shop", [SELLER])
    messages = []
    for k in range(10):
        buyer = f"b{k}@buyer.test"
        alias = relay.open_order(f"o{k}", "s1", buyer)["buyer_alias"]
        relay.cli("optout", "add", buyer, check=True)
        messages.append((alias, _message(alias, f"[Important] Recall {k}", f"Recall notice {k}, batch {k * 37}.")))
    replies = await asyncio.to_thread(_send_all_at_once, relay.mx[1], messages)
    assert _codes(replies, "critical_quota") == (4, 6)


async def test_parallel_copies_of_one_message_are_accepted_once(relay_factory):
    relay = await relay_factory()
    relay.add_seller("s1", "Sam's Shop", [SELLER])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test", "Bob")
    # The buyer has written: only the duplicate rule can refuse the copies.
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        msg = EmailMessage()
        msg["From"] = "bob@buyer.test"
        msg["To"] = aliases["seller_alias"]
        msg["Subject"] = "Where is my parcel?"
        msg.set_content("Hello, has it left yet?")
        client.send_message(msg, from_addr="bob@buyer.test")
    alias = aliases["buyer_alias"]
    copy = _message(alias, "Re: Where is my parcel?", "It left our depot this morning.")
    replies = await asyncio.to_thread(_send_all_at_once, relay.mx[1], [(alias, copy)] * 8)
    assert _codes(replies, "duplicate") == (1, 7)

"""Both directions through `relay serve` and a real downstream, as a marketplace uses it."""

from __future__ import annotations

import shutil
import smtplib
import sqlite3
import subprocess
import time
from email import message_from_bytes, policy

import pytest

from leakcheck_basic import all_decoded_text

SELLER_MESSAGE = """\
From: Sam's Shop <sam@shop.example>
To: {alias}
Subject: About your order
Message-ID: <seller-1@mail.shop.example>
Date: Mon, 01 Jan 2024 10:00:00 +0000
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello Bob, your parcel leaves tomorrow morning.
Best regards, Sam (sam@shop.example)
"""


def send(relay, mail_from: str, to: str, data: str | bytes) -> dict:
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        return client.sendmail(mail_from, [to], data)


def parse(data: bytes):
    return message_from_bytes(data, policy=policy.default)


async def test_seller_mail_reaches_buyer_from_seller_alias(scenario):
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias, SELLER_MESSAGE.format(alias=scenario.buyer_alias))
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == [scenario.buyer_email]
    assert delivered.mail_from.endswith("@relay.example")
    msg = parse(delivered.data)
    assert msg["From"].addresses[0].addr_spec == scenario.seller_alias
    assert msg["From"].addresses[0].display_name == scenario.seller_name
    assert f'"{scenario.seller_name}" <{scenario.seller_alias}>' in delivered.data.decode()
    assert msg["To"].addresses[0].addr_spec == scenario.buyer_email
    assert msg["Message-ID"].endswith("@mx.relay.example>")
    text = all_decoded_text(delivered.data)
    assert "sam@shop.example" not in text.lower()
    assert "shop.example" not in text.lower()
    assert scenario.seller_alias in msg.get_body().get_content()


async def test_buyer_reply_reaches_seller_first_address_and_threads(scenario):
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias, SELLER_MESSAGE.format(alias=scenario.buyer_alias))
    (first,) = await relay.sink.wait_for_count(1)
    relayed_id = parse(first.data)["Message-ID"]
    reply = (
        f"From: Bob Buyer <{scenario.buyer_email}>\r\nTo: {scenario.seller_alias}\r\n"
        f"Subject: Re: About your order\r\nMessage-ID: <buyer-1@buyer.test>\r\n"
        f"In-Reply-To: {relayed_id}\r\nReferences: {relayed_id}\r\n\r\n"
        f"Thanks! Bob\r\n\r\nOn Mon, Sam's Shop <{scenario.seller_alias}> wrote:\r\n> Hello Bob\r\n"
    )
    send(relay, scenario.buyer_email, scenario.seller_alias, reply)
    messages = await relay.sink.wait_for_count(2)
    second = messages[1]
    assert second.rcpt_tos == [scenario.seller_email]
    msg = parse(second.data)
    assert msg["From"].addresses[0].addr_spec == scenario.buyer_alias
    assert msg["From"].addresses[0].display_name == scenario.buyer_name
    # The seller's client threads: In-Reply-To names the seller's own original id.
    assert msg["In-Reply-To"] == "<seller-1@mail.shop.example>"
    assert "<seller-1@mail.shop.example>" in msg["References"]
    text = all_decoded_text(second.data).lower()
    assert scenario.buyer_email not in text and "buyer.test" not in text

    # And the seller's answer threads on the buyer's side with the buyer's own id.
    seller_reply = (
        f"From: {scenario.seller_email}\r\nTo: {scenario.buyer_alias}\r\nSubject: Re: Re: About your order\r\n"
        f"Message-ID: <seller-2@mail.shop.example>\r\nIn-Reply-To: {msg['Message-ID']}\r\n"
        f"References: <seller-1@mail.shop.example> {msg['Message-ID']}\r\n\r\nYou are welcome.\r\n"
    )
    send(relay, scenario.seller_email, scenario.buyer_alias, seller_reply)
    third = parse((await relay.sink.wait_for_count(3))[2].data)
    assert third["In-Reply-To"] == "<buyer-1@buyer.test>"
    refs = third["References"].split()
    assert refs == [relayed_id, "<buyer-1@buyer.test>"]  # the seller's own id became the id the buyer knows


@pytest.mark.parametrize("buyer_name", ["", "   ", None])
async def test_a_buyer_without_a_name_writes_as_buyer(relay, buyer_name):
    """CONTRACT: `From: "<buyer name or Buyer>" <buyer alias>`; a name of
    blanks is no name (a probe got a bare alias for --buyer-name "  ")."""
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test", buyer_name)
    send(relay, "bob@buyer.test", aliases["seller_alias"],
         f"From: bob@buyer.test\r\nTo: {aliases['seller_alias']}\r\nSubject: Hi\r\n\r\nWhere is it?\r\n")
    (delivered,) = await relay.sink.wait_for_count(1)
    (mailbox,) = parse(delivered.data)["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == ("Buyer", aliases["buyer_alias"])


async def test_unknown_message_ids_are_dropped_not_forwarded(scenario):
    relay = scenario.relay
    data = SELLER_MESSAGE.format(alias=scenario.buyer_alias).replace(
        "Message-ID: <seller-1@mail.shop.example>\n",
        "Message-ID: <seller-1@mail.shop.example>\nIn-Reply-To: <zzz@elsewhere.example>\n"
        "References: <abc@mx.relay.example> <zzz@elsewhere.example>\n")
    send(relay, scenario.seller_email, scenario.buyer_alias, data)
    (delivered,) = await relay.sink.wait_for_count(1)
    msg = parse(delivered.data)
    assert msg["In-Reply-To"] is None and msg["References"] is None


async def test_every_exchange_is_audited_with_contract_fields(scenario):
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias, SELLER_MESSAGE.format(alias=scenario.buyer_alias))
    await relay.sink.wait_for_count(1)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(relay, "intruder@evil.example", scenario.buyer_alias, "Subject: hi\r\n\r\nhi\r\n")
    rows = relay.audit(scenario.order)
    assert [r["verdict"] for r in rows] == ["accepted", "rejected"]
    accepted, rejected = rows
    for field in ("id", "received_at", "order", "direction", "sender", "recipient", "verdict", "reasons",
                  "critical", "subject", "delivery"):
        assert field in accepted
    assert accepted["direction"] == "seller_to_buyer"
    assert accepted["sender"] == scenario.seller_email
    assert accepted["recipient"] == scenario.buyer_alias
    assert accepted["reasons"] == [] and accepted["critical"] is False
    assert accepted["subject"] == "About your order"
    assert accepted["received_at"].endswith("Z")
    assert accepted["delivery"] in ("queued", "delivered")
    assert rejected["reasons"] == ["sender_not_authorized"] and rejected["delivery"] is None
    inbound = relay.cli("audit", "show", str(accepted["id"]), check=True).stdout
    assert b"sam@shop.example" in inbound  # the audit keeps the message as received
    outbound = relay.cli("audit", "show", str(accepted["id"]), "--part", "outbound", check=True).stdout
    assert b"sam@shop.example" not in outbound and scenario.seller_alias.encode() in outbound


async def test_250_means_committed_audit_and_queue_rows_exist(scenario):
    relay = scenario.relay
    with smtplib.SMTP(*relay.mx) as client:
        client.ehlo()
        client.mail(scenario.seller_email)
        client.rcpt(scenario.buyer_alias)
        code, reply = client.data(SELLER_MESSAGE.format(alias=scenario.buyer_alias))
        assert code == 250
        audit_id = int(reply.split()[-2])
        # Read the file from another connection right after the 250.
        db = sqlite3.connect(relay.config["store"]["path"])
        row = db.execute("SELECT verdict, length(inbound), length(outbound) FROM audit WHERE id = ?",
                         (audit_id,)).fetchone()
        queued = db.execute("SELECT COUNT(*) FROM queue WHERE audit_id = ?", (audit_id,)).fetchone()[0]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        db.close()
    assert row[0] == "accepted" and row[1] > 0 and row[2] > 0
    assert queued == 1
    assert mode == "wal"


async def test_new_order_opened_while_serving_takes_mail_at_once(scenario):
    relay = scenario.relay
    relay.add_seller("s2", "Other Shop", ["olga@other.example"])
    aliases = relay.open_order("order-2", "s2", "carl@buyer.test")
    send(relay, "olga@other.example", aliases["buyer_alias"],
         "From: olga@other.example\r\nTo: x\r\nSubject: hello\r\n\r\nYour order is ready.\r\n")
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == ["carl@buyer.test"]


async def test_seller_may_write_from_any_approved_address_and_buyer_reply_goes_to_first(scenario):
    relay = scenario.relay
    data = SELLER_MESSAGE.format(alias=scenario.buyer_alias).replace("sam@shop.example", "orders@shop.example")
    send(relay, "orders@shop.example", scenario.buyer_alias, data)
    (delivered,) = await relay.sink.wait_for_count(1)
    assert b"orders@shop.example" not in delivered.data
    send(relay, scenario.buyer_email, scenario.seller_alias,
         f"From: {scenario.buyer_email}\r\nSubject: ok\r\n\r\nok\r\n")
    messages = await relay.sink.wait_for_count(2)
    assert messages[1].rcpt_tos == [scenario.seller_email]


async def test_header_from_must_be_the_authorized_party(scenario):
    relay = scenario.relay
    forged = SELLER_MESSAGE.format(alias=scenario.buyer_alias).replace(
        "From: Sam's Shop <sam@shop.example>", "From: Amazon Support <support@amazon.example>")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, scenario.seller_email, scenario.buyer_alias, forged)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.startswith(b"5.7.1 [sender_not_authorized]")
    rows = relay.audit(scenario.order)
    assert rows[-1]["verdict"] == "rejected" and rows[-1]["reasons"] == ["sender_not_authorized"]


async def test_buyer_cannot_write_to_buyer_alias(scenario):
    relay = scenario.relay
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(relay, scenario.buyer_email, scenario.buyer_alias, "Subject: x\r\n\r\nx\r\n")
    code, text = info.value.recipients[scenario.buyer_alias]
    assert code == 550 and text.startswith(b"5.7.1 [sender_not_authorized]")


async def test_addresses_compare_case_insensitively(scenario):
    relay = scenario.relay
    data = SELLER_MESSAGE.format(alias=scenario.buyer_alias.upper()).replace("sam@shop.example", "SAM@Shop.Example")
    send(relay, "Sam@SHOP.example", scenario.buyer_alias.upper(), data)
    (delivered,) = await relay.sink.wait_for_count(1)
    assert b"shop.example" not in delivered.data.lower()


async def test_auto_reply_ping_pong_is_stopped(scenario):
    relay = scenario.relay
    vacation = (f"From: {scenario.buyer_email}\r\nTo: {scenario.seller_alias}\r\nSubject: Out of office\r\n"
                "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n")
    send(relay, scenario.buyer_email, scenario.seller_alias, vacation)
    (first,) = await relay.sink.wait_for_count(1)
    assert b"Auto-Submitted: auto-replied" in first.data  # the seller's responder will not answer it
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(relay, scenario.buyer_email, scenario.seller_alias, vacation)
    assert info.value.smtp_error.startswith(b"5.7.1 [auto_reply]")
    rows = relay.audit(scenario.order)
    assert rows[0]["reasons"] == ["auto_reply"] and rows[1]["reasons"] == ["auto_reply"]
    assert [r["verdict"] for r in rows] == ["accepted", "rejected"]


async def test_bounce_to_the_envelope_sender_is_recorded_not_forwarded(scenario):
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias, SELLER_MESSAGE.format(alias=scenario.buyer_alias))
    (first,) = await relay.sink.wait_for_count(1)
    bounce_address = first.mail_from
    assert bounce_address.startswith("bounces-") and bounce_address.endswith("@relay.example")
    token = bounce_address[len("bounces-"):-len("@relay.example")]
    assert len(token) == 14 + 24 and abs(int(token[:14], 16) / 1e6 - time.time()) < 600  # time order, 96 random bits
    dsn = (f"From: MAILER-DAEMON@mx.buyer.test\r\nTo: {bounce_address}\r\nSubject: Undelivered Mail\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n"
           "--R\r\nContent-Type: text/plain\r\n\r\n<bob@buyer.test>: mailbox full\r\n"
           "--R\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; bob@buyer.test\r\n"
           "Action: failed\r\nStatus: 5.2.2\r\n--R--\r\n")
    with smtplib.SMTP(*relay.mx) as client:
        client.sendmail("<>", [bounce_address], dsn)
    messages = await relay.sink.wait_for_count(2)
    notice = messages[1]
    assert notice.rcpt_tos == [scenario.seller_email]
    text = all_decoded_text(notice.data)
    assert "bob@buyer.test" not in text and "buyer.test" not in text and "mailbox full" not in text
    assert scenario.buyer_alias in text
    rows = relay.audit(scenario.order)
    assert rows[-1]["direction"] == "unknown"


def _report(bounce_address: str, action: str, status: str) -> str:
    return (f"From: MAILER-DAEMON@mx.buyer.test\r\nTo: {bounce_address}\r\nSubject: Delivery Status Notification\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n"
            "--R\r\nContent-Type: text/plain\r\n\r\nAbout your message.\r\n"
            "--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.buyer.test\r\n\r\n"
            f"Final-Recipient: rfc822; bob@buyer.test\r\nAction: {action}\r\nStatus: {status}\r\n--R--\r\n")


async def test_only_a_failure_report_to_a_bounce_address_tells_the_writer_and_only_once(scenario):
    """THREATS #38: a vacation reply (RFC 3834 sends it to the Return-Path,
    often from <>) or a report that a message is only delayed is recorded,
    never turned into an "Undeliverable" notice; a failure report is, once
    per message however often it comes (the buyer knows the bounce address
    and could flood the seller); the message's audit row says it failed."""
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias, SELLER_MESSAGE.format(alias=scenario.buyer_alias))
    (first,) = await relay.sink.wait_for_count(1)
    bounce_address = first.mail_from
    vacation = (f"From: Bob <{scenario.buyer_email}>\r\nTo: {bounce_address}\r\nSubject: Auto: Out of office\r\n"
                "Auto-Submitted: auto-replied\r\n\r\nI am on vacation until Monday.\r\n")
    db = sqlite3.connect(relay.config["store"]["path"])
    try:
        def notices() -> int:
            return db.execute("SELECT COUNT(*) FROM queue WHERE kind = 'bounce'").fetchone()[0]

        for data in (vacation, vacation, _report(bounce_address, "delayed", "4.2.2")):
            with smtplib.SMTP(*relay.mx) as client:
                client.sendmail("<>", [bounce_address], data)
        assert notices() == 0  # (each notice is committed before the 250 of what caused it)
        for _ in range(3):
            with smtplib.SMTP(*relay.mx) as client:
                client.sendmail("<>", [bounce_address], _report(bounce_address, "failed", "5.1.1"))
        assert notices() == 1
    finally:
        db.close()
    (_, notice) = await relay.sink.wait_for_count(2)
    assert notice.rcpt_tos == [scenario.seller_email] and scenario.buyer_alias in all_decoded_text(notice.data)
    rows = relay.audit(scenario.order)
    original = next(row for row in rows if row["direction"] == "seller_to_buyer")
    assert original["delivery"] == "failed"
    assert len([row for row in rows if row["recipient"] == bounce_address]) == 6  # every one recorded


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)")
async def test_swaks_as_the_sellers_mail_client(scenario):
    relay = scenario.relay
    result = subprocess.run(
        ["swaks", "--server", f"{relay.mx[0]}:{relay.mx[1]}", "--from", scenario.seller_email,
         "--to", scenario.buyer_alias, "--header", "Subject: Your parcel",
         "--header", f"From: Sam <{scenario.seller_email}>", "--body", "Your parcel leaves tomorrow."],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == [scenario.buyer_email]
    assert scenario.seller_email.encode() not in delivered.data


async def test_a_subaddress_of_a_party_is_that_party_in_both_directions(scenario):
    """bob+orders@buyer.test reaches bob@buyer.test: a seller's signature
    with its own subaddress is no third address (no email_address refusal),
    and a buyer's subaddress never reaches the seller."""
    relay = scenario.relay
    seller_local, seller_domain = scenario.seller_email.split("@")
    body = SELLER_MESSAGE.format(alias=scenario.buyer_alias).replace(
        "(sam@shop.example)", f"({seller_local}+support@{seller_domain})")
    send(relay, scenario.seller_email, scenario.buyer_alias, body)
    (to_buyer,) = await relay.sink.wait_for_count(1)
    assert f"{seller_local}+support" not in all_decoded_text(to_buyer.data).lower()
    assert scenario.seller_alias in parse(to_buyer.data).get_body().get_content()

    buyer_local, buyer_domain = scenario.buyer_email.split("@")
    send(relay, scenario.buyer_email, scenario.seller_alias,
         f"From: {scenario.buyer_email}\r\nTo: {scenario.seller_alias}\r\nSubject: Re: About your order\r\n\r\n"
         f"Thanks! Write to {buyer_local}+shop@{buyer_domain} if anything changes.\r\n")
    (_, to_seller) = await relay.sink.wait_for_count(2)
    text = all_decoded_text(to_seller.data).lower()
    assert f"{buyer_local}+shop".lower() not in text and buyer_domain.lower() not in text
    assert scenario.buyer_alias in parse(to_seller.data).get_body().get_content()

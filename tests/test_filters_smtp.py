"""Every reason code of the contract, produced through a real SMTP session."""

from __future__ import annotations

import smtplib
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

SELLER = "sam@shop.example"
BUYER = "bob@buyer.test"


@pytest.fixture
async def shop(relay_factory):
    async def make(overrides=None):
        relay = await relay_factory(overrides)
        relay.add_seller("s1", "Sam's Shop", [SELLER])
        aliases = relay.open_order("o1", "s1", BUYER, "Bob")
        return relay, aliases
    return make


def message(alias: str, body: str, subject: str = "About your order", html: str | None = None,
            frm: str = SELLER, in_reply_to: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = alias
    msg["Subject"] = subject
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg


def send(relay, msg: EmailMessage, mail_from: str = SELLER) -> tuple[int, bytes]:
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.ehlo()
        client.mail(mail_from)
        code, reply = client.rcpt(msg["To"])
        if code != 250:
            return code, reply
        return client.data(msg.as_bytes(policy=policy.SMTP))


def assert_rejected(result: tuple[int, bytes], code: str) -> None:
    status, text = result
    assert status == 550, result
    assert text.startswith(b"5.7.") and f"[{code}]".encode() in text, result


@pytest.mark.parametrize("code, body, html", [
    ("link", "See the new collection at https://cheap-mugs.example/sale today.", None),
    ("email_address", "Write to me directly at sam.private@gmail.example for a faster answer.", None),
    ("phone_number", "Call me on +1 415 555 0134 if the parcel does not arrive.", None),
    ("promotion", "Leave us a 5-star review and we will refund your order in full!", None),
    ("tracking_pixel", "Your parcel left today.",
     '<p>Your parcel left today.</p><img src="https://track.example/p.gif" width="1" height="1">'),
])
async def test_content_rules_reject_with_the_fragment(shop, code, body, html):
    relay, aliases = await shop()
    result = send(relay, message(aliases["buyer_alias"], body, html=html))
    assert_rejected(result, code)
    assert b"Found" in result[1]  # the reply quotes what was found
    (row,) = relay.audit("o1")
    assert row["verdict"] == "rejected" and code in row["reasons"]
    assert relay.sink.messages == []


async def test_content_rules_do_not_apply_to_buyer_mail(shop):
    relay, aliases = await shop()
    code, _ = send(relay, message(aliases["seller_alias"], "My number is +1 415 555 0134, see https://x.example",
                                  frm=BUYER), mail_from=BUYER)
    assert code == 250
    await relay.sink.wait_for_count(1)


async def test_attachment_rules(shop):
    relay, aliases = await shop({"filters": {"attachment_max_bytes": 1000}})
    msg = message(aliases["buyer_alias"], "The invoice is attached.")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 100, maintype="application", subtype="octet-stream",
                       filename="invoice.exe")
    assert_rejected(send(relay, msg), "attachment_type")
    big = message(aliases["buyer_alias"], "The photo is attached.")
    big.add_attachment(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000, maintype="image", subtype="png", filename="p.png")
    assert_rejected(send(relay, big), "attachment_too_large")
    # Attachment rules apply to buyers too.
    buyer = message(aliases["seller_alias"], "Photo of the damage.", frm=BUYER)
    buyer.add_attachment(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000, maintype="image", subtype="png", filename="p.png")
    assert_rejected(send(relay, buyer, mail_from=BUYER), "attachment_too_large")


async def test_too_many_unsolicited_messages_and_duplicates(shop):
    relay, aliases = await shop()
    alias = aliases["buyer_alias"]
    for n in range(3):
        assert send(relay, message(alias, f"Update number {n}: your parcel moved on."))[0] == 250
    assert_rejected(send(relay, message(alias, "Update number 4: still moving.")), "too_many_messages")
    # Once the buyer writes, the seller may answer again, but not the same text twice.
    assert send(relay, message(aliases["seller_alias"], "Thanks, where is it now?", frm=BUYER),
                mail_from=BUYER)[0] == 250
    assert send(relay, message(alias, "It is in the local depot.", subject="Re: depot"))[0] == 250
    assert_rejected(send(relay, message(alias, "It is in the LOCAL depot!", subject="again")), "duplicate")
    rows = relay.audit("o1")
    assert [r["verdict"] for r in rows] == ["accepted"] * 3 + ["rejected", "accepted", "accepted", "rejected"]


async def test_a_buyers_automatic_reply_is_not_the_buyer_writing(shop):
    """Unsolicited means the buyer has not written in the order (CONTRACT);
    an out-of-office answer from the buyer's mailbox is its software
    writing.  It lifted both the unsolicited limit and the opt-out (a
    black-box probe)."""
    relay, aliases = await shop()
    alias = aliases["buyer_alias"]
    for n in range(3):
        assert send(relay, message(alias, f"Update number {n}: your parcel moved on."))[0] == 250
    away = message(aliases["seller_alias"], "I am away until Monday.", subject="Out of office", frm=BUYER)
    away["Auto-Submitted"] = "auto-replied"
    assert send(relay, away, mail_from=BUYER)[0] == 250  # relayed: the seller learns the buyer is away
    assert_rejected(send(relay, message(alias, "Update number 4: still moving.")), "too_many_messages")
    relay.cli("optout", "add", BUYER, check=True)
    assert_rejected(send(relay, message(alias, "Update number 5: delivered soon.", subject="Re: hello")),
                    "opted_out")


async def test_the_same_words_in_html_alone_are_a_duplicate(shop):
    """The duplicate rule reads words: the same sentence sent again as HTML
    only (a mail client set to HTML) was accepted, its tags counted as
    words (a black-box probe)."""
    relay, aliases = await shop()
    alias = aliases["buyer_alias"]
    assert send(relay, message(alias, "Your parcel left our depot this morning."))[0] == 250
    html_only = message(alias, "x")
    html_only.set_content("<html><body><p>Your parcel <b>left</b> our depot this morning.</p></body></html>",
                          subtype="html")
    assert_rejected(send(relay, html_only), "duplicate")
    other = message(alias, "x")
    other.set_content("<p>It arrives at the local depot tomorrow.</p>", subtype="html")
    assert send(relay, other)[0] == 250


async def test_a_message_that_failed_to_reach_the_buyer_may_be_sent_again(shop):
    """`duplicate` is "the same message already sent in this order"; one the
    next hop refused for good was never sent, and its notice tells the
    seller to write again, so the same text passes; a second copy of a
    delivered one does not."""
    relay, aliases = await shop()
    alias = aliases["buyer_alias"]
    relay.sink.script("RCPT", "550 5.1.1 mailbox unavailable")
    assert send(relay, message(alias, "Your parcel left our depot this morning."))[0] == 250
    (notice,) = await relay.sink.wait_for_count(1)  # the failure notice, once the entry has failed
    assert notice.rcpt_tos == [SELLER]
    assert send(relay, message(alias, "Your parcel left our depot this morning."))[0] == 250
    await relay.sink.wait_for_count(2)
    assert_rejected(send(relay, message(alias, "Your parcel left our depot this morning.")), "duplicate")


async def test_the_same_words_with_another_attachment_are_no_duplicate(shop):
    """A corrected invoice sent with the same covering words is another
    message (found by a black-box probe: it was refused [duplicate]); the same
    words with the same file are the same message."""
    relay, aliases = await shop()
    relay.cli("order", "open", "o1", "--seller", "s1", "--buyer", BUYER, check=True)
    send(relay, message(aliases["seller_alias"], "Could you send the invoice?", frm=BUYER), mail_from=BUYER)

    def invoice(pdf: bytes) -> EmailMessage:
        msg = message(aliases["buyer_alias"], "Please find the invoice attached.")
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="invoice.pdf")
        return msg

    first = b"%PDF-1.4\n1 0 obj << /Total (19.99) >> endobj\n%%EOF\n"
    assert send(relay, invoice(first))[0] == 250
    assert send(relay, invoice(first.replace(b"19.99", b"17.99")))[0] == 250
    assert_rejected(send(relay, invoice(first)), "duplicate")


async def test_opt_out_critical_and_replies(shop):
    relay, aliases = await shop()
    relay.cli("optout", "add", BUYER, check=True)
    alias = aliases["buyer_alias"]
    assert_rejected(send(relay, message(alias, "A note about your order.")), "opted_out")
    code, _ = send(relay, message(alias, "Your order was cancelled by the carrier.", subject="[IMPORTANT] cancelled"))
    assert code == 250
    rows = relay.audit("o1")
    assert rows[-1]["critical"] is True and rows[-1]["verdict"] == "accepted"
    # A reply to a message the buyer sent in this order is never blocked by the opt-out.
    assert send(relay, message(aliases["seller_alias"], "Why was it cancelled?", frm=BUYER), mail_from=BUYER)[0] == 250
    delivered = await relay.sink.wait_for_count(2)
    buyer_msg_id = message_from_bytes(delivered[1].data, policy=policy.default)["Message-ID"]
    code, reply = send(relay, message(alias, "The carrier lost it; a new one ships today.", subject="Re: why",
                                      in_reply_to=buyer_msg_id))
    assert code == 250, reply
    # Once the buyer has written in this order, the seller's mail there is
    # solicited (CONTRACT: the opt-out is from unsolicited seller messages;
    # unsolicited: the buyer has not written in that order), threaded or not.
    assert send(relay, message(alias, "Anything else I can do?", subject="A follow-up"))[0] == 250


async def test_opt_out_holds_in_orders_the_buyer_has_not_written_in(shop):
    relay, aliases = await shop()
    other = relay.open_order("o2", "s1", BUYER, "Bob")
    relay.cli("optout", "add", BUYER, check=True)
    assert send(relay, message(aliases["seller_alias"], "Where is my parcel?", frm=BUYER), mail_from=BUYER)[0] == 250
    assert send(relay, message(aliases["buyer_alias"], "It is on its way.", subject="Re: parcel"))[0] == 250
    # The buyer wrote in o1 only: in o2 the seller's message is unsolicited.
    assert_rejected(send(relay, message(other["buyer_alias"], "A note about your other order.")), "opted_out")
    # A reply that names o1's buyer message from o2 is no reply in o2 either.
    buyer_msg_id = message_from_bytes((await relay.sink.wait_for_count(2))[0].data, policy=policy.default)["Message-ID"]
    assert_rejected(send(relay, message(other["buyer_alias"], "About that.", subject="Re: parcel",
                                        in_reply_to=buyer_msg_id)), "opted_out")


async def test_critical_quota_spares_orders_the_buyer_has_written_in(shop):
    """[Important] is rationed because it passes an opt-out; where the
    buyer's own message already lets the seller answer, it costs nothing."""
    relay, aliases = await shop({"filters": {"critical_quota": 1, "unsolicited_limit": 10}})
    relay.cli("optout", "add", BUYER, check=True)
    alias = aliases["buyer_alias"]
    assert send(relay, message(alias, "Recall notice for your kettle.", subject="[Important] recall"))[0] == 250
    assert_rejected(send(relay, message(alias, "Second recall notice.", subject="[Important] recall 2")),
                    "critical_quota")
    assert send(relay, message(aliases["seller_alias"], "Which kettle?", frm=BUYER), mail_from=BUYER)[0] == 250
    assert send(relay, message(alias, "The blue one.", subject="[Important] Re: recall"))[0] == 250


async def test_critical_quota(shop):
    relay, aliases = await shop({"filters": {"critical_quota": 2, "unsolicited_limit": 10}})
    relay.cli("optout", "add", BUYER, check=True)
    alias = aliases["buyer_alias"]
    for n in range(2):
        assert send(relay, message(alias, f"Recall notice {n} for your kettle.", subject=f"[Important] recall {n}"))[0] \
            == 250
    assert_rejected(send(relay, message(alias, "Recall notice 3.", subject="[Important] recall 3")), "critical_quota")


async def test_sender_not_authorized_is_a_reason_code(shop):
    relay, aliases = await shop()
    result = send(relay, message(aliases["buyer_alias"], "hello", frm="eve@else.example"),
                  mail_from="eve@else.example")
    assert_rejected(result, "sender_not_authorized")
    assert relay.audit("o1")[0]["reasons"] == ["sender_not_authorized"]


async def test_redact_and_flag_actions(shop):
    relay, aliases = await shop({"filters": {"actions": {"link": "redact", "phone_number": "flag"}}})
    code, _ = send(relay, message(aliases["buyer_alias"],
                                  "Track it at https://cheap-mugs.example/t/1 or call +1 415 555 0134."))
    assert code == 250
    (delivered,) = await relay.sink.wait_for_count(1)
    body = message_from_bytes(delivered.data, policy=policy.default).get_body(("plain",)).get_content()
    assert "[link removed]" in body and "cheap-mugs" not in body
    assert "+1 415 555 0134" in body  # flagged, delivered as written
    (row,) = relay.audit("o1")
    assert row["verdict"] == "accepted" and set(row["reasons"]) == {"link", "phone_number"}


async def test_allowlisted_link_domain_passes(shop):
    relay, aliases = await shop({"filters": {"link_allow_domains": ["ups.example"]}})
    code, _ = send(relay, message(aliases["buyer_alias"], "Track it at https://www.ups.example/track?n=1Z999AA10123456784"))
    assert code == 250


async def test_megabyte_of_broken_html_is_refused_within_the_smtp_timeout(shop):
    # html.parser alone would read this for hours with the event loop blocked (CVE-2025-6069
    # class); send() gives up after 30 s.
    relay, aliases = await shop()
    broken = "<p>Your parcel left today.</p>" + "</a" * 340_000
    result = send(relay, message(aliases["buyer_alias"], "Your parcel left today.", html=broken))
    assert_rejected(result, "tracking_pixel")
    assert b"malformed" in result[1]
    (row,) = relay.audit("o1")
    assert row["verdict"] == "rejected" and row["reasons"] == ["tracking_pixel"]


def with_text_attachment(alias: str, text: str, subtype: str = "plain", filename: str = "notes.txt",
                         maintype: str = "text", frm: str = SELLER) -> EmailMessage:
    msg = message(alias, "The details are in the attached file.", frm=frm)
    if maintype == "text":
        msg.add_attachment(text, subtype=subtype, filename=filename)
    else:  # a text file that claims no type
        msg.add_attachment(text.encode(), maintype=maintype, subtype=subtype, filename=filename)
    return msg


@pytest.mark.parametrize("code, text", [
    ("link", "Order again at https://cheap-mugs.example/sale for less."),
    ("email_address", "Write to sam.private@gmail.example directly."),
    ("phone_number", "Call me on +1 415 555 0134."),
    ("promotion", "Leave us a 5-star review and get a free gift!"),
])
@pytest.mark.parametrize("declared", ["text/plain", "application/octet-stream"])
async def test_content_rules_read_text_attachments(shop, code, text, declared):
    relay, aliases = await shop()
    maintype, subtype = declared.split("/")
    result = send(relay, with_text_attachment(aliases["buyer_alias"], text, subtype, maintype=maintype))
    assert_rejected(result, code)
    assert b"in the attachment notes.txt" in result[1]
    assert relay.sink.messages == []


async def test_clean_text_attachment_passes(shop):
    relay, aliases = await shop()
    code, _ = send(relay, with_text_attachment(aliases["buyer_alias"], "Care instructions: hand wash only, 30 C."))
    assert code == 250
    await relay.sink.wait_for_count(1)


@pytest.mark.parametrize("declared", ["text/plain", "application/octet-stream"])
async def test_redact_action_reaches_text_attachments(shop, declared):
    relay, aliases = await shop({"filters": {"actions": {"phone_number": "redact"}}})
    maintype, subtype = declared.split("/")
    msg = with_text_attachment(aliases["buyer_alias"], "Call me on +1 415 555 0134 after 5 pm.", subtype,
                               maintype=maintype)
    code, _ = send(relay, msg)
    assert code == 250
    (delivered,) = await relay.sink.wait_for_count(1)
    out = message_from_bytes(delivered.data, policy=policy.default)
    (attached,) = [p for p in out.walk() if p.get_filename() == "notes.txt"]
    text = attached.get_payload(decode=True).decode()
    assert "[phone number removed]" in text and "415 555 0134" not in text


async def test_content_rules_read_html_attachments_where_allowed(shop):
    # text/html is no allowed attachment type by default; an operator who only flags types lets it
    # through, and its links and remote images are then judged like an HTML body's.
    relay, aliases = await shop({"filters": {"actions": {"attachment_type": "flag"}}})
    page = '<p>Our catalogue: <a href="https://cheap-mugs.example/">here</a></p>'
    result = send(relay, with_text_attachment(aliases["buyer_alias"], page, "html", "catalogue.html"))
    assert_rejected(result, "link")
    assert b"in the attachment catalogue.html" in result[1]
    pixel = '<p>Thanks!</p><img src="https://t.example/open.gif" width="1" height="1">'
    assert_rejected(send(relay, with_text_attachment(aliases["buyer_alias"], pixel, "html", "thanks.html")),
                    "tracking_pixel")


async def test_buyer_text_attachments_are_not_judged_by_content_rules(shop):
    relay, aliases = await shop()
    msg = with_text_attachment(aliases["seller_alias"], "My number is +1 415 555 0134.", frm=BUYER)
    code, _ = send(relay, msg, mail_from=BUYER)
    assert code == 250
    await relay.sink.wait_for_count(1)

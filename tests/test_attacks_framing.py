"""THREATS section A (framing and smuggling) and the parser attacks of F,
over a raw socket against a running relay."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from smtp_dialogue import RawSMTP

SELLER = "sam@shop.example"
BUYER = "bob@buyer.test"


@pytest.fixture
async def order(relay):
    relay.add_seller("s1", "Shop", [SELLER])
    return relay.open_order("o1", "s1", BUYER)


def open_data(relay, alias: str) -> RawSMTP:
    s = RawSMTP(*relay.mx)
    assert s.cmd("EHLO attacker.test").startswith("250")
    assert s.cmd(f"MAIL FROM:<{SELLER}>").startswith("250")
    assert s.cmd(f"RCPT TO:<{alias}>").startswith("250")
    assert s.cmd("DATA").startswith("354")
    return s


def header(alias: str) -> bytes:
    return f"From: {SELLER}\r\nTo: {alias}\r\nSubject: smuggle\r\n\r\nhello\r\n".encode()


FAKE_TERMINATORS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r\n",
                    b"\r\n\x00.\r\n"]


@pytest.mark.parametrize("terminator", FAKE_TERMINATORS, ids=[repr(t) for t in FAKE_TERMINATORS])
async def test_fake_terminators_never_split_a_message(relay, order, sink, terminator):
    alias = order["buyer_alias"]
    smuggled = (b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<" + alias.encode() + b">\r\nDATA\r\n"
                b"From: ceo@victim.example\r\n\r\nsmuggled\r\n")
    with open_data(relay, alias) as s:
        s.send(header(alias) + b"first" + terminator + smuggled + b".\r\n")
        reply = s.reply()
        # One message or one rejection, never two: the next reply is for our QUIT.
        assert reply[:3] in ("250", "550"), reply
        assert s.cmd("QUIT").startswith("221")
    await asyncio.sleep(0)  # let nothing else happen; then check the downstream
    if reply.startswith("250"):
        (delivered,) = await sink.wait_for_count(1)
        # The relayed copy can never end early at the next hop either.
        body = delivered.data
        assert b"\r\n.\r\n" not in body
        assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    else:
        # aiosmtpd un-stuffs a line that starts with a dot, so some variants
        # arrive as one harmless message that a content filter may refuse.
        assert reply.startswith("550 5.")
    audit = relay.audit()
    assert len(audit) == 1


async def test_outbound_smuggling_bare_cr_dot_is_not_relayed_raw(relay, order, sink):
    alias = order["buyer_alias"]
    with open_data(relay, alias) as s:
        s.send(header(alias) + b"line one\r.\r\nline two\r\n.\r\n")
        reply = s.reply()
    if reply.startswith("250"):
        (delivered,) = await sink.wait_for_count(1)
        assert b"\r.\r\n" not in delivered.data
    else:
        assert reply.startswith("550 5.6.0")


async def test_nul_bytes_are_rejected_and_nothing_truncated_is_stored(relay, order, sink):
    alias = order["buyer_alias"]
    with open_data(relay, alias) as s:
        s.send(header(alias) + b"before\x00after\r\n.\r\n")
        assert s.reply().startswith("550 5.6.0")
    (row,) = relay.audit()
    assert row["verdict"] == "rejected"
    stored = relay.cli("audit", "show", str(row["id"]), check=True).stdout
    assert stored.endswith(b"before\x00after\r\n")  # the whole message as received, not a truncated copy
    assert sink.messages == []


@pytest.mark.parametrize("body", [b".\r\n", b"..x\r\n", b". \r\n", b"...\r\n"])
async def test_dot_stuffing_round_trip(relay, order, sink, body):
    alias = order["buyer_alias"]
    with smtplib.SMTP(*relay.mx) as client:
        client.sendmail(SELLER, [alias], header(alias) + body + b"end\r\n")
    (delivered,) = await sink.wait_for_count(1)
    assert delivered.data.endswith(b"hello\r\n" + body + b"end\r\n")


async def test_line_over_1000_octets_is_refused_and_session_stays_in_sync(relay, order, sink):
    alias = order["buyer_alias"]
    with open_data(relay, alias) as s:
        s.send(header(alias) + b"x" * 1200 + b"\r\n.\r\n")
        assert s.reply().startswith("500 5.5.2")
        assert s.cmd(f"MAIL FROM:<{SELLER}>").startswith("250")


async def test_a_message_with_bare_lf_line_ends_is_judged_by_its_lf_lines(relay, order, sink):
    """smtplib sends bytes as given, and EmailMessage.as_bytes() ends lines
    with a bare LF, so `sendmail(..., msg.as_bytes())` sends a message of
    many LF lines and no CRLF before the end of data.  Each LF line is short:
    the message is no "line too long" (it was refused 500 once over 998
    octets); it is relayed with CRLF line ends.  An LF line over 998 octets
    still is refused."""
    from email.message import EmailMessage

    alias = order["buyer_alias"]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SELLER, alias, "Your invoice"
    msg.set_content("Hello Bob,\nyour invoice is attached.\n.5 kg extra, sent free.\n" + "Thanks for your order.\n" * 40)
    msg.add_attachment(b"%PDF-1.4\n" + bytes(range(256)) * 16 + b"\n%%EOF\n", maintype="application",
                       subtype="pdf", filename="invoice.pdf")
    data = msg.as_bytes()
    assert b"\r\n" not in data and len(data) > 5000
    with smtplib.SMTP(*relay.mx) as client:
        assert client.sendmail(SELLER, [alias], data) == {}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SELLER, [alias], data.replace(b"Hello Bob,", b"Hello Bob," + b"x" * 1000))
        assert refused.value.smtp_code == 500
    (delivered,) = await sink.wait_for_count(1)
    assert b"your invoice is attached.\r\n" in delivered.data and b"invoice.pdf" in delivered.data
    # smtplib doubled the dot that starts an LF line (RFC 5321 4.5.2, for what it takes as a line): one is removed.
    assert b"\r\n.5 kg extra, sent free.\r\n" in delivered.data


async def test_command_line_of_10_mb_is_bounded(relay):
    with RawSMTP(*relay.mx) as s:
        s.send(b"EHLO " + b"a" * 10_000_000 + b"\r\n")
        assert s.reply().startswith("500")
        assert s.cmd("NOOP").startswith("250")


async def test_disconnect_mid_data_leaves_nothing(relay, order, sink):
    alias = order["buyer_alias"]
    s = open_data(relay, alias)
    s.send(header(alias) + b"partial body without end")
    s.close()
    # A complete transaction afterwards proves the relay went on; then check nothing of the first.
    with smtplib.SMTP(*relay.mx) as client:
        client.sendmail(SELLER, [alias], header(alias))
    await sink.wait_for_count(1)
    assert len(relay.audit()) == 1
    assert len(sink.messages) == 1


async def test_deep_mime_nesting_is_refused(relay, order, sink):
    alias = order["buyer_alias"]
    depth = 60
    parts = b""
    for i in range(depth):
        parts += f"--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{i + 1}\"\r\n\r\n".encode()
    parts += b"--b60\r\nContent-Type: text/plain\r\n\r\nleaf\r\n"
    data = (f"From: {SELLER}\r\nTo: {alias}\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n").encode() + parts
    with smtplib.SMTP(*relay.mx) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(SELLER, [alias], data)
    assert info.value.smtp_code == 554


async def test_huge_header_is_refused_quickly(relay, order, sink):
    alias = order["buyer_alias"]
    folded = "\r\n ".join(["a." * 35] * 2300)  # 160 KB display name, folded into legal lines (gh-136063)
    data = f"From: {folded} <{SELLER}>\r\nTo: {alias}\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplib.SMTP(*relay.mx, timeout=20) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(SELLER, [alias], data)
    assert info.value.smtp_code == 552


def _forwarding(alias: str, inner_from: str) -> str:
    """The buyer forwards a message whose From header is `inner_from`."""
    return (f"From: {BUYER}\r\nTo: {alias}\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
            f"--B\r\nContent-Type: message/rfc822\r\n\r\nFrom: {inner_from}\r\nSubject: inner\r\n\r\n"
            "inner body\r\n--B--\r\n")


async def test_a_forwarded_messages_huge_header_is_refused(relay, order):
    """THREATS #49 inside a message/rfc822 part: the cap of one header field
    held only at the top, and a 40 KB nested From took 17 s of the event
    loop to parse (a black-box probe), every session waiting."""
    folded = "\r\n ".join(["a." * 450] * 45)
    with smtplib.SMTP(*relay.mx, timeout=20) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(BUYER, [order["seller_alias"]], _forwarding(order["seller_alias"], f"{folded} <x@y.test>"))
    assert info.value.smtp_code == 552 and b"5.3.4" in info.value.smtp_error


async def test_a_from_header_too_long_for_a_mailbox_is_refused_unparsed(relay, order):
    """Within the 8 KB cap of a field the stdlib's address parser still
    costs seconds (gh-136063: 0.4 s for 8 KB of `a.`, each parse); a From
    of one mailbox has no use for more than a line's 1,000 octets."""
    folded = "\r\n ".join(["a." * 300] * 3)
    data = f"From: {folded} <{BUYER}>\r\nTo: {order['seller_alias']}\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplib.SMTP(*relay.mx, timeout=20) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(BUYER, [order["seller_alias"]], data)
    assert info.value.smtp_code == 554 and b"From header" in info.value.smtp_error


async def test_a_forwarded_messages_long_address_header_goes_as_text(relay, order, sink):
    """A forwarded message's long From (or To, Cc: a list's many
    recipients) is not parsed as addresses: it is scrubbed as text, so the
    parties' addresses in it still become their aliases."""
    folded = "\r\n ".join(["a." * 300] * 3)
    with smtplib.SMTP(*relay.mx, timeout=20) as client:
        client.sendmail(BUYER, [order["seller_alias"]], _forwarding(order["seller_alias"], f"{folded} <{BUYER}>"))
    (delivered,) = await sink.wait_for_count(1)
    assert BUYER.encode() not in delivered.data and order["buyer_alias"].encode() in delivered.data


@pytest.mark.parametrize("headers, said", [
    ("Message-ID: <\r\n", b"Message-ID header"),
    ("Message-ID: <@>\r\n", b"Message-ID header"),
    ("MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n", b"boundary"),
])
async def test_a_refusal_names_no_internal_exception(relay, order, headers, said):
    """THREATS #20: no internals in a reply.  A header the parser cannot read
    was refused "(IndexError)", a multipart without its boundary
    "(MultipartInvariantViolationDefect)": the stdlib's names, no help to
    the writer (a black-box probe)."""
    data = f"From: {BUYER}\r\nTo: {order['seller_alias']}\r\nSubject: x\r\n{headers}\r\nhi\r\n"
    with smtplib.SMTP(*relay.mx, timeout=20) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(BUYER, [order["seller_alias"]], data)
    reply = info.value.smtp_error
    assert info.value.smtp_code == 554 and said in reply, reply
    assert b"Error" not in reply and b"Defect" not in reply and b"(" not in reply, reply


async def test_duplicate_from_headers_are_refused(relay, order):
    alias = order["buyer_alias"]
    data = f"From: {SELLER}\r\nFrom: other@shop.example\r\nTo: {alias}\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplib.SMTP(*relay.mx) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(SELLER, [alias], data)
    assert info.value.smtp_code == 554


async def test_parser_differential_from_is_refused(relay, order):
    # CVE-2023-27043: one parser must not see a different sender than another.
    alias = order["buyer_alias"]
    data = f"From: {SELLER})<attacker@evil.example>\r\nTo: {alias}\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplib.SMTP(*relay.mx) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(SELLER, [alias], data)
    assert info.value.smtp_code == 550 and b"sender_not_authorized" in info.value.smtp_error


async def test_relay_loop_is_refused(relay, order):
    alias = order["buyer_alias"]
    data = f"From: {SELLER}\r\nTo: {alias}\r\nSubject: x\r\nX-Relay-Loop: mx.relay.example\r\n\r\nbody\r\n"
    with smtplib.SMTP(*relay.mx) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail(SELLER, [alias], data)
    assert info.value.smtp_code == 554 and info.value.smtp_error.startswith(b"5.4.6")


async def test_http_on_the_smtp_port_is_closed(relay):
    with RawSMTP(*relay.mx) as s:
        s.send(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: y\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        replies = [s.reply() for _ in range(5)]
        assert all(r.startswith("5") for r in replies), replies
        assert s.closed()

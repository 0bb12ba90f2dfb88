"""8-bit and SMTPUTF8 (THREATS #57).

The relay does not offer SMTPUTF8, so every message it relays must be
representable without it: 7-bit header fields (RFC 2047 encoded words) and,
in bodies, text that is valid in the charset its part declares.  What a client
sends anyway is downgraded the same way every time, or refused with one clear
reply; undecodable bytes never reach the filters or the next hop.
"""

from __future__ import annotations

from email import message_from_bytes, policy


from service_support import AsyncSMTP


async def _send(scenario, content: bytes, mail_options: str = "") -> str:
    relay = scenario.relay
    client = await AsyncSMTP.open(*relay.mx)
    ehlo = await client.cmd("EHLO client.example")
    assert "SMTPUTF8" not in ehlo.upper() and "8BITMIME" in ehlo.upper(), ehlo
    reply = await client.cmd(f"MAIL FROM:<{scenario.seller_email}>{mail_options}")
    if not reply.startswith("250"):
        return reply
    assert (await client.cmd(f"RCPT TO:<{scenario.buyer_alias}>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    client.send(content.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
    reply = await client.cmd(".")
    await client.cmd("QUIT")
    return reply


def _message(scenario, head: bytes, body: bytes, ctype: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (b"From: " + scenario.seller_email.encode() + b"\n"
            b"To: " + scenario.buyer_alias.encode() + b"\n"
            b"Message-ID: <m8@shop.example>\n" + head +
            b"MIME-Version: 1.0\nContent-Type: " + ctype + b"\nContent-Transfer-Encoding: 8bit\n\n" + body)


def _seven_bit_head(data: bytes) -> bytes:
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(b < 128 for b in head), head
    return head


async def test_smtputf8_parameter_is_refused_when_not_offered(scenario):
    reply = await _send(scenario, b"", " SMTPUTF8")
    assert reply.startswith("555"), reply


async def test_non_ascii_envelope_address_is_refused(scenario):
    relay = scenario.relay
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO client.example")).startswith("250")
    reply = await client.cmd("MAIL FROM:<jos\u00e9@shop.example>".encode())
    assert reply.startswith("500 5.6.7"), reply


async def test_raw_utf8_subject_is_downgraded_to_encoded_words(scenario):
    subject = "Caf\u00e9 cr\u00e8me \u2013 your order"
    reply = await _send(scenario, _message(scenario, b"Subject: " + subject.encode() + b"\n",
                                           "Merci, \u00e0 bient\u00f4t.\n".encode()))
    assert reply.startswith("250"), reply
    delivered = (await scenario.relay.sink.wait_for_count(1))[0].data
    _seven_bit_head(delivered)
    parsed = message_from_bytes(delivered, policy=policy.default)
    assert parsed["Subject"] == subject
    assert parsed.get_content().strip() == "Merci, \u00e0 bient\u00f4t."


async def test_raw_latin1_subject_is_read_as_latin1_not_dropped(scenario):
    reply = await _send(scenario, _message(scenario, b"Subject: Caf\xe9\n", b"Thanks.\n"))
    assert reply.startswith("250"), reply
    delivered = (await scenario.relay.sink.wait_for_count(1))[0].data
    _seven_bit_head(delivered)
    assert message_from_bytes(delivered, policy=policy.default)["Subject"] == "Caf\u00e9"


async def test_body_bytes_invalid_in_their_charset_never_pass_through(scenario):
    body = b"Thanks \xff\xfe for your order \xc3\n"  # not UTF-8, though the part says so
    reply = await _send(scenario, _message(scenario, b"Subject: bytes\n", body))
    assert reply.startswith("250"), reply
    delivered = (await scenario.relay.sink.wait_for_count(1))[0].data
    assert delivered.isascii()  # re-encoded: the next hop needs no 8BITMIME
    part = message_from_bytes(delivered, policy=policy.default).get_body(("plain",))
    text = part.get_payload(decode=True).decode(part.get_content_charset())  # valid in its charset
    assert text.startswith("Thanks \ufffd\ufffd for your order"), text


async def test_eight_bit_body_is_relayed_seven_bit_clean(scenario):
    text = "Merci beaucoup, \u00e0 lundi \u2014 \u00c9tienne\n"
    reply = await _send(scenario, _message(scenario, b"Subject: accents\n", text.encode("utf-8")))
    assert reply.startswith("250"), reply
    delivered = (await scenario.relay.sink.wait_for_count(1))[0].data
    assert delivered.isascii()
    assert message_from_bytes(delivered, policy=policy.default).get_content().replace("\r\n", "\n") == text


async def test_utf8_address_in_header_from_is_not_taken_for_the_seller(scenario):
    content = (b"From: s\xc3\xa4m@shop.example\nTo: " + scenario.buyer_alias.encode() +
               b"\nSubject: hi\nMessage-ID: <m9@shop.example>\n\nHello\n")
    reply = await _send(scenario, content)
    assert reply.startswith("550 5.7.1"), reply

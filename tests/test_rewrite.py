"""The rewriter alone: every hiding place of an address, without a socket."""

from __future__ import annotations

import base64
import quopri
import re
import unicodedata
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakcheck_basic import all_decoded_text
from relay.config import Settings
from relay.parsing import parse_message
from relay.pipeline import MessageRefused, check_structure
from relay.rewrite import Parties, RewriteError, Scrubber, Threading, rewrite_message, rfc5322_utc
from relay.smtpdata import crlf_only

SELLER = "sam.real@shop.example"
BUYER = "bob.real@buyer.test"
SELLER_ALIAS = "sellerxaliasxxxxxx@relay.example"
BUYER_ALIAS = "buyerxaliasxxxxxxx@relay.example"
PARTIES = Parties((SELLER,), SELLER_ALIAS, "Sam's Shop", (BUYER,), BUYER_ALIAS, "mx.relay.example")
THREAD = Threading("<new@mx.relay.example>")


def rewrite(raw: bytes | str, redactions=()) -> bytes:
    if isinstance(raw, str):
        raw = raw.encode()
    msg = message_from_bytes(raw, policy=policy.default)
    return rewrite_message(msg, PARTIES, THREAD, redactions).data


def assert_clean(out: bytes) -> None:
    """No trace of the writer; the reader's own address only in To."""
    to_line = f"to: {BUYER}".encode()
    without_to = b"\r\n".join(line for line in out.split(b"\r\n") if line.lower() != to_line)
    text = all_decoded_text(without_to).lower()
    # As a reader sees it: fullwidth and other compatibility forms, ideographic full stops.
    text = unicodedata.normalize("NFKC", text).replace("\u3002", ".").replace("\uff61", ".")
    for needle in ("sam.real", "bob.real", "shop.example", "buyer.test"):
        assert needle not in text, needle
    for line in out.split(b"\r\n"):
        assert len(line) <= 998
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b"")


@pytest.mark.parametrize("name", ['Atelier "La Rose"', 'The "Best" Shop \\ Co', 'Café "Zoë" & Co', "Müller, Sohn",
                                  "A (note) B", "Sam's Shop", 'Trailing \\', 'x" <evil@x.example>, "y',
                                  "A very long shop name " * 5 + '"quoted"'])
def test_the_from_display_name_is_the_senders_name_exactly(name):
    """CONTRACT: `From: "<seller name>" <seller alias>`.  Quotes and
    backslashes in a name are quoted-pairs (RFC 5322 section 3.2.4): a
    black-box probe got `"Atelier 'La Rose'"` for Atelier "La Rose"."""
    parties = Parties((SELLER,), SELLER_ALIAS, name, (BUYER,), BUYER_ALIAS, "mx.relay.example")
    msg = message_from_bytes(b"From: sam.real@shop.example\r\nTo: x@relay.example\r\nSubject: s\r\n\r\nhi\r\n",
                             policy=policy.default)
    out = rewrite_message(msg, parties, THREAD, ()).data
    (mailbox,) = message_from_bytes(out, policy=policy.default)["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == (name, SELLER_ALIAS)
    assert_clean(out)


def test_headers_are_regenerated_from_an_allowlist():
    out = rewrite(
        "From: =?utf-8?q?sam.real=40shop.example?= <sam.real@shop.example>\r\n"
        "Sender: sam.real@shop.example\r\nReply-To: sam.real@shop.example\r\n"
        "To: Friends: bob.real@buyer.test, carol@third.example;\r\n"
        "Cc: x@shop.example\r\nReturn-Receipt-To: sam.real@shop.example\r\n"
        "Disposition-Notification-To: sam.real@shop.example\r\n"
        "Received: from mail.shop.example ([198.51.100.7])\r\n"
        "X-Originating-IP: [198.51.100.7]\r\nAutocrypt: addr=sam.real@shop.example; keydata=AAAA\r\n"
        "DKIM-Signature: v=1; d=shop.example; i=@shop.example; b=xx\r\n"
        "Message-ID: <1@shop.example>\r\nSubject: Hello (sam.real@shop.example)\r\n\r\nhi\r\n")
    assert_clean(out)
    msg = message_from_bytes(out, policy=policy.default)
    assert msg["From"].addresses[0].addr_spec == SELLER_ALIAS
    assert msg["To"].addresses[0].addr_spec == BUYER
    assert msg["Message-ID"] == "<new@mx.relay.example>"
    assert msg["Subject"] == f"Hello ({SELLER_ALIAS})"
    assert set(k.lower() for k in msg.keys()) <= {"from", "to", "subject", "date", "message-id", "x-relay-loop",
                                                   "mime-version", "content-type", "content-transfer-encoding"}


def test_encoded_newline_in_subject_never_becomes_a_header():
    # CVE-2024-6923: on CPython 3.11.7 re-serialising this would emit a Bcc line.
    out = rewrite("From: sam.real@shop.example\r\nSubject: hi=?UTF-8?Q?=0ABcc:_x@evil.example?=\r\n\r\nbody\r\n")
    headers = out.split(b"\r\n\r\n")[0]
    assert not any(line.lower().startswith(b"bcc") for line in headers.split(b"\r\n"))


@pytest.mark.parametrize("body", [
    "Write to SAM.REAL@SHOP.EXAMPLE please",
    "mailto:sam.real%40shop.example",
    "<a href=\"mailto:sam.real&#64;shop.example\">me</a>",
    "<a href=\"mailto:sam.real&#x40;shop.example\">me</a>",
    "sam.real\u200b@shop\u200c.example",
    "sam.real [at] shop.example",
    "sam.real(at)shop(dot)example",
    "On Tue, Bob <bob.real@buyer.test> wrote:\n> hi",
    # Found by a black-box probe (THREATS #55): what a reader sees as the address.
    "Write to \uff53\uff41\uff4d\uff0e\uff52\uff45\uff41\uff4c\uff20\uff53\uff48\uff4f\uff50\uff0e"
    "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45 please",  # fullwidth forms
    "Write to sam.real@shop\u3002example or sam.real@shop\uff61example",  # ideographic full stops
    "<a href=\"#\">me</a>: sam.real&#64shop.example and sam.real&#x40shop.example",  # no semicolon
    'Write to "sam.real"@shop.example or "sam.real" @ shop.example',  # a quoted local part
    "Write to &quot;sam.real&quot;@shop.example <a href=\"#\">now</a>",
    # A subaddress (RFC 5233) reaches the same mailbox: it names the party as well.
    "Write to sam.real+orders@shop.example or SAM.REAL+a.b-c@Shop.Example",
    "<a href=\"mailto:sam.real%2Bshop%40shop.example\">me</a> or sam.real&#43;x&#64;shop.example",
    # Found by a black-box probe: bidi marks and other format characters a reader does not see
    *(f"returns: sam.real{mark}@shop.example" for mark in "\u200e\u200f\u202a\u202c\u2066\u2069\u2061\u034f\u180e"),
    "<p>returns: sam.real&#x200e;@shop.example or sam.real&lrm;@shop.example</p><a href=\"#\">x</a>",
    # ... and line breaks inside a link, which browsers drop from a URL
    "<a href=\"mailto:sam.real@shop.ex\nample\">me</a> <a href=\"mailto:sam.real@shop.ex\r\nample\">me</a>",
    "<a href=\"mailto:sam.real&#10;@shop.example\">me</a> <a href=\"mailto:sam.real&NewLine;@shop.example\">me</a>",
    "<a href=\"mailto:sam.real@shop&#13;.example\">me</a> <a href=\"mailto:sam.real@shop&#x0a;.example\">me</a>",
])
def test_body_spellings_are_replaced(body):
    msg = EmailMessage()
    msg["From"] = SELLER
    msg["Subject"] = "x"
    msg.set_content(body, subtype="html" if "<a" in body else "plain", cte="quoted-printable")
    out = rewrite(msg.as_bytes())
    assert_clean(out)


@pytest.mark.parametrize("cte", ["base64 ", "base64\t", "Base64  ", "base64\r\n ", "quoted-printable ",
                                 " x-uuencode "])
def test_a_transfer_encoding_with_spaces_around_it_is_still_decoded_and_scrubbed(cte):
    """The rewriter wrote the header back as the clean name ("base64") but
    left the body as it came: 'base64 ' was not decoded, so it was neither
    scrubbed nor judged, and every mail client decoded the address out of it
    (found by a black-box probe)."""
    text = b"Hello, my mail is bob.real@buyer.test bye\r\n"
    name = cte.strip().lower()
    if name == "base64":
        body = base64.encodebytes(text)
    elif name == "quoted-printable":
        body = quopri.encodestring(text.replace(b"@", b"=40")).replace(b"==40", b"=40")
    else:
        import binascii
        body = b"begin 644 note.txt\r\n" + binascii.b2a_uu(text) + b"`\r\nend\r\n"
    raw = (b"From: sam.real@shop.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
           + body)
    out = rewrite(raw)
    assert_clean(out)
    decoded = message_from_bytes(out, policy=policy.default).get_payload(decode=True)
    assert BUYER_ALIAS.encode() in decoded and b"bob.real" not in decoded


def test_base64_padded_early_is_sent_as_read_not_as_received():
    """Python's decoder stops at the first "=" padding; GNU base64 and some
    clients go on and decode what follows (found by a black-box probe: the
    part was passed on byte for byte, the address after the padding).  What
    the relay did not read is not relayed: the part is encoded again."""
    hidden = base64.b64encode(b"contact bob.real@buyer.test thanks")
    raw = (b"From: sam.real@shop.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(b"Hi") + b"\r\n" + hidden + b"\r\n")  # "SGk=", then more
    out = rewrite(raw)
    body = out.split(b"\r\n\r\n", 1)[1]
    assert hidden not in body
    import subprocess
    decoded = subprocess.run(["base64", "-d", "-i"], input=body, capture_output=True).stdout
    assert b"bob.real" not in decoded and b"buyer.test" not in decoded


def test_a_forwarded_message_names_a_party_as_the_relay_does():
    """Inside a forwarded message, a party's address became its alias but
    the display name its mail client wrote stayed (found by a black-box
    probe: "Sam Realname" <alias>).  A party is named as the top-level From
    names the writer; the reader's own name is dropped; others keep theirs."""
    inner = (b"From: \"Samuel Realname\" <sam.real@shop.example>\r\n"
             b"To: Bobby Zephyrine <bob.real@buyer.test>, Carol Third <carol@third.example>\r\n"
             b"Cc: =?utf-8?q?Samuel_Realname?= <sam.real+cc@shop.example>\r\nSubject: old\r\n\r\nold text\r\n")
    raw = (b"From: sam.real@shop.example\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
           b"--BB\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--BB--\r\n")
    out = rewrite(raw)
    text = all_decoded_text(out)
    assert "Realname" not in text and "Samuel" not in text and "Zephyrine" not in text, text
    assert f'"Sam\'s Shop" <{SELLER_ALIAS}>' in text or f"Sam's Shop <{SELLER_ALIAS}>" in text
    assert "Carol Third <carol@third.example>" in text


def test_a_file_uuencoded_inside_the_text_is_refused():
    """Mail clients show a "begin 644 name ... end" block of a text part as
    an attachment; what it holds passed unread (found by a black-box probe)."""
    import binascii

    block = b"begin 644 contact.txt\r\n" + binascii.b2a_uu(b"write to bob.real@buyer.test") + b"`\r\nend\r\n"
    raw = b"From: sam.real@shop.example\r\nSubject: x\r\n\r\nSee the file.\r\n\r\n" + block
    with pytest.raises(RewriteError) as refused:
        rewrite(raw)
    assert "[unscannable]" in str(refused.value) and "uuencoded" in str(refused.value)
    # Prose that merely starts a line with "begin" is no file.
    assert_clean(rewrite(b"From: sam.real@shop.example\r\nSubject: x\r\n\r\nbegin 644 pages of the manual\r\nend\r\n"))


def test_a_quoted_messages_id_in_html_is_dropped():
    """Apple Mail and Thunderbird cite the quoted message by its Message-ID
    (<blockquote type="cite" cite="mid:...@shop.example">), which names the
    writer's domain; the relay replaces Message-IDs everywhere else (found by
    a black-box probe)."""
    msg = EmailMessage()
    msg["From"] = SELLER
    msg["Subject"] = "x"
    msg.set_content('<p>Yes.</p><blockquote type="cite" cite="mid:ABCD-1234@shop.example">'
                    '<a href="MID:ABCD-1234@shop.example">earlier</a> old</blockquote>', subtype="html")
    out = rewrite(msg.as_bytes())
    assert_clean(out)
    assert b"blockquote" in out


def test_a_spelling_read_as_the_address_but_not_replaceable_is_refused():
    """Mathematical bold letters read as the address (the scrubber's view
    folds compatibility forms) but its pattern does not know them: the text
    is checked again after the replacement, and refused, never relayed."""
    bold = "".join(chr(0x1D41A + ord(c) - ord("a")) if c.isalpha() else c for c in "sam.real")
    msg = EmailMessage()
    msg["From"] = SELLER
    msg["Subject"] = "x"
    msg.set_content(f"Write to {bold}@shop.example")
    with pytest.raises(RewriteError) as refused:
        rewrite(msg.as_bytes())
    assert "[unscannable]" in str(refused.value)


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
def test_a_forwarded_message_encoded_as_a_whole_is_refused(cte):
    """RFC 2046 section 5.2.1 allows a message/rfc822 body only as 7bit,
    8bit or binary; one sent base64 was passed on undecoded, so neither the
    rewriter nor the filters ever read it (found by a black-box probe,
    THREATS #55/#56).  Such a message is refused, not relayed unread."""
    inner = b"From: Robert <bob.real@buyer.test>\r\nSubject: old\r\n\r\nwrite to bob.real@buyer.test\r\n"
    body = base64.encodebytes(inner) if cte == "base64" else quopri.encodestring(inner)
    raw = (b"From: bob.real@buyer.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nsee fwd\r\n"
           b"--BB\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
           + body + b"--BB--\r\n")
    with pytest.raises(MessageRefused) as refused:
        check_structure(parse_message(raw), Settings())
    assert refused.value.reply.startswith("554 5.6.0") and refused.value.reason == "malformed"
    # The same message forwarded as RFC 2046 asks is taken and rewritten.
    plain = raw.replace(b"Content-Transfer-Encoding: " + cte.encode(), b"Content-Transfer-Encoding: 7bit")
    plain = plain.replace(body, inner)
    check_structure(parse_message(plain), Settings())
    assert_clean(rewrite(plain))


def test_quoted_printable_soft_break_inside_an_address():
    raw = ("From: sam.real@shop.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           "Contact sam.re=\r\nal@shop.exa=\r\nmple today\r\n")
    assert_clean(rewrite(raw))


def test_base64_html_nested_message_vcard_ics_and_rfc2231_filename():
    inner = EmailMessage()
    inner["From"] = "Bob <bob.real@buyer.test>"
    inner["To"] = SELLER
    inner["Subject"] = "original"
    inner["Message-ID"] = "<orig@buyer.test>"
    inner.set_content("I am bob.real@buyer.test")
    outer = EmailMessage()
    outer["From"] = SELLER
    outer["Subject"] = "fwd"
    outer.set_content("see below, from sam.real@shop.example", cte="base64")
    outer.add_alternative("<p>mail <a href='mailto:sam.real@shop.example'>me</a></p>", subtype="html", cte="base64")
    outer.add_attachment(inner)
    outer.add_attachment("BEGIN:VCARD\r\nEMAIL:sam.real@shop.example\r\nEND:VCARD\r\n", subtype="vcard",
                         filename="sam.vcf")
    outer.add_attachment("BEGIN:VCALENDAR\r\nORGANIZER:mailto:sam.real@shop.example\r\n"
                         "ATTENDEE:mailto:bob.real@buyer.test\r\nEND:VCALENDAR\r\n", subtype="calendar",
                         filename="meet.ics")
    outer.add_attachment(b"%PDF-1.4 plain bytes", maintype="application", subtype="pdf",
                         filename="sam.real@shop.example.pdf")
    out = rewrite(outer.as_bytes())
    assert_clean(out)
    parsed = message_from_bytes(out, policy=policy.default)
    pdf = [p for p in parsed.walk() if p.get_content_type() == "application/pdf"][0]
    assert pdf.get_payload(decode=True) == b"%PDF-1.4 plain bytes"  # untouched attachment, byte-identical


def test_untouched_parts_stay_byte_identical():
    image = bytes(range(256)) * 40
    msg = EmailMessage()
    msg["From"] = SELLER
    msg["Subject"] = "photo"
    msg.set_content("Here is the photo of your item.")
    msg.add_attachment(image, maintype="image", subtype="png", filename="item.png")
    out = message_from_bytes(rewrite(msg.as_bytes()), policy=policy.default)
    png = [p for p in out.walk() if p.get_content_type() == "image/png"][0]
    assert png.get_payload(decode=True) == image
    assert out.get_body(("plain",)).get_content().strip() == "Here is the photo of your item."


def test_binary_attachment_holding_an_address_is_refused():
    msg = EmailMessage()
    msg["From"] = SELLER
    msg["Subject"] = "invoice"
    msg.set_content("invoice attached")
    msg.add_attachment(b"%PDF-1.4 contact sam.real@shop.example", maintype="application", subtype="pdf",
                       filename="invoice.pdf")
    with pytest.raises(RewriteError) as info:
        rewrite(msg.as_bytes())
    assert info.value.reply.startswith("550 5.7.1")


def test_text_file_sent_as_octet_stream_is_rewritten_and_judged_as_text():
    # The attachment rules let such a file through as plain text: it is scrubbed like a
    # text/plain attachment (rather than refused as a binary holding an address) and handed to
    # the content rules as text.
    msg = EmailMessage()
    msg["From"] = SELLER
    msg["Subject"] = "notes"
    msg.set_content("notes attached")
    msg.add_attachment(b"Questions? sam.real@shop.example, or call after 5 pm.\n", maintype="application",
                       subtype="octet-stream", filename="notes.txt")
    result = rewrite_message(message_from_bytes(msg.as_bytes(), policy=policy.default), PARTIES, THREAD)
    assert_clean(result.data)
    (attached,) = result.attachments
    assert attached.text == f"Questions? {SELLER_ALIAS}, or call after 5 pm.\n"
    assert attached.data == attached.text.encode()


def test_smime_signature_and_pgp_keys_are_stripped():
    raw = (
        "From: sam.real@shop.example\r\nSubject: signed\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\r\nmQENBF...\r\n-----END PGP PUBLIC KEY BLOCK-----\r\n"
        "--B\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n"
        "\r\n" + base64.encodebytes(b"cert for sam.real@shop.example").decode().replace("\n", "\r\n") +
        "--B--\r\n")
    out = rewrite(raw)
    assert_clean(out)
    assert b"pkcs7-signature" not in out and b"BEGIN PGP PUBLIC KEY" not in out
    assert b"hello" in out


def test_encrypted_content_is_refused():
    raw = ("From: sam.real@shop.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"\r\n\r\n'
           "--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
           "--B\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n--B--\r\n")
    with pytest.raises(RewriteError):
        rewrite(raw)


def test_preamble_and_epilogue_are_dropped():
    raw = ("From: sam.real@shop.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
           "preamble secret-preamble\r\n--B\r\nContent-Type: text/plain\r\n\r\nbody\r\n--B--\r\n"
           "epilogue secret-epilogue\r\n")
    out = rewrite(raw)
    assert b"secret-preamble" not in out and b"secret-epilogue" not in out


def test_redaction_replaces_the_fragment_with_a_marker():
    out = rewrite("From: sam.real@shop.example\r\nSubject: x\r\n\r\nsee https://evil.example/x now\r\n",
                  redactions=(("https://evil.example/x", "[link removed]"),))
    assert b"[link removed]" in out and b"evil.example" not in out


def test_long_lines_after_replacement_are_folded():
    line = ("bob.real@buyer.test " * 49).strip()  # 979 octets, longer once aliases replace it
    out = rewrite(f"From: sam.real@shop.example\r\nSubject: x\r\n\r\n{line}\r\n")
    assert_clean(out)


def test_a_party_registered_with_a_subaddress_is_known_by_its_mailbox_too():
    """Registered as kim.real+market@..., the buyer's base address and its
    other tags name the same mailbox (a black-box probe got both through
    to the seller, from a signature)."""
    parties = Parties((SELLER,), SELLER_ALIAS, "Sam's Shop", ("bob.real+market@buyer.test",), BUYER_ALIAS,
                      "mx.relay.example")
    msg = message_from_bytes(b"From: sam.real@shop.example\r\nSubject: s\r\n\r\nYou wrote from bob.real@buyer.test"
                             b" and BOB.REAL+other@buyer.test; write to bob.real+market@buyer.test.\r\n",
                             policy=policy.default)
    out = rewrite_message(msg, parties, THREAD, ()).data
    body = quopri.decodestring(out.split(b"\r\n\r\n", 1)[1]).lower()  # (To: is the buyer's own address)
    assert b"bob.real" not in body and b"buyer.test" not in body
    assert body.count(BUYER_ALIAS.encode()) == 3


@pytest.mark.parametrize("quote", [
    "On Mon, 3 Nov 2026 at 10:02, sam.real <sam.real@shop.example> wrote:\n> Where is it?",
    "On 11/3/26 10:02 AM, sam.real wrote:\n> Where is it?",
    "<p>On Mon, <b>Sam.Real</b> wrote:</p><blockquote>hi</blockquote><a href=\"#\">x</a>",
])
def test_the_writers_own_local_part_is_no_name_on_the_other_side(quote):
    """A client without a display name quotes `jane.doe.1987 <...> wrote:`
    or `jane.doe.1987 wrote:`: the local part names the writer as the
    address would (a black-box probe got it through both ways).  A local
    part that could be a word ("bob", "sales") is left alone."""
    msg = EmailMessage()
    msg["From"], msg["Subject"] = SELLER, "x"
    msg.set_content(quote, subtype="html" if "<p>" in quote else "plain")
    out = rewrite(msg.as_bytes())
    assert_clean(out)
    assert b"Sam's Shop" in quopri.decodestring(out)


def test_an_address_across_a_flowed_soft_break_is_replaced():
    """RFC 3676 format=flowed with delsp=yes: a line that ends in a space
    joins the next, the space deleted; Apple Mail breaks text without spaces
    (Japanese) that way, inside an address too (a black-box probe)."""
    raw = ("From: sam.real@shop.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\n"
           "\u3054\u6ce8\u6587\u306e\u4ef6\u3067\u3059\u304c\u3001sam.real@sh \r\nop.example \u307e\u3067\r\n")
    out = rewrite(raw.encode())
    assert_clean(out)


def test_a_local_part_that_could_be_a_word_is_left_in_the_text():
    parties = Parties(("sales@shop.example",), SELLER_ALIAS, "Sam's Shop", (BUYER,), BUYER_ALIAS, "mx.relay.example")
    msg = message_from_bytes(b"From: sales@shop.example\r\nSubject: s\r\n\r\nOur sales team wrote to sales@shop.example."
                             b"\r\n", policy=policy.default)
    out = quopri.decodestring(rewrite_message(msg, parties, THREAD, ()).data)
    assert b"Our sales team wrote to " + SELLER_ALIAS.encode() in out


def test_scrubber_hides_the_address_even_inside_longer_ones():
    scrub = Scrubber({"bob@x.example": "alias@relay.example"})
    assert scrub.text("carol@x.example bob@x.exampl bob@x.example") == \
        "carol@x.example bob@x.exampl alias@relay.example"
    assert scrub.text("bob@x.examples") == "alias@relay.examples"
    # A longer address that shows the real one to a reader is rewritten too.
    assert scrub.text("bob@x.example.pdf") == "alias@relay.example.pdf"
    assert scrub.text("jimbob@x.example") == "jimalias@relay.example"
    # A subaddress is the same mailbox; a hyphen is part of another local part.
    assert scrub.text("bob+shop@x.example, BOB+a.b@X.Example") == "alias@relay.example, alias@relay.example"
    assert scrub.text("bob-shop@x.example") == "bob-shop@x.example"


# ----------------------------------------------------------- properties

ADDRESS_LOCAL = st.from_regex(r"[a-z][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(lambda s: ".." not in s)
ADDRESS_DOMAIN = st.from_regex(r"[a-z][a-z0-9-]{0,15}\.(com|org|example|test)", fullmatch=True)
FILLER = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(local=ADDRESS_LOCAL, domain=ADDRESS_DOMAIN, before=FILLER, after=FILLER,
       cte=st.sampled_from(["7bit", "8bit", "quoted-printable", "base64"]),
       subtype=st.sampled_from(["plain", "html"]), in_attachment=st.booleans())
def test_a_real_address_anywhere_never_survives(local, domain, before, after, cte, subtype, in_attachment):
    real = f"{local}@{domain}"
    parties = Parties((real,), SELLER_ALIAS, "Shop", (BUYER,), BUYER_ALIAS, "mx.relay.example")
    msg = EmailMessage()
    msg["From"] = real
    msg["Subject"] = "s"
    body = f"{before} {real} {after}"
    if cte == "7bit" and not body.isascii():
        cte = "8bit"
    msg.set_content(body, subtype=subtype, cte=cte)
    if in_attachment:
        msg.add_attachment(f"EMAIL:{real}\n", subtype="vcard", filename="c.vcf")
    out = rewrite_message(message_from_bytes(msg.as_bytes(), policy=policy.default), parties, THREAD).data
    assert real not in all_decoded_text(out).lower()
    # Idempotent: rewriting the output again changes nothing but ids and boundaries.
    again = rewrite_message(message_from_bytes(out, policy=policy.default), parties, THREAD).data
    assert real not in all_decoded_text(again).lower()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_rewriting_arbitrary_bytes_never_raises_unexpectedly(data):
    msg = message_from_bytes(data, policy=policy.default)
    try:
        rewrite_message(msg, PARTIES, THREAD)
    except RewriteError:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(["a", "t", "A", "T", " ", "\t", "\n", "[", "]", "(", ")", "@", "%", "=", "&", "#",
                                 "&commat;", "&COMMAT", "\uff20", "x", "at", "AT", "\u00a0", "\u2003", "\u0130"]),
                max_size=12).map("".join))
def test_may_hold_address_is_the_at_hint(text):
    from relay.rewrite import may_hold_address
    assert may_hold_address(text) == bool(_AT_HINT.search(text)), repr(text)


# The prefilter as one regex, as it was before the substring tests: the reference.
_AT_HINT = re.compile(r"[@%=\uff20]|&#|&commat|(?:\s|[\[(])at(?:\s|[\])])", re.IGNORECASE)


# ------------------------------------------- structured headers, one parse

_PARAM_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#$&^_.+-", min_size=1, max_size=12)
_PARAM_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(list('abc "\\;=()<>@,:/[]?.\'*%éü€\u00a0\U0001f600')), max_size=30),
    st.sampled_from(["", "utf-8", "report.pdf", "bob@buyer.test", '"quoted"', "a\\b"]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["Content-Type", "Content-Disposition"]),
       main=st.sampled_from(["text/plain", "application/octet-stream", "multipart/mixed", "inline", "attachment"]),
       params=st.lists(st.tuples(_PARAM_NAMES, _PARAM_VALUES), max_size=5))
def test_set_params_equals_the_stdlib_set_param_path(name, main, params):
    from relay.rewrite import OUT_POLICY, _header_line, clean_header_text, set_params

    def stdlib_path() -> bytes:
        holder = EmailMessage(policy=OUT_POLICY)
        holder[name] = main
        for key, value in params:
            holder.set_param(key, value, header=name)
        return str(holder[name]), _header_line(name, str(holder[name]))

    def ours() -> bytes:
        holder = EmailMessage(policy=OUT_POLICY)
        set_params(holder, name, main, params)
        return str(holder[name]), _header_line(name, str(holder[name]))

    params = [(k, clean_header_text(v)) for k, v in params]
    outcomes = []
    for path in (stdlib_path, ours):
        try:
            outcomes.append(path())
        except Exception as exc:  # the same failure (the pipeline makes it a 554) is equal too
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]


def _clean_header_text_char_by_char(value: str) -> str:
    """The definition clean_header_text had before its fast path (a Python step per character)."""
    value = re.sub(r"[\r\n\t\v\f]+", " ", value)
    return "".join(ch for ch in value if ord(ch) >= 32 and ord(ch) != 127).strip()


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(max_codepoint=0x7f),
                                  st.sampled_from(list("\x85\u2028\u00a0é€\U0001f600"))), max_size=40))
def test_clean_header_text_removes_every_control_character_as_before(value):
    from relay.rewrite import clean_header_text

    cleaned = clean_header_text(value)
    assert cleaned == _clean_header_text_char_by_char(value)
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in cleaned)


@pytest.mark.parametrize("name, value", [("Content-Type", "text/plain; charset=\"utf-8\""),
                                         ("Content-Transfer-Encoding", "quoted-printable"),
                                         ("Content-Description", "caf\u00e9 menu"), ("Content-ID", "<a@b>")])
def test_a_reused_part_header_is_the_one_the_stdlib_stores(name, value):
    from relay.rewrite import OUT_POLICY, _header_line, store_header

    ours, theirs = EmailMessage(policy=OUT_POLICY), EmailMessage(policy=OUT_POLICY)
    store_header(ours, name, value)
    store_header(ours, "X-Second", value)  # another holder's copy is not disturbed by this one
    theirs[name] = value
    again = EmailMessage(policy=OUT_POLICY)
    store_header(again, name, value)
    assert str(ours[name]) == str(theirs[name]) == str(again[name])
    assert _header_line(name, str(ours[name])) == _header_line(name, str(theirs[name]))
    assert ours.as_bytes().split(b"\r\nX-Second")[0] == theirs.as_bytes().split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("value", ["text/plain\r\nBcc: x@y", "a\nb", "a\rb"])
def test_a_reused_part_header_refuses_a_line_break_as_the_stdlib_does(value):
    from relay.rewrite import OUT_POLICY, store_header

    with pytest.raises(ValueError):
        EmailMessage(policy=OUT_POLICY)["Content-Type"] = value
    for _ in range(2):  # (a refusal is not remembered as a header)
        with pytest.raises(ValueError):
            store_header(EmailMessage(policy=OUT_POLICY), "Content-Type", value)


@pytest.mark.parametrize("sent, shown", [
    ("Mon, 01 Jan 2024 10:00:00 +0000", "Mon, 01 Jan 2024 10:00:00 GMT"),
    ("Tue, 31 Dec 2024 23:30:05 -0700", "Wed, 01 Jan 2025 06:30:05 GMT"),  # the offset says where they live
    ("Sat, 29 Feb 2020 00:15:00 +0545", "Fri, 28 Feb 2020 18:30:00 GMT"),
    ("29 Feb 2020 00:15:00 -0000", "Sat, 29 Feb 2020 00:15:00 GMT"),  # no weekday; -0000: no zone known
])
def test_the_date_is_shown_in_utc_with_no_trace_of_the_writers_timezone(sent, shown):
    out = rewrite(f"From: {SELLER}\r\nDate: {sent}\r\nSubject: hi\r\n\r\nhi\r\n")
    assert _date_line(out) == shown


def _date_line(out: bytes) -> str:
    """The Date header as written (the stdlib's parser would reformat it)."""
    [line] = [line for line in out.split(b"\r\n") if line.startswith(b"Date: ")]
    return line[len(b"Date: "):].decode()


def test_a_missing_or_unreadable_date_becomes_the_time_of_relaying():
    for header in ("", "Date: the day after tomorrow\r\n"):
        before = datetime.now(timezone.utc).replace(microsecond=0)
        out = rewrite(f"From: {SELLER}\r\n{header}Subject: hi\r\n\r\nhi\r\n")
        shown = _date_line(out)
        assert shown.endswith(" GMT")
        assert before <= parsedate_to_datetime(shown) <= datetime.now(timezone.utc)


@given(st.datetimes(min_value=datetime(1, 1, 1), timezones=st.none()))
def test_the_date_formatter_writes_what_the_stdlib_writes(when):
    assert rfc5322_utc(when) == format_datetime(when.replace(tzinfo=timezone.utc), usegmt=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["\r\n", "\n", "\r", ".", "a", " ", "bob.real@buyer.test", "=0D=0A", "x" * 200]),
                max_size=40),
       st.sampled_from(["text/plain", "text/html"]), st.sampled_from(["7bit", "quoted-printable", "base64"]))
def test_the_rewritten_message_has_only_crlf_line_endings(pieces, subtype, cte):
    """Delivery frames the rewriter's output without counting its line
    endings again (relay.delivery, Delivery.submit): every CR and LF of
    it must be in a CRLF, whatever line endings the body came with."""
    body = "".join(pieces)
    if cte == "base64":
        encoded = base64.encodebytes(body.encode()).decode().replace("\n", "\r\n")
    elif cte == "quoted-printable":
        encoded = quopri.encodestring(body.encode()).decode()
    else:
        encoded = body
    raw = (f"From: {SELLER}\r\nSubject: hi\r\nContent-Type: {subtype}; charset=utf-8\r\n"
           f"Content-Transfer-Encoding: {cte}\r\n\r\n{encoded}")
    try:
        out = rewrite(raw)
    except RewriteError:
        return  # refused: nothing is delivered
    assert crlf_only(out)


@pytest.mark.parametrize("subject", [
    "Question about order 111-2223334-0000002 \u2013 Gr\u00f6\u00dfe? \U0001f642",
    *[("x" * n) + " \u2013 Gr\u00f6\u00dfe? \U0001f642 und noch ein Wort \u00e4" for n in range(20, 110, 9)],
    ("\u65e5\u672c\u8a9e\u306e\u4ef6\u540d " * 6).strip(),
    ("Re: " + "caf\u00e9 " * 30).strip(),
])
def test_a_non_ascii_subject_reads_the_same_after_folding(subject):
    """The stdlib's folding put a space between two encoded words, where RFC
    2047 readers drop it (found by a black-box probe: "Größe? 🙂" arrived as
    "Größe?🙂"); every space of the subject must survive."""
    # (written as one encoded word, as mail clients do: the stdlib's own generator folds it wrong)
    encoded = base64.b64encode(subject.encode()).decode()
    out = rewrite(f"From: {SELLER}\r\nSubject: =?UTF-8?B?{encoded}?=\r\n\r\nhello\r\n")
    assert message_from_bytes(out, policy=policy.default)["Subject"] == subject
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))


@pytest.mark.parametrize("filename", ["R\u00fccksendeformular.docx", "\u0421\u0447\u0451\u0442 \u2116 4521.docx",
                                      "a; b \u00e9.docx"])
def test_a_long_content_type_with_a_non_ascii_filename_keeps_its_type(filename):
    """The stdlib folded the MIME type of a .docx into encoded words when its
    file name was not ASCII (found by a black-box probe)."""
    docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    from email.utils import encode_rfc2231
    name = encode_rfc2231(filename, "utf-8")
    raw = (f"From: {BUYER}\r\nSubject: form\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nattached\r\n"
           f"--BB\r\nContent-Type: {docx}; name*={name}\r\n"
           f"Content-Disposition: attachment; filename*={name}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           f"{base64.b64encode(b'PK not really a zip').decode()}\r\n--BB--\r\n").encode()
    out = rewrite(raw)
    part = list(message_from_bytes(out, policy=policy.default).iter_attachments())[0]
    assert part.get_content_type() == docx and part.get_filename() == filename
    assert b"=?" not in out.split(b"\r\n\r\n", 1)[1].split(b"Content-Disposition")[0]


def test_the_filters_see_an_attachment_name_as_the_reader_does():
    """Attachment names are judged like text (e0dc197), and content filters
    judge text after the parties' own addresses became their aliases
    (CONTRACT, Filters): a seller's invoice named with its own address is no
    third address.  The view gets the name the relayed message carries."""
    raw = (b"From: sam.real@shop.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
           b"--BB\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"invoice from sam.real@shop.example.pdf\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"%PDF-1.4 x") + b"--BB--\r\n")
    result = rewrite_message(parse_message(raw), PARTIES, THREAD)
    [attachment] = result.attachments
    assert attachment.filename == f"invoice from {SELLER_ALIAS}.pdf"
    assert SELLER not in attachment.location
    assert f"invoice from {SELLER_ALIAS}.pdf".encode() in result.data

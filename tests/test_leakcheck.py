"""The leak checker must find every hiding place, and nothing in a clean message.

A checker that cannot fail proves nothing, so each case below hides a
forbidden item in one place a relay could miss and asserts that find_leaks
names that place.
"""

from __future__ import annotations

import base64
import io
import quopri
import zipfile

import pytest

from leakcheck import check_lines, find_leaks, normalise

A = "alice@seller.example"
DOMAIN = "seller.example"
MID = "CAF8kq3xyz0123@mail.seller.example"
HOSTS = ["mail-qk1-f41.seller.example", "198.51.100.7", "2001:db8:5:6::7"]


def wire(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.replace("\n", "\r\n").encode()
    enc = base64.b64encode(data).decode()
    return "\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def leaks(data: bytes) -> list[str]:
    return find_leaks(data, [A], [DOMAIN], [MID], HOSTS)


CLEAN_HEADERS = (
    "From: \"Sam's Shop\" <s-abcdefghijklmnop@relay.example>\n"
    "To: b-qrstuvwxyzabcdef@relay.example\n"
    "Subject: Your order\n"
    "Date: Tue, 04 Mar 2025 10:14:07 +0000\n"
    "Message-ID: <r.0123456789abcdef@mx.relay.example>\n"
    "MIME-Version: 1.0\n"
)


def simple(body: str, ctype: str = "text/plain; charset=utf-8", cte: str = "7bit", headers: str = CLEAN_HEADERS) -> bytes:
    return wire(f"{headers}Content-Type: {ctype}\nContent-Transfer-Encoding: {cte}\n\n{body}")


def mixed(*parts: str, preamble: str = "", epilogue: str = "", headers: str = CLEAN_HEADERS) -> bytes:
    bd = "b1_0123456789"
    out = f'{headers}Content-Type: multipart/mixed; boundary="{bd}"\n\n{preamble}'
    for p in parts:
        out += f"--{bd}\n{p}\n"
    out += f"--{bd}--\n{epilogue}"
    return wire(out)


def png_like(payload: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + payload + bytes(range(255, -1, -1))


# --------------------------------------------------------------- clean input

def clean_message() -> bytes:
    inner = (
        "From: Buyer <b-qrstuvwxyzabcdef@relay.example>\nTo: s-abcdefghijklmnop@relay.example\n"
        "Subject: question\nMessage-ID: <r.fedcba9876543210@mx.relay.example>\n"
        "Content-Type: text/plain; charset=utf-8\n\nIs it blue? Write to carol@third.example.\n"
    )
    html = ('<p>Visit <a href="https://www.seller.example/shop">www.seller.example</a> '
            '&#64; any time, or mailto:<a href="mailto:s-abcdefghijklmnop@relay.example">us</a></p>'
            '<img src="data:image/png;base64,' + base64.b64encode(png_like(b"clean")).decode() + '">')
    return mixed(
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        + quopri.encodestring("Thanks – your order from seller.example ships today. 198.51.100.70 is not a host.\n".encode()).decode(),
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + b64(html),
        "Content-Type: image/png; name=\"photo.png\"\nContent-Disposition: attachment; filename*=utf-8''caf%C3%A9.png\n"
        "Content-ID: <img1@mx.relay.example>\nContent-Transfer-Encoding: base64\n\n" + b64(png_like(b"no address here")),
        "Content-Type: message/rfc822\n\n" + inner,
        "Content-Type: text/calendar; method=REQUEST; charset=utf-8\n\nBEGIN:VCALENDAR\nORGANIZER:mailto:s-abcdefghijklmnop@\n relay.example\nEND:VCALENDAR\n",
        preamble="This is a multi-part message in MIME format.\n",
    )


def test_clean_message_has_no_leaks():
    assert leaks(clean_message()) == []


def test_clean_with_lf_only_line_endings():
    data = clean_message().replace(b"\r\n", b"\n")
    assert leaks(data) == []


# ---------------------------------------------------------- hiding places

ZIP_BUFFER = io.BytesIO()
with zipfile.ZipFile(ZIP_BUFFER, "w", zipfile.ZIP_DEFLATED) as _zf:
    _zf.writestr("[Content_Types].xml", "<Types/>")
    _zf.writestr("docProps/core.xml", f"<cp:coreProperties><dc:creator>{A}</dc:creator></cp:coreProperties>")
DOCX = ZIP_BUFFER.getvalue()

# An OpenPGP user id packet (tag 13) wrapped as ASCII armour: the address only exists in binary.
_PGP_PACKETS = bytes([0x98, 0x33]) + bytes(51) + bytes([0xB4, len(f"Alice <{A}>")]) + f"Alice <{A}>".encode()
PGP_ARMOUR = ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + b64(_PGP_PACKETS) + "\n=AbCd\n"
              "-----END PGP PUBLIC KEY BLOCK-----\n")

CASES = {
    # headers
    "header Reply-To": (simple("hi\n", headers=CLEAN_HEADERS + f"Reply-To: <{A}>\n"), "header Reply-To: address"),
    "RFC 2047 display name": (simple("hi\n", headers=CLEAN_HEADERS + "Sender: =?utf-8?q?alice=40seller=2Eexample?= <s-x@relay.example>\n"),
                              "header Sender: address"),
    "RFC 2047 split words": (simple("hi\n", headers=CLEAN_HEADERS.replace("Subject: Your order", "Subject: =?utf-8?q?for_alice=40sel?=\n =?utf-8?b?bGVyLmV4YW1wbGU=?=")),
                             "header Subject: address"),
    "comment in address": (simple("hi\n", headers=CLEAN_HEADERS.replace("To: b-qrstuvwxyzabcdef@relay.example", f"To: b-qrstuvwxyzabcdef@relay.example ({A})")),
                           "header To: address"),
    "8-bit header": (simple("hi\n", headers=CLEAN_HEADERS + f"X-Note: Grüße von {A}\n"), "header X-Note: address"),
    "mixed case": (simple("hi\n", headers=CLEAN_HEADERS + "Cc: ALICE@SELLER.EXAMPLE\n"), "header Cc: address"),
    "RFC 2231 filename": (mixed("Content-Type: application/pdf\nContent-Disposition: attachment; filename*=utf-8''alice%40seller.example.pdf\n"
                                "Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK"), "part 1 header Content-Disposition: address"),
    "RFC 2231 continuation": (mixed("Content-Type: application/pdf;\n name*0*=utf-8''re%C3%A7u%20alice;\n name*1*=%40seller.example.pdf\n"
                                    "Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK"), "part 1 header Content-Type: address"),
    "encoded word in parameter": (mixed('Content-Type: application/pdf; name="=?utf-8?q?alice=40seller=2Eexample=2Epdf?="\n'
                                        "Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK"), "part 1 header Content-Type: address"),
    "Autocrypt keydata": (simple("hi\n", headers=CLEAN_HEADERS + "Autocrypt: addr=s-x@relay.example; keydata=\n "
                                 + b64(_PGP_PACKETS).replace("\n", "\n ") + "\n"), "header Autocrypt (base64"),
    "domain in Message-ID": (simple("hi\n", headers=CLEAN_HEADERS.replace("r.0123456789abcdef@mx.relay.example", "abc@seller.example")),
                             "header Message-ID: domain seller.example"),
    "id in References": (simple("hi\n", headers=CLEAN_HEADERS + f"References: <x@relay.example>\n <{MID}>\n"), "header References: message-id"),
    "host in Received": (simple("hi\n", headers="Received: from mail-qk1-f41.seller.example ([198.51.100.7])\n by mx.relay.example; Tue, 4 Mar 2025\n" + CLEAN_HEADERS),
                         "header Received: host mail-qk1-f41.seller.example"),
    "IP in X-Originating-IP": (simple("hi\n", headers=CLEAN_HEADERS + "X-Originating-IP: [198.51.100.7]\n"), "header X-Originating-IP: host 198.51.100.7"),
    "IPv6 in X-Forwarded-For": (simple("hi\n", headers=CLEAN_HEADERS + "X-Forwarded-For: 2001:db8:5:6::7\n"), "host 2001:db8:5:6::7"),
    "domain in part Content-ID": (mixed("Content-Type: image/png\nContent-ID: <part1.X.Y@seller.example>\nContent-Transfer-Encoding: base64\n\n"
                                        + b64(png_like(b""))), "part 1 header Content-ID: domain"),
    # bodies
    "plain body": (simple(f"write to {A}\n"), "body text/plain: address"),
    "base64 body": (simple(b64(f"write to {A}\n"), cte="base64"), "body text/plain: address"),
    "quoted-printable soft break": (simple("write to alice@seller.=\nexample please=0A\n", cte="quoted-printable"), "body text/plain: address"),
    "quoted-printable =40": (simple("write to alice=40seller=2Eexample\n", cte="quoted-printable"), "body text/plain: address"),
    "soft break in 7bit text": (simple("write to alice@sel=\nler.example\n"), "body text/plain: address"),
    "zero-width space": (simple("write to alice\u200b@seller.example\n", "text/plain; charset=utf-8", "8bit"), "body text/plain: address"),
    "BOM and word joiner": (simple("write to \ufeffalice@sel\u2060ler.example\n", "text/plain; charset=utf-8", "8bit"), "body text/plain: address"),
    "soft hyphen": (simple("write to alice@sel\u00adler.example\n", "text/plain; charset=utf-8", "8bit"), "body text/plain: address"),
    "fullwidth at": (simple("write to alice\uff20seller.example\n", "text/plain; charset=utf-8", "8bit"), "body text/plain: address"),
    "percent-encoded": (simple("https://t.example/?u=alice%40seller.example\n"), "body text/plain: address"),
    "double percent-encoded": (simple("https://t.example/?u=alice%2540seller.example\n"), "body text/plain: address"),
    "decimal entity": (simple("<p>alice&#64;seller.example</p>\n", "text/html"), "body text/html: address"),
    "hex entity": (simple('<a href="mailto:alice&#x40;seller.example">x</a>\n', "text/html"), "body text/html: address"),
    "named entity": (simple("<p>alice&commat;seller.example</p>\n", "text/html"), "body text/html: address"),
    "double-encoded entity": (simple("<p>alice&amp;#64;seller.example</p>\n", "text/html"), "body text/html: address"),
    "all-entity address": (simple("".join(f"&#{ord(c)};" for c in A) + "\n", "text/html"), "body text/html: address"),
    "wbr inside address": (simple("<p>alice@<wbr>seller.example</p>\n", "text/html"), "body text/html: address"),
    "span inside address": (simple('<p><span class="il">alice</span>@<span>seller</span>.example</p>\n', "text/html"), "body text/html: address"),
    "folded iCalendar line": (simple("BEGIN:VCALENDAR\nORGANIZER;CN=A:mailto:alice@sel\n ler.example\nEND:VCALENDAR\n", "text/calendar"),
                              "body text/calendar: address"),
    "windows-1252 base64 html": (simple(b64(f"<p>Caf\xe9 {A}</p>".encode("cp1252")), "text/html; charset=windows-1252", "base64"),
                                 "body text/html: address"),
    "utf-16 text part": (simple(b64(f"hello {A}".encode("utf-16")), "text/plain; charset=utf-16", "base64"), "body text/plain: address"),
    "uuencoded body": (simple("begin 644 x.txt\n" + __import__("binascii").b2a_uu(f"to {A}".encode()).decode() + "`\nend\n", cte="x-uuencode"),
                       "body text/plain: address"),
    "lying transfer encoding": (simple(b64(f"to {A}"), cte="7bit"), "address"),
    "id in body": (simple(f"> Message-ID: <{MID}>\n"), "body text/plain: message-id"),
    "IP in body": (simple("sent from 198.51.100.7 today\n"), "body text/plain: host 198.51.100.7"),
    # structure
    "preamble": (mixed("Content-Type: text/plain\n\nhi\n", preamble=f"Sent by {A}\n"), "top preamble: address"),
    "epilogue": (mixed("Content-Type: text/plain\n\nhi\n", epilogue=f"unsubscribe {A}\n"), "top epilogue: address"),
    "nested message header": (mixed(f"Content-Type: message/rfc822\n\nFrom: Alice <{A}>\nSubject: x\n\nhi\n"),
                              "part 1.1 (embedded message) header From: address"),
    "nested message domain": (mixed("Content-Type: message/rfc822\n\nReceived: from x by mx.seller.example\nSubject: x\n\nhi\n"),
                              "part 1.1 (embedded message) header Received: domain seller.example"),
    "nested base64 body": (mixed("Content-Type: message/rfc822\n\nSubject: x\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n"
                                 + b64(f"<a href='mailto:{A}'>me</a>")), "part 1.1 (embedded message) text/html: address"),
    "vCard attachment": (mixed("Content-Type: text/vcard; name=a.vcf\nContent-Disposition: attachment\nContent-Transfer-Encoding: base64\n\n"
                               + b64(f"BEGIN:VCARD\nEMAIL;TYPE=work:{A}\nEND:VCARD\n")), "part 1 text/vcard: address"),
    "application/ics attachment": (mixed("Content-Type: application/ics; name=invite.ics\nContent-Transfer-Encoding: base64\n\n"
                                         + b64(f"BEGIN:VCALENDAR\nATTENDEE:mailto:{A.upper()}\nEND:VCALENDAR\n")), "part 1 application/ics: address"),
    "binary attachment ascii": (mixed("Content-Type: image/png\nContent-Transfer-Encoding: base64\n\n" + b64(png_like(A.encode()))),
                                "part 1 image/png: address"),
    "binary attachment utf-16": (mixed("Content-Type: application/ms-tnef\nContent-Transfer-Encoding: base64\n\n"
                                       + b64(b"\x78\x9f\x3e\x22" + A.upper().encode("utf-16-le") + b"\0\0")), "part 1 application/ms-tnef: address"),
    "zip member": (mixed("Content-Type: application/vnd.openxmlformats-officedocument.wordprocessingml.document\n"
                         "Content-Transfer-Encoding: base64\n\n" + b64(DOCX)), "zip:docProps/core.xml: address"),
    "PGP armour in text": (simple("Here is my key:\n\n" + PGP_ARMOUR), "(PGP armour): address"),
    "application/pgp-keys": (mixed("Content-Type: application/pgp-keys; name=key.asc\nContent-Transfer-Encoding: quoted-printable\n\n"
                                   + quopri.encodestring(PGP_ARMOUR.encode()).decode()), "part 1 application/pgp-keys (PGP armour): address"),
    "data URI": (simple('<img src="data:text/plain;base64,' + base64.b64encode(f"from {A}".encode()).decode() + '">\n', "text/html"),
                 "(data: URI): address"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_finds_leak(name):
    data, expected = CASES[name]
    found = leaks(data)
    assert any(expected in line for line in found), f"{name}: expected {expected!r} in {found}"


def test_domain_in_body_is_not_a_header_leak():
    found = leaks(simple("Visit https://www.seller.example/ for more\n"))
    assert found == []


def test_ip_boundaries():
    assert leaks(simple("counter 198.51.100.70 and 1198.51.100.7 and 198.51.100.7.5\n")) == []
    assert leaks(simple("[198.51.100.7]\n"))


def test_host_needs_whole_token():
    assert leaks(simple("xmail-qk1-f41.seller.example.org\n", headers=CLEAN_HEADERS)) == []
    assert leaks(simple("hi\n", headers=CLEAN_HEADERS + "X-Host: MAIL-QK1-F41.SELLER.EXAMPLE.\n"))


def test_reports_every_place_not_just_the_first():
    data = mixed(f"Content-Type: text/plain\n\n{A}\n", f"Content-Type: text/html\n\n<p>{A}</p>\n",
                 headers=CLEAN_HEADERS + f"Reply-To: {A}\nSender: {A}\n")
    found = leaks(data)
    for where in ("header Reply-To", "header Sender", "part 1 text/plain", "part 2 text/html"):
        assert any(line.startswith(where + ":") for line in found), (where, found)


def test_searches_several_items_of_each_kind():
    data = simple("to bob@buyer.example and alice@seller.example\n")
    found = find_leaks(data, ["alice@seller.example", "bob@buyer.example"], [], [], [])
    assert [line.split(" near ")[0] for line in found] == ["body text/plain: address alice@seller.example",
                                                           "body text/plain: address bob@buyer.example"]


# ------------------------------------------------------------- raw lines

def test_line_length_limit():
    ok = simple("x" * 998 + "\n")
    assert check_lines(ok) == []
    bad = simple("x" * 999 + "\n")
    assert any("999 octets" in p for p in check_lines(bad))
    assert any("999 octets" in p for p in leaks(bad))


def test_bare_lf_in_crlf_data():
    data = simple("one\n") + b"two\nthree\r\n"
    assert any("bare CR or LF" in p for p in check_lines(data))


def test_bare_cr_in_crlf_data():
    data = simple("one\n") + b"two\rthree\r\n"
    assert any("bare CR or LF" in p for p in check_lines(data))


def test_cr_in_lf_data():
    data = simple("one\n").replace(b"\r\n", b"\n") + b"two\rthree\n"
    assert check_lines(data) == ["raw: bare CR in LF data"]


def test_lf_only_data_is_consistent():
    assert check_lines(b"Subject: x\n\nbody\n") == []


def test_normalise_spellings():
    for spelling in ("alice&#64;seller.example", "alice%40seller.example", "ALICE@SELLER.EXAMPLE",
                     "alice\u200b@seller.example", "alice&amp;#x40;seller.example", "alice\uff20seller.example"):
        assert A in normalise(spelling), spelling

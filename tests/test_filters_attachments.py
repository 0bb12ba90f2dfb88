"""attachment_too_large and attachment_type, on views and on real MIME messages."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage

import pytest

from relay.filters.attachments import AttachmentTooLarge, AttachmentType, sniff
from relay.filters.base import BUYER_TO_SELLER, SELLER_TO_BUYER, Attachment, FilterContext, MessageView
from relay.filters.chain import Chain
from relay.filters.settings import FilterSettings

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 100
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
GIF = b"GIF89a" + b"\x00" * 100
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF\n"
TXT = "Größe: 42 cm\nMerci !\n".encode()
DOC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64 + "WordDocument".encode("utf-16-le") + b"\x00" * 64
XLS = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64 + "Workbook".encode("utf-16-le") + b"\x00" * 64
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 100
ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 100
RAR = b"Rar!\x1a\x07\x01\x00" + b"\x00" * 50
SEVENZ = b"7z\xbc\xaf\x27\x1c" + b"\x00" * 50
GZ = b"\x1f\x8b\x08\x00" + b"\x00" * 50


def zipped(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


DOCX = zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
DOCM = zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>", "word/vbaProject.bin": b"x"})
DOCX_EXE = zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>", "word/embeddings/a.exe": EXE})
ZIP = zipped({"invoice.pdf": PDF})
NESTED = zipped({"inner.zip": ZIP})

CTX = FilterContext(direction=SELLER_TO_BUYER)
TYPE = AttachmentType(FilterSettings())


def att(filename: str | None, ctype: str, data: bytes) -> Attachment:
    return Attachment(f"attachment {filename or ctype}", filename, ctype, data)


def judged(*attachments: Attachment) -> list[str]:
    return [f.fragment for f in TYPE.check(MessageView(subject="x", attachments=attachments), CTX)]


@pytest.mark.parametrize("filename, ctype, data", [
    ("photo.jpg", "image/jpeg", JPEG),
    ("photo.JPEG", "image/jpeg", JPEG),
    ("scan.png", "image/png", PNG),
    ("anim.gif", "image/gif", GIF),
    ("invoice.pdf", "application/pdf", PDF),
    ("invoice.pdf", "application/octet-stream", PDF),  # octet-stream claims nothing
    ("notes.txt", "text/plain", TXT),
    ("letter.doc", "application/msword", DOC),
    ("letter.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", DOCX),
    (None, "image/png", PNG),  # inline image without a file name
])
def test_allowed_types(filename, ctype, data):
    assert judged(att(filename, ctype, data)) == []


@pytest.mark.parametrize("filename, ctype, data", [
    ("setup.exe", "application/octet-stream", EXE),
    ("invoice.pdf", "application/pdf", EXE),  # an executable dressed as a PDF
    ("photo.jpg", "image/jpeg", ELF),
    ("invoice.pdf.exe", "application/pdf", PDF),  # double extension
    ("run.js", "text/plain", b"alert(1)"),
    ("run.bat", "text/plain", b"echo hi"),
    ("script.vbs", "text/plain", b"MsgBox 1"),
    ("screen.scr", "application/octet-stream", EXE),
    ("install.sh", "text/plain", b"#!/bin/sh\nrm -rf /\n"),
    ("photos.zip", "application/zip", ZIP),
    ("nested.zip", "application/zip", NESTED),
    ("letter.docx", "application/zip", ZIP),  # a zip named docx
    ("macro.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", DOCM),
    ("embed.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", DOCX_EXE),
    ("files.rar", "application/x-rar", RAR),
    ("files.7z", "application/x-7z-compressed", SEVENZ),
    ("files.gz", "application/gzip", GZ),
    ("sheet.doc", "application/msword", XLS),  # OLE2 but not a Word document
    ("photo.png", "image/jpeg", PNG),  # declared type disagrees
    ("photo.jpg", "image/png", PNG),  # extension disagrees
    ("page.html", "text/html", b"<html></html>"),
    ("image.svg", "image/svg+xml", b"<svg/>"),
    ("data.csv", "text/csv", b"a,b\n1,2\n"),
    ("contact.vcf", "text/vcard", b"BEGIN:VCARD\nEND:VCARD\n"),
    ("notes.txt", "text/plain", b"abc\x00\x01\x02"),
    (None, "application/octet-stream", EXE),
])
def test_rejected_types(filename, ctype, data):
    findings = TYPE.check(MessageView(subject="x", attachments=(att(filename, ctype, data),)), CTX)
    assert [f.code for f in findings] == ["attachment_type"]
    assert findings[0].fragment == (filename or ctype)
    assert findings[0].sentence.endswith(".")


@pytest.mark.parametrize("filename, ctype, data, named", [
    ("contact.vcf", "text/vcard", b"BEGIN:VCARD\nEND:VCARD\n", ".vcf"),
    ("invite.ics", "text/calendar", b"BEGIN:VCALENDAR\nEND:VCALENDAR\n", ".ics"),
    (None, "text/calendar", b"BEGIN:VCALENDAR\nEND:VCALENDAR\n", "text/calendar"),
])
def test_a_type_not_allowed_is_named_as_such_not_as_a_mismatch(filename, ctype, data, named):
    """A vCard is text inside: it was refused as "content (plain text) does
    not match its file name (.vcf)", which tells the writer to rename it
    (a black-box probe); the type itself is what is not allowed."""
    (finding,) = TYPE.check(MessageView(subject="x", attachments=(att(filename, ctype, data),)), CTX)
    assert finding.sentence.startswith(f"{named} files cannot be attached"), finding.sentence
    assert "does not match" not in finding.sentence


def test_allowed_types_setting_narrows():
    only_pdf = AttachmentType(FilterSettings(attachment_types=("pdf",)))
    view = MessageView(subject="x",
                       attachments=(att("photo.jpg", "image/jpeg", JPEG), att("a.pdf", "application/pdf", PDF)))
    assert [f.fragment for f in only_pdf.check(view, CTX)] == ["photo.jpg"]


def test_detached_signature_is_not_judged():
    assert judged(att("smime.p7s", "application/pkcs7-signature", b"\x30\x82\x05")) == []


def test_sniff_kinds():
    assert [sniff(d) for d in (JPEG, PNG, GIF, PDF, TXT, DOC, DOCX, EXE, ZIP, b"")] == [
        "jpeg", "png", "gif", "pdf", "txt", "doc", "docx", "executable", "archive", "txt"]


def test_too_large_counts_decoded_bytes_of_all_attachments():
    flt = AttachmentTooLarge(FilterSettings(attachment_max_bytes=1000))
    small = MessageView(subject="x", attachments=(att("a.pdf", "application/pdf", b"x" * 500),) * 2)
    big = MessageView(subject="x", attachments=(att("a.pdf", "application/pdf", b"x" * 501),) * 2)
    assert flt.check(small, CTX) == []
    [finding] = flt.check(big, CTX)
    assert finding.code == "attachment_too_large" and finding.fragment == "1002 bytes"


def test_too_many_attachments_is_too_large():
    flt = AttachmentTooLarge(FilterSettings(attachment_max_count=5))
    five = MessageView(subject="x", attachments=(att("a.png", "image/png", PNG),) * 5)
    six = MessageView(subject="x", attachments=(att("a.png", "image/png", PNG),) * 6)
    assert flt.check(five, CTX) == []
    assert [f.fragment for f in flt.check(six, CTX)] == ["6 attachments"]


def test_default_limit_is_ten_mib():
    flt = AttachmentTooLarge(FilterSettings())
    at_limit = MessageView(subject="x", attachments=(att("a.pdf", "application/pdf", b"x" * (10 * 1024 * 1024)),))
    over = MessageView(subject="x", attachments=(att("a.pdf", "application/pdf", b"x" * (10 * 1024 * 1024 + 1)),))
    assert flt.check(at_limit, CTX) == [] and flt.check(over, CTX)


def mime_with(filename: str, ctype: str, data: bytes, cte: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "files"
    msg.set_content("See attached.")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename, cte=cte)
    return msg


@pytest.mark.parametrize("direction", [SELLER_TO_BUYER, BUYER_TO_SELLER])
def test_chain_rejects_executable_in_both_directions(direction):
    view = MessageView.from_message(mime_with("invoice.exe", "application/octet-stream", EXE))
    result = Chain(FilterSettings()).run(view, FilterContext(direction=direction, buyer_has_written=True))
    assert result.rejection is not None and result.rejection.code == "attachment_type"
    assert result.rejection.location == "attachment invoice.exe"


def test_chain_judges_decoded_size_not_base64_size():
    data = b"%PDF-1.4\n" + b"x" * (8 * 1024 * 1024)  # ~10.7 MiB once base64-encoded
    view = MessageView.from_message(mime_with("big.pdf", "application/pdf", data))
    result = Chain(FilterSettings()).run(view, FilterContext(direction=BUYER_TO_SELLER))
    assert result.findings == ()


def test_inline_related_image_is_an_attachment():
    msg = EmailMessage()
    msg["Subject"] = "logo"
    msg.set_content("plain")
    msg.add_alternative('<p>hi</p><img src="cid:logo">', subtype="html")
    msg.get_payload()[1].add_related(EXE, maintype="image", subtype="png", cid="<logo>")
    view = MessageView.from_message(msg)
    assert any(a.content_type == "image/png" for a in view.attachments)
    result = Chain(FilterSettings()).run(view, FilterContext(direction=BUYER_TO_SELLER))
    assert result.rejection is not None and result.rejection.code == "attachment_type"


def test_forwarded_message_attachments_are_judged():
    inner = mime_with("tool.exe", "application/octet-stream", EXE)
    outer = EmailMessage()
    outer["Subject"] = "Fwd"
    outer.set_content("forwarding")
    outer.add_attachment(inner)
    view = MessageView.from_message(outer)
    result = Chain(FilterSettings()).run(view, FilterContext(direction=BUYER_TO_SELLER))
    assert result.rejection is not None and result.rejection.code == "attachment_type"


@pytest.mark.parametrize("limit, total, words", [
    (10 * 1024 * 1024, 10 * 1024 * 1024 + 1, ("10,485,761 bytes", "10 MiB (10,485,760 bytes)")),
    (1000, 1002, ("1,002 bytes", "1,000 bytes")),
    (2 * 1024 * 1024, 3 * 1024 * 1024, ("3.0 MiB", "2 MiB")),
])
def test_the_size_refusal_tells_sizes_that_differ(limit, total, words):
    """"10.0 MiB, above the limit of 10.0 MiB" told the seller nothing (found
    by a black-box probe): sizes that would read the same are given in bytes."""
    flt = AttachmentTooLarge(FilterSettings(attachment_max_bytes=limit))
    [finding] = flt.check(MessageView(subject="x", attachments=(att("a.pdf", "application/pdf", b"x" * total),)), CTX)
    for word in words:
        assert word in finding.sentence, finding.sentence


def test_the_count_refusal_says_attachment_for_one():
    flt = AttachmentTooLarge(FilterSettings(attachment_max_count=1))
    two = MessageView(subject="x", attachments=(att("a.png", "image/png", PNG),) * 2)
    [finding] = flt.check(two, CTX)
    assert "at most 1 attachment and" in finding.sentence, finding.sentence


def test_one_file_of_every_allowed_type_in_one_message_is_not_too_many():
    """The contract's limits are 10 MiB in total and the allowed types; a
    message with one file of each of the seven types, or a buyer's six
    photos, or an Outlook signature's inline logos beside them, is ordinary
    mail (found by a black-box probe: more than 5 files were refused)."""
    flt = AttachmentTooLarge(FilterSettings())
    seven = MessageView(subject="x", attachments=(att("a.png", "image/png", PNG),) * 7)
    twenty = MessageView(subject="x", attachments=(att("a.png", "image/png", PNG),) * 20)
    assert flt.check(seven, CTX) == [] and flt.check(twenty, CTX) == []
    assert flt.check(MessageView(subject="x", attachments=(att("a.png", "image/png", PNG),) * 21), CTX)

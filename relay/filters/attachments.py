"""`attachment_too_large` and `attachment_type`, for mail in both directions.

Size: the decoded bytes of all attachments together above
settings.attachment_max_bytes (10 MiB).  Count: more than
settings.attachment_max_count (20) attachments is reported as
`attachment_too_large` too (the contract has no separate code; "too much
attached" is what the buyer or seller has to fix, by sending fewer files).  Inline
images (multipart/related parts with a Content-ID) are attachments and count.

Type: each attachment is judged three ways, and all three must name the same
allowed kind (settings.attachment_types: jpeg, png, gif, pdf, txt, doc, docx):

- content sniffing (magic bytes): JPEG FF D8 FF, PNG, GIF87a/89a, %PDF-, OLE2
  D0 CF 11 E0 holding a WordDocument stream for .doc, ZIP holding word/document.xml
  for .docx, and for text: no NUL and valid UTF-8 (or 8-bit text without control
  characters);
- the declared Content-Type (application/octet-stream and the like claim nothing
  and are neutral);
- the file name's extension (no file name, or no extension, is neutral).

Rejected whatever the names say: executables (MZ, ELF, Mach-O, #! scripts),
archives (zip, rar, 7z, gzip, bzip2, xz, tar, cab), Word files with macros (.doc
with a VBA project, .docx with vbaProject.bin or a macro-enabled content type)
and .docx files that embed executables, archives or OLE packages.  Detached
signatures (application/pkcs7-signature, application/pgp-signature) are not
files a person sends and are not judged by type.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

from relay.filters.base import BOTH_DIRECTIONS, Attachment, FilterContext, Finding, MessageView
from relay.filters.settings import FilterSettings

KIND_NAMES = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "pdf": "PDF", "txt": "plain text", "doc": "Word (.doc)",
              "docx": "Word (.docx)"}
_EXTENSIONS = {
    "jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "png": "png", "gif": "gif", "pdf": "pdf",
    "txt": "txt", "text": "txt", "doc": "doc", "docx": "docx",
}
_EXECUTABLE_EXT = frozenset("""
exe com scr bat cmd pif msi msp mst js jse vbs vbe wsf wsc wsh ps1 psm1 psc1 hta jar lnk reg cpl sh bash
app dmg pkg apk ipa deb rpm run bin dll sys drv ocx scf url inf iso img vhd vhdx chm gadget application
msc ade adp cab appx appxbundle msix xbap py pl rb php
""".split())
_ARCHIVE_EXT = frozenset("zip rar 7z gz tgz tar bz2 tbz xz txz lz lzh lha arj ace z zipx cab iso".split())
_CONTENT_TYPES = {
    "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg", "image/png": "png", "image/x-png": "png",
    "image/gif": "gif", "application/pdf": "pdf", "application/x-pdf": "pdf", "text/plain": "txt",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
}
_NEUTRAL_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/x-download",
                            "application/download", "application/force-download", "application/unknown"})
_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature",
                              "application/pgp-signature"})

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_WORD_STREAM = "WordDocument".encode("utf-16-le")
_VBA_STREAM = "_VBA_PROJECT".encode("utf-16-le")
_MAGIC: list[tuple[bytes, str]] = [
    (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"%PDF-", "pdf"), (b"MZ", "executable"), (b"\x7fELF", "executable"), (b"\xca\xfe\xba\xbe", "executable"),
    (b"\xfe\xed\xfa\xce", "executable"), (b"\xfe\xed\xfa\xcf", "executable"), (b"\xce\xfa\xed\xfe", "executable"),
    (b"\xcf\xfa\xed\xfe", "executable"), (b"#!", "script"), (b"Rar!\x1a\x07", "archive"),
    (b"7z\xbc\xaf\x27\x1c", "archive"), (b"\x1f\x8b", "archive"), (b"BZh", "archive"),
    (b"\xfd7zXZ\x00", "archive"), (b"MSCF", "archive"), (b"\x28\xb5\x2f\xfd", "archive"),
    (b"\x60\xea", "archive"), (b"LZIP", "archive"),
]
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_SAFE_EMBEDDINGS = re.compile(r"\.(?:xlsx|docx|pptx|png|jpe?g|gif|emf|wmf|bmp|tiff?|svg)$", re.IGNORECASE)


def _zip_kind(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            if "word/document.xml" not in names or "[Content_Types].xml" not in names:
                return "archive"
            for name in names:
                lower = name.lower()
                ext = lower.rsplit(".", 1)[-1] if "." in lower.rsplit("/", 1)[-1] else ""
                if lower.endswith("vbaproject.bin") or ext in _EXECUTABLE_EXT or ext in _ARCHIVE_EXT:
                    return "macro or embedded file"
                if "/embeddings/" in lower and not _SAFE_EMBEDDINGS.search(lower):
                    return "macro or embedded file"
            with zf.open("[Content_Types].xml") as fh:
                if b"macroenabled" in fh.read(1 << 20).lower():
                    return "macro or embedded file"
            return "docx"
    except Exception:
        return "archive"


def sniff(data: bytes) -> str:
    """The kind of file the bytes are, whatever its name says."""
    if data.startswith(_OLE2):
        if _VBA_STREAM in data:
            return "macro or embedded file"
        return "doc" if _WORD_STREAM in data else "OLE2 container"
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return _zip_kind(data)
    kind = kind_from_head(data)
    if kind is not None:
        return kind
    if len(data) > 262 and data[257:262] == b"ustar":
        return "archive"
    if b"\x00" in data:
        return "binary"
    try:
        data.decode("utf-8")
        return "txt"
    except UnicodeDecodeError:
        return "binary" if _CONTROL.search(data) else "txt"


def kind_from_head(head: bytes) -> str | None:
    """The kind named by the file's first octets (at most 8 are read) when
    they alone decide what `sniff` says of any file that starts with them:
    a PDF, JPEG, PNG or GIF, an executable, an archive other than ZIP.  None
    for the rest (ZIP and OLE2 files are judged by what is inside them, text
    by every octet).  The rewriter keeps only the first octets of such a
    large attachment (relay.rewrite)."""
    if head.startswith(_OLE2) or head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def extension_kind(filename: str | None) -> str | None:
    """Kind named by the extension; None when there is no name or no extension."""
    if not filename:
        return None
    base = filename.strip().strip('"').rsplit("/", 1)[-1].rsplit("\\", 1)[-1].rstrip(". ")
    if "." not in base:
        return None
    ext = base.rsplit(".", 1)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if ext in _EXECUTABLE_EXT:
        return "executable"
    if ext in _ARCHIVE_EXT:
        return "archive"
    return f".{ext}"


def declared_kind(content_type: str) -> str | None:
    ctype = (content_type or "").lower().strip()
    if not ctype or ctype in _NEUTRAL_TYPES:
        return None
    return _CONTENT_TYPES.get(ctype, ctype)


def _describe(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def judge(att: Attachment, allowed: tuple[str, ...]) -> str | None:
    """None if the attachment is allowed, else a sentence saying why not."""
    allowed_text = ", ".join(_describe(k) for k in allowed) or "none"
    sniffed = sniff(att.data)
    by_name = extension_kind(att.filename)
    by_type = declared_kind(att.content_type)
    if sniffed not in allowed:
        return (f"{_describe(sniffed).capitalize()} files cannot be attached; allowed attachments are "
                f"{allowed_text}.")
    for claim, what in ((by_name, "file name"), (by_type, "declared type")):
        if claim is not None and claim != sniffed and claim not in allowed:
            # (a vCard or a calendar is text inside: what is refused is its type, not a disguise)
            named = _describe(claim)
            named = named if named.startswith(".") or "/" in named else named[:1].upper() + named[1:]
            return f"{named} files cannot be attached; allowed attachments are {allowed_text}."
        if claim is not None and claim != sniffed:
            return (f"The attachment's content ({_describe(sniffed)}) does not match its {what} "
                    f"({_describe(claim)}); send the file with its real name and type. Allowed attachments "
                    f"are {allowed_text}.")
    return None


@dataclass
class AttachmentTooLarge:
    settings: FilterSettings
    name: str = "attachment_too_large"
    directions: frozenset[str] = BOTH_DIRECTIONS

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        findings: list[Finding] = []
        total = sum(a.size for a in view.attachments)
        limit = self.settings.attachment_max_bytes
        if total > limit:
            total_text, limit_text = _sizes(total, limit)
            findings.append(Finding(
                "attachment_too_large", f"{total} bytes", "attachments",
                f"Attachments total {total_text}, above the limit of {limit_text}; send fewer or smaller files."))
        count, max_count = len(view.attachments), self.settings.attachment_max_count
        if count > max_count:
            findings.append(Finding(
                "attachment_too_large", f"{count} attachments", "attachments",
                f"A message may carry at most {max_count} attachment{'' if max_count == 1 else 's'} and this one "
                f"has {count}; send the others in a separate message."))
        return findings


def _sizes(total: int, limit: int) -> tuple[str, str]:
    """The total and the limit as a seller reads them: MiB, or bytes where
    MiB would make them look the same ("10.0 MiB, above the limit of 10.0 MiB")."""
    mib = 1024 * 1024

    def size(n: int) -> str:
        if n % mib == 0:
            return f"{n // mib} MiB"
        return f"{n / mib:.1f} MiB" if n >= mib else f"{n:,} bytes"

    if total >= mib and round(total / mib, 1) == round(limit / mib, 1):
        return f"{total:,} bytes", f"{size(limit)} ({limit:,} bytes)" if limit >= mib else f"{limit:,} bytes"
    return (f"{total / mib:.1f} MiB" if total >= mib else f"{total:,} bytes"), size(limit)


@dataclass
class AttachmentType:
    settings: FilterSettings
    name: str = "attachment_type"
    directions: frozenset[str] = BOTH_DIRECTIONS

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        findings: list[Finding] = []
        for att in view.attachments:
            if (att.content_type or "").lower() in _SIGNATURE_TYPES:
                continue
            reason = judge(att, self.settings.attachment_types)
            if reason:
                findings.append(Finding("attachment_type", att.filename or att.content_type, att.location, reason))
        return findings

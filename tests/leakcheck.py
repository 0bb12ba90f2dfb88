"""The leak checker: does anything identifying survive in a relayed message?

`find_leaks(data, forbidden_addresses, forbidden_header_domains, forbidden_ids,
forbidden_hosts)` parses a delivered message, decodes every level of it and
returns one line per place where a forbidden item still appears, e.g.
"header Reply-To: address alice@example.org" or "part 2 text/html: ...".
An empty list means clean.

What is decoded before searching (THREATS #45-56):
- headers at every MIME level, raw and decoded: RFC 2047 encoded words,
  RFC 2231 parameters (charset, language, continuations), 8-bit bytes;
- every part's body in its transfer encoding (base64, quoted-printable,
  uuencode) and charset; message/rfc822 parts are walked as messages, with
  their own headers; preambles and epilogues are searched too;
- non-text parts are searched as bytes (ASCII, UTF-16 LE/BE) and as text;
  ZIP containers (docx, xlsx, odt) member by member; base64 blobs found inside
  text (PGP armour, Autocrypt keydata, data: URIs) are decoded and searched;
- every text is normalised: NFKC, zero-width characters and the soft hyphen
  removed, HTML entities and %-escapes decoded (repeatedly, for double
  encoding), casefolded; it is searched as is, with quoted-printable soft
  breaks and escapes undone, with HTML tags removed (an address split by
  `<wbr>` or `<span>`), and with all whitespace removed (an address folded
  across lines).

Which item is searched where:
- forbidden_addresses: everywhere;
- forbidden_header_domains: in every header, at every level (a domain in a
  body is allowed: a shop may name its web site);
- forbidden_ids (Message-IDs, with or without <>): everywhere;
- forbidden_hosts (host names and IP literals): everywhere, as whole tokens.

It also checks the raw bytes: no line over 998 octets (RFC 5322 section 2.1.1)
and consistent line endings (all CRLF when any CRLF is used, no bare CR or LF
mixed in; all LF otherwise).
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import quopri
import re
import unicodedata
import urllib.parse
import zipfile
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Iterable, Iterator

MAX_LINE = 998

# Invisible characters that split an address without showing: zero-width
# space/non-joiner/joiner, word joiner, BOM, soft hyphen, and relatives.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u2061\u2062\u2063\u2064\u180e\u034f"
_INVISIBLE_TABLE = dict.fromkeys(map(ord, INVISIBLE), None)

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_TAG = re.compile(r"<[^<>]{0,2000}>")
_WS = re.compile(r"\s+")
_QP_SOFT = re.compile(r"=\r?\n")
_ARMOR = re.compile(r"-----BEGIN PGP [A-Z ]+-----\s*\n(.*?)-----END PGP [A-Z ]+-----", re.DOTALL)
_B64_RUN = re.compile(r"(?:[A-Za-z0-9+/]{4}){6,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_B64_LINES = re.compile(r"(?:^[ \t]*[A-Za-z0-9+/=]{16,}[ \t]*\r?\n){2,}", re.MULTILINE)
_DATA_URI = re.compile(r"base64,([A-Za-z0-9+/=\s]{16,})", re.IGNORECASE)

TEXTUAL_APPLICATION = {
    "application/ics", "application/vcard", "application/x-vcard", "application/json", "application/xml",
    "application/pgp-keys", "application/pgp-signature", "application/x-sh", "application/javascript",
}


# ------------------------------------------------------------- normalising

def normalise(text: str) -> str:
    """Fold away the spellings that hide an address; the result is casefolded.

    NFKC (fullwidth @), invisible characters, HTML entities (&#64; &#x40;
    &commat;, also double-encoded), %-escapes (%40, %2540).
    """
    t = unicodedata.normalize("NFKC", text)
    for _ in range(4):
        prev = t
        t = html.unescape(t)
        t = urllib.parse.unquote(t, errors="replace")
        t = t.translate(_INVISIBLE_TABLE)
        if t == prev:
            break
    return t.casefold()


def decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded words wherever they are (also in bodies)."""

    def one(m: re.Match) -> str:
        try:
            return str(make_header(decode_header(m.group(0))))
        except Exception:
            return m.group(0)

    return _ENCODED_WORD.sub(one, text)


def variants(text: str) -> list[tuple[str, str]]:
    """(label, normalised text) for every view in which an item is searched."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(label: str, value: str) -> None:
        if value not in seen:
            seen.add(value)
            out.append((label, value))

    base = normalise(text)
    add("", base)
    if "=?" in text:
        add("encoded words", normalise(decode_encoded_words(text)))
    if "=" in text:
        joined = _QP_SOFT.sub("", text)
        add("soft line breaks", normalise(joined))
        try:
            qpd = quopri.decodestring(joined.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
            add("quoted-printable", normalise(qpd))
        except (ValueError, UnicodeError):
            pass
    if "<" in text:
        add("tags removed", normalise(_TAG.sub("", html.unescape(text).replace("&lt;", "<"))))
        add("tags removed", normalise(_TAG.sub("", text)))
    squeezed = _WS.sub("", _QP_SOFT.sub("", _TAG.sub("", text)))
    add("whitespace removed", normalise(squeezed))
    return out


# ---------------------------------------------------------------- matching

class _Items:
    def __init__(self, addresses, domains, ids, hosts):
        self.addresses = sorted({a.strip().casefold() for a in addresses if a and a.strip()})
        self.domains = sorted({d.strip().strip(".").casefold() for d in domains if d and d.strip()})
        self.ids = sorted({i.strip().strip("<>").casefold() for i in ids if i and i.strip("<> ")})
        self.hosts = sorted({h.strip().strip("[]").casefold() for h in hosts if h and h.strip("[] ")})
        self.domain_res = [(d, re.compile(r"(?<![a-z0-9-])" + re.escape(d) + r"(?![a-z0-9-])")) for d in self.domains]
        self.host_res = [(h, _token_re(h)) for h in self.hosts]
        self.address_bytes = [(a, [a.encode("utf-8"), a.encode("utf-16-le"), a.encode("utf-16-be")])
                              for a in self.addresses if a.isascii()]
        self.id_bytes = [(i, [i.encode("utf-8"), i.encode("utf-16-le")]) for i in self.ids if i.isascii()]
        self.host_bytes = [(h, re.compile(rb"(?<![A-Za-z0-9.\-])" + re.escape(h.encode()) + rb"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])"))
                           for h in self.hosts if h.isascii()]


def _token_re(host: str) -> re.Pattern:
    if re.fullmatch(r"[0-9.]+", host):  # IPv4: not part of a longer number
        return re.compile(r"(?<![0-9.])" + re.escape(host) + r"(?![0-9]|\.[0-9])")
    if ":" in host:  # IPv6
        return re.compile(r"(?<![0-9a-f:])" + re.escape(host) + r"(?![0-9a-f:])")
    return re.compile(r"(?<![a-z0-9.-])" + re.escape(host) + r"(?![a-z0-9-]|\.[a-z0-9])")


class _Report:
    def __init__(self):
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self.items_found: set[tuple[str, str]] = set()

    def add(self, where: str, kind: str, item: str, how: str = "", context: str = "") -> None:
        line = f"{where}: {kind} {item}" + (f" ({how})" if how else "")
        if context:
            line += f" near {context!r}"
        key = f"{where}|{kind}|{item}"
        self.items_found.add((kind, item))
        if key not in self._seen:
            self._seen.add(key)
            self.lines.append(line)


def _scan_text(text: str, where: str, items: _Items, report: _Report, *, header: bool, note: str = "",
               blobs: bool = True) -> None:
    if not text:
        return
    for label, v in variants(text):
        squeezed = label == "whitespace removed"
        label = ", ".join(x for x in (note, label) if x)
        for a in items.addresses:
            if a in v:
                report.add(where, "address", a, label, _context(v, v.find(a), len(a)))
        for i in items.ids:
            if i in v:
                report.add(where, "message-id", i, label, _context(v, v.find(i), len(i)))
        if not squeezed:  # host and domain tokens need their boundaries
            for h, rx in items.host_res:
                m = rx.search(v)
                if m:
                    report.add(where, "host", h, label, _context(v, m.start(), len(h)))
            if header:
                for d, rx in items.domain_res:
                    m = rx.search(v)
                    if m:
                        report.add(where, "domain", d, label, _context(v, m.start(), len(d)))
    if blobs:
        for blob_where, blob in _base64_blobs(text):
            _scan_bytes(blob, f"{where} {blob_where}", items, report, as_text=True)


def _context(text: str, start: int, length: int, width: int = 30) -> str:
    """A short excerpt of the normalised text around a finding."""
    excerpt = text[max(0, start - width):start + length + width]
    return re.sub(r"\s+", " ", excerpt)


def _scan_bytes(data: bytes, where: str, items: _Items, report: _Report, *, as_text: bool, depth: int = 0) -> None:
    if not data:
        return
    low = data.lower()
    for a, forms in items.address_bytes:
        if any(f in low for f in forms):
            report.add(where, "address", a, "bytes")
    for i, forms in items.id_bytes:
        if any(f in low for f in forms):
            report.add(where, "message-id", i, "bytes")
    for h, rx in items.host_bytes:
        if rx.search(low):
            report.add(where, "host", h, "bytes")
    if as_text:
        for enc in ("utf-8", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8",):
            _scan_text(data.decode(enc, "replace"), where, items, report, header=False)
    if data[:4] == b"PK\x03\x04" and depth < 3:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist()[:500]:
                    if info.file_size > 50 * 1024 * 1024:
                        continue
                    _scan_text(info.filename, f"{where} zip member name", items, report, header=False)
                    _scan_bytes(zf.read(info), f"{where} zip:{info.filename}", items, report, as_text=True,
                                depth=depth + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError):
            pass


def _b64decode(s: str) -> bytes | None:
    s = re.sub(r"\s+", "", s)
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=False)
    except (binascii.Error, ValueError):
        return None


def _base64_blobs(text: str) -> Iterator[tuple[str, bytes]]:
    """Base64 hidden inside text: PGP armour, data: URIs, keydata=, long runs."""
    if len(text) < 24:
        return
    for m in _ARMOR.finditer(text):
        body = m.group(1)
        # Armour headers ("Comment: ...", "Hash: ...") end at the first empty line.
        if re.match(r"[A-Za-z-]+: ", body):
            body = body.split("\n\n", 1)[-1] if "\n\n" in body else body.split("\r\n\r\n", 1)[-1]
        body = "\n".join(line for line in body.splitlines() if not line.startswith("="))
        data = _b64decode(body)
        if data:
            yield "(PGP armour)", data
    for m in _DATA_URI.finditer(text):
        data = _b64decode(m.group(1))
        if data:
            yield "(data: URI)", data
    for m in _B64_LINES.finditer(text):
        data = _b64decode(m.group(0))
        if data:
            yield "(base64 lines)", data
    for m in _B64_RUN.finditer(re.sub(r"\s+", "", text) if len(text) < 200_000 else text):
        data = _b64decode(m.group(0))
        if data:
            yield "(base64 run)", data


# --------------------------------------------------------------- structure

def _raw_str(value) -> str:
    """A compat32 header value as text, 8-bit bytes read as UTF-8."""
    if not isinstance(value, str):
        value = str(value)
    try:
        return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return value


def header_texts(part: Message, name: str, value) -> list[str]:
    """Every reading of one header field: raw, unfolded, decoded, parameters."""
    raw = _raw_str(value)
    out = [raw, re.sub(r"\r?\n[ \t]", " ", raw)]
    try:
        out.append(str(make_header(decode_header(raw))))
    except Exception:
        pass
    out.append(decode_encoded_words(raw))
    lname = name.lower()
    if lname in ("content-type", "content-disposition"):
        try:
            for key, val in part.get_params(header=lname, failobj=[]) or []:
                if isinstance(val, tuple):
                    val = collapse_rfc2231_value(val)
                out.append(f"{key}={val}")
                out.append(decode_encoded_words(_raw_str(val)))
        except Exception:
            pass
    return out


def iter_parts(msg: Message, path: str = "") -> Iterator[tuple[str, Message, bool]]:
    """(path, part, is_embedded_message) for every part, depth first.

    Paths number children from 1: "" is the top, "2.1" the first child of the
    second child.  A message/rfc822 part's message is its child "N.1".
    """
    yield path, msg, False
    yield from _children(msg, path)


def _children(msg: Message, path: str) -> Iterator[tuple[str, Message, bool]]:
    if not msg.is_multipart():
        return
    embedded = msg.get_content_maintype() == "message"
    payload = msg.get_payload()
    if not isinstance(payload, list):
        return
    for i, sub in enumerate(payload, 1):
        if not isinstance(sub, Message):
            continue
        sub_path = f"{path}.{i}" if path else str(i)
        yield sub_path, sub, embedded
        yield from _children(sub, sub_path)


def part_bytes(part: Message) -> bytes:
    """The decoded body of a leaf part (transfer encoding undone)."""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    return data


def part_text(part: Message) -> str:
    """A leaf part's body as text, in its declared charset (UTF-8 if unknown)."""
    data = part_bytes(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def is_textual(part: Message) -> bool:
    ctype = part.get_content_type()
    return part.get_content_maintype() == "text" or ctype in TEXTUAL_APPLICATION or ctype.endswith("+xml")


def parse(data: bytes) -> Message:
    return message_from_bytes(data, policy=policy.compat32)


def check_lines(data: bytes) -> list[str]:
    """RFC 5322 line length and consistent line endings in the raw bytes."""
    problems: list[str] = []
    crlf = b"\r\n" in data
    if crlf:
        bare = [m.start() for m in re.finditer(rb"\r(?!\n)|(?<!\r)\n", data)]
        if bare:
            line_no = data.count(b"\n", 0, bare[0]) + 1
            problems.append(f"raw: {len(bare)} bare CR or LF in CRLF data (first on line {line_no})")
        lines = data.split(b"\r\n")
    else:
        if b"\r" in data:
            problems.append("raw: bare CR in LF data")
        lines = data.split(b"\n")
    long = [(i, len(line)) for i, line in enumerate(lines, 1) if len(line) > MAX_LINE]
    for i, n in long[:3]:
        problems.append(f"raw line {i}: {n} octets > {MAX_LINE}")
    if len(long) > 3:
        problems.append(f"raw: {len(long) - 3} more lines over {MAX_LINE} octets")
    return problems


def find_leaks(data: bytes, forbidden_addresses: Iterable[str] = (), forbidden_header_domains: Iterable[str] = (),
               forbidden_ids: Iterable[str] = (), forbidden_hosts: Iterable[str] = ()) -> list[str]:
    """Every place a forbidden item survives in `data`, plus raw-line problems.

    Returns lines like "header Reply-To: address alice@x.example",
    "part 2 text/html: address alice@x.example (tags removed)",
    "part 3.1 (embedded message) header From: domain x.example",
    "raw line 12: 1204 octets > 998".
    """
    items = _Items(forbidden_addresses, forbidden_header_domains, forbidden_ids, forbidden_hosts)
    report = _Report()
    msg = parse(data)
    for path, part, embedded in iter_parts(msg):
        prefix = f"part {path}" + (" (embedded message)" if embedded else "") if path else ""
        for name, value in part.items():
            where = f"{prefix} header {name}".strip()
            for text in header_texts(part, name, value):
                _scan_text(text, where, items, report, header=True)
        ctype = part.get_content_type()
        where = f"{prefix or 'body'} {ctype}".strip()
        if part.is_multipart():
            for attr in ("preamble", "epilogue"):
                extra = getattr(part, attr, None)
                if extra:
                    _scan_text(_raw_str(extra), f"{prefix or 'top'} {attr}".strip(), items, report, header=False)
            if part.get_content_maintype() == "multipart" or isinstance(part.get_payload(), list):
                continue
        data_bytes = part_bytes(part)
        if is_textual(part):
            _scan_text(part_text(part), where, items, report, header=False)
            if ctype == "text/rfc822-headers":
                _scan_text(part_text(part), where, items, report, header=True)
        else:
            # A binary part, or text wrongly labelled: bytes, and text in case.
            _scan_text(data_bytes.decode("latin-1"), where, items, report, header=False)
        _scan_bytes(data_bytes, where, items, report, as_text=False)
        raw_payload = part.get_payload()
        if isinstance(raw_payload, str):
            # Same place: reported only when the decoded view missed it (a lying
            # Content-Transfer-Encoding, say).
            _scan_text(_raw_str(raw_payload), where, items, report, header=False, note="undecoded", blobs=False)
    # A last look at the raw bytes, for anything the parser put out of view.
    raw_text = normalise(data.decode("utf-8", "replace"))
    for kind, item in [("address", a) for a in items.addresses] + [("message-id", i) for i in items.ids]:
        if (kind, item) not in report.items_found and item in raw_text:
            report.add("raw message", kind, item)
    return report.lines + check_lines(data)


__all__ = ["find_leaks", "check_lines", "normalise", "variants", "iter_parts", "part_bytes", "part_text",
           "is_textual", "parse", "header_texts", "INVISIBLE"]

"""Rewriting: the message the other side receives, with no trace of the writer.

The outgoing message is *regenerated*, never patched: headers come from an
allowlist and are re-created from cleaned values (so an encoded newline cannot
become a header, CVE-2024-6923, and a comment or display name cannot carry an
address, THREATS #45-46); every text part is decoded (any transfer encoding,
any charset), scrubbed of both parties' real addresses in every spelling we
know (`%40`, `&#64;`, zero-width characters, `[at]`), and re-encoded only if
something changed, so untouched parts stay byte-identical.  Parts that cannot
be inspected are stripped (signatures and keys that name the address, TNEF) or
refused (encrypted content).

The serialiser is our own and small: structure (boundaries, part headers and
bodies) is written explicitly, preamble and epilogue are dropped (they can
hold text no client shows, THREATS #51), header lines are folded by the
stdlib's SMTP policy, and every line ends in CRLF and stays within 998 octets.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import html
import io
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.header import Header
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, _formatparam  # the stdlib's own parameter quoting
from email._encoded_words import decode_b as _decode_b
from email.utils import collapse_rfc2231_value, encode_rfc2231, formataddr, getaddresses

from relay import tokens
from relay.chunks import Chunks, Span
from relay.filters.attachments import declared_kind, kind_from_head, sniff
from relay.filters.base import INVISIBLE_CHARACTERS, Attachment, TextPart
from relay.parsing import ReusingHeaderRegistry
from relay.smtpdata import crlf_only

OUT_POLICY = policy.SMTP.clone(max_line_length=78, refold_source="all", header_factory=ReusingHeaderRegistry())
MAX_LINE = 998  # RFC 5322 section 2.1.1, without the CRLF

# Top-level headers that survive, re-created from cleaned values.  Everything
# else (Received, Reply-To, Sender, DKIM, ARC, Autocrypt, X-*, List-*, ...) is
# dropped: an allowlist, not a blocklist.
KEPT_TOP_HEADERS = ("Subject", "Date", "Auto-Submitted", "Importance")
# Per-part headers that describe structure; their parameters are scrubbed.
KEPT_PART_HEADERS = ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID",
                     "Content-Description", "Content-Language")
# Headers kept inside a forwarded message/rfc822 (its own headers are content).
KEPT_NESTED_HEADERS = ("From", "To", "Cc", "Date", "Subject")
NESTED_ADDRESS_HEADERS = ("From", "To", "Cc")
# The longest address header the stdlib's parser is given.  Its cost grows
# with the square of the length (gh-136063: 0.4 s for 8 KB of `a.`, each
# parse), and the relay's cap of one field (limits.header_field, 8 KB) is
# there for every header.  A From of one mailbox needs no more than a line;
# a forwarded message's longer To or Cc (a list's many recipients) is
# scrubbed as text instead (_Writer.nested_headers).
ADDRESS_HEADER_LIMIT = 1000

LOOP_HEADER = "X-Relay-Loop"
MAX_PARAMETER_NAME = 40  # a MIME parameter with a longer name is junk, and is dropped
_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+\-]+/[a-z0-9!#$&^_.+\-]+")

TEXTUAL_TYPES = {"application/ics", "application/x-vcard", "application/vcard", "application/json",
                 "application/xml", "message/delivery-status", "message/disposition-notification"}
# Identity-bearing parts that cannot be rewritten without breaking them, and
# that a reader does not need: the certificate or key names the real address.
STRIPPED_TYPES = {"application/pkcs7-signature", "application/x-pkcs7-signature", "application/pgp-keys",
                  "application/pgp-signature", "application/ms-tnef", "application/vnd.ms-tnef"}
ENCRYPTED_TYPES = {"multipart/encrypted", "application/pgp-encrypted"}

PGP_BLOCK = re.compile(
    r"-----BEGIN PGP (PUBLIC KEY BLOCK|SIGNATURE)-----.*?-----END PGP \1-----", re.DOTALL)
PGP_SIGNED_HEADER = re.compile(r"-----BEGIN PGP SIGNED MESSAGE-----\r?\n(?:Hash:[^\n]*\n)*\r?\n?")


UNSCANNABLE = ("550 5.7.1 [unscannable] Part of the message could not be cleaned of a personal email address; "
               "remove the address and send it again.")


class RewriteError(Exception):
    """The message cannot be relayed safely; `reply` is the SMTP answer."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class Parties:
    """Who writes, who reads, and the alias each one is known by."""

    sender_addresses: tuple[str, ...]  # all real addresses of the writing side
    sender_alias: str  # full address shown in From
    sender_display: str  # display name shown in From
    recipient_addresses: tuple[str, ...]  # real addresses of the reading side; [0] receives it
    recipient_alias: str  # the alias the message was written to
    hostname: str  # relay hostname, for the loop guard


@dataclass(frozen=True)
class Threading:
    message_id: str  # "<id@relay-hostname>"
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()


@dataclass
class RewriteResult:
    data: bytes | Chunks  # Chunks when larger than JOIN_BELOW (relay.chunks); every line ends in CRLF
    parts: list[TextPart] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    subject: str = ""


# ------------------------------------------------------------------ scrubbing

# What may sit between two letters of an address without changing what a
# reader sees: invisible characters (raw or as HTML entities), HTML tags such
# as Gmail's <wbr> or <span>, quoted-printable soft breaks (vCard 2.1),
# iCalendar/vCard line folding, format=flowed soft breaks (a space before the
# line break, deleted with delsp=yes: RFC 3676), and any line break or tab (raw or as an
# entity): browsers drop them from a URL, so `mailto:bob@x.ex<LF>ample`
# opens bob@x.example (a black-box probe got such links through).
_GAP = (
    rf"(?:[{INVISIBLE_CHARACTERS}\x00-\x1f\x7f]|<[^<>]{{0,200}}>"
    r"|&(?:shy|zwsp|zwj|zwnj|NoBreak|ZeroWidthSpace|lrm|rlm|Tab|NewLine);"
    r"|&#0*(?:820[3-7]|823[4-8]|828[89]|829[0-7]|65279|173|847|6158|9|10|13);"
    r"|&#x0*(?:200[b-f]|202[a-e]|206[0-9]|feff|ad|34f|180e|9|a|d);"
    r"|=\r?\n|\r?\n[ \t]| \r?\n)*"
)
_AT_WORDS = [r"&commat;", "\ufe6b", r"\s*[\[(]\s*at\s*[\])]\s*", r"\s+at\s+"]
_DOT_WORDS = [r"&period;", "\u3002", "\uff61", r"\s*[\[(]\s*dot\s*[\])]\s*", r"\s+dot\s+"]
# A quoted local part ("bob"@buyer.test, RFC 5322 section 3.4.1) names the same mailbox.
_QUOTE = r'(?:"|&quot;|&#0*34;?|&#x0*22;?)'


def _char_regex(ch: str) -> str:
    """One character in any of its encodings: itself, its fullwidth form
    (what a reader sees as the same letter), an HTML character reference
    (with or without its semicolon, as browsers read it), a %-escape (also
    double-escaped), a quoted-printable escape."""
    code = ord(ch)
    alternatives = [re.escape(ch)]
    if 0x21 <= code <= 0x7E:
        alternatives.append(chr(0xFF01 + code - 0x21))
    if code < 0x80:
        alternatives += [f"&#0*{code};?", f"&#x0*{code:x};?", f"%{code:02x}", f"%25{code:02x}", f"={code:02x}"]
    if ch == "@":
        alternatives += _AT_WORDS
    elif ch == ".":
        alternatives += _DOT_WORDS
    return "(?:" + "|".join(alternatives) + ")"


def _address_regex(address: str) -> str:
    """A pattern for one address in every spelling a mail client or a person
    might produce: any case, any character encoded (HTML references, %-escapes,
    quoted-printable), invisible characters or tags between letters, `@` as
    `[at]`/` at `, `.` as ` dot `."""
    local, _, domain = address.rpartition("@")

    def chars(text: str) -> str:
        return _GAP.join(_char_regex(ch) for ch in text)

    domains = [chars(domain)]
    try:
        if "xn--" in domain:
            domains.append(chars(domain.encode("ascii").decode("idna")))
    except UnicodeError:
        pass
    domain_alt = "|".join(domains)
    # No guard before or after: "jimbob@x.example" or "bob@x.examples" still
    # show bob@x.example to a reader, so privacy wins over the rare third
    # party whose address merely contains a party's.  A subaddress
    # ("bob+shop@x.example", RFC 5233) reaches the same mailbox, so it is
    # the party's address too, tag and all.
    return (f"(?:{_QUOTE}{_GAP})?{chars(local)}(?:{_GAP}{_char_regex('+')}{_SUBADDRESS_TAG})?"
            f"(?:{_GAP}{_QUOTE})?{_GAP}[ \t]{{0,3}}{_char_regex('@')}"
            f"[ \t]{{0,3}}{_GAP}(?:{domain_alt})")


# What may follow "+" in a subaddress, in the raw text (where it may be
# encoded): anything up to the "@" that is not a space or a delimiter.
_SUBADDRESS_TAG = r"[^\s@<>\"'()\[\],;:\\]{0,64}"


# Every spelling of "@" that _address_regex accepts starts with "@", "%", "=",
# "\uff20", "&#", "&commat" (any case) or a spelled-out "at" between spaces or
# brackets; text without any of them cannot hold an address, and the full
# pattern (slow: every character in several encodings) need not run.
_AT_WORD_HINT = re.compile(r"[\s\[(]at[\s\])]")  # on lowercased text


def may_hold_address(text: str) -> bool:
    """Could the text hold an address in any spelling?  Substring tests
    first, then lowercase blocks of the text (a copy of a block, not of a
    large text), a regex only for the spelled-out "at" (three times faster
    on long text than one regex of all the hints)."""
    if "@" in text or "%" in text or "=" in text or "\uff20" in text or "&#" in text or "\ufe6b" in text:
        return True
    return any("&commat" in low or ("at" in low and _AT_WORD_HINT.search(low) is not None)
               for _, low in _lowered_blocks(text, 0, len(text), HINT_OVERLAP))


# The hints are at most 7 characters ("&commat"): blocks overlap by 6, so
# each hint is whole in some block.  str.lower() works a character at a time
# (its one context rule, the final sigma, only chooses between two sigmas,
# which no hint holds) and never shortens one, so a block's lowercase is the
# lowercase's block.
HINT_OVERLAP = 6


class Scrubber:
    """Replace each known real address by its alias.

    The exact pattern of an address (every character in several encodings)
    is costly to compile (~10 ms), so it is only used on text that holds the
    address: a cheap normalised view of the text (entities, %-escapes and
    quoted-printable decoded; tags, invisible characters and soft breaks
    removed; spelled-out "at"/"dot" read as "@"/".") is searched first, and
    each address's pattern is compiled once per process, when first needed.
    The normalised view undoes everything the pattern accepts, so it can only
    over-report, never miss."""

    def __init__(self, replacements: dict[str, str], local_parts: dict[str, str] | None = None):
        self.replacements = {k.lower(): v for k, v in replacements.items() if k}
        # A writer's own local part, where it reads as a name (_distinctive_local_part), and the name
        # the relay shows instead: "On Mon, jane.doe.1987 wrote:" names the writer as the address would.
        self.local_parts = {k.lower(): v for k, v in (local_parts or {}).items()}
        self._local_pattern = re.compile(
            r"(?<![\w.+%=&#/-])(?:" + "|".join(map(re.escape, sorted(self.local_parts, key=len, reverse=True)))
            + r")(?![\w+-]|\.\w|\s*@)", re.IGNORECASE) if self.local_parts else None
        self._keys = sorted(self.replacements, key=len, reverse=True)
        self._forms = {k: _address_forms(k) for k in self._keys}
        self._subaddressed = {k: _subaddress_pattern(k) for k in self._keys}
        self._needles = [k.encode("ascii", "ignore") for k in self._keys]

    def text(self, value: str) -> str:
        """The text with every known address replaced; RewriteError
        ([unscannable]) if one still shows after the replacement: a spelling
        the view reads as the address but the pattern does not know."""
        value = self._addresses(value)
        if self._local_pattern is not None and value and self._local_pattern.search(value):
            value = self._local_pattern.sub(lambda m: self.local_parts[m.group(0).lower()], value)
        return value

    def _addresses(self, value: str) -> str:
        if not self._keys or not value or not may_hold_address(value):
            return value
        view = normalised_view(value)
        replaced = False
        for key in self._keys:
            if self._shows(key, view):
                value = _address_pattern(key).sub(self.replacements[key], value)
                replaced = True
        if replaced:
            view = normalised_view(value)
            if any(self._shows(key, view) for key in self._keys):
                raise RewriteError(UNSCANNABLE)
        return value

    def _shows(self, key: str, view: str) -> bool:
        """Does the normalised view read as the address `key`, or as a
        subaddress of it?"""
        if any(form in view for form in self._forms[key]):
            return True
        local, subaddressed = self._subaddressed[key]
        return local in view and subaddressed.search(view) is not None

    def found_in_bytes(self, data: bytes) -> bool:
        """Does a binary blob hold a real address (ASCII or UTF-16), in any
        case?  Searched a lowercased block at a time, not in a lowercase copy
        of the whole blob."""
        return self.found_in_blocks((data,))

    def found_in_blocks(self, blocks: Iterable[bytes]) -> bool:
        """`found_in_bytes` of the blocks joined, without joining them: the
        end of each block is searched again with the start of the next."""
        needles = [form for needle in self._needles for form in (needle, needle.decode().encode("utf-16-le"))]
        if any(not needle for needle in needles):
            return True  # (`b"" in low`, as it always was)
        overlap = max(map(len, needles), default=1) - 1
        tail = b""
        for block in blocks:
            window = tail + block if tail else block
            if _lowered_holds(window, needles, 0, len(window)):
                return True
            tail = window[-overlap:] if overlap else b""
        return False


@functools.lru_cache(maxsize=4096)
def _address_pattern(address: str) -> re.Pattern:
    return re.compile(_address_regex(address), re.IGNORECASE)


def _address_forms(address: str) -> tuple[str, ...]:
    """The address as it reads once normalised (ASCII and Unicode domain)."""
    forms = [address.lower()]
    local, _, domain = address.rpartition("@")
    if "xn--" in domain:
        try:
            forms.append(f"{local}@{domain.encode('ascii').decode('idna')}".lower())
        except UnicodeError:
            pass
    return tuple(forms)


def _subaddress_pattern(address: str) -> tuple[str, re.Pattern]:
    """For a normalised view: "local+", the cheap test, and the pattern of
    any subaddress of `address` (ASCII or Unicode domain)."""
    local, _, domain = address.lower().rpartition("@")
    domains = {re.escape(form.rpartition("@")[2]) for form in _address_forms(address)}
    return f"{local}+", re.compile(rf"{re.escape(local)}\+[^\s@]{{0,64}}@(?:{'|'.join(sorted(domains))})")


_TAG = re.compile(r"<[^<>]{0,200}>")
_SOFT_BREAK = re.compile(r"=\r?\n|\r?\n[ \t]| \r?\n")  # (the last: RFC 3676's, format=flowed)
_QP_ESCAPE = re.compile(r"=([0-9a-fA-F]{2})")
_INVISIBLE = re.compile(f"[{INVISIBLE_CHARACTERS}\x00-\x1f\x7f]")  # (line breaks and tabs too: _GAP)
_AT_WORD = re.compile(r'\s*[\[(]\s*at\s*[\])]\s*|\s+at\s+|"?[ \t]*@[ \t]*"?', re.IGNORECASE)
_DOT_WORD = re.compile(r"\s*[\[(]\s*dot\s*[\])]\s*|\s+dot\s+|[\u3002\uff61]", re.IGNORECASE)


def normalised_view(text: str) -> str:
    """What a reader could make of the text: every encoding and filler that
    _address_regex tolerates is undone (a superset: decoding twice, mixing
    forms), lowercased."""
    view = _SOFT_BREAK.sub("", text)
    # With the tags removed (an address split by <wbr>) and kept (an address
    # inside an attribute, href="mailto:...").
    view = view + "\n" + _TAG.sub("", view)
    for _ in range(2):
        view = html.unescape(view)
        view = urllib.parse.unquote(view)
    view = _QP_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), view)
    view = unicodedata.normalize("NFKC", view)  # fullwidth and other compatibility forms, as a reader sees them
    view = _INVISIBLE.sub("", view)
    view = _AT_WORD.sub("@", view)
    view = _DOT_WORD.sub(".", view)
    return view.lower()


_LINE_BREAKS = re.compile(r"[\r\n\t\v\f]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def clean_header_text(value: str) -> str:
    """Collapse anything that decodes to a line break or control character:
    a header value we write can never start a new header line.  Printable
    ASCII, nearly every value, is returned at once (a Python step per
    character here was a tenth of the relay's CPU per message)."""
    if value.isascii() and value.isprintable():
        return value.strip()
    return _CONTROLS.sub("", _LINE_BREAKS.sub(" ", value)).strip()


_PLAIN_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


_PARAMETER_NAME = re.compile(r"[a-z0-9!#$&^_.+\-]+")


def set_params(holder: EmailMessage, name: str, main: str, params: list[tuple[str, str]]) -> None:
    """`holder[name] = main`, then `holder.set_param(key, value, header=name)`
    for each parameter, with the same result (tests/test_rewrite.py checks it
    against the stdlib): one header parse instead of about five per
    parameter, which made this a tenth of the rewrite's time.  A repeated
    name (set_param replaces in place) and a non-ASCII value (set_param
    re-reads the RFC 2231 encoding it wrote) take the stdlib's own path."""
    names = [key.lower() for key, _ in params]
    if len(set(names)) != len(names) or main.lower() in names or not all(value.isascii() for _, value in params):
        holder[name] = main
        for key, value in params:
            holder.set_param(key, value, header=name)
        return
    store_header(holder, name, "; ".join([main] + [_formatparam(key, value, True) for key, value in params]))


def store_header(holder: EmailMessage, name: str, value: str) -> None:
    """`holder[name] = value` for a holder of OUT_POLICY (every holder the
    rewriter makes), the parsed header made once per distinct (name, value)
    and reused (_out_header): a part's Content-Type and
    Content-Transfer-Encoding are nearly always one of a few values, and the
    stdlib's parse of them was three quarters of a part's headers (100-135
    us a text part, against 25)."""
    holder[name] = _out_header(name, value)


@functools.lru_cache(maxsize=512)
def _out_header(name: str, value: str):
    """The header OUT_POLICY stores for `holder[name] = value` (its own
    header_store_parse, which refuses a line break; a refusal raises and is
    not cached).  A header is immutable (a str), so every holder can share
    it, and a holder stores a header object as it is."""
    return OUT_POLICY.header_store_parse(name, value)[1]


def _header_line(name: str, value: str) -> bytes:
    value = clean_header_text(value)
    # Fast path for the common case (most headers, every message): short
    # printable ASCII needs no folding and no encoding.  "=?" is excluded so
    # decoded text that looks like an encoded word is re-encoded, never
    # decoded a second time by the reader's client.
    if len(name) + len(value) <= 76 and "=?" not in value and _PLAIN_HEADER_VALUE.fullmatch(value):
        return f"{name}: {value}\r\n".encode("ascii")
    # Two shapes the stdlib folds wrong (CPython 3.11.7), found by a black-box probe:
    if name in _PARAMETER_HEADERS:
        # a long type with parameters: it encoded the MIME type itself as encoded words
        folded = _fold_parameters(name, value if _PLAIN_HEADER_VALUE.fullmatch(value) else _rfc2231(name, value))
        if folded is not None:
            return folded
    if name in NESTED_ADDRESS_HEADERS and len(value) > ADDRESS_HEADER_LIMIT:
        return _unstructured_line(name, value)  # (the stdlib's folder would parse it as addresses)
    if name in _TEXT_HEADERS and not (value.isascii() and "=?" not in value):
        # text with encoded words: it set a space between two of them, which readers drop
        # (RFC 2047 section 6.2); every character, spaces included, goes inside the words
        encoded = Header(value, "utf-8", maxlinelen=78, header_name=name).encode(linesep="\r\n")
        return f"{name}: {encoded}\r\n".encode("ascii")
    try:
        return OUT_POLICY.fold_binary(name, value)
    except Exception:
        pass
    try:
        return OUT_POLICY.fold_binary(name, value.encode("ascii", "replace").decode())
    except Exception:
        # The stdlib's structured parser fails on some values (fuzz regression
        # address-header-not-an-address-list: an address header whose text is
        # no address list): folded as unstructured text, encoded words when
        # needed, "=?" included, so nothing is decoded twice.
        return _unstructured_line(name, value)


def _unstructured_line(name: str, value: str) -> bytes:
    plain = value.isascii() and "=?" not in value
    encoded = Header(value, "us-ascii" if plain else "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


_PARAMETER_HEADERS = frozenset({"Content-Type", "Content-Disposition"})
_TEXT_HEADERS = frozenset({"Subject", "Content-Description"})


_TOKEN_VALUE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _rfc2231(name: str, value: str) -> str | None:
    """A parameter header whose values hold other than printable ASCII, with
    those values RFC 2231-encoded (name*=utf-8''...), as set_param writes
    them; None for a value the header parser does not read."""
    try:
        params = OUT_POLICY.header_factory(name, value).params
    except Exception:
        return None
    pieces = [value.split(";", 1)[0].strip()]
    for key, param in params.items():
        param = str(param)
        if _PLAIN_HEADER_VALUE.fullmatch(param):
            quoted = param if _TOKEN_VALUE.fullmatch(param) else '"' + re.sub(r'(["\\])', r"\\\1", param) + '"'
            pieces.append(f"{key}={quoted}")
        else:
            pieces.append(f"{key}*={encode_rfc2231(param, 'utf-8')}")
    return "; ".join(pieces)


def _fold_parameters(name: str, value: str | None) -> bytes | None:
    """A Content-Type or Content-Disposition of printable ASCII (non-ASCII
    parameters are RFC 2231-encoded by then) folded before its parameters
    only, as it is.  None when there is nothing to fold or a piece would
    not fit a line of 998 octets."""
    if not value or not value.isascii():
        return None
    pieces = value.split("; ")
    lines: list[str] = [f"{name}: {pieces[0]}"]
    for piece in pieces[1:]:
        if len(lines[-1]) + 2 + len(piece) <= 78:
            lines[-1] += "; " + piece
        else:
            lines[-1] += ";"
            lines.append(" " + piece)
    if any(len(line) > MAX_LINE for line in lines):
        return None
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


# -------------------------------------------------------------- serialising

class _Writer:
    def __init__(self, scrubber: Scrubber, redactions: tuple[tuple[str, str], ...],
                 cid_map: dict[str, str] | None = None, source: bytes | None = None,
                 names: dict[str, str] | None = None):
        self.scrubber = scrubber
        self.redactions = redactions
        # alias (lower case) -> how a forwarded message's headers name that party ("" for none)
        self.names = names or {}
        # The received message (relay.parsing), where an unchanged body's octets can be found.
        self.source = source
        # Content-IDs name the writer's host (Thunderbird: part1.x@sender.example):
        # each gets a new id on our hostname, and `cid:` references follow.
        self.cid_map = cid_map or {}
        self.parts: list[TextPart] = []
        self.attachments: list[Attachment] = []

    def scrub_text(self, text: str) -> str:
        return self._redact(self.scrubber.text(text))

    def _redact(self, text: str) -> str:
        for fragment, marker in self.redactions:
            if fragment:
                text = text.replace(fragment, marker)
        return text

    # A part is a list of header lines and a body, the body as a list of
    # chunks: joined once, in rewrite_message (a large attachment is copied
    # once into the message, not once per level of nesting).
    def part(self, part: EmailMessage, depth: int) -> tuple[list[bytes], list[bytes]]:
        ctype = part.get_content_type()
        if ctype in ENCRYPTED_TYPES or (ctype == "application/pkcs7-mime"
                                         and "enveloped" in (part.get_param("smime-type") or "")):
            raise RewriteError("550 5.7.1 [unscannable] Encrypted content cannot be checked for personal "
                               "addresses; send the message unencrypted.")
        if ctype == "multipart/signed":
            children = list(part.iter_parts()) if part.is_multipart() else []
            if children:
                # The signature names the signer's address and would not verify
                # after rewriting anyway: relay the signed content alone.
                return self.part(children[0], depth + 1)
        if part.is_multipart() and ctype.startswith("multipart/"):
            return self._multipart(part, depth)
        if ctype in ("message/rfc822", "message/global") and part.is_multipart():
            return self._nested_message(part, depth)
        return self._leaf(part)

    def part_headers(self, part: EmailMessage, drop_cte: bool = False, new_cte: str | None = None) -> list[bytes]:
        lines: list[bytes] = []
        holder = EmailMessage(policy=OUT_POLICY)
        for name in KEPT_PART_HEADERS:
            if name == "Content-Transfer-Encoding":
                continue
            value = part.get(name)
            if value is None:
                continue
            if name in ("Content-Type", "Content-Disposition"):
                self._copy_structured(part, holder, name)
            elif name == "Content-ID":
                old = _cid_value(str(value))
                if old in self.cid_map:
                    store_header(holder, name, f"<{self.cid_map[old]}>")
            else:
                store_header(holder, name, clean_header_text(self.scrub_text(str(value))))
        cte = new_cte or (None if drop_cte else part.get("Content-Transfer-Encoding"))
        if cte:
            store_header(holder, "Content-Transfer-Encoding", clean_header_text(str(cte)).lower())
        for name, value in holder.items():
            lines.append(_header_line(name, str(value)))
        return lines

    def _copy_structured(self, source: EmailMessage, holder: EmailMessage, name: str) -> None:
        """Re-create Content-Type / Content-Disposition with scrubbed parameters
        (an RFC 2231 filename can spell the real address)."""
        if name == "Content-Type":
            main = source.get_content_type()
            if not _MIME_TYPE.fullmatch(main):
                main = "application/octet-stream"
            params = source.get_params(header=name) or []
        else:
            main = (source.get_content_disposition() or "attachment")
            if main not in ("inline", "attachment"):  # RFC 2183 knows these two; junk never passes
                main = "attachment"
            params = source.get_params(header=name) or []
        kept: list[tuple[str, str]] = []
        for key, value in params[1:]:
            key = clean_header_text(str(key)).lower()
            # (no real parameter name is long; the stdlib's folder loops forever on one of 65+
            # characters, CPython 3.11.7: fuzz regression long-parameter-name)
            if not key or len(key) > MAX_PARAMETER_NAME or not _PARAMETER_NAME.fullmatch(key):
                continue
            if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
                value = collapse_rfc2231_value(value)
            kept.append((key, clean_header_text(self.scrub_text(str(value)))))
        set_params(holder, name, main, kept)

    def _multipart(self, part: EmailMessage, depth: int) -> tuple[list[bytes], list[bytes]]:
        children: list[tuple[list[bytes], list[bytes]]] = []
        for child in part.iter_parts():
            ctype = child.get_content_type()
            if ctype in STRIPPED_TYPES:
                continue
            children.append(self.part(child, depth + 1))
        if not children:
            children.append(([_header_line("Content-Type", "text/plain; charset=us-ascii")], []))
        boundary = "=_relay_" + tokens.token_hex(12)
        headers = self.part_headers(part, drop_cte=True)
        headers = [h for h in headers if not h.lower().startswith(b"content-type")]
        ctype_holder = EmailMessage(policy=OUT_POLICY)
        self._copy_structured(part, ctype_holder, "Content-Type")
        ctype_holder.set_param("boundary", boundary)
        headers.insert(0, _header_line("Content-Type", str(ctype_holder["Content-Type"])))
        body: list[bytes] = []
        for child_headers, child_body in children:
            body.append(b"--" + boundary.encode() + b"\r\n")
            body.extend(child_headers)
            body.append(b"\r\n")
            body.extend(child_body)
            if not _ends_with_newline(child_body):
                body.append(b"\r\n")
        body.append(b"--" + boundary.encode() + b"--\r\n")
        return headers, body

    def _nested_message(self, part: EmailMessage, depth: int) -> tuple[list[bytes], list[bytes]]:
        inner = part.get_payload(0)
        headers = self.part_headers(part, drop_cte=True)
        inner_top = self.nested_headers(inner)
        inner_headers, inner_body = self.part(inner, depth + 1)
        return headers, [*inner_top, *inner_headers, b"\r\n", *inner_body]

    def _shown_name(self, filename: str | None) -> str | None:
        """A file's name as the relayed message carries it (_copy_structured):
        the parties' addresses replaced."""
        return clean_header_text(self.scrub_text(filename)) if filename else None

    def _add_attachment(self, filename: str | None, ctype: str, data: bytes, text: str | None = None,
                        size: int = -1) -> None:
        """An attachment for the filters, under the name the reader sees: they judge a
        name like text, after the parties' own addresses became their aliases."""
        name = self._shown_name(filename)
        self.attachments.append(Attachment(f"attachment {name or ctype}", name, ctype, data, text, size))

    def _nested_mailbox(self, display: str, address: str) -> tuple[str, str]:
        """A mailbox of a forwarded message's header: a party's address
        becomes its alias, named as the relay names that party (its mail
        client's display name is its real name, THREATS #45); anyone
        else's is scrubbed as text."""
        scrubbed = self.scrub_text(address)
        if scrubbed != address and scrubbed.lower() in self.names:
            return self.names[scrubbed.lower()], scrubbed
        return clean_header_text(self.scrub_text(display)), scrubbed

    def nested_headers(self, inner: EmailMessage) -> list[bytes]:
        lines = []
        for name in KEPT_NESTED_HEADERS:
            if name not in inner:  # (a test of the names: get() would parse, and the parser may raise)
                continue
            if name in NESTED_ADDRESS_HEADERS and parsable_address_header(inner, name):
                try:
                    pairs = getaddresses([str(v) for v in inner.get_all(name, [])])
                    rendered = ", ".join(formataddr(self._nested_mailbox(n, a)) for n, a in pairs if a)
                except Exception:  # not an address list we can rebuild (the parser may even raise): keep it as text
                    rendered = self.scrub_text(header_text(inner, name))
                if rendered:
                    lines.append(_header_line(name, rendered))
            else:
                lines.append(_header_line(name, self.scrub_text(header_text(inner, name))))
        lines.append(_header_line("MIME-Version", "1.0"))
        return lines

    def _leaf(self, part: EmailMessage) -> tuple[list[bytes], list[bytes]]:
        ctype = part.get_content_type()
        raw = _raw_octets(part)
        cte = transfer_encoding(part) or "7bit"
        filename = part.get_filename()
        textual = ctype.startswith("text/") or ctype in TEXTUAL_TYPES
        if not textual and cte == "base64" and isinstance(raw, Span):
            streamed = self._streamed_attachment(part, raw, ctype, filename)
            if streamed is not None:
                return streamed
        try:
            decoded = decoded_payload(part, raw) or b""
        except Exception:
            decoded = raw
        if not textual and isinstance(decoded, Span):
            decoded = raw = bytes(decoded)  # an attachment is judged as bytes (relay.filters.attachments)
        if textual or (declared_kind(ctype) is None and sniff(decoded) == "txt"):
            # (a text file sent as application/octet-stream is a text file: the attachment
            # rules let it through as plain text, so it is scrubbed and judged as text)
            return self._text_leaf(part, ctype, raw, cte, decoded, filename)
        if self.scrubber.found_in_bytes(decoded):
            name = self._shown_name(filename) or ctype
            raise RewriteError(f"550 5.7.1 [unscannable] The attachment {name[:60]} contains a personal "
                               "email address that cannot be removed from it; remove the address or the file.")
        self._add_attachment(filename, ctype, decoded)
        if decoded is not raw and self.scrubber.found_in_bytes(raw):
            # The address is in the encoded bytes but not in what they decode
            # to (junk inside base64): send a clean encoding of the content.
            return self.part_headers(part, new_cte="base64"), [base64.encodebytes(decoded)]
        return self.part_headers(part), self._as_received(part, raw)

    def _streamed_attachment(self, part: EmailMessage, raw: Span, ctype: str,
                             filename: str | None) -> tuple[list[bytes], list] | None:
        """A large base64 attachment whose first octets decide its kind (a
        PDF, a JPEG, a PNG...; not a ZIP or OLE2 file, which is judged by what
        is inside) is decoded a block at a time: its size counted, every block
        searched for the parties' addresses, and only its first octets kept
        for the filters.  So the decoded file is never held whole next to the
        received message and its parsed text (bench/bench_large.py).  None,
        for the whole decoding that `_leaf` does, for anything else: not
        strict base64, a kind the first octets do not decide, or an address
        found (which the whole path refuses or cleans)."""
        tally = _Tally()
        # The received base64 text needs no search of its own: strict base64 has no "@",
        # which every needle holds, and `_refuse_literal_leak` reads the outgoing octets.
        if self.scrubber.found_in_blocks(tally.count(_strict_base64_blocks(raw))) or not tally.usable:
            return None
        self._add_attachment(filename, ctype, tally.head, size=tally.size)
        return self.part_headers(part), self._as_received(part, raw)

    def _text_leaf(self, part: EmailMessage, ctype: str, raw: bytes, cte: str, decoded: bytes,
                   filename: str | None) -> tuple[list[bytes], list[bytes]]:
        charset = part.get_content_charset() or "us-ascii"
        text = _payload_as_text(part, raw, decoded, charset)
        text_is_raw = text is not None  # text is raw's octets read as characters
        if text is None:
            try:
                text = bytes(decoded).decode(charset)
            except (LookupError, UnicodeDecodeError):
                charset = "utf-8"
                text = bytes(decoded).decode("utf-8", errors="replace")
        if "begin" in text and _INLINE_UUENCODE.search(text):
            raise RewriteError("550 5.7.1 [unscannable] A file uuencoded inside the text cannot be checked; "
                               "send it as an ordinary attachment.")
        new_text = text
        for old, new in self.cid_map.items():
            if "cid:" + old in new_text:
                new_text = new_text.replace("cid:" + old, "cid:" + new)
        scrubbed = self.scrubber.text(new_text)
        # (the scrub of the original text, when the Content-ID step changed nothing: reused below)
        text_scrubbed = scrubbed if new_text is text and text_is_raw else None
        new_text = self._redact(scrubbed)
        if ctype == "text/plain" or ctype == "text/html":
            new_text = _strip_pgp_blocks(new_text)
        if ctype == "text/html" and _MID_URI.search(new_text):
            new_text = _MID_URI.sub("mid:", new_text)
        is_body = ctype in ("text/plain", "text/html") and not filename and \
            part.get_content_disposition() != "attachment"
        if is_body:
            self.parts.append(TextPart(f"{ctype} part {len(self.parts) + 1}", ctype, new_text))
        else:
            self._add_attachment(filename, ctype, new_text.encode("utf-8"), new_text)
        # Keep the original bytes only if nothing changed *and* the encoded
        # form hides nothing the decoder skips (junk lines inside base64),
        # and is 7-bit: 8-bit bytes are re-encoded, so the next hop never
        # needs 8BITMIME and bytes invalid in their charset never pass (#57).
        if new_text == text and raw.isascii() and cte in ("7bit", "8bit", "quoted-printable", "base64", "") and \
                _lines_fit(raw) and (cte != "base64" or _padding_only_at_the_end(raw)) and \
                self._raw_is_clean(raw, text, text_scrubbed):
            return self.part_headers(part), self._as_received(part, raw)
        body, new_cte = _encode_text(new_text, charset, prefer_base64=(cte == "base64"))
        headers = self.part_headers(part, new_cte=new_cte)
        if part.get_content_charset() is None or charset != part.get_content_charset():
            headers = _with_charset(headers, part, charset, self)
        return headers, [body]

    def _as_received(self, part: EmailMessage, raw: bytes | Span) -> list:
        """`[_ensure_crlf_end(raw)]` for a body sent as received, as a Span of
        the received octets when they are known to hold it: `raw` itself (see
        _raw_octets), where the parser recorded them (relay.parsing.BodySource),
        else, for a large body, where it is found in them.  The outgoing
        message then holds no copy of it (relay.chunks)."""
        span = raw if isinstance(raw, Span) else _received_span(part)
        if span is None and self.source is not None and len(raw) >= FIND_IN_SOURCE:
            at = self.source.find(raw)
            if at >= 0:
                span = Span(self.source, at, at + len(raw))
        if span is None:
            return [_ensure_crlf_end(raw)]
        return [span] if not raw or raw.endswith(b"\n") else [span, b"\r\n"]

    def _raw_is_clean(self, raw: bytes, text: str, text_scrubbed: str | None) -> bool:
        """Does the scrubber leave the raw octets, read as Latin-1, unchanged?
        `text_scrubbed`, when given, is the scrub of `text`, which is those
        octets read as characters: it answers without a second copy of the
        part and a second scan."""
        if text_scrubbed is not None:
            return text_scrubbed == text
        raw_text = bytes(raw).decode("latin-1")
        return self.scrubber.text(raw_text) == raw_text


# Charsets in which every ASCII octet stands for its ASCII character.
_ASCII_CHARSETS = frozenset({"us-ascii", "ascii", "utf-8", "utf8", "iso-8859-1", "latin-1", "latin1",
                             "iso-8859-15", "windows-1252", "cp1252"})
_UU_ENCODINGS = ("x-uuencode", "uuencode", "uue", "x-uue")


# A body at least this large is looked for in the received octets (a search
# costs about 2 ms a MiB; it saves a copy of the body while the message is joined).
FIND_IN_SOURCE = 64 * 1024


def transfer_encoding(part: EmailMessage) -> str:
    """The part's Content-Transfer-Encoding, lower case without the spaces
    around it ("" if none), and the header made that clean name: the stdlib
    decodes only the exact lower-case name ("base64 " went undecoded, and
    unread), and the rewriter writes the clean name out (part_headers), so
    everything that reads the body must read it as that name says."""
    header = str(part.get("Content-Transfer-Encoding", ""))
    cte = header.strip().lower()
    if header != cte and cte:
        part.replace_header("Content-Transfer-Encoding", cte)
    return cte


def decoded_payload(part: EmailMessage, raw: bytes) -> bytes | None:
    """`part.get_payload(decode=True)`, with fewer copies of a large part;
    `raw` is `_raw_payload(part)`.  For the parser's usual payload (ASCII
    text): a 7bit/8bit body is `raw` itself (the stdlib encodes the payload
    again), and base64 is decoded from `raw` with the line breaks deleted in
    one pass (the stdlib splits it into a list of lines and joins them).
    Anything else is the stdlib's answer."""
    cte = transfer_encoding(part)
    payload = part._payload
    if not isinstance(payload, str) or not payload.isascii():
        return part.get_payload(decode=True)
    if cte == "base64":
        value = _strict_base64(raw)
        if value is not None:
            return value
        value, defects = _decode_b(bytes(raw).translate(None, b"\r\n"))
        for defect in defects:
            part.policy.handle_defect(part, defect)
        return value
    if cte == "quoted-printable" or cte in _UU_ENCODINGS:
        return part.get_payload(decode=True)
    return raw


BASE64_BLOCK = 1 << 16


def _strict_base64(raw: bytes | Span) -> bytes | None:
    """What the stdlib's `decode_b(raw without CR and LF)` gives when that is
    valid strict base64 of a length divisible by 4 (then with no defect):
    decoded a block at a time into one buffer, without a copy of the whole
    input.  None for anything else, which the caller leaves to the stdlib."""
    out = io.BytesIO()
    for block in _strict_base64_blocks(raw):
        if block is None:
            return None
        out.write(block)
    return out.getvalue()


def _strict_base64_blocks(raw: bytes | Span) -> Iterator[bytes | None]:
    """The blocks of `_strict_base64(raw)`, decoded one at a time; a None
    block (then no more) if raw is not strict base64 after all.  Blocks are
    cut at multiples of 4 characters and only the last may hold "=": each
    then decodes alone as it does within the whole."""
    if (len(raw) - raw.count(b"\r") - raw.count(b"\n")) % 4:
        yield None
        return
    carry = b""
    for start in range(0, len(raw), BASE64_BLOCK):
        block = carry + raw[start:start + BASE64_BLOCK].translate(None, b"\r\n")
        last = start + BASE64_BLOCK >= len(raw)
        cut = len(block) if last else len(block) - len(block) % 4
        block, carry = block[:cut], block[cut:]
        if not last and b"=" in block:
            yield None
            return
        try:
            yield binascii.a2b_base64(block, strict_mode=True)
        except binascii.Error:
            yield None
            return


# The first octets of a streamed attachment kept for the filters (its kind
# needs at most 8 of them: relay.filters.attachments.kind_from_head).
HEAD_KEPT = 4096


class _Tally:
    """What `_streamed_attachment` learns of a decoded attachment as its
    blocks go by: the first octets, the size, and whether the stream ran to
    its end as strict base64 with a kind that its first block decides (a
    block is tens of KiB; the kind needs 8 octets)."""

    def __init__(self):
        self.head = b""
        self.size = 0
        self.usable = False

    def count(self, blocks: Iterator[bytes | None]) -> Iterator[bytes]:
        """The blocks, tallied; stops early at a None or an undecided kind."""
        for block in blocks:
            if block is None or (not self.size and kind_from_head(block) is None):
                return
            if len(self.head) < HEAD_KEPT:
                self.head += block[:HEAD_KEPT - len(self.head)]
            self.size += len(block)
            yield block
        self.usable = self.size > 0


def _payload_as_text(part: EmailMessage, raw: bytes, decoded: bytes, charset: str) -> str | None:
    """The parsed payload string itself, when it is what `decoded.decode(charset)`
    gives (ASCII, not transfer-encoded, a charset that reads ASCII as ASCII):
    the text part then shares the parser's string instead of a copy.  None otherwise."""
    payload = part._payload
    if decoded is raw and charset in _ASCII_CHARSETS and isinstance(payload, str) and payload.isascii():
        return payload
    return None


def _ends_with_newline(chunks: list[bytes | Span]) -> bool:
    """Does the concatenation of chunks (bytes or Spans) end in LF?"""
    for chunk in reversed(chunks):
        if chunk:
            return chunk[-1:] == b"\n"
    return False


def _with_charset(headers: list[bytes], part: EmailMessage, charset: str, writer: _Writer) -> list[bytes]:
    holder = EmailMessage(policy=OUT_POLICY)
    writer._copy_structured(part, holder, "Content-Type")
    holder.set_param("charset", charset)
    line = _header_line("Content-Type", str(holder["Content-Type"]))
    if not any(h.lower().startswith(b"content-type:") for h in headers):
        return [line] + headers
    return [line if h.lower().startswith(b"content-type:") else h for h in headers]


def _cid_value(value: str) -> str:
    return clean_header_text(value).strip().strip("<>").strip()


def _content_id_map(message: EmailMessage, hostname: str) -> dict[str, str]:
    salt = ""  # drawn for the first Content-ID only: most messages have none
    mapping: dict[str, str] = {}
    for part in message.walk():
        value = part.get("Content-ID")
        if value is None:
            continue
        old = _cid_value(str(value))
        if old and old not in mapping:
            salt = salt or tokens.token_hex(8)
            digest = hashlib.sha256((salt + old).encode("utf-8", "surrogatepass")).hexdigest()[:24]
            mapping[old] = f"{digest}@{hostname}"
    return mapping


def _strip_pgp_blocks(text: str) -> str:
    """Armoured keys and signatures carry the signer's user id in base64."""
    if "-----BEGIN PGP" not in text:
        return text
    text = PGP_BLOCK.sub("[PGP block removed by the relay]", text)
    return PGP_SIGNED_HEADER.sub("", text)


def _raw_octets(part: EmailMessage) -> bytes | Span:
    """`_raw_payload(part)`; for a large single-part ASCII body, a Span of
    the received octets that the parser decoded it from (relay.parsing
    .BodySource): they are the same octets, and encoding the payload again
    would be one more copy of the message while it is rewritten."""
    span = _received_span(part)
    return span if span is not None and len(span) >= FIND_IN_SOURCE else _raw_payload(part)


def _received_span(part: EmailMessage) -> Span | None:
    """The received octets an ASCII single-part body was parsed from
    (relay.parsing.BodySource): for ASCII, the payload's own encoding."""
    source = getattr(part, "body_source", None)
    payload = part._payload
    if source is None or source.payload is not payload or not payload.isascii():
        return None
    return Span(source.content, source.start, source.stop)


def _raw_payload(part: EmailMessage) -> bytes:
    payload = part.get_payload(decode=False)
    if isinstance(payload, list):
        return b""
    if isinstance(payload, bytes):
        return payload
    # 8-bit bytes come back from the parser as surrogate escapes; anything
    # it had to decode itself is re-encoded as UTF-8.
    text = str(payload or "")
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte produced
        return text.encode("utf-8", "replace")


# A file uuencoded inside a text part ("begin 644 name", lines of uuencode, "end"),
# which mail clients show as an attachment: its first data line is a length
# character (M for 45 octets) and 4k+ characters of the uuencode alphabet.
_INLINE_UUENCODE = re.compile(r"(?m)^begin(?:-base64)? [0-7]{3,4} [^\r\n]+\r?\n[!-`][ -`]{3,}\r?$")


# A message's id as a URI (RFC 2392) in HTML, as mail clients cite a quoted message
# (<blockquote type="cite" cite="mid:...">): it names the writer's domain, so it goes.
_MID_URI = re.compile(r"\bmid:[^\s\"'<>]{1,998}", re.IGNORECASE)


def _padding_only_at_the_end(raw: bytes | Span) -> bool:
    """Base64 with "=" only in its final padding.  After an early "=" the
    stdlib's decoder stops, where GNU base64 and some mail clients go on: the
    octets after it were never read here, so they are not relayed as received."""
    end = len(raw)
    while end and raw[end - 1:end] in (b"\r", b"\n", b"\t", b" ", b"="):
        end -= 1
    return raw.find(b"=", 0, end) < 0


def _lines_fit(raw: bytes) -> bool:
    """No line (split at LF, its CR not counted) is longer than MAX_LINE."""
    return not _has_long_line(raw, b"\n", strip=b"\r")


# Lines are split and measured this many octets at a time (a list of every line of a
# large message would take 1.7 times its size); a Python step per block, not per line.
LINE_BLOCK = 1 << 14


def _has_long_line(data: bytes, sep: bytes, strip: bytes = b"") -> bool:
    """Is a line of `data.split(sep)` longer than MAX_LINE (without the
    trailing `strip` characters)?  Blocks end at a separator, so each line
    is measured whole."""
    start, size = 0, len(data)
    while True:
        stop = data.find(sep, min(start + LINE_BLOCK, size))
        lines = (data[start:] if stop < 0 else data[start:stop]).split(sep)
        if max(map(len, lines)) > MAX_LINE and (not strip or any(len(line.rstrip(strip)) > MAX_LINE
                                                                 for line in lines)):
            return True
        if stop < 0:
            return False
        start = stop + len(sep)


def _ensure_crlf_end(body: bytes) -> bytes:
    if body and not body.endswith(b"\n"):
        body += b"\r\n"
    return body


def _encode_text(text: str, charset: str, prefer_base64: bool) -> tuple[bytes, str]:
    try:
        data = text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        data = text.encode("utf-8")
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if prefer_base64:
        encoded = base64.encodebytes(data)
        return encoded, "base64"
    if all(b < 128 for b in data) and all(len(line) <= 76 for line in data.split(b"\n")):
        return data if data.endswith(b"\n") or not data else data + b"\n", "7bit"
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    if encoded and not encoded.endswith(b"\n"):
        encoded += b"\n"
    return encoded, "quoted-printable"


# ------------------------------------------------------------------ the API

@functools.lru_cache(maxsize=1024)
def build_scrubber(parties: Parties) -> Scrubber:
    """The scrubber of a message between `parties`.  Made once for them:
    building its patterns costs more than scrubbing a message, and an
    order's parties write many messages."""
    replacements = {a: parties.sender_alias for a in _mailboxes(parties.sender_addresses)}
    replacements.update({a: parties.recipient_alias for a in _mailboxes(parties.recipient_addresses)})
    shown = _HTML_SPECIAL.sub("", parties.sender_display).strip() or parties.sender_alias
    local_parts = {local: shown for local in {address.rpartition("@")[0].lower()
                                              for address in _mailboxes(parties.sender_addresses)}
                   if _distinctive_local_part(local)}
    return Scrubber(replacements, local_parts)


_HTML_SPECIAL = re.compile(r"[<>&\"]")  # (a name put into an HTML part's text is not markup)
_LOCAL_PART_WORD = re.compile(r"[a-z]{0,12}")


def _distinctive_local_part(local: str) -> bool:
    """Does the writer's local part read as its name, never as a word of
    the text?  "jane.doe.1987", "sam_real", "j-smith" do; "bob", "sales",
    "info" (letters only) do not: replacing them would rewrite ordinary
    words.  A subaddress's tag is left to the address pattern."""
    return "+" not in local and len(local) >= 4 and not _LOCAL_PART_WORD.fullmatch(local)


def _mailboxes(addresses: Iterable[str]) -> Iterator[str]:
    """Each address, and for a subaddress (RFC 5233: bob+shop@x.example) its
    mailbox's own address too: a party registered with a tag writes and
    signs from the plain one as well (its other tags are the plain
    address's subaddresses: Scrubber)."""
    for address in addresses:
        yield address
        local, _, domain = address.rpartition("@")
        base = local.partition("+")[0]
        if base and base != local:
            yield f"{base}@{domain}"


def rewrite_message(message: EmailMessage, parties: Parties, threading: Threading,
                    redactions: tuple[tuple[str, str], ...] = ()) -> RewriteResult:
    """Produce the bytes the recipient receives, and the decoded view of them
    that the filters judge."""
    writer = _Writer(build_scrubber(parties), redactions, _content_id_map(message, parties.hostname),
                     getattr(message, "source_octets", None),
                     {parties.sender_alias.lower(): parties.sender_display, parties.recipient_alias.lower(): ""})
    subject = writer.scrub_text(header_text(message, "Subject"))
    subject = clean_header_text(subject)[:900]
    top: list[bytes] = [
        _mailbox_line("From", quoted_mailbox(parties.sender_display, parties.sender_alias)),
        _header_line("To", parties.recipient_addresses[0]),
    ]
    if subject:
        top.append(_header_line("Subject", subject))
    for name in KEPT_TOP_HEADERS:
        if name in ("Subject", "Date"):
            continue
        value = header_text(message, name)
        if value:
            top.append(_header_line(name, clean_header_text(writer.scrub_text(value))))
    # In UTC: the writer's timezone offset says where they live.
    top.append(_header_line("Date", _utc_date(message)))
    top.append(_header_line("Message-ID", threading.message_id))
    if threading.in_reply_to:
        top.append(_header_line("In-Reply-To", " ".join(threading.in_reply_to)))
    if threading.references:
        top.append(_header_line("References", " ".join(threading.references)))
    top.append(_header_line(LOOP_HEADER, parties.hostname))
    top.append(_header_line("MIME-Version", "1.0"))
    headers, body = writer.part(message, depth=0)
    data = _assemble([*top, *headers, b"\r\n", *body])
    del body  # the parts' own copies go now, before anything else is allocated
    data = normalize_line_endings(data)
    if _has_long_line(data, b"\r\n"):
        raise RewriteError("554 5.6.0 The message has a line the relay cannot fold within 998 octets.")
    _refuse_literal_leak(data, parties)
    return RewriteResult(data, writer.parts, writer.attachments, subject)


# An outgoing message at most this large is joined into one bytes object (the
# checks, the store and delivery are quickest on one piece, and the copy is
# small); a larger one stays Chunks (relay.chunks), never joined.
JOIN_BELOW = 256 * 1024


def _assemble(pieces: list[bytes | Span]) -> bytes | Chunks:
    if sum(map(len, pieces)) > JOIN_BELOW:
        return Chunks(pieces)
    return b"".join(p.view() if isinstance(p, Span) else p for p in pieces)


def _refuse_literal_leak(data: bytes | Chunks, parties: Parties) -> None:
    """Last line of defence: whatever path a part took, the bytes that leave
    never hold a party's address literally (the reader's own only in To)."""
    to_line = _header_line("To", parties.recipient_addresses[0]).lower()
    needles = [address.lower().encode("utf-8", "ignore")
               for address in parties.sender_addresses + parties.recipient_addresses]
    if _holds_without(data, needles, to_line):
        raise RewriteError(UNSCANNABLE)


# The leak check and the address hints lowercase this many octets (or
# characters) at a time, not a copy of the whole message or text.
LOWER_BLOCK = 1 << 14


def _holds_without(data: bytes, needles: list[bytes], cut: bytes) -> bool:
    """`any(n in data.lower().replace(cut, b"", 1) for n in needles)`: each
    side of the first `cut` is searched a lowercased block at a time (bytes
    lower() is octet by octet, so a block's lowercase is the lowercase's
    block), then the seam that removing `cut` makes."""
    if any(not needle for needle in needles):
        return True
    if type(data) is bytes and len(data) <= LOWER_BLOCK:  # a common message: one copy, lowercased once
        low = data.lower().replace(cut, b"", 1)
        return any(needle in low for needle in needles)
    start = _lowered_find(data, cut, 0, len(data))
    if start < 0:
        return _lowered_holds(data, needles, 0, len(data))
    end = start + len(cut)
    if _lowered_holds(data, needles, 0, start) or _lowered_holds(data, needles, end, len(data)):
        return True
    for needle in needles:
        reach = len(needle) - 1
        if needle in data[max(start - reach, 0):start].lower() + data[end:end + reach].lower():
            return True
    return False


def _lowered_blocks(data: bytes | str, begin: int, stop: int, overlap: int):
    """(offset, lowercase of data[offset:...]) covering data[begin:stop], each
    block running `overlap` octets (characters) into the next, so a match of
    up to overlap + 1 of them is whole in the block where it starts.  (A
    block that is all of `data` is `data` itself: the slice makes no copy.)"""
    for offset in range(begin, stop, LOWER_BLOCK):
        yield offset, data[offset:min(offset + LOWER_BLOCK + overlap, stop)].lower()


def _lowered_find(data: bytes, needle: bytes, begin: int, stop: int) -> int:
    """`data.lower().find(needle, begin, stop)` for a lowercase, non-empty needle."""
    for offset, low in _lowered_blocks(data, begin, stop, len(needle) - 1):
        found = low.find(needle)
        if found >= 0:
            return offset + found
    return -1


def _lowered_holds(data: bytes, needles: list[bytes], begin: int, stop: int) -> bool:
    """Is a (lowercase, non-empty) needle in `data.lower()[begin:stop]`?"""
    overlap = max(map(len, needles), default=1) - 1
    return any(needle in low for _, low in _lowered_blocks(data, begin, stop, overlap) for needle in needles)


def quoted_mailbox(display: str, address: str) -> str:
    """`"Display Name" <address>` as the contract shows it (always quoted),
    the name exactly: its quotes and backslashes as quoted-pairs (RFC 5322
    section 3.2.4), where they were once turned into apostrophes and
    dropped."""
    name = clean_header_text(display).strip()
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>' if name else address


def _mailbox_line(name: str, mailbox: str) -> bytes:
    """A header of one quoted_mailbox.  The stdlib's folder (CPython 3.11.7)
    writes a long quoted name as a bare phrase, so its quotes and
    backslashes are lost; printable ASCII is folded here instead, at the
    spaces, inside the quoted string where need be (RFC 5322 section 3.2.4
    allows folding white space there).  A name with other characters goes
    out as encoded words, which keep them."""
    if not (mailbox.isascii() and "=?" not in mailbox and _PLAIN_HEADER_VALUE.fullmatch(mailbox)):
        return _header_line(name, mailbox)
    lines, line = [], f"{name}:"
    for word in mailbox.split(" "):
        if len(line) + 1 + len(word) > 78 and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _utc_date(message: EmailMessage) -> str:
    try:
        when = message["Date"].datetime
    except Exception:
        when = None
    if when is None:
        return rfc5322_utc(datetime.now(timezone.utc))
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return rfc5322_utc(when)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc5322_utc(when: datetime) -> str:
    """`when` (in UTC, or naive and meant as UTC) as a Date header value:
    what email.utils.format_datetime(..., usegmt=True) writes, without its
    time tuple and table lookups, once a message (tests/test_rewrite.py
    compares the two)."""
    return (f"{_WEEKDAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} GMT")


def header_text(message: EmailMessage, name: str) -> str:
    """A header's decoded value.  Raw 8-bit bytes (sent without SMTPUTF8,
    THREATS #57) are read as UTF-8, else as Windows-1252/Latin-1, and never
    pass through undecoded: the stdlib would turn a Latin-1 byte into U+FFFD."""
    raw = _raw_header(message, name)
    if raw is None:
        return ""
    if not raw.isascii():
        return _eight_bit_header_text(name, raw)
    if len(raw) > ADDRESS_HEADER_LIMIT and name in NESTED_ADDRESS_HEADERS:
        return str(_AS_TEXT(name, "".join(raw.splitlines())))  # (parsable_address_header)
    try:
        return str(message.get(name))
    except Exception:
        return ""


# Header values read as unstructured text: encoded words decoded, nothing parsed as addresses.
_AS_TEXT = HeaderRegistry(use_default_map=False)


def parsable_address_header(message: EmailMessage, name: str) -> bool:
    """Whether the `name` fields of `message` are short enough for the
    stdlib's address parser (ADDRESS_HEADER_LIMIT); if not, they are read
    (header_text) and written (_header_line) as text."""
    wanted = name.lower()
    return all(len(value) <= ADDRESS_HEADER_LIMIT for key, value in message.raw_items() if key.lower() == wanted)


def _raw_header(message: EmailMessage, name: str) -> str | None:
    indexed = getattr(message, "raw_value", None)  # a parsed message (relay.parsing.IndexedMessage)
    if indexed is not None:
        return indexed(name)
    wanted = name.lower()
    for key, value in message.raw_items():
        if key.lower() == wanted:
            return value
    return None


def _eight_bit_header_text(name: str, raw: str) -> str:
    octets = raw.encode("utf-8", "surrogateescape")
    try:
        text = octets.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = octets.decode("cp1252")
        except UnicodeDecodeError:
            text = octets.decode("latin-1")
    try:
        return str(policy.default.header_factory(name, text.replace("\r", "").replace("\n", "")))
    except Exception:
        return text


def normalize_line_endings(data: bytes | Chunks) -> bytes | Chunks:
    """Every line ends in CRLF: a stray CR or LF never reaches the next hop
    (SMTP smuggling, THREATS #3; Postfix cleanup_replace_stray_cr_lf).
    Data that has only CRLF (every CR and every LF is in one) is returned
    as it is: counting is cheaper than three copies that change nothing.
    Chunks are normalised a piece at a time, seams included."""
    if crlf_only(data):
        return data
    if isinstance(data, Chunks):
        return data.with_line_endings(normalize_line_endings, crlf_only)
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def new_message_id(hostname: str) -> str:
    return f"<{tokens.ordered_token_hex(16)}@{hostname}>"


MSGID_TOKEN = re.compile(r"<[^<>\s]{1,250}>")


def message_ids_in(value: str | None) -> list[str]:
    """The <id> tokens of a Message-ID / In-Reply-To / References value."""
    if not value:
        return []
    return MSGID_TOKEN.findall(str(value))[:50]

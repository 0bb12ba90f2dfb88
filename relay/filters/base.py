"""The filter protocol: what a filter sees, what it reports.

Detection is apart from policy (maddy's checks, OpenSMTPD's closed set of
decisions): a filter only reports `Finding`s; the chain (relay.filters.chain)
applies the configured action (reject, redact, flag) per reason code.  Filters
are pure: everything they need from the store is precomputed into the
`FilterContext`, so they are testable without a socket or a database.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

SELLER_TO_BUYER = "seller_to_buyer"
BUYER_TO_SELLER = "buyer_to_seller"
BOTH_DIRECTIONS = frozenset({SELLER_TO_BUYER, BUYER_TO_SELLER})
FROM_SELLER = frozenset({SELLER_TO_BUYER})


@dataclass(frozen=True)
class Finding:
    """One thing a filter found.

    `fragment` is the offending text as it appears (quoted, shortened, in the
    SMTP reply); `location` says where ("subject", "text/plain part 1",
    "attachment invoice.pdf"); `sentence` is what a seller can act on.
    """

    code: str
    fragment: str
    location: str
    sentence: str


@dataclass(frozen=True)
class TextPart:
    """A decoded text part. For text/html, `text` is the markup itself."""

    location: str
    content_type: str
    text: str


@dataclass(frozen=True)
class Attachment:
    location: str
    filename: str | None
    content_type: str
    # The decoded file; of a large file whose first octets alone decide its kind (a PDF,
    # a JPEG...: relay.filters.attachments.kind_from_head), only those first octets
    # (relay.rewrite streams the rest).  `size` is always the whole file's.
    data: bytes
    # A text file's decoded text (what the rewriter rewrote as text, and the content rules
    # read: a .txt file, an HTML page, ...); None for other files.
    text: str | None = None
    size: int = -1  # the decoded size; -1: len(data)

    def __post_init__(self):
        if self.size < 0:
            object.__setattr__(self, "size", len(self.data))


@dataclass(frozen=True)
class MessageView:
    """The message as the filters judge it: decoded once, after the parties'
    own real addresses were replaced by their aliases."""

    subject: str
    parts: tuple[TextPart, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    max_depth: int = 0

    @classmethod
    def from_message(cls, message: EmailMessage) -> "MessageView":
        parts: list[TextPart] = []
        attachments: list[Attachment] = []
        _collect(message, parts, attachments, depth=0)
        return cls(subject=str(message.get("Subject", "") or ""), parts=tuple(parts), attachments=tuple(attachments))

    def plain_text(self) -> str:
        return plain_text(self.parts)


def plain_text(parts: tuple[TextPart, ...]) -> str:
    return "\n".join(p.text for p in parts if p.content_type == "text/plain")


def _collect(part: EmailMessage, parts: list[TextPart], attachments: list[Attachment], depth: int) -> None:
    if part.is_multipart():
        for sub in part.iter_parts():
            _collect(sub, parts, attachments, depth + 1)
        return
    ctype = part.get_content_type()
    filename = part.get_filename()
    disposition = part.get_content_disposition()
    is_body_text = ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename
    if is_body_text:
        parts.append(TextPart(f"{ctype} part {len(parts) + 1}", ctype, decoded_text(part)))
        return
    data = part.get_payload(decode=True) or b""
    name = filename or ctype
    text = decoded_text(part) if ctype.startswith("text/") else None
    attachments.append(Attachment(f"attachment {name}", filename, ctype, data, text))


def decoded_text(part: EmailMessage) -> str:
    """Decode a leaf part's payload to text whatever its transfer encoding and
    charset; undecodable bytes become U+FFFD rather than passing through raw."""
    data = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class FilterContext:
    """Facts about the exchange, gathered from the store before the chain runs."""

    direction: str
    order_id: str = ""
    seller_id: str = ""
    relay_domain: str = "relay.example"
    own_aliases: frozenset[str] = frozenset()  # this order's aliases, lowercase
    critical: bool = False  # the subject holds [Important] (any case)
    buyer_opted_out: bool = False
    # The buyer sent a message in this order (accepted), so the seller's mail
    # here answers it, threaded as a reply or not (CONTRACT: unsolicited means
    # the buyer has not written in that order).  A reply that names a buyer
    # message of this order implies it: that message's id is recorded with it.
    buyer_has_written: bool = False
    unsolicited_sent: int = 0  # accepted seller messages in this order before the buyer wrote
    critical_sent_window: int = 0  # accepted critical messages of this seller to opted-out buyers in the window
    critical_since: str = ""  # the window's start (ISO 8601, UTC), as the store compares received_at
    previous_fingerprints: frozenset[str] = field(default_factory=frozenset)  # accepted texts in this order


class Filter(Protocol):
    """One step of the chain. `name` is the key used in [filters] config."""

    name: str
    directions: frozenset[str]

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]: ...


CRITICAL_TAG = re.compile(r"\[important\]", re.IGNORECASE)


# Characters a reader does not see, as the body of a regex character class:
# the soft hyphen, the combining grapheme joiner, the Mongolian vowel
# separator, zero-width characters, bidi marks and embeddings, the word
# joiner, invisible operators and bidi isolates, the BOM.  The filters read
# text without them ("john\u200b@gmail.com" reads john@gmail.com: relay.filters.content)
# and the rewriter finds an address with them inside (relay.rewrite).
INVISIBLE_CHARACTERS = "\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"


def is_critical(subject: str) -> bool:
    return bool(CRITICAL_TAG.search(subject or ""))


def text_fingerprint(view: MessageView) -> str:
    """A fingerprint of the message's words: case, accents, whitespace,
    punctuation and quoted lines do not change it, so re-sending the same text
    with cosmetic edits is still recognised as a duplicate.  Attachments are
    part of the message: the same words with another file (a corrected
    invoice) are another message."""
    words = _parts_fingerprint(view.parts)
    return _with_attachments(words, view.attachments) if view.attachments else words


# Like _parts_fingerprint: the `duplicate` rule and the audit record ask one after the other.
@functools.lru_cache(maxsize=1)
def _with_attachments(words: str, attachments: tuple[Attachment, ...]) -> str:
    digest = hashlib.sha256(words.encode())
    for attachment in attachments:
        # (of a large file `data` is its first octets only: with its size, enough to tell versions apart)
        digest.update(b"\0%d\0%s\0" % (attachment.size, (attachment.filename or "").encode("utf-8", "replace")))
        digest.update(hashlib.sha256(attachment.data).digest())
    return digest.hexdigest()


# The `duplicate` rule and the audit record both want the fingerprint of the
# same text, one right after the other: computed once (one entry: a message's
# text is not kept past the next one).
@functools.lru_cache(maxsize=1)
def _parts_fingerprint(parts: tuple[TextPart, ...]) -> str:
    text = plain_text(parts)
    if not text or text.isspace():  # (`not text.strip()`, without a copy)
        text = "\n".join(_words_shown(p) for p in parts)
    digest = hashlib.sha256()
    started = False
    for block in _line_blocks(text):
        words = _block_words(block)
        if words:
            digest.update(b" " + words if started else words)
            started = True
    return digest.hexdigest()


def _words_shown(part: TextPart) -> str:
    """The text of a part as its reader sees it: an HTML part's text without
    its markup, so that the same sentence sent as plain text and as HTML
    alone is the same message (the tags were words)."""
    if part.content_type != "text/html":
        return part.text
    from relay.filters.content import scan_html  # (content imports this module)

    return scan_html(part.text).text


# The fingerprint is the hash of " ".join(words) over the whole text; it is
# computed a block of lines at a time, so a large text is never copied whole
# (the list of its lines, the normalised text and the list of its words were
# each one to two times its size).  Lines are joined by a space, which is
# where blocks meet: NFKD and casefold treat each side alike (a space is a
# starter, and casefold works a character at a time) and no word spans it.
FINGERPRINT_BLOCK = 1 << 12


def _line_blocks(text: str):
    """text in pieces that end just after a LF (so splitlines() of the pieces
    gives the lines of the whole), about FINGERPRINT_BLOCK characters each."""
    start, size = 0, len(text)
    while start < size:
        stop = text.find("\n", start + FINGERPRINT_BLOCK)
        stop = size if stop < 0 else stop + 1
        yield text[start:stop] if start or stop < size else text
        start = stop


def _block_words(block: str) -> bytes:
    """The words of one block's lines, quoted lines left out, joined by
    spaces and encoded.  Without a ">" no line is left out, and the line
    breaks themselves can stand for the spaces that join the lines: like a
    space, each is a starter for NFKD, unchanged by it and by casefold, and
    no part of a word.  ASCII text is its own NFKD, its casefold is its
    lowercase and its word characters are letters, digits and "_": done on
    octets, without a list of str words (2.5 times faster)."""
    if ">" not in block:
        if block.isascii():
            return b" ".join(block.encode("ascii").lower().translate(_ASCII_WORDS).split())
        return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKD", block).casefold())).encode()
    lines = [line for line in block.splitlines() if not line.lstrip().startswith(">")]
    norm = unicodedata.normalize("NFKD", " ".join(lines)).casefold()
    return " ".join(re.findall(r"\w+", norm)).encode()


# ASCII octets: word characters (as `\w` reads them) kept, the rest made spaces.
_ASCII_WORDS = bytes(octet if chr(octet).isalnum() or octet == 0x5F else 0x20 for octet in range(128)) + \
    bytes(range(128, 256))

"""The one email parser the relay uses, with a cache of parsed header fields.

The stdlib's `policy.default` parses a header field again on every access
(`msg["Content-Type"]`, `get_content_type()`, `get_param()`, ...), and the
relay reads the same fields many times per message: in the structure checks,
the filters and the rewriter.  That re-parsing was a fifth of the relay's CPU
under the benchmark's mixed load.  Parsed fields are immutable, and the parse
depends only on the name and the raw value, so short values are memoised
(most repeat across messages too: `text/plain; charset=utf-8`, `1.0`, `7bit`).
Long values are parsed each time, so the cache stays small (bounded count,
bounded value size).

Fields whose value is new in every message (Message-ID, Date, ...) go to a
second, small cache: it only has to serve the few reads of one message, and
kept in the big one they pushed the repeating values out and filled it with
parsed objects that the garbage collector re-examined on every full
collection (4096 entries were about 130,000 objects, and each full
collection under load took 100-250 ms: bench/gc_probe.py).

`parse_message` gives exactly what `BytesParser(policy=...).parsebytes` gives,
with far fewer copies of a large message (tests/test_parsing.py compares the
two on generated messages):

- the stdlib decodes the whole message to one string and wraps it in a
  StringIO (4 octets a character) before feeding the parser 8192 characters
  at a time; here each 8192-octet slice is decoded as it is fed (the
  ASCII/surrogateescape decoding maps one octet to one character, so the
  parser sees the same pieces);
- a message that is not multipart or message/* has its whole body as one
  string payload, which the stdlib builds line by line (a list of every
  line, 1.7 times the body, then joined, and a Python step per line: half
  the relay's CPU for a 10 MiB message).  Here the parser is fed the header
  block only (up to the line that ends it, found with the parser's own
  rules) and the body is decoded in one step.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from email.feedparser import NLCRE, FeedParser, headerRE
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy

CACHED_VALUE_LENGTH = 256
CACHE_ENTRIES = 1024
UNIQUE_CACHE_ENTRIES = 256  # > the fields of all messages in progress at once

# Fields whose values rarely repeat from one message to the next.
UNIQUE_VALUED = frozenset(("message-id", "date", "references", "in-reply-to", "subject", "received",
                           "resent-message-id", "resent-date", "content-id", "dkim-signature",
                           "arc-seal", "arc-message-signature", "arc-authentication-results",
                           "authentication-results"))


class ReusingHeaderRegistry(HeaderRegistry):
    """The stdlib's HeaderRegistry builds a new class for every header object
    it makes (`type()` in `__getitem__`): 23 microseconds, and one more
    garbage-collected class, for each Message-ID, Date or Subject of each
    message.  The class depends only on which header kind the name maps to,
    so it is built once per kind (a bounded set: unknown names share the
    unstructured kind)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._made: dict[type, type] = {}

    def __getitem__(self, name):
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:
            made = self._made[kind] = super().__getitem__(name)
        return made


class CachingPolicy(EmailPolicy):
    """`policy.default`, with short header values parsed once per process."""

    def header_fetch_parse(self, name, value):  # type: ignore[override]
        if hasattr(value, "name") or len(value) > CACHED_VALUE_LENGTH:
            return super().header_fetch_parse(name, value)
        if name.lower() in UNIQUE_VALUED:
            return _parsed_unique(self, name, value)
        return _parsed(self, name, value)


def _parse_field(policy: EmailPolicy, name: str, value: str):
    return EmailPolicy.header_fetch_parse(policy, name, value)


_parsed = functools.lru_cache(maxsize=CACHE_ENTRIES)(_parse_field)
_parsed_unique = functools.lru_cache(maxsize=UNIQUE_CACHE_ENTRIES)(_parse_field)


PARSE_POLICY = CachingPolicy(header_factory=ReusingHeaderRegistry())


# The stdlib parser's read size (email.parser.Parser.parse).
FEED_SIZE = 8192
# How far to look for the end of the header block (a longer one, refused by
# the limits anyway, takes the general path).
HEADER_SCAN = 256 * 1024


def parse_message(content: bytes) -> EmailMessage:
    """The message as `BytesParser(policy=PARSE_POLICY).parsebytes(content)` parses it."""
    cut = _header_block_cut(content)
    message = _parse_single_part(content, *cut) if cut is not None else None
    if message is None:
        message = _feed(content, 0, len(content))
    # The rewriter sends unchanged bodies from these octets (relay.rewrite).
    message.source_octets = content  # type: ignore[attr-defined]
    return message


def _feed(content: bytes, start: int, stop: int) -> EmailMessage:
    """Parse content[start:stop] as the stdlib does, decoding one slice at a time."""
    parser = FeedParser(policy=PARSE_POLICY)
    with memoryview(content) as view:
        for pos in range(start, stop, FEED_SIZE):
            parser.feed(str(view[pos:min(pos + FEED_SIZE, stop)], "ascii", "surrogateescape"))
    return parser.close()  # type: ignore[return-value]


def _header_block_cut(content: bytes) -> tuple[int, int] | None:
    """(end of the line that ends the header block, start of the body), by
    the feed parser's rules: lines split at CR, LF or CRLF; the first line
    that is neither a header field nor a continuation ends the block; if it
    is an empty line it is consumed, else it is the body's first line.  None
    if that line is not within the first HEADER_SCAN octets.  The window
    grows from 4 KiB, so a common header block costs one small look."""
    size = 4096
    while True:
        found, complete = _cut_within(content, min(size, HEADER_SCAN))
        if found is not None or complete or size >= HEADER_SCAN:
            return found
        size *= 4


def _cut_within(content: bytes, size: int) -> tuple[tuple[int, int] | None, bool]:
    """The cut if it is within content[:size], and whether that is all of the content."""
    window = str(content[:size], "ascii", "surrogateescape")
    lines = io.StringIO(window, newline="").readlines()
    whole = len(content) <= size
    pos = 0
    for line in lines if whole else lines[:-1]:  # the last line may go on past the window
        if not headerRE.match(line):
            end = pos + len(line)
            return ((end, end) if NLCRE.match(line) else (end, pos)), whole
        pos += len(line)
    return None, whole


def _parse_single_part(content: bytes, cut: int, body_start: int) -> EmailMessage | None:
    """Parse the header block alone; if the message is neither multipart nor
    message/*, its payload is the rest of the content, decoded as the stdlib
    decodes it.  None for other messages (they take the general path)."""
    message = _feed(content, 0, cut)
    if message.get_content_maintype() in ("multipart", "message") or message.is_multipart():
        return None
    with memoryview(content) as view:
        # (_payload: get_payload() would decode text holding 8-bit octets)
        if message._payload != str(view[body_start:cut], "ascii", "surrogateescape"):
            return None  # not where we thought the body starts: never guess
        message.set_payload(str(view[body_start:], "ascii", "surrogateescape"))
    message.body_source = BodySource(message._payload, content, body_start)  # type: ignore[attr-defined]
    return message


@dataclass(frozen=True)
class BodySource:
    """Where a single-part message's payload came from: `content[start:]`,
    decoded to `payload`.  The rewriter sends an unchanged ASCII body
    straight from these octets (relay.rewrite), so it need not hold an
    encoded copy of the payload while the outgoing message is joined."""

    payload: str
    content: bytes
    start: int

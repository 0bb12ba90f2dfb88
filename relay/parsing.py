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
import itertools
import os
import re
from dataclasses import dataclass
from email.feedparser import NLCRE, FeedParser, headerRE
from email.headerregistry import HeaderRegistry, MessageIDHeader, UnstructuredHeader, _reconstruct_header
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
            # As the stdlib's __getitem__ makes it, with the deferred parse of
            # the kinds that have one in the class's own namespace.
            made = self._made[kind] = type("_" + kind.__name__, (kind, self.base_class), _deferred_parse_for(kind))
        return made


# Deferred parse trees.  A header object is its decoded text plus a parse
# tree, which only folding (writing the header out again) uses; the relay
# reads these headers and writes its own.  For the values where the decoded
# text and the defects are known without the stdlib's token parser, the
# tree is built at its first use instead of at once: a new Message-ID took
# 28 us to parse and a Subject 24 (about 4 % of a message's CPU), and
# neither tree was ever read.  tests/test_parsing.py compares every
# attribute, the folded form included, with the stdlib's parse.

class _TreeNotBuilt:
    """The value a header's parse tree will be built from, when it is needed."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value


def _get_tree(header):
    tree = header.__dict__["_deferred_tree"]
    if type(tree) is _TreeNotBuilt:
        tree = header.__dict__["_deferred_tree"] = type(header).value_parser(tree.value)
    return tree


def _set_tree(header, tree) -> None:
    header.__dict__["_deferred_tree"] = tree


_TREE_PROPERTY = property(_get_tree, _set_tree)


def _reduce(header):
    """Copies and pickles get the stdlib's own class, with the tree built."""
    state = dict(header.__dict__)
    state["_parse_tree"] = _get_tree(header)
    del state["_deferred_tree"]
    return _reconstruct_header, (type(header).__name__, type(header).__bases__, str(header)), state


# "<dot-atom-text@dot-atom-text>" and nothing around it (RFC 5322 section
# 3.6.4): the stdlib's msg-id parse of it decodes to the value, without a
# defect.  Anything else (comments, spaces, literals, obsolete forms) is
# parsed by the stdlib.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_MSG_ID = re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>")


def _unstructured_without_encoded_words(value: str) -> bool:
    """The stdlib's unstructured parse of a value without an encoded word
    ("=?") is a run of tokens that are slices of it: the decoded text is
    the value, and the kind records no defects."""
    return "=?" not in value


def _simple_message_id(value: str) -> bool:
    return "=?" not in value and _SIMPLE_MSG_ID.fullmatch(value) is not None


def _deferred_parse_for(kind: type) -> dict:
    """The namespace of the header class made for `kind`: for the
    unstructured and Message-ID kinds, a parse that defers the tree of the
    values it knows the outcome of; nothing for the other kinds."""
    if issubclass(kind, UnstructuredHeader):
        known = _unstructured_without_encoded_words
    elif issubclass(kind, MessageIDHeader):
        known = _simple_message_id
    else:
        return {}
    stdlib_parse = kind.parse.__func__

    def parse(cls, value, kwds):
        if not known(value):
            return stdlib_parse(cls, value, kwds)
        kwds["parse_tree"] = _TreeNotBuilt(value)
        kwds["decoded"] = value

    return {"parse": classmethod(parse), "_parse_tree": _TREE_PROPERTY, "__reduce__": _reduce}


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


class IndexedMessage(EmailMessage):
    """EmailMessage whose header lookups go through an index of field names.

    The stdlib finds a field by lowering and comparing every field name of
    the message on every lookup (`get`, `get_all`, `in`, and through them
    get_content_type and the rest), and the relay looks fields up about 25
    times a message: 225 str.lower calls a 2 KB message.  The index (lowered
    name -> positions) is made at the first lookup and made again whenever
    the header list is another list or has another length; the stdlib only
    ever changes a field in place under its own name (replace_header), which
    leaves the positions of every name as they were.  Answers are the
    stdlib's own: the first field of the name, or all of them in order
    (tests/test_parsing.py compares)."""

    _header_index: tuple[list, int, dict[str, tuple[int, ...]]] | None = None

    def _positions(self, name: str) -> tuple[int, ...]:
        headers = self._headers
        made = self._header_index
        if made is None or made[0] is not headers or made[1] != len(headers):
            index: dict[str, tuple[int, ...]] = {}
            for position, (key, _) in enumerate(headers):
                lowered = key.lower()
                index[lowered] = index.get(lowered, ()) + (position,)
            made = self._header_index = (headers, len(headers), index)
        return made[2].get(name.lower(), ())

    def get(self, name, failobj=None):
        positions = self._positions(name)
        if not positions:
            return failobj
        key, value = self._headers[positions[0]]
        return self.policy.header_fetch_parse(key, value)

    def get_all(self, name, failobj=None):
        positions = self._positions(name)
        if not positions:
            return failobj
        headers, fetch = self._headers, self.policy.header_fetch_parse
        return [fetch(*headers[position]) for position in positions]

    def __getitem__(self, name):
        return self.get(name)

    def __contains__(self, name):
        return bool(self._positions(name))

    def raw_value(self, name: str) -> str | None:
        """The first field of `name` as received (undecoded), or None."""
        positions = self._positions(name)
        return self._headers[positions[0]][1] if positions else None


PARSE_POLICY = CachingPolicy(header_factory=ReusingHeaderRegistry(), message_factory=IndexedMessage)


# The stdlib parser's read size (email.parser.Parser.parse).
FEED_SIZE = 8192
# How far to look for the end of the header block (a longer one, refused by
# the limits anyway, takes the general path).
HEADER_SCAN = 256 * 1024


def parse_message(content: bytes) -> EmailMessage:
    """The message as `BytesParser(policy=PARSE_POLICY).parsebytes(content)` parses it."""
    cut = _header_block_cut(content)
    message = _parse_single_part(content, *cut) if cut is not None else None
    if message is None and len(content) >= SKELETON_MIN:
        message = _parse_skeleton(content)
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


def _header_block_cut(content: bytes) -> tuple[int, int, list[str]] | None:
    """(end of the line that ends the header block, start of the body, the
    block's lines as decoded, that line included), by the feed parser's
    rules: lines split at CR, LF or CRLF; the first line that is neither a
    header field nor a continuation ends the block; if it is an empty line
    it is consumed, else it is the body's first line.  None if that line is
    not within the first HEADER_SCAN octets.  The window grows from 4 KiB,
    so a common header block costs one small look."""
    size = 4096
    while True:
        found, complete = _cut_within(content, min(size, HEADER_SCAN))
        if found is not None or complete or size >= HEADER_SCAN:
            return found
        size *= 4


def _cut_within(content: bytes, size: int) -> tuple[tuple[int, int, list[str]] | None, bool]:
    """The cut if it is within content[:size], and whether that is all of the content."""
    window = str(content[:size], "ascii", "surrogateescape")
    lines = io.StringIO(window, newline="").readlines()
    whole = len(content) <= size
    pos = 0
    for n, line in enumerate(lines if whole else lines[:-1]):  # the last line may go on past the window
        if not headerRE.match(line):
            end = pos + len(line)
            return (end, end if NLCRE.match(line) else pos, lines[:n + 1]), whole
        pos += len(line)
    return None, whole


def _parse_single_part(content: bytes, cut: int, body_start: int, lines: list[str]) -> EmailMessage | None:
    """Parse the header block alone; if the message is neither multipart nor
    message/*, its payload is the rest of the content, decoded as the stdlib
    decodes it.  None for other messages (they take the general path)."""
    message = _header_block(content, cut, body_start, lines)
    if message.get_content_maintype() in ("multipart", "message") or message.is_multipart():
        return None
    with memoryview(content) as view:
        # (_payload: get_payload() would decode text holding 8-bit octets)
        if message._payload != str(view[body_start:cut], "ascii", "surrogateescape"):
            return None  # not where we thought the body starts: never guess
        message.set_payload(str(view[body_start:], "ascii", "surrogateescape"))
    message.body_source = BodySource(message._payload, content, body_start)  # type: ignore[attr-defined]
    return message


def _header_block(content: bytes, cut: int, body_start: int, lines: list[str]) -> EmailMessage:
    """`_feed(content, 0, cut)` for a header block ended by an empty line
    (`lines`: content[:cut] decoded and split, as _header_block_cut found them):
    the message with the block's fields, as the feed parser makes it (a
    field's lines go through the policy's header_source_parse and are
    appended in order), in a fifth of the time (its generator reads one line
    per step and tests each line against several patterns).  Every line of
    the block is already known to be a field or a continuation (the cut is
    where the first other line is); the feed parser still decides what
    records a defect or an envelope line: a block that starts with a
    continuation, a field with no name, a "From " line, or a block ended by
    a line that is not empty (tests/test_parsing.py compares the two)."""
    if body_start != cut:
        return _feed(content, 0, cut)  # a missing separator: a defect
    fields: list[list[str]] = []
    for line in lines[:-1]:  # (the last is the empty line)
        if line[0] in " \t":
            if not fields:
                return _feed(content, 0, cut)
            fields[-1].append(line)
        elif line.startswith(("From ", ":")):
            return _feed(content, 0, cut)
        else:
            fields.append([line])
    message = IndexedMessage(policy=PARSE_POLICY)
    parse = PARSE_POLICY.header_source_parse
    message._headers = [parse(field) for field in fields]
    message.set_payload("")  # (the feed parser's payload of an empty body)
    return message


@dataclass(frozen=True)
class BodySource:
    """Where a leaf part's payload came from: `content[start:stop]` (to the
    end when stop is None), decoded to `payload`.  The rewriter sends an
    unchanged ASCII body straight from these octets (relay.rewrite), so it
    need not hold an encoded copy of the payload while the outgoing message
    is joined."""

    payload: str
    content: bytes
    start: int
    stop: int | None = None


# Large multipart messages (a photo or a PDF attached: the common large
# message) are parsed from a skeleton.  The stdlib's parser keeps every line
# of a part in a list (1.7 times the part) and joins them, with a Python step
# per line; here long runs of lines that cannot matter to the structure are
# replaced by one marker line each, the skeleton is parsed by the stdlib, and
# each payload holding markers is then decoded from the received octets in one
# step.
SKELETON_MIN = 256 * 1024  # messages at least this large
RUN_MIN = 16 * 1024  # runs shorter than this stay in the skeleton as they are
# More than one structural line (below) per this many octets on average: the
# whole message goes to the stdlib's parser.  It bounds the Python steps of
# the scan (a message of nothing but "a:" lines would take one per line) and
# such a message has few runs worth replacing anyway.
STRUCTURAL_SPACING = 256
# A line is "structural" if the parser may read it as anything but a line of
# some text: a boundary ("--"), a header field or its continuation (the
# parser's headerRE: "From ", a blank first, or a colon after printable
# characters only), or the empty line that ends a header block.  Every other
# line is "plain".  The header field case is looked for from each colon (a
# pattern that tries it at every line start costs 7 times as much).
_STRUCTURAL_START = re.compile(rb"\n(?=[-\t \n]|\r\n|From )")  # (a lookahead: empty lines in a row)
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]*")
_MARKER = "\x7frelay-run-%s-"  # a plain line: no colon, no "-" or blank first


def _parse_skeleton(content: bytes) -> EmailMessage | None:
    """The parse of `content`, from a skeleton in which every run of plain
    lines (bar the last line of each run, which the parser may trim) is one
    marker line.  A marker is a plain line too, so the parser makes every
    decision about the skeleton that it makes about the content: the same
    parts, headers, boundaries and defects.  None (parse it whole) for lone
    CRs (the parser's other line end), for too few runs, and if a marker is
    found anywhere but in a payload, a preamble or an epilogue that maps
    back onto the content octet for octet."""
    if content.count(b"\r") != content.count(b"\r\n"):
        return None
    runs = _plain_runs(content)
    if not runs:
        return None
    nonce = os.urandom(8).hex()
    marker = _MARKER % nonce
    marker_octets = marker.encode()
    if marker_octets in content:
        return None
    pieces, pos = [], 0
    for i, (start, stop) in enumerate(runs):
        line_end = b"\r\n" if content[stop - 2:stop] == b"\r\n" else b"\n"
        pieces += (content[pos:start], b"%s%d%s" % (marker_octets, i, line_end))
        pos = stop
    pieces.append(content[pos:])
    skeleton = b"".join(pieces)
    del pieces
    message = _feed(skeleton, 0, len(skeleton))
    del skeleton
    if _restore_runs(message, content, runs, marker):
        return message
    return None


def _plain_runs(content: bytes) -> list[tuple[int, int]]:
    """(start, stop) of each run of at least RUN_MIN octets of whole plain
    lines, the last plain line before a structural line (or the end) left
    out.  The first line and the last line without its LF never count."""
    runs: list[tuple[int, int]] = []
    budget = len(content) // STRUCTURAL_SPACING
    last_end = content.rfind(b"\n") + 1  # after this, a line without its line end
    starts = [m.start() + 1 for m in itertools.islice(_STRUCTURAL_START.finditer(content, 0, last_end), budget + 1)]
    if len(starts) > budget:
        return runs  # the scan stopped at the budget: the lines after it were never looked at
    fields = _field_lines(content, last_end, budget - len(starts))
    if fields is None:
        return runs  # structural lines too close together for runs worth the trouble
    starts += fields
    starts.sort()
    starts.append(last_end)
    line_after = content.find(b"\n") + 1  # the first line is never plain: it is a header field
    for structural in starts:
        # content[line_after:structural] is plain lines; leave out the last one
        run_stop = content.rfind(b"\n", line_after, structural - 1) + 1
        if run_stop - line_after >= RUN_MIN:
            runs.append((line_after, run_stop))
        line_after = content.find(b"\n", structural) + 1 or len(content)
    return runs


def _field_lines(content: bytes, stop: int, budget: int) -> list[int] | None:
    """The start of each line before `stop` (the first line apart) that is a
    colon after printable characters only: a header field to the parser.
    None if there are more than `budget`."""
    found: list[int] = []
    colon = content.find(b":", 0, stop)
    while colon >= 0:
        line_start = content.rfind(b"\n", 0, colon) + 1
        if line_start and _FIELD_NAME.fullmatch(content, line_start, colon):
            if len(found) >= budget:
                return None
            found.append(line_start)
        line_end = content.find(b"\n", colon, stop)
        if line_end < 0:
            break
        colon = content.find(b":", line_end, stop)
    return found


def _restore_runs(message: EmailMessage, content: bytes, runs: list[tuple[int, int]], marker: str) -> bool:
    """Put the content back where the skeleton's parse has markers; False if a
    marker is anywhere it cannot be put back."""
    found = re.compile(re.escape(marker) + r"(\d+)\r?\n")
    for part in message.walk():
        if any(marker in value for _, value in part._headers) or any(marker in str(d) for d in part.defects) \
                or marker in (part.get_unixfrom() or ""):
            return False
        for attr in ("_payload", "preamble", "epilogue"):
            text = getattr(part, attr)
            if not isinstance(text, str) or marker not in text:
                continue
            span = _span_of(text, found, content, runs)
            if span is None:
                return False
            start, stop = span
            with memoryview(content) as view:
                restored = str(view[start:stop], "ascii", "surrogateescape")
            setattr(part, attr, restored)
            if attr == "_payload":
                part.body_source = BodySource(restored, content, start, stop)  # type: ignore[attr-defined]
    return True


def _span_of(text: str, found: re.Pattern, content: bytes, runs: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Where in the content `text` (skeleton text with markers) came from, if
    everything between its markers is exactly the content between their runs."""
    start = stop = None
    pos = 0
    for match in found.finditer(text):
        run_start, run_stop = runs[int(match.group(1))]
        before = text[pos:match.start()].encode("ascii", "surrogateescape")
        if stop is None:
            start = run_start - len(before)
            if start < 0 or content[start:run_start] != before:
                return None
        elif content[stop:run_start] != before:
            return None
        stop, pos = run_stop, match.end()
    if stop is None:
        return None
    after = text[pos:].encode("ascii", "surrogateescape")
    if content[stop:stop + len(after)] != after:
        return None
    return start, stop + len(after)

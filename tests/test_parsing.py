"""The caching parse policy (relay.parsing) gives exactly what policy.default
gives, shares nothing mutable between messages, and keeps long values out of
its cache."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

from relay import parsing

MESSAGE = (b"From: \"Sam\" <sam@shop.example>\r\nTo: a@relay.example, \"B\" <b@relay.example>\r\n"
           b"Subject: =?utf-8?q?Caf=C3=A9?= order\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Message-ID: <m1@shop.example>\r\nX-Long: " + b"word " * 100 + b"\r\n\r\nHello\r\n")


def test_cached_fields_equal_the_stdlib_parse():
    ours = parsing.parse_message(MESSAGE)
    stdlib = BytesParser(policy=policy.default).parsebytes(MESSAGE)
    for name in ("From", "To", "Subject", "Content-Type", "Message-ID", "X-Long"):
        for _ in range(2):  # the second read comes from the cache
            a, b = ours[name], stdlib[name]
            assert str(a) == str(b) and type(a).__mro__[1:] == type(b).__mro__[1:] and a.defects == b.defects, name
    assert [x.addr_spec for x in ours["To"].addresses] == ["a@relay.example", "b@relay.example"]
    assert ours.get_content_type() == "text/plain" and ours.get_content_charset() == "utf-8"


def test_two_messages_get_their_own_values():
    first = parsing.parse_message(MESSAGE)
    second = parsing.parse_message(MESSAGE.replace(b"m1@shop", b"m2@shop"))
    assert first["Message-ID"] == "<m1@shop.example>" and second["Message-ID"] == "<m2@shop.example>"
    assert first["From"] is second["From"]  # same raw value: one parse, immutable


def test_long_values_are_not_cached():
    message = parsing.parse_message(MESSAGE)
    parsing._parsed.cache_clear()
    assert len(str(message["X-Long"])) > parsing.CACHED_VALUE_LENGTH
    assert parsing._parsed.cache_info().currsize == 0
    message["Content-Type"]
    assert parsing._parsed.cache_info().currsize == 1


def test_values_new_in_every_message_do_not_push_out_the_repeating_ones():
    parsing._parsed.cache_clear()
    parsing._parsed_unique.cache_clear()
    first = parsing.parse_message(MESSAGE)
    content_type = first["Content-Type"]
    for n in range(parsing.CACHE_ENTRIES + 10):
        other = parsing.parse_message(MESSAGE.replace(b"m1@shop", f"n{n}@shop".encode())
                                      .replace(b"Caf=C3=A9", f"Caf=C3=A9 {n}".encode()))
        assert other["Message-ID"] == f"<n{n}@shop.example>" and other["Subject"] == f"Café {n} order"
        assert other["Date"] is None
    assert parsing._parsed.cache_info().currsize == 1
    assert parsing._parsed_unique.cache_info().currsize == parsing.UNIQUE_CACHE_ENTRIES
    assert parsing.parse_message(MESSAGE)["Content-Type"] is content_type  # still cached


# ---------------------------------------------------------------- the fast parse
# parse_message parses the header block alone and decodes a single-part body in
# one step; it must give exactly what the stdlib's BytesParser gives.

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402


def _shape(message) -> list:
    """Everything the parse decides, part by part."""
    shape = []
    for part in message.walk():
        payload = part._payload
        shape.append((part.get_unixfrom(), list(part._headers), [type(d).__name__ for d in part.defects],
                      [str(d) for d in part.defects], part.preamble, part.epilogue,
                      payload if isinstance(payload, str) else len(payload), type(part).__name__,
                      part.get_default_type()))
    return shape


def _stdlib(data: bytes):
    return BytesParser(policy=parsing.PARSE_POLICY).parsebytes(data)


_LINE_END = st.sampled_from(["\r\n", "\n", "\r", "\r\n", "\r\n"])
_HEADER = st.one_of(
    st.sampled_from(["From: <a@b.example>", "Subject: hi", "Content-Type: text/plain; charset=utf-8",
                     "Content-Type: multipart/mixed; boundary=b1", "Content-Type: message/rfc822",
                     "Content-Type: text/html", "Content-Transfer-Encoding: base64", " folded",
                     "\tcontinued", "From bob Tue Jan 1", "X-Odd:", "no colon here", "", "--b1", "--b1--",
                     "Content-Type: multipart", "Subject: caf\udce9", ">From x", "."]),
    st.text(alphabet=st.sampled_from("aZ: -\t=.\udcff\u00e9\x0b\x0c\x1c\x85"), max_size=12))
_BODY_LINE = st.one_of(st.sampled_from(["", "--b1", "--b1--", "Hello", "From x", "X" * 78, "a\x85b",
                                        "caf\udce9", "Content-Type: text/plain", "=?utf-8?q?x?="]),
                       st.text(alphabet=st.sampled_from("ab \t-=\udc80\r\n"), max_size=20))


@st.composite
def _messages(draw) -> bytes:
    parts = []
    for line in draw(st.lists(_HEADER, max_size=8)):
        parts.append(line + draw(_LINE_END))
    if draw(st.booleans()):
        parts.append(draw(_LINE_END))  # the blank separator line
    for line in draw(st.lists(_BODY_LINE, max_size=12)):
        parts.append(line + draw(_LINE_END))
    if draw(st.booleans()):
        parts.append(draw(_BODY_LINE))  # no final line end
    return "".join(parts).encode("utf-8", "surrogateescape")


@hsettings(max_examples=1500, deadline=None)
@given(_messages())
def test_fast_parse_equals_the_stdlib_parse(data):
    assert _shape(parsing.parse_message(data)) == _shape(_stdlib(data))


@hsettings(max_examples=200, deadline=None)
@given(_messages(), st.integers(min_value=0, max_value=3), st.sampled_from(["\r\n", "\n", "\r"]))
def test_fast_parse_equals_the_stdlib_parse_across_feed_and_scan_sizes(data, pad, end):
    # Headers and bodies that straddle the 8192-octet feed slices and the header scan window.
    filler = ("X-Pad: " + "p" * 70 + end) * (110 + pad)
    big = filler.encode() + data + (b"body line" + end.encode()) * (900 * pad)
    assert _shape(parsing.parse_message(big)) == _shape(_stdlib(big))
    scan, parsing.HEADER_SCAN = parsing.HEADER_SCAN, 8000
    try:
        assert _shape(parsing.parse_message(big)) == _shape(_stdlib(big))
    finally:
        parsing.HEADER_SCAN = scan


def test_fast_parse_of_a_large_plain_message_and_its_fallbacks():
    body = b"".join(b"line %d " % i + b"X" * 70 + b"\r\n" for i in range(20000))
    for head in (b"From: <a@b.example>\r\nSubject: big\r\n\r\n", b"Subject: no separator\r\n",
                 b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n\r\n",
                 b"X-Long: " + b"v" * 300000 + b"\r\n\r\n", b""):
        data = head + body
        assert _shape(parsing.parse_message(data)) == _shape(_stdlib(data))


def test_a_header_class_is_made_once_per_kind_not_once_per_header():
    """The stdlib's registry made a new class for every header object (23 us
    each, and one more class for the GC); ours reuses one per kind, and the
    kinds are a bounded set whatever names a message brings."""
    made = parsing.PARSE_POLICY.header_factory._made
    messages = [parsing.parse_message(MESSAGE.replace(b"m1@shop", f"n{n}@shop".encode())
                                      .replace(b"X-Long", f"X-Name-{n}".encode())) for n in range(40)]
    ids = [m["Message-ID"] for m in messages]
    assert len({type(h) for h in ids}) == 1 and [str(h) for h in ids] == [f"<n{n}@shop.example>" for n in range(40)]
    assert len({type(m[f"X-Name-{n}"]) for n, m in enumerate(messages)}) == 1
    stdlib = BytesParser(policy=policy.default).parsebytes(MESSAGE)
    assert type(ids[0]).__mro__[1:] == type(stdlib["Message-ID"]).__mro__[1:]
    assert len(made) <= len(parsing.PARSE_POLICY.header_factory.registry) + 1


# Large messages that are not single-part are parsed from a skeleton (runs of
# plain lines replaced by marker lines); the result must be the stdlib's parse.

import base64  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck  # noqa: E402


@pytest.fixture
def skeleton_always(monkeypatch):
    """The skeleton path for every message and every run of two or more plain lines."""
    monkeypatch.setattr(parsing, "SKELETON_MIN", 0)
    monkeypatch.setattr(parsing, "RUN_MIN", 1)


_PLAIN = st.sampled_from(["Hello", "X" * 78, "a\x85b", "caf\udce9", "=?utf-8?q?x?=", "QUJD+/=",
                          ">From x", "no colon here", "\x0bvt", ".", "..", "1: not a name", "a b: c"])
_STRUCT = st.sampled_from(["", "--b1", "--b1--", "--b2", "--b2--", "From x", "Content-Type: text/plain",
                           "Content-Type: multipart/mixed; boundary=b2", "Content-Type: message/rfc822",
                           "Content-Type: message/delivery-status", "Content-Transfer-Encoding: base64",
                           " folded", "\tcontinued", "X-Odd:", "--b1 ", "--", "-x", "Subject: s"])


@st.composite
def _multipart_messages(draw) -> bytes:
    """Multipart-ish messages with runs of plain lines between structural ones."""
    end = draw(st.sampled_from(["\r\n", "\n", "\r\n", "\r"]))
    lines = ["From: <a@b.example>", "Content-Type: " + draw(st.sampled_from(
        ["multipart/mixed; boundary=b1", "multipart/alternative; boundary=\"b1\"", "multipart/mixed",
         "message/rfc822", "text/plain", "message/delivery-status"]))]
    for _ in range(draw(st.integers(0, 14))):
        if draw(st.booleans()):
            lines.append(draw(_STRUCT))
        else:
            lines += [draw(_PLAIN)] * draw(st.integers(1, 6))
    text = end.join(lines)
    if draw(st.booleans()):
        text += end
    return text.encode("utf-8", "surrogateescape")


# (the fixture sets two constants: nothing to reset between examples)
@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_multipart_messages())
def test_skeleton_parse_equals_the_stdlib_parse(skeleton_always, data):
    assert _shape(parsing.parse_message(data)) == _shape(_stdlib(data))


@hsettings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_messages())
def test_skeleton_parse_equals_the_stdlib_parse_on_any_message(skeleton_always, data):
    assert _shape(parsing.parse_message(data)) == _shape(_stdlib(data))


def _attachment_message(line_end: bytes = b"\r\n") -> bytes:
    pdf = b"%PDF-1.4\n" + random.Random(7).randbytes(400_000)
    encoded = base64.encodebytes(pdf).replace(b"\n", line_end)
    head = (b"From: <a@b.example>\nSubject: invoice\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\n\nThis is MIME.\n--b1\n"
            b"Content-Type: text/plain; charset=utf-8\n\nHello,\nsee the invoice: attached.\n\n"
            + b"Thanks for the order.\n" * 2000 + b"--b1\nContent-Type: application/pdf; name=a.pdf\n"
            b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=a.pdf\n\n")
    return head.replace(b"\n", line_end) + encoded + b"--b1--".replace(b"\n", line_end) + line_end



@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_a_large_attachment_message_is_parsed_from_a_skeleton(line_end):
    """At the default sizes: the two large bodies come back from the received
    octets (a BodySource each, for the rewriter), equal to the stdlib's parse."""
    data = _attachment_message(line_end)
    message = parsing._parse_skeleton(data)
    assert message is not None
    assert _shape(message) == _shape(_stdlib(data))
    leaves = [p for p in message.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in leaves] == ["text/plain", "application/pdf"]
    for leaf in leaves:
        source = leaf.body_source
        assert source.payload is leaf._payload
        assert data[source.start:source.stop].decode("ascii") == leaf._payload
    assert leaves[1].get_payload(decode=True) == _stdlib(data).get_payload()[1].get_payload(decode=True)


def test_skeleton_falls_back_where_it_cannot_be_sure():
    data = _attachment_message()
    # A lone CR is a line end to the parser: the whole message is parsed as it comes.
    lone_cr = data.replace(b"Hello,\r\n", b"Hello,\r")
    assert parsing._parse_skeleton(lone_cr) is None
    assert _shape(parsing.parse_message(lone_cr)) == _shape(_stdlib(lone_cr))
    # No run long enough to be worth it.
    assert parsing._parse_skeleton(data[:2000]) is None


def test_skeleton_never_mistakes_the_content_for_its_own_markers(monkeypatch):
    """A message that holds the marker text itself takes the stdlib's path."""
    monkeypatch.setattr(os, "urandom", lambda n: b"\x01" * n)
    marker = (parsing._MARKER % ("01" * 8)).encode()
    data = _attachment_message().replace(b"This is MIME.", marker + b"0")
    assert parsing._parse_skeleton(data) is None
    assert _shape(parsing.parse_message(data)) == _shape(_stdlib(data))


def test_more_structural_lines_than_the_budget_send_the_message_to_the_stdlib_whole():
    """More lines that may matter to the structure than the scan's budget
    (one per STRUCTURAL_SPACING octets): the message is parsed whole.  The
    scan stopped at the budget and built runs over the lines it had not
    looked at (Hypothesis found it with whitespace continuation lines)."""
    data = (b"From: <a@b.example>\r\n" + b"\t\r\n" * 3000 + b"-\r\n" * 3000
            + b"Thanks for the order and see you soon.\r\n" * 8000)
    assert len(data) >= parsing.SKELETON_MIN
    assert parsing._plain_runs(data) == []
    assert _shape(parsing.parse_message(data)) == _shape(_stdlib(data))


# ------------------------------------------------------- deferred parse trees
# Unstructured fields without an encoded word and plain <id@domain> Message-IDs
# get their parse tree when it is first used (relay.parsing); everything a
# reader or a writer can ask of the header must be what the stdlib gives.

import copy  # noqa: E402

_FIELD_TEXT = st.text(alphabet=st.sampled_from("ab.@<>()\" \t=?_-~!#\\[]:;,\x00\x7f\u00e9\udce9\u2028"), max_size=30)
_MSG_ID = st.builds("<{}@{}>".format,
                    st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,6}(\.[a-z0-9=?-]{1,4}){0,2}", fullmatch=True),
                    st.from_regex(r"[a-z0-9-]{1,6}(\.[a-z0-9]{1,4}){0,2}", fullmatch=True))


def _folded(header):
    """The header folded for output, or the exception folding raises (the
    stdlib's folder raises on some values: so must ours)."""
    try:
        return header.fold(policy=policy.default)
    except Exception as exc:
        return type(exc)


def _as_the_stdlib_sees_it(header, stdlib) -> None:
    assert str(header) == str(stdlib)
    assert type(header).__mro__[1:] == type(stdlib).__mro__[1:]
    assert [(type(d), str(d)) for d in header.defects] == [(type(d), str(d)) for d in stdlib.defects]
    assert header.name == stdlib.name and header.max_count == stdlib.max_count
    assert _folded(header) == _folded(stdlib)
    assert str(header._parse_tree) == str(stdlib._parse_tree)
    again = copy.deepcopy(header)
    assert str(again) == str(stdlib) and _folded(again) == _folded(stdlib)


@hsettings(max_examples=1500, deadline=None)
@given(st.sampled_from(["Subject", "X-Note", "In-Reply-To", "References", "Message-ID"]),
       st.one_of(_FIELD_TEXT, _MSG_ID, _MSG_ID.map(lambda v: " " + v), st.sampled_from(
           ["=?utf-8?q?Caf=C3=A9?=", "a =?utf-8?b?4oCo?= b", "<a..b@c>", "<a@[1.2.3.4]>", "<a@b> (c)", "<.a@b>",
            "<a@b.>", "<a=?x@b>", "<a@b", "a@b>", "<>", "<@b>", "<a@>"])))
def test_a_deferred_tree_header_is_the_stdlib_header(name, value):
    parsing._parsed_unique.cache_clear()
    parsing._parsed.cache_clear()
    try:
        stdlib = policy.default.header_fetch_parse(name, value)
    except Exception as exc:  # the stdlib's parser raises on some values ("<>"): so must ours
        with pytest.raises(type(exc)):
            parsing.PARSE_POLICY.header_fetch_parse(name, value)
        return
    _as_the_stdlib_sees_it(parsing.PARSE_POLICY.header_fetch_parse(name, value), stdlib)


def test_plain_message_ids_and_subjects_are_parsed_when_first_folded():
    parsing._parsed_unique.cache_clear()
    message = parsing.parse_message(b"Message-ID: <m.1@shop.example>\r\nSubject: where is my parcel\r\n"
                                    b"Comments: =?utf-8?q?Caf=C3=A9?=\r\n\r\nHi\r\n")
    message_id, subject, comments = message["Message-ID"], message["Subject"], message["Comments"]
    assert type(message_id.__dict__["_deferred_tree"]) is parsing._TreeNotBuilt
    assert type(subject.__dict__["_deferred_tree"]) is parsing._TreeNotBuilt
    assert type(comments.__dict__["_deferred_tree"]) is not parsing._TreeNotBuilt  # an encoded word: parsed at once
    assert str(comments) == "Café"
    assert message_id.fold(policy=policy.default) == "Message-ID: <m.1@shop.example>\n"
    assert type(message_id.__dict__["_deferred_tree"]) is not parsing._TreeNotBuilt


# ------------------------------------------------------------- header index
# A parsed message finds its fields through an index of names
# (relay.parsing.IndexedMessage); it must answer as the stdlib's linear search,
# also after the message is changed.

from email.message import EmailMessage  # noqa: E402

_NAMES = ["From", "from", "FROM", "Subject", "Content-Type", "content-transfer-encoding", "X-Odd", "X-Absent", ""]


def _lookups(part) -> list:
    names = _NAMES + [key for key, _ in part._headers] + [key.upper() for key, _ in part._headers]
    answers = []
    for name in names:
        raw = next((v for k, v in part._headers if k.lower() == name.lower()), None)
        answers.append((name, str(part.get(name)), [str(v) for v in part.get_all(name, [])], name in part,
                        str(part[name]), part.get(name, "missing") == "missing", part.raw_value(name) == raw))
    return answers


def _stdlib_lookups(part) -> list:
    names = _NAMES + [key for key, _ in part._headers] + [key.upper() for key, _ in part._headers]
    answers = []
    for name in names:
        answers.append((name, str(EmailMessage.get(part, name)), [str(v) for v in EmailMessage.get_all(part, name, [])],
                        EmailMessage.__contains__(part, name), str(EmailMessage.__getitem__(part, name)),
                        EmailMessage.get(part, name, "missing") == "missing", True))
    return answers


@hsettings(max_examples=400, deadline=None)
@given(_messages())
def test_indexed_lookups_answer_as_the_stdlib(data):
    message = parsing.parse_message(data)
    for part in message.walk():
        assert isinstance(part, parsing.IndexedMessage)
        assert _lookups(part) == _stdlib_lookups(part)


def test_indexed_lookups_follow_changes_to_the_message():
    message = parsing.parse_message(b"From: <a@b.example>\r\nSubject: one\r\nX-Odd: 1\r\nX-Odd: 2\r\n"
                                    b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n\r\nx\r\n--b1--\r\n")
    assert _lookups(message) == _stdlib_lookups(message)
    changes = [lambda m: m.replace_header("Subject", "two"), lambda m: m.add_header("X-New", "3"),
               lambda m: m.__delitem__("X-Odd"), lambda m: m.__setitem__("X-Odd", "4"),
               lambda m: m.set_param("charset", "utf-8"), lambda m: m.set_boundary("b2"),
               lambda m: m.del_param("boundary"), lambda m: m.set_raw("Subject", "three"),
               lambda m: m.__delitem__("Subject")]
    for change in changes:
        change(message)
        assert _lookups(message) == _stdlib_lookups(message)
    assert message.get_all("Subject") is None and [str(v) for v in message.get_all("X-Odd")] == ["4"]

"""relay.chunks: a large outgoing message in pieces answers every question
as its joined bytes would, seams between pieces included; and the rewriter,
the literal-leak check and the outbound framing give on pieces exactly what
they give on the joined message."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import rewrite
from relay.chunks import Chunks, Span, joined
from relay.parsing import parse_message
from relay.pipelining import frame_content
from relay.smtpdata import crlf_only

_OCTETS = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"B", b"bob@", b"buyer.test", b"\r\n.",
                                    b"x" * 7]), max_size=8).map(b"".join)


@st.composite
def pieces(draw):
    """Pieces of bytes and Spans (views into a larger source, as the rewriter makes them)."""
    out = []
    for octets in draw(st.lists(_OCTETS, max_size=8)):
        if draw(st.booleans()):
            source = b"<>" + octets + b"<>"
            out.append(Span(source, 2, 2 + len(octets)))
        else:
            out.append(octets)
    return out


def _joined(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


@settings(max_examples=800, deadline=None)
@given(pieces(), st.integers(-3, 60), st.integers(-3, 60),
       st.sampled_from([b"\r", b"\n", b"\r\n", b"\n.", b"bob@buyer.test", b"a\r\n.", b"x" * 9]))
def test_chunks_answer_as_the_joined_bytes(parts, start, stop, sub):
    chunks, data = Chunks(parts), _joined(parts)
    assert len(chunks) == len(data)
    assert chunks.join() == data == b"".join(chunks.buffers())
    assert chunks[start:stop] == data[start:stop] and chunks[start:] == data[start:]
    assert b"".join(chunks.buffers(max(start, 0), max(stop, 0))) == data[max(start, 0):max(stop, 0)]
    assert chunks.find(sub, max(start, 0)) == data.find(sub, max(start, 0))
    if len(sub) == 1 or sub == b"\r\n":
        assert chunks.count(sub) == data.count(sub)
    assert crlf_only(chunks) == crlf_only(data)
    assert chunks.startswith(sub) == data.startswith(sub) and chunks.endswith(sub) == data.endswith(sub)


@settings(max_examples=800, deadline=None)
@given(pieces())
def test_line_endings_are_normalised_piece_by_piece_as_the_joined_bytes(parts):
    chunks = rewrite.normalize_line_endings(Chunks(parts))
    assert joined(chunks) == rewrite.normalize_line_endings(_joined(parts))
    # pieces that need no change stay as they were: a Span is not copied
    clean_spans = [p for p in parts if isinstance(p, Span) and crlf_only(p)]
    if isinstance(chunks, Chunks):
        assert all(any(q is p for q in chunks.pieces) for p in clean_spans if len(p) and not (
            p.endswith(b"\r") or p.startswith(b"\n")))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces(), st.integers(min_value=990, max_value=1002))
def test_long_line_check_on_pieces_equals_the_joined_bytes(monkeypatch, parts, width):
    monkeypatch.setattr(rewrite, "LINE_BLOCK", 5)  # many blocks: their ends fall everywhere
    parts = [p.replace(b"x" * 7, b"x" * width) if isinstance(p, bytes) else p for p in parts]
    chunks, data = Chunks(parts), _joined(parts)
    assert rewrite._has_long_line(chunks, b"\r\n") == rewrite._has_long_line(data, b"\r\n")
    span = Span(b"<" + data + b">", 1, 1 + len(data))
    assert rewrite._has_long_line(span, b"\n", strip=b"\r") == rewrite._has_long_line(data, b"\n", strip=b"\r")


_PARTIES = rewrite.Parties(("sam@shop.example",), "s-alias@relay.example", "Shop", ("bob@buyer.test",),
                           "b-alias@relay.example", "mx.relay.example")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces(), st.sampled_from([b"", b"To: bob@buyer.test\r\n"]))
def test_leak_check_on_pieces_equals_the_joined_bytes(monkeypatch, parts, to_line):
    monkeypatch.setattr(rewrite, "LOWER_BLOCK", 3)  # blocks of a few octets: seams everywhere
    parts = [to_line, *parts]
    needles = [b"bob@buyer.test", b"sam@shop.example"]
    cut = b"to: bob@buyer.test\r\n"
    assert rewrite._holds_without(Chunks(parts), needles, cut) == rewrite._holds_without(_joined(parts), needles, cut)


@pytest.mark.parametrize("address", [b"bob@buyer.test", b"Sam@Shop.Example"])
def test_an_address_split_across_pieces_is_refused_at_every_seam(address):
    """The last line of defence sees every octet that leaves, seams included:
    the address cut at each of its positions, between bytes and a Span."""
    source = b"Hello, write to " + address + b" soon.\r\n"
    head = b"From: s-alias@relay.example\r\nTo: b-alias-like@relay.example\r\n\r\n"
    at = source.index(address)
    for cut in range(at + 1, at + len(address)):
        for parts in ([head, source[:cut], source[cut:]], [head, Span(source, 0, cut), Span(source, cut)],
                      [head, source[:cut], Span(source, cut)]):
            with pytest.raises(rewrite.RewriteError, match="unscannable"):
                rewrite._refuse_literal_leak(Chunks(parts), _PARTIES)
    rewrite._refuse_literal_leak(Chunks([head, source.replace(address, b"b-alias@relay.example")]), _PARTIES)


# ------------------------------------------------------------ the rewriter

_LINE = st.sampled_from(["Hello there.", ".", "..", ".dot first", "", "x" * 120, "Write to bob@buyer.test",
                         "mailto:sam%40shop.example", "caf\u00e9", "a" * 1000, "tab\there", "=3D", "line"])
_ENDING = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r"])


@st.composite
def messages(draw) -> bytes:
    """Plain and multipart messages, with dot lines, long lines, bare CR/LF,
    8-bit text, addresses to scrub and attachments sent as received."""
    body = "".join(draw(_LINE) + draw(_ENDING) for _ in range(draw(st.integers(0, 12))))
    head = ("From: Bob <bob@buyer.test>\r\nTo: s@relay.example\r\nSubject: hi\r\nMessage-ID: <m1@buyer.test>\r\n"
            "Date: Fri, 27 Nov 2026 11:06:08 +0100\r\n")
    if draw(st.booleans()):
        return (head + "\r\n" + body).encode("utf-8", "surrogateescape")
    attachment = draw(st.sampled_from(["QUJDRA==\r\n" * 3, "JVBERi0xLjQK\r\n", ".QUJD\r\n"]))
    kind = draw(st.sampled_from(["application/pdf", "text/plain", "image/png"]))
    return (head + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
            f"--b1\r\nContent-Type: {kind}; name=a\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}"
            "--b1--\r\n").encode("utf-8")


def _rewrite(data: bytes):
    try:
        result = rewrite.rewrite_message(parse_message(data), _PARTIES, rewrite.Threading("<n@mx.relay.example>"))
    except rewrite.RewriteError as exc:
        return exc.reply
    return joined(result.data), result.parts, result.attachments, result.subject


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages())
def test_the_chunked_path_gives_the_bytes_of_the_joined_path(monkeypatch, data):
    """Byte for byte, and the same refusals: pieces (every body that can be a
    Span of the received octets is one) against the message joined at once."""
    monkeypatch.setattr(rewrite.tokens, "token_hex", lambda n=16: "0" * (2 * n))  # the same boundaries
    expected = _rewrite(data)
    monkeypatch.setattr(rewrite, "JOIN_BELOW", 0)
    monkeypatch.setattr(rewrite, "FIND_IN_SOURCE", 1)
    assert _rewrite(data) == expected


def test_a_large_message_stays_in_pieces_that_point_into_the_received_octets():
    body = b"Hello there, a plain line.\r\n" * 20000
    data = b"From: <bob@buyer.test>\r\nSubject: x\r\n\r\n" + body
    message = parse_message(data)
    result = rewrite.rewrite_message(message, _PARTIES, rewrite.Threading("<n@mx.relay.example>"))
    assert isinstance(result.data, Chunks) and len(result.data) > rewrite.JOIN_BELOW
    assert any(isinstance(p, Span) and p.source is data and len(p) == len(body) for p in result.data.pieces)
    assert result.data.endswith(body) and result.parts[0].text is message._payload


# ------------------------------------------------------------ outbound framing

@settings(max_examples=800, deadline=None)
@given(pieces())
def test_framing_of_pieces_equals_aiosmtplib_on_the_joined_bytes(parts):
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    normalized = normalize_message_line_endings(_joined(parts))
    size, content = frame_content(Chunks(parts))
    assert (size, b"".join(content)) == (len(normalized), PERIOD_REGEX.sub(b"..", normalized) + b".\r\n")


def test_a_dot_stuffed_message_read_from_the_store_is_framed_without_copies():
    """Joined, as the store gives it back: sent as views between the stuffed dots."""
    data = b"Subject: x\r\n\r\n" + b".dot line\r\nplain\r\n" * 1000
    size, content = frame_content(data)
    assert size == len(data) and b"".join(content) == data.replace(b"\n.", b"\n..") + b".\r\n"
    assert all(c in (b".", b".\r\n") or isinstance(c, memoryview) and c.obj is data for c in content)


"""relay.smtpdata reads DATA in chunks and decides exactly what aiosmtpd's
line-at-a-time loop decides: where the data ends, the unstuffed content,
TOO_LONG and TOO_MUCH, and which bytes are left for the next command.  The
reference below is aiosmtpd 1.4.6's smtp_DATA loop on the same kind of
StreamReader, driven with the same bytes split at random points, with the
relay's two deliberate differences: for the line length and the leading dot
a bare LF ends a line too (so the reference reads CRLF lines of any length,
and measures and unstuffs their LF-separated pieces); and a line's length is
counted without its transparent dot (RFC 5321 section 4.5.3.1.6: 1,000
octets with the CRLF, "not counting the leading dot duplicated for
transparency"), where aiosmtpd's limit of 1,001 octets let a line of 999
octets and no dot through."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from relay.smtpdata import DataState, read_data

LIMIT = 1001


async def _reference(reader: asyncio.StreamReader, size_limit: int | None):
    data: list[bytearray] = []
    num_bytes = 0
    fragments: list[bytes] = []
    state = DataState.NOMINAL
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            return DataState.ABANDONED, None
        except asyncio.LimitOverrunError as e:
            if state is DataState.NOMINAL:
                state = DataState.TOO_LONG
            data *= 0
            line = await reader.read(e.consumed)
        if not fragments and line == b".\r\n":
            break
        num_bytes += len(line)
        if state is DataState.NOMINAL and size_limit and num_bytes > size_limit:
            state = DataState.TOO_MUCH
            data *= 0
        fragments.append(line)
        if line.endswith(b"\r\n"):
            if state is DataState.NOMINAL:
                joined = b"".join(fragments)
                if max(len(piece) - piece.startswith(b".") for piece in joined[:-2].split(b"\n")) > LIMIT - 3:
                    state = DataState.TOO_LONG
                    data *= 0
                else:
                    data.append(bytearray(joined))
            fragments *= 0
    if state is not DataState.NOMINAL:
        return state, None
    for k, text in enumerate(data):
        if text.startswith(b"."):
            del text[0]
        data[k] = text.replace(b"\n.", b"\n")
    return state, b"".join(data)


async def _run(reader_fn, stream: bytes, cuts: list[int], size_limit: int | None, limit: int = LIMIT):
    reader = asyncio.StreamReader(limit=limit)

    async def feed():
        last = 0
        for cut in sorted(set(c for c in cuts if 0 < c < len(stream))) + [len(stream)]:
            reader.feed_data(stream[last:cut])
            last = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    result = await reader_fn(reader, size_limit)
    await feeder
    rest = await reader.read()
    return result, rest


PIECES = [b"\r\n", b".", b"..", b"\n", b"\r", b"x", b"ab", b"\r\n.\r\n", b".\r\n", b"\n.\n", b"\r.\r\n", b"\0",
          b"y" * 300, b"z" * 997, b"w" * 998, b"v" * 999, b"u" * 1000, b"QUIT\r\n"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=25).map(b"".join),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
       st.sampled_from([None, 0, 5, 50, 1000, 2000, 100000]))
def test_chunked_reader_decides_like_aiosmtpd(stream, cuts, size_limit):
    stream = stream + b"\r\n.\r\nNOOP\r\n"  # every generated stream ends its data somewhere

    async def both():
        ours = await _run(lambda r, lim: read_data(r, lim, LIMIT), stream, cuts, size_limit)
        theirs = await _run(_reference, stream, cuts, size_limit, limit=len(stream) + 1)
        return ours, theirs

    ours, theirs = asyncio.run(both())
    (our_state, our_content), our_rest = ours
    (their_state, their_content), their_rest = theirs
    if DataState.NOMINAL in (our_state, their_state):
        assert (our_state, our_content) == (their_state, their_content), stream[:200]
    else:  # both refused; for a block too large *and* with a long line, either 5xx may come first
        assert our_content is None and their_content is None
    assert our_rest == their_rest, stream[:200]


@pytest.mark.parametrize("line, state", [
    (b"x" * 998, DataState.NOMINAL), (b"." + b"x" * 998, DataState.NOMINAL),
    (b"x" * 999, DataState.TOO_LONG), (b".." + b"x" * 998, DataState.TOO_LONG),
])
def test_a_line_holds_998_octets_before_its_crlf_besides_a_transparent_dot(line, state):
    """THREATS #7: a probe's 999 octets and CRLF (1,001) got 250."""
    stream = b"Subject: a\r\n\r\n" + line + b"\r\n.\r\n"
    (got, _), _ = asyncio.run(_run(lambda r, lim: read_data(r, lim, LIMIT), stream, [], None))
    assert got is state


def test_ten_mebibytes_in_chunks():
    body = (b"." + b"x" * 76 + b"\r\n") * (10 * 1024 * 1024 // 79)

    async def go():
        reader = asyncio.StreamReader(limit=LIMIT)
        for i in range(0, len(body), 65536):
            reader.feed_data(body[i:i + 65536])
        reader.feed_data(b".\r\nQUIT\r\n")
        state, content = await read_data(reader, 26214400, LIMIT)
        assert state is DataState.NOMINAL
        assert content == body.replace(b"\r\n.", b"\r\n")[1:]
        assert await reader.readuntil(b"\r\n") == b"QUIT\r\n"

    asyncio.run(go())


@pytest.mark.parametrize("stream, size_limit", [
    (b"Subject: a\r\n\r\nnot ended\r\n", None),      # nominal so far
    (b"x" * 1500 + b"\r\nmore\r\n", None),           # a line too long
    (b"y" * 70 + b"\r\n" + b"z" * 70 + b"\r\n", 100),  # too much
])
def test_a_block_the_client_never_ends_is_abandoned(stream, size_limit):
    """No end of data, no message: whatever was judged so far, the session
    has nothing to answer or record (relay.server)."""
    (state, content), rest = asyncio.run(_run(lambda r, lim: read_data(r, lim, LIMIT), stream, [7], size_limit))
    assert (state, content, rest) == (DataState.ABANDONED, None, b"")

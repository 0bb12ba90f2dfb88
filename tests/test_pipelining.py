"""Outbound PIPELINING (relay.pipelining): MAIL, RCPT and DATA go out in one
write and the content after 354, against a real TCP server on loopback that
only answers once it holds all three commands (a client that waited for
each reply would hang there).  Every refusal raises what aiosmtplib raises,
so delivery's retry and failure rules are unchanged; a next hop without
PIPELINING keeps aiosmtplib's own sendmail."""

from __future__ import annotations

import asyncio
import smtplib

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipelining import PipelinedConnection, take_over

from conftest import Sink

EHLO_REPLY = b"250-hop.test\r\n250-PIPELINING\r\n250 SIZE 10000000\r\n"


class ScriptedHop:
    """A next hop that answers each batch of commands from a script.

    `script` holds, per transaction, the replies to MAIL, RCPT and DATA
    (sent together once all three commands are in) and then the reply to
    the content, if the client sends one."""

    def __init__(self, script: list[tuple[bytes, bytes, bytes, bytes]], ehlo: bytes = EHLO_REPLY):
        self.script = list(script)
        self.ehlo = ehlo
        self.commands: list[bytes] = []  # each batch of commands, as received together
        self.contents: list[bytes] = []
        self.resets = 0
        self.server: asyncio.AbstractServer | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        writer.write(b"220 hop.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(self.ehlo)
        while self.script:
            batch = b""
            while not batch.endswith(b"DATA\r\n"):
                line = await reader.readline()
                if not line:
                    return
                if line == b"RSET\r\n":
                    self.resets += 1
                    writer.write(b"250 reset\r\n")
                    continue
                batch += line
            self.commands.append(batch)
            mail, rcpt, data, final = self.script.pop(0)
            writer.write(mail + rcpt + data)  # one segment, as a pipelining server may
            if data.startswith(b"354"):
                content = b""
                while not content.endswith(b"\r\n.\r\n") and content != b".\r\n":
                    content += await reader.readline()
                self.contents.append(content)
                writer.write(final)
        while line := await reader.readline():  # RSETs after the last transaction
            if line == b"RSET\r\n":
                self.resets += 1
                writer.write(b"250 reset\r\n")


OK = (b"250 sender ok\r\n", b"250 recipient ok\r\n", b"354 go ahead\r\n", b"250 queued as 1\r\n")


async def _connection(port: int, timeout: float = 10) -> PipelinedConnection:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout, start_tls=False)
    await client.connect()
    connection = await take_over(client)
    assert isinstance(connection, PipelinedConnection)
    return connection


async def test_three_commands_go_out_together_then_the_content_dot_stuffed():
    hop = ScriptedHop([OK, OK])
    port = await hop.start()
    try:
        connection = await _connection(port)
        message = b"Subject: x\r\n\r\n.leading dot\r\nbare\nend"
        assert await connection.sendmail("bounce+t@relay.test", ["sam@shop.example"], message) == ({}, "queued as 1")
        assert await connection.sendmail("", ["bob@buyer.test"], b"Subject: y\r\n\r\nhi\r\n") == ({}, "queued as 1")
        size = len(b"Subject: x\r\n\r\n.leading dot\r\nbare\r\nend\r\n")
        assert hop.commands == [
            f"MAIL FROM:<bounce+t@relay.test> SIZE={size}\r\nRCPT TO:<sam@shop.example>\r\nDATA\r\n".encode(),
            b"MAIL FROM:<> SIZE=18\r\nRCPT TO:<bob@buyer.test>\r\nDATA\r\n"]
        assert hop.contents[0] == b"Subject: x\r\n\r\n..leading dot\r\nbare\r\nend\r\n.\r\n"
        assert connection.is_connected and hop.resets == 0
        connection.close()
    finally:
        await hop.stop()


@pytest.mark.parametrize("script, raised, code", [
    ((b"550 no such sender\r\n", b"503 need MAIL\r\n", b"503 need RCPT\r\n", b""),
     aiosmtplib.SMTPSenderRefused, 550),
    ((b"250 ok\r\n", b"450-mailbox busy\r\n450 try later\r\n", b"554 no valid recipients\r\n", b""),
     aiosmtplib.SMTPRecipientsRefused, 450),
    ((b"250 ok\r\n", b"250 ok\r\n", b"451 local error\r\n", b""), aiosmtplib.SMTPDataError, 451),
    (OK[:3] + (b"552 too big for this mailbox\r\n",), aiosmtplib.SMTPDataError, 552),
])
async def test_each_refusal_raises_what_aiosmtplib_raises(script, raised, code):
    hop = ScriptedHop([script, OK])
    port = await hop.start()
    try:
        connection = await _connection(port)
        with pytest.raises(raised) as caught:
            await connection.sendmail("a@relay.test", ["b@shop.example"], b"Subject: x\r\n\r\nx\r\n")
        error = caught.value
        assert (error.recipients[0].code if raised is aiosmtplib.SMTPRecipientsRefused else error.code) == code
        if code != 552:  # a refused envelope is reset; the connection serves the next message
            assert hop.resets == 1
        assert await connection.sendmail("a@relay.test", ["c@shop.example"], b"Subject: y\r\n\r\ny\r\n")
    finally:
        await hop.stop()


async def test_a_354_after_a_refused_recipient_gets_an_empty_message_and_a_reset():
    hop = ScriptedHop([(b"250 ok\r\n", b"550 unknown user\r\n", b"354 go ahead anyway\r\n", b"554 empty\r\n")])
    port = await hop.start()
    try:
        connection = await _connection(port)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await connection.sendmail("a@relay.test", ["nobody@shop.example"], b"Subject: x\r\n\r\nsecret\r\n")
        await asyncio.sleep(0.05)
        assert hop.contents == [b".\r\n"] and hop.resets == 1  # the real content never went out
    finally:
        await hop.stop()


async def test_an_unsolicited_reply_ends_the_connection_instead_of_shifting_the_replies():
    hop = ScriptedHop([OK])
    port = await hop.start()
    try:
        connection = await _connection(port)
        await asyncio.sleep(0.05)
        hop.writer.write(b"421 idle too long, closing\r\n")
        for _ in range(100):
            if not connection.is_connected:
                break
            await asyncio.sleep(0.01)
        assert not connection.is_connected
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await connection.sendmail("a@relay.test", ["b@shop.example"], b"Subject: x\r\n\r\nx\r\n")
    finally:
        await hop.stop()


async def test_a_silent_hop_times_out_as_aiosmtplib_does():
    hop = ScriptedHop([])  # answers EHLO, then never again
    port = await hop.start()
    try:
        connection = await _connection(port, timeout=0.3)
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await connection.sendmail("a@relay.test", ["b@shop.example"], b"Subject: x\r\n\r\nx\r\n")
        assert not connection.is_connected
    finally:
        await hop.stop()


async def test_a_hop_without_pipelining_keeps_aiosmtplib():
    hop = ScriptedHop([], ehlo=b"250-hop.test\r\n250 SIZE 10000000\r\n")
    port = await hop.start()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
        await client.connect()
        assert await take_over(client) is client
        client.close()
    finally:
        await hop.stop()


async def test_the_relay_delivers_through_a_next_hop_without_pipelining(relay_factory):
    plain = Sink(pipelining=False)
    plain.start()
    try:
        relay = await relay_factory({"delivery": {"smarthost": f"127.0.0.1:{plain.port}"}})
        relay.add_seller("s1", "Shop", ["sam@shop.example"])
        alias = relay.open_order("o1", "s1", "bob@buyer.test")["seller_alias"]
        for n in range(3):
            with smtplib.SMTP(*relay.mx, timeout=30) as client:
                client.sendmail("bob@buyer.test", [alias],
                                f"From: bob@buyer.test\r\nTo: {alias}\r\nSubject: q{n}\r\n\r\nQuestion {n}.\r\n")
        delivered = await plain.wait_for_count(3, timeout=30)
        assert sorted(d.rcpt_tos[0] for d in delivered) == ["sam@shop.example"] * 3
    finally:
        plain.stop()


@pytest.mark.parametrize("message", [
    b"Subject: x\r\n\r\nclean\r\n", b"Subject: x\r\n\r\n.dot\r\n", b".first\r\nline\r\n", b"no end",
    b"bare\nlf\r\n", b"bare\rcr\r\n", b"a\r\n\r\n..\r\n.\r\n", b"", b"\r\n", b"x\r\n.", b"\n.\n"])
def test_content_framing_equals_aiosmtplib(message):
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    from relay.pipelining import frame_content

    normalized = normalize_message_line_endings(message)
    size, chunks = frame_content(message)
    assert (size, b"".join(chunks)) == (len(normalized), PERIOD_REGEX.sub(b"..", normalized) + b".\r\n")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"Subject: x", b" "]), max_size=30))
def test_content_framing_equals_aiosmtplib_on_any_mix(pieces):
    test_content_framing_equals_aiosmtplib(b"".join(pieces))


async def test_a_large_content_is_written_as_the_hop_takes_it():
    """4 MiB with a dot on every line, to a hop that reads slowly: the content
    goes out as the transport's buffer drains (pause_writing/resume_writing),
    never buffered whole, and arrives stuffed, in full."""
    import tracemalloc

    received: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test ESMTP\r\n")
        await reader.readline()
        writer.write(EHLO_REPLY)
        for _ in range(3):  # MAIL, RCPT, DATA
            await reader.readline()
        writer.write(OK[0] + OK[1] + OK[2])
        total, tail = 0, b""
        while not tail.endswith(b"\r\n.\r\n"):
            chunk = await reader.read(16384)
            total, tail = total + len(chunk), (tail + chunk)[-5:]
            await asyncio.sleep(0)
        received.append(b"%d" % total)
        writer.write(OK[3])
        await reader.read()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    message = b"Subject: x\r\n\r\n" + b".dot\r\nplain line\r\n" * 200_000
    stuffed = len(message.replace(b"\n.", b"\n..")) + 3
    try:
        connection = await _connection(server.sockets[0].getsockname()[1], timeout=30)
        tracemalloc.start()
        try:
            assert await connection.sendmail("b@relay.test", ["c@d.example"], message) == ({}, "queued as 1")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert received == [b"%d" % stuffed]
        assert peak < 0.25 * len(message), peak / len(message)
        connection.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_hop_that_refuses_mid_content_and_stops_reading_gets_its_refusal_raised():
    """The content is not waited on forever: the 552 sent before the end is
    what sendmail raises (a permanent failure), as with aiosmtplib."""
    done = asyncio.Event()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hop.test ESMTP\r\n")
        await reader.readline()
        writer.write(EHLO_REPLY)
        for _ in range(3):
            await reader.readline()
        writer.write(OK[0] + OK[1] + OK[2])
        await reader.read(1000)
        writer.write(b"552 5.3.4 too big for this mailbox\r\n")
        await done.wait()  # reads nothing more
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        connection = await _connection(server.sockets[0].getsockname()[1], timeout=5)
        with pytest.raises(aiosmtplib.SMTPDataError) as raised:
            await connection.sendmail("b@relay.test", ["c@d.example"],
                                      b"Subject: x\r\n\r\n" + (b"y" * 78 + b"\r\n") * 2**16)
        assert raised.value.code == 552
        connection.close()
    finally:
        done.set()
        server.close()
        await server.wait_closed()


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"Subject: x", b" "]), max_size=30),
       st.integers(min_value=1, max_value=7))
def test_framing_what_is_known_to_be_crlf_only_equals_framing_it_checked(pieces, piece_size):
    """Delivery frames the rewriter's output without counting its line
    endings again (crlf_known): for anything the rewriter can hand over
    (normalize_line_endings' output, whole or in pieces), the octets sent
    must be the ones the checked framing sends."""
    from relay.chunks import Chunks
    from relay.pipelining import frame_content
    from relay.rewrite import normalize_line_endings

    data = normalize_line_endings(b"".join(pieces))
    in_pieces = Chunks([data[i:i + piece_size] for i in range(0, len(data), piece_size)] or [b""])
    for message in (data, in_pieces):
        size, chunks = frame_content(message)
        known_size, known_chunks = frame_content(message, crlf_known=True)
        assert (known_size, b"".join(known_chunks)) == (size, b"".join(chunks))

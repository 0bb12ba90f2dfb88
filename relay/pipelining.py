"""One outbound SMTP transaction in two round trips (RFC 2920 PIPELINING).

aiosmtplib makes the connection to the smarthost (TCP, EHLO, STARTTLS and
its certificate checks), but it sends every command on its own and waits
for the reply: MAIL, RCPT, DATA, then the content, four writes and four
round trips per message, about a tenth of the relay's event-loop time under
the benchmark's load.  When the next hop offers PIPELINING, delivery takes
the connection's transport over once it is set up (`PipelinedConnection`)
and sends MAIL, RCPT and DATA in one write, then the content in a second,
as Postfix's smtp client does.  A next hop without PIPELINING keeps
aiosmtplib's one-command-at-a-time `sendmail`.

The connection answers `sendmail()`, `rset()`, `is_connected` and `close()`
like aiosmtplib.SMTP, and raises aiosmtplib's exceptions, so
relay.delivery treats both kinds alike.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Iterable, Iterator

import aiosmtplib
# aiosmtplib's own line-ending fix-up, so both paths send the same bytes.
from aiosmtplib.protocol import normalize_message_line_endings

from relay.chunks import Chunks
from relay.smtpdata import crlf_only

MAX_REPLY_LENGTH = 8192  # a reply is a few lines; more is a broken or hostile server


async def take_over(client: aiosmtplib.SMTP) -> "aiosmtplib.SMTP | PipelinedConnection":
    """A connected client, pipelined when the next hop offers it."""
    if client.last_ehlo_response is None:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            return client  # an old server: aiosmtplib's sendmail falls back to HELO
    if not client.supports_extension("pipelining") or client.transport is None:
        return client
    return PipelinedConnection(client)


class _Replies(asyncio.Protocol):
    """Reads the replies of a transport taken over from aiosmtplib."""

    def __init__(self, transport: asyncio.BaseTransport):
        self.transport = transport
        self.lost = False
        self.expected = 0  # replies owed for commands sent
        self._buffer = bytearray()
        self._ready: collections.deque[tuple[int, str]] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._error: Exception | None = None
        self._paused = False  # the transport's buffer is over its high-water mark

    def data_received(self, data: bytes) -> None:
        if self.expected <= len(self._ready):
            # Unsolicited (a 421 on an idle pooled connection): nothing may
            # pair it with a later command.  The connection is done for.
            self._fail(aiosmtplib.SMTPServerDisconnected("unsolicited reply"))
            self.transport.close()
            return
        self._buffer += data
        if len(self._buffer) > MAX_REPLY_LENGTH:
            self._fail(aiosmtplib.SMTPResponseException(-1, "reply too long"))
            self.transport.close()
            return
        self._parse()

    def _parse(self) -> None:
        while True:
            end = self._reply_end()
            if end < 0:
                return
            lines = bytes(self._buffer[:end]).split(b"\n")[:-1]
            del self._buffer[:end]
            try:
                code = int(lines[0][:3])
            except ValueError:
                self._fail(aiosmtplib.SMTPResponseException(-1, "malformed reply"))
                self.transport.close()
                return
            text = "\n".join(line[4:].strip(b" \t\r").decode("utf-8", "surrogateescape") for line in lines)
            self._ready.append((code, text))
            self._wake()

    def _reply_end(self) -> int:
        """Offset just past the last line of the first complete reply, or -1."""
        start = 0
        while True:
            newline = self._buffer.find(b"\n", start)
            if newline < 0:
                return -1
            if self._buffer[start + 3:start + 4] != b"-":
                return newline + 1
            start = newline + 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(aiosmtplib.SMTPServerDisconnected("connection lost"))

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("unexpected EOF"))
        return False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _fail(self, error: Exception) -> None:
        self.lost = True
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self, timeout: float) -> tuple[int, str]:
        while not self._ready:
            if self._error is not None:
                raise self._error
            await self._wait(timeout, aiosmtplib.SMTPReadTimeoutError("timed out waiting for a reply"))
        self.expected -= 1
        return self._ready.popleft()

    async def writable(self, timeout: float) -> None:
        """Return once the transport's buffer is below its high-water mark
        (asyncio calls pause_writing and resume_writing), so content is
        handed over as the next hop takes it, never buffered whole.  A hop
        that answered before the end (a 552 mid-content) is waited for no
        more: the rest is buffered, and its reply read, as aiosmtplib does."""
        while True:
            if self._error is not None:
                raise self._error
            if not self._paused or self._ready:
                return
            await self._wait(timeout, aiosmtplib.SMTPTimeoutError("timed out sending the message"))

    async def _wait(self, timeout: float, timeout_error: Exception) -> None:
        """Until _wake (a reply, resume_writing, a failure); `timeout_error`
        after `timeout` seconds, and the connection is closed."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._waiter.cancel)
        try:
            await self._waiter
        except asyncio.CancelledError:
            if self._waiter.cancelled() and not _current_task_cancelling():
                self._fail(timeout_error)
                self.transport.close()
                raise self._error from None  # type: ignore[misc]
            raise
        finally:
            timer.cancel()
            self._waiter = None


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def frame_content(message: bytes | Chunks, crlf_known: bool = False) -> tuple[int, Iterable[bytes | memoryview]]:
    """(its size for SIZE=, the octets to send after 354, ending with the
    final dot) as aiosmtplib frames them: lone CR and LF become CRLF, a last
    line gets its CRLF, lines starting with "." get another
    (tests/test_pipelining.py compares).  The relay's own output needs no
    line-ending fix-up, and the dots are stuffed by sending the octets
    between them as views, made as they are sent (two views a line, made
    at once, would be several times a message with a dot on every line):
    a 10 MiB message, joined (read back from the store) or in pieces
    (relay.chunks), goes out without another copy.

    `crlf_known`: every CR and LF of the message is in a CRLF already (the
    rewriter's output, relay.rewrite.normalize_line_endings), so it is not
    counted again: three passes over the message, 16 % of the event loop's
    time under 100 KB messages (bench/README.md)."""
    crlf = message.endswith(b"\r\n") and (crlf_known or crlf_only(message))  # (counted once, whichever way)
    if crlf and isinstance(message, bytes) and not message.startswith(b".") and b"\n." not in message:
        return len(message), [message, b".\r\n"]  # the common case, at once
    data = message if isinstance(message, Chunks) else Chunks([message])
    if not crlf:
        data = Chunks([normalize_message_line_endings(data.join())])  # not the relay's output
    return len(data), _dot_stuffed(data)


def _dot_stuffed(data: Chunks) -> Iterator[bytes | memoryview]:
    done = 0
    dot = 0 if data.startswith(b".") else _line_start_dot(data, 0)
    while dot >= 0:
        yield from data.buffers(done, dot)
        yield b"."  # (as aiosmtplib's PERIOD_REGEX: a dot at a line start gets another)
        done = dot
        dot = _line_start_dot(data, dot + 1)
    yield from data.buffers(done)
    yield b".\r\n"


def _line_start_dot(data: Chunks, start: int) -> int:
    at = data.find(b"\n.", start)
    return at + 1 if at >= 0 else -1


# Small buffers are gathered into writes of about this size.
WRITE_SIZE = 1 << 16


def _gathered(buffers: Iterable[bytes | memoryview]) -> Iterator[bytes | bytearray | memoryview]:
    """The buffers, small ones gathered into blocks of about WRITE_SIZE
    octets (a message with a dot on every line is two small views a line:
    one write each would be a system call or a buffered object each)."""
    pending = bytearray()
    for buf in buffers:
        if len(buf) >= WRITE_SIZE:
            if pending:
                yield pending
                pending = bytearray()
            yield buf
            continue
        pending += buf
        if len(pending) >= WRITE_SIZE:
            yield pending
            pending = bytearray()
    if pending:
        yield pending


class PipelinedConnection:
    """An aiosmtplib connection, after EHLO (and STARTTLS), driven by hand."""

    def __init__(self, client: aiosmtplib.SMTP):
        self.timeout = client.timeout or 60.0
        self._size = client.supports_extension("size")
        self._transport = client.transport
        assert self._transport is not None
        self._replies = _Replies(self._transport)
        self._transport.set_protocol(self._replies)
        self._client = client  # kept for close(); it no longer reads this transport

    @property
    def is_connected(self) -> bool:
        return not self._replies.lost and not self._transport.is_closing()

    def close(self) -> None:
        self._replies.lost = True
        if not self._transport.is_closing():
            self._transport.close()

    def _expect(self, replies: int) -> None:
        """What is written next will be answered by `replies` replies."""
        if not self.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self._replies.expected += replies

    def _send(self, chunks: list[bytes], replies: int) -> None:
        """Write `chunks` (one write for all) that `replies` replies will answer."""
        self._expect(replies)
        self._transport.writelines(chunks)  # type: ignore[attr-defined]

    async def _send_content(self, content: Iterable[bytes | memoryview]) -> None:
        """The content after 354 (one reply answers it), written as the
        transport's buffer drains: a large message is not copied into it."""
        self._expect(1)
        for buf in _gathered(content):
            self._transport.write(buf)  # type: ignore[attr-defined]
            await self._replies.writable(self.timeout)

    async def rset(self) -> None:
        self._send([b"RSET\r\n"], 1)
        await self._replies.reply(self.timeout)

    async def sendmail(self, sender: str, recipients: list[str], message: bytes | Chunks,
                       crlf_known: bool = False) -> tuple[dict, str]:
        """MAIL, RCPT and DATA in one write; the content once DATA said 354.
        Raises as aiosmtplib.SMTP.sendmail does (one recipient).
        `crlf_known`: as frame_content's."""
        (recipient,) = recipients
        size_of_content, content = frame_content(message, crlf_known)
        size = f" SIZE={size_of_content}" if self._size else ""  # RFC 1870, counted as aiosmtplib does
        self._send([f"MAIL FROM:<{sender}>{size}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii")], 3)
        mail = await self._replies.reply(self.timeout)
        rcpt = await self._replies.reply(self.timeout)
        data = await self._replies.reply(self.timeout)
        if mail[0] != 250 or rcpt[0] not in (250, 251) or data[0] != 354:
            if data[0] == 354:  # a server that said go ahead anyway gets an empty message, then RSET
                self._send([b".\r\n"], 1)
                await self._replies.reply(self.timeout)
            await self._reset_quietly()
            if mail[0] != 250:
                raise aiosmtplib.SMTPSenderRefused(mail[0], mail[1], sender)
            if rcpt[0] not in (250, 251):
                raise aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(rcpt[0], rcpt[1], recipient)])
            raise aiosmtplib.SMTPDataError(data[0], data[1])
        await self._send_content(content)
        done = await self._replies.reply(self.timeout)
        if done[0] != 250:
            raise aiosmtplib.SMTPDataError(done[0], done[1])
        return {}, done[1]

    async def _reset_quietly(self) -> None:
        try:
            await self.rset()
        except (aiosmtplib.SMTPException, OSError):
            pass

"""Reading a DATA block in chunks, with aiosmtpd's exact framing rules.

aiosmtpd reads DATA one line at a time: an await, a buffer search and a list
append per line, 134,000 of them for a 10 MiB message, most of the relay's
CPU for large mail.  This reader takes whatever the socket has delivered,
searches the whole chunk for the end of data, and keeps one buffer.  What it
decides is what aiosmtpd decides (tests/test_smtpdata.py compares the two on
generated streams):

- lines end in CRLF only; a bare CR or LF is content (THREATS #1-#3: the
  message is refused later, never split);
- the data ends at the first line that is exactly "." (`\\r\\n.\\r\\n`, or
  ".\\r\\n" as the very first line);
- a leading dot is removed from every line (RFC 5321 section 4.5.2), and
  from every piece of a line after a bare LF (see below);
- a line over 998 octets before its CRLF, its transparent dot not counted
  (RFC 5321 section 4.5.3.1.6), makes the block TOO_LONG (aiosmtpd's limit
  of 1,001 octets with the CRLF let 999 octets without a dot through), more
  than `size_limit` octets TOO_MUCH, whichever comes first; either way the
  rest is read to the end and dropped, so the session stays in step, and
  nothing is buffered past the limit.

Deliberate differences: the transparent dot is not counted in a line's
length (above), and for the line length and the dot a bare LF ends a line
too.
`smtplib.sendmail(..., msg.as_bytes())` sends a message with LF line ends
only (the email package's default), which the relay writes out with CRLF
(relay.rewrite), as Postfix does; counted between CRLFs, any such message
over 998 octets was one line "too long" for aiosmtpd.

Bytes after the end of data (a pipelined next command) are handed back to
the stream reader, in front of anything it holds.
"""

from __future__ import annotations

import asyncio
import enum

END = b"\r\n.\r\n"
READ_SIZE = 1 << 20


def crlf_only(data: bytes) -> bool:
    """Does every CR and every LF in `data` belong to a CRLF?  Counted, so a
    large message is not copied to find out."""
    crlf = data.count(b"\r\n")
    return data.count(b"\r") == crlf and data.count(b"\n") == crlf


class DataState(enum.Enum):
    NOMINAL = enum.auto()
    TOO_LONG = enum.auto()
    TOO_MUCH = enum.auto()
    ABANDONED = enum.auto()  # the stream ended before the end of data: no message, no exchange


async def read_data(reader: asyncio.StreamReader, size_limit: int | None,
                    line_limit: int = 1001) -> tuple[DataState, bytes | None]:
    """Read up to the end of data: (state, the unstuffed content when
    NOMINAL, else None).  (ABANDONED, None) if the stream ended first.

    When a block is both too large and has an over-long line, the one that
    starts first in the stream decides (aiosmtpd decides within a line by
    how its reads fell; both answers are 5xx).

    The chunks read are kept as they came and joined once at the end; the
    buffer that is searched holds only what is not yet judged (the open
    line and a possible terminator's start).  A buffer of the whole block,
    grown chunk by chunk, held up to 1.125 times the message when it was
    copied out: 2.1 times in all, more than the message is held later."""
    longest = line_limit - 2  # octets of a line before its CRLF
    chunks: list[bytes] = []  # the data as read, while it is NOMINAL
    buf = bytearray(b"\r\n")  # as if after a line end: "." as the first line ends the data
    dropped = 0  # octets of the stream (sentinel CRLF included) before buf[0]
    scanned = 0  # END cannot start before this index of buf
    line_start = 2  # the first line not yet judged
    state = DataState.NOMINAL
    while True:
        # Drain everything buffered (up to READ_SIZE): bytes handed back
        # below must come before whatever the reader still holds.
        chunk = await reader.read(READ_SIZE)
        if not chunk:
            return DataState.ABANDONED, None
        buf += chunk
        end = buf.find(END, scanned)
        if state is DataState.NOMINAL:
            chunks.append(chunk)
            stop = end + 2 if end >= 0 else len(buf)  # the data runs to the CRLF before "."
            # The data octets known so far: without a terminator yet, the
            # last three octets may be one (".\r" after its CRLF): not counted.
            size = dropped + (stop - 2 if end >= 0 else max(0, len(buf) - 2 - 2))
            over = 2 + size_limit - dropped if size_limit and size > size_limit else None
            state, line_start = _judge(buf, line_start, stop, longest, over)
        if end >= 0:
            leftover = bytes(buf[end + len(END):])
            if leftover:
                reader.feed_data(leftover)  # nothing is buffered behind it: read() took it all
            if state is not DataState.NOMINAL:
                return state, None
            del buf
            return state, _unstuff(_first_octets(chunks, dropped + end))
        if state is DataState.NOMINAL:
            scanned = max(0, len(buf) - (len(END) - 1))
            keep = min(line_start, scanned)  # what is judged and searched goes
            del buf[:keep]
            dropped, scanned, line_start = dropped + keep, scanned - keep, line_start - keep
        else:
            # Drop the data; keep only what a terminator split across chunks could start with.
            chunks = []
            buf = bytearray(buf[-(len(END) - 1):])
            scanned = 0


def _first_octets(chunks: list[bytes], n: int) -> bytes:
    """The first n octets of the chunks, joined: one copy."""
    parts: list[bytes | memoryview] = []
    for chunk in chunks:
        if len(chunk) >= n:
            parts.append(chunk if len(chunk) == n else memoryview(chunk)[:n])
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _judge(buf: bytearray, line_start: int, stop: int, longest: int, over: int | None) -> tuple[DataState, int]:
    """Judge the lines of buf from line_start to stop: TOO_LONG at the first
    line longer than `longest` octets before its LF or CRLF, or one less
    without a leading dot (a line still
    open counts once it is), TOO_MUCH if buf index `over` (the first octet
    past the size limit) comes first.  Returns the state and the first line
    not yet judged."""
    pos = line_start
    while True:
        nxt = buf.find(b"\n", pos, stop)
        line_end = stop if nxt < 0 else nxt
        if line_end > pos and buf[line_end - 1] == 0x0D:
            line_end -= 1  # its CRLF's CR (or an open line's final CR, which may be half of one)
        stuffed = line_end > pos and buf[pos] == 0x2E  # its leading "." is the transparent dot
        if line_end - pos > longest - (not stuffed) and (over is None or pos < over):
            return DataState.TOO_LONG, pos
        if over is not None and (nxt < 0 or over < nxt + 1):
            return DataState.TOO_MUCH, pos
        if nxt < 0:
            return DataState.NOMINAL, pos
        pos = nxt + 1


def _unstuff(data: bytes) -> bytes:
    """The leading dot of every line goes (RFC 5321 section 4.5.2), of a line
    after a bare LF too: smtplib, like other clients that send bytes as given,
    doubles a dot after any LF."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\n.", b"\n")

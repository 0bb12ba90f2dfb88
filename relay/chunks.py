"""A large outgoing message as a list of pieces, never joined into one copy.

The rewriter sends an unchanged body or attachment from the received octets
(relay.rewrite); joining the outgoing message would copy them once more,
so a 10 MiB message would be held three times: received, parsed as text for
the filters, and joined (issue 7 asks for at most twice).  Instead the
message stays a `Chunks`: header lines and re-encoded parts as bytes, bodies
sent as received as `Span`s of the received octets.  The store writes it by
blob I/O and delivery sends it piece by piece, so it is never joined.

A `Chunks` answers the few bytes operations that the checks on the whole
message use (`len`, slicing, `find`, `count`), as on the concatenation,
seams between pieces included: the line-length check, the only-CRLF test
and the literal-leak check (relay.rewrite) run on it unchanged, a block at a
time.  Slicing copies only the range asked for.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterator, Union

SCAN_BLOCK = 1 << 14


class Span:
    """`source[start:stop]`, not copied."""

    __slots__ = ("source", "start", "stop")

    def __init__(self, source: bytes, start: int = 0, stop: int | None = None):
        self.source = source
        self.start = start
        self.stop = len(source) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(len(self))
        assert step == 1
        return self.source[self.start + start:self.start + max(start, stop)]

    def __bytes__(self) -> bytes:
        return self.source[self.start:self.stop]

    def sub(self, start: int, stop: int) -> "Span":
        return Span(self.source, self.start + start, self.start + stop)

    def count(self, sub: bytes) -> int:
        return self.source.count(sub, self.start, self.stop)

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = len(self) if end is None else end
        at = self.source.find(sub, self.start + start, self.start + end)
        return at - self.start if at >= 0 else -1

    def endswith(self, suffix: bytes) -> bool:
        return self.source.endswith(suffix, self.start, self.stop)

    def startswith(self, prefix: bytes) -> bool:
        return self.source.startswith(prefix, self.start, self.stop)

    def isascii(self) -> bool:
        return all(self[pos:pos + SCAN_BLOCK].isascii() for pos in range(0, len(self), SCAN_BLOCK))

    def view(self) -> memoryview:
        return memoryview(self.source)[self.start:self.stop]


Piece = Union[bytes, Span]


class Chunks:
    """The concatenation of `pieces`, unjoined."""

    def __init__(self, pieces):
        self.pieces: tuple[Piece, ...] = tuple(p for p in pieces if len(p))
        self._starts: list[int] = []
        total = 0
        for piece in self.pieces:
            self._starts.append(total)
            total += len(piece)
        self._size = total

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(self._size)
        assert step == 1
        if stop <= start:
            return b""
        out = []
        i = bisect.bisect_right(self._starts, start) - 1
        while i < len(self.pieces) and self._starts[i] < stop:
            base = self._starts[i]
            out.append(self.pieces[i][max(start - base, 0):stop - base])
            i += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def join(self) -> bytes:
        """One bytes object (for a single bytes piece, that piece itself)."""
        if len(self.pieces) == 1 and isinstance(self.pieces[0], bytes):
            return self.pieces[0]
        return b"".join(self.buffers())

    def buffers(self, start: int = 0, stop: int | None = None) -> Iterator[bytes | memoryview]:
        """The octets of [start:stop) as buffers to write: the pieces, or
        views of them; nothing is copied."""
        stop = self._size if stop is None else min(stop, self._size)
        if stop <= start:
            return
        i = bisect.bisect_right(self._starts, start) - 1
        while i < len(self.pieces) and self._starts[i] < stop:
            piece, base = self.pieces[i], self._starts[i]
            lo, hi = max(start - base, 0), min(stop - base, len(piece))
            if isinstance(piece, Span):
                yield piece.view()[lo:hi]
            else:
                yield piece if (lo, hi) == (0, len(piece)) else memoryview(piece)[lo:hi]
            i += 1

    def startswith(self, prefix: bytes) -> bool:
        return self[:len(prefix)] == prefix

    def endswith(self, suffix: bytes) -> bool:
        return len(suffix) <= self._size and self[self._size - len(suffix):] == suffix

    def find(self, sub: bytes, start: int = 0) -> int:
        """`joined.find(sub, start)` for a non-empty `sub`: each piece is
        searched where it lies, then the seam after it."""
        reach = len(sub) - 1
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        for i in range(i, len(self.pieces)):
            piece, base = self.pieces[i], self._starts[i]
            end = base + len(piece)
            if end <= start:
                continue
            at = piece.find(sub, max(start - base, 0))
            if at >= 0:
                return base + at
            if reach and i + 1 < len(self.pieces):
                lo = max(end - reach, start)
                at = self[lo:end + reach].find(sub)
                if 0 <= at and lo + at < end:
                    return lo + at
        return -1

    def count(self, sub: bytes) -> int:
        """`joined.count(sub)` for a `sub` of one octet, or of two different
        ones (such as CRLF: occurrences never overlap, and one crosses at
        most one seam)."""
        assert len(sub) == 1 or (len(sub) == 2 and sub[0] != sub[1])
        total = sum(piece.count(sub) for piece in self.pieces)
        if len(sub) == 2:
            total += sum(1 for a, b in zip(self.pieces, self.pieces[1:]) if a[-1:] == sub[:1] and b[:1] == sub[1:])
        return total

    def with_line_endings(self, normalize: Callable[[bytes], bytes], is_clean: Callable[[Piece], bool]) -> "Chunks":
        """`normalize` (every CR and LF made part of a CRLF, relay.rewrite)
        applied to the concatenation, piece by piece: a piece that
        `is_clean` stays as it is (a Span stays a view); a CRLF split by a
        seam is kept whole, not read as a lone CR then a lone LF."""
        pieces = list(self.pieces)
        out: list[Piece] = []
        for i, piece in enumerate(pieces):
            tail = b""
            if piece.endswith(b"\r") and i + 1 < len(pieces) and pieces[i + 1].startswith(b"\n"):
                piece, tail = _cut(piece, 0, len(piece) - 1), b"\r\n"
                pieces[i + 1] = _cut(pieces[i + 1], 1, len(pieces[i + 1]))
            out.append(piece if is_clean(piece) else normalize(bytes(piece)))
            out.append(tail)
        return Chunks(out)


def _cut(piece: Piece, start: int, stop: int) -> Piece:
    return piece.sub(start, stop) if isinstance(piece, Span) else piece[start:stop]


def buffers(data: bytes | Chunks) -> Iterator[bytes | memoryview]:
    """The octets of a message (bytes or Chunks) as buffers to write."""
    if isinstance(data, Chunks):
        yield from data.buffers()
    elif data:
        yield data


def joined(data: bytes | Chunks) -> bytes:
    return data.join() if isinstance(data, Chunks) else data

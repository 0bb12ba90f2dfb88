"""Our own load generator (asyncio streams, or aiosmtplib) and the messages it sends.

`smtp-source` measures throughput but reports no latency, and it repeats one
message.  This generator times every transaction (MAIL FROM to the reply
after the end of DATA, on a fresh connection per message like smtp-source
without -d) and can send a different message each time, which the mixed
seller load needs: distinct texts in many orders that pass the content
filters, plus a known share that the filters must reject (counted apart,
never as throughput).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Iterable, Iterator

import aiosmtplib


@dataclass
class Msg:
    mail_from: str
    rcpt: str
    data: bytes
    expect_reject: bool = False


@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0  # 5xx: counted apart, never as throughput
    deferred: int = 0  # 4xx
    errors: int = 0  # connection trouble
    unexpected_rejects: int = 0  # clean messages that got 5xx
    unexpected_accepts: int = 0  # messages meant to be rejected that got 250
    txn_latencies: list[float] = field(default_factory=list)  # accepted only, seconds
    reject_samples: list[str] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    started: float = 0.0
    last_accept: float = 0.0  # monotonic time of the last 250
    wall: float = 0.0

    def summary(self) -> dict:
        lat = sorted(self.txn_latencies)
        return {
            "sent": self.sent, "accepted": self.accepted, "rejected": self.rejected, "deferred": self.deferred,
            "errors": self.errors, "unexpected_rejects": self.unexpected_rejects,
            "unexpected_accepts": self.unexpected_accepts, "wall_s": round(self.wall, 3),
            "accepted_per_s": round(self.accepted / self.wall, 2) if self.wall else None,
            "latency_ms": latency_summary(lat),
            "reject_samples": self.reject_samples[:5], "error_samples": self.error_samples[:5],
        }


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def latency_summary(sorted_seconds: list[float]) -> dict:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)
    return {"n": len(sorted_seconds), "p50": ms(percentile(sorted_seconds, 50)),
            "p90": ms(percentile(sorted_seconds, 90)), "p99": ms(percentile(sorted_seconds, 99)),
            "max": ms(sorted_seconds[-1] if sorted_seconds else None)}


class ReplyError(Exception):
    """The server answered a command with an unexpected code."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


async def _reply(reader: asyncio.StreamReader, expected: tuple[int, ...]) -> None:
    line = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by the server")
        if line[3:4] != b"-":
            break
    code = int(line[:3])
    if code not in expected:
        raise ReplyError(code, line[4:].decode("utf-8", "replace").strip())


def _dot_stuffed(data: bytes) -> bytes:
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


async def lean_transaction(port: int, msg: Msg, timeout: float) -> float:
    """One message on a fresh connection, by hand on asyncio streams: the
    same commands as aiosmtplib's, in lock step, with about a third of its
    CPU.  At 50 sessions aiosmtplib alone peaked near 1,500 messages/s with a
    p99 of 30 ms against smtp-sink, which does nothing: the generator's own
    event loop was a large part of the latency it measured.  Returns the
    transaction's time (MAIL FROM to the reply after the data)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        async with asyncio.timeout(timeout):
            await _reply(reader, (220,))
            writer.write(b"EHLO bench.client.test\r\n")
            await _reply(reader, (250,))
            t0 = time.perf_counter()
            writer.write(f"MAIL FROM:<{msg.mail_from}>\r\n".encode())
            await _reply(reader, (250,))
            writer.write(f"RCPT TO:<{msg.rcpt}>\r\n".encode())
            await _reply(reader, (250, 251))
            writer.write(b"DATA\r\n")
            await _reply(reader, (354,))
            writer.write(_dot_stuffed(msg.data))
            await _reply(reader, (250,))
            elapsed = time.perf_counter() - t0
            writer.write(b"QUIT\r\n")
            await _reply(reader, (221,))
            return elapsed
    finally:
        writer.close()


async def aiosmtplib_transaction(port: int, msg: Msg, timeout: float) -> float:
    """The same with aiosmtplib (`--client aiosmtplib`, as runs before
    2026-11-27 11:45 UTC measured)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout, start_tls=False,
                             use_tls=False, local_hostname="bench.client.test")
    try:
        await client.connect()
        await client.ehlo()
        t0 = time.perf_counter()
        await client.mail(msg.mail_from)
        await client.rcpt(msg.rcpt)
        await client.data(msg.data)
        elapsed = time.perf_counter() - t0
        await client.quit()
        return elapsed
    except aiosmtplib.SMTPResponseException as exc:
        raise ReplyError(exc.code, exc.message) from None
    finally:
        if client.is_connected:
            client.close()


CLIENTS = {"lean": lean_transaction, "aiosmtplib": aiosmtplib_transaction}


async def run_load(port: int, messages: Iterable[Msg], concurrency: int, timeout: float = 120.0,
                   deadline_s: float | None = None, client: str = "lean") -> LoadResult:
    """Send every message, `concurrency` sessions at a time, one message per connection."""
    result = LoadResult()
    it: Iterator[Msg] = iter(messages)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline_s if deadline_s else None
    transaction = CLIENTS[client]

    async def worker() -> None:
        while True:
            if stop_at is not None and loop.time() > stop_at:
                return
            try:
                msg = next(it)
            except StopIteration:
                return
            result.sent += 1
            try:
                elapsed = await transaction(port, msg, timeout)
                result.accepted += 1
                result.txn_latencies.append(elapsed)
                result.last_accept = time.monotonic()
                if msg.expect_reject:
                    result.unexpected_accepts += 1
            except ReplyError as exc:
                if 500 <= exc.code < 600:
                    result.rejected += 1
                    if not msg.expect_reject:
                        result.unexpected_rejects += 1
                        result.reject_samples.append(f"{exc.code} {exc.message}"[:200])
                else:
                    result.deferred += 1
                    result.error_samples.append(f"{exc.code} {exc.message}"[:200])
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                result.errors += 1
                result.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])

    result.started = time.monotonic()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall = time.perf_counter() - t0
    return result


async def idle_sessions(port: int, n: int, hold_s: float, on_open=None) -> dict:
    """Open `n` sessions (banner + EHLO), keep them idle `hold_s` seconds, close them."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures = 0

    async def one() -> None:
        nonlocal failures
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            banner = await asyncio.wait_for(reader.readline(), 30)
            if not banner.startswith(b"220"):
                failures += 1
                writer.close()
                return
            writer.write(b"EHLO idle.client.test\r\n")
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line or line[3:4] != b"-":
                    break
            conns.append((reader, writer))
        except (OSError, asyncio.TimeoutError):
            failures += 1

    sem = asyncio.Semaphore(100)

    async def guarded() -> None:
        async with sem:
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(guarded() for _ in range(n)))
    opened = time.perf_counter() - t0
    measured = on_open() if on_open else None
    await asyncio.sleep(hold_s)
    measured_late = on_open() if on_open else None
    for _, writer in conns:
        try:
            writer.write(b"QUIT\r\n")
            writer.close()
        except Exception:
            pass
    return {"requested": n, "open": len(conns), "failed": failures, "open_s": round(opened, 3),
            "measured": measured, "measured_after_hold": measured_late}


# --------------------------------------------------------------- messages

def buyer_message(buyer: str, to: str, size: int, seq: int) -> bytes:
    """A buyer's plain message of about `size` body bytes (like smtp-source -l)."""
    line = b"X" * 78
    lines, total = [], 0
    while total < size:
        piece = line[: max(1, min(78, size - total))]
        lines.append(piece)
        total += len(piece) + 2
    head = (f"From: <{buyer}>\r\nTo: <{to}>\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Message-ID: <bench.{seq}.{secrets.token_hex(6)}@buyer.test>\r\nSubject: question {seq}\r\n\r\n")
    return head.encode() + b"\r\n".join(lines) + b"\r\n"


_WORDS = ("amber blue cedar dawn ember fern grove harbor iris juniper kestrel linen maple nutmeg olive "
          "pebble quartz river sage thistle umber violet willow yarrow acorn birch clover dune elm finch "
          "garnet heather indigo jasper kelp lark meadow nectar orchid plum quill reed saffron tansy "
          "walnut aspen bramble cobalt daisy eagle fable gull hazel ivory jade lotus moss nova opal pine").split()
_OPENINGS = ("Hello and thank you for your order.", "Thank you for shopping with us.",
             "We are writing about your recent purchase.", "Good news about your order.")
_BODIES = ("Your parcel was packed this morning and leaves our workshop tomorrow.",
           "The item you chose is back from the engraver and looks lovely.",
           "We checked the colour you asked for and it matches the photos.",
           "The courier collected your parcel today and it is on its way.",
           "We wrapped the piece in paper so it travels safely.",
           "Please let us know if the size is not right and we will help.")
_CLOSINGS = ("Kind regards,", "Best wishes,", "Warm regards,", "Thanks again,")


def seller_text(rng: random.Random) -> str:
    tag = " ".join(rng.choice(_WORDS) for _ in range(6))
    sentences = [rng.choice(_OPENINGS), rng.choice(_BODIES), rng.choice(_BODIES),
                 f"Our packing note for this parcel reads: {tag}.", rng.choice(_CLOSINGS), "The workshop team"]
    return "\r\n\r\n".join(sentences[:4]) + "\r\n\r\n" + "\r\n".join(sentences[4:]) + "\r\n"


_BAD = ("Visit https://deals.shop-promo.example/summer for more.",
        "Call us on +44 20 7946 0958 if you have questions.",
        "Use the coupon code SAVE20 for 20% off your next order.",
        "Write to our other address sales@elsewhere.example for offers.")


def seller_message(seller_name: str, seller_email: str, to: str, rng: random.Random, seq: int,
                   bad: bool = False) -> bytes:
    body = seller_text(rng)
    if bad:
        body = body + "\r\n" + rng.choice(_BAD) + "\r\n"
    subject = f"About your order: {rng.choice(_WORDS)} {rng.choice(_WORDS)}"
    head = (f'From: "{seller_name}" <{seller_email}>\r\nTo: <{to}>\r\nDate: {formatdate(usegmt=True)}\r\n'
            f"Message-ID: <bench.s{seq}.{secrets.token_hex(6)}@shop.example>\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n")
    return head.encode() + body.encode()


@dataclass
class OrderRef:
    order_id: str
    seller_id: str
    seller_name: str
    seller_email: str
    buyer: str
    buyer_alias: str  # full address
    seller_alias: str  # full address


def mixed_messages(orders: list[OrderRef], n: int, seed: int, bad_share: float = 0.05,
                   buyer_share: float = 0.2, for_postfix: bool = False,
                   seller_cap: int | None = 3) -> list[Msg]:
    """`n` distinct messages across `orders`: seller messages (at most `seller_cap` per order: 3 is
    the contract's default limit of unsolicited ones), buyer replies, and `bad_share` seller
    messages the content filters reject.  `seller_cap=None` is for orders whose buyer has already
    written (the store's history says so): the relay counts none of their seller messages as
    unsolicited, so an order can take any number.

    With `for_postfix`, the same messages go to the real addresses (Postfix relays them as they are)."""
    rng = random.Random(seed)
    per_order_seller: dict[str, int] = {}
    out: list[Msg] = []
    order_pool = list(orders)
    rng.shuffle(order_pool)
    i = 0
    while len(out) < n:
        o = order_pool[i % len(order_pool)]
        i += 1
        roll = rng.random()
        if roll < bad_share:
            rcpt = o.buyer if for_postfix else o.buyer_alias
            out.append(Msg(o.seller_email, rcpt, seller_message(o.seller_name, o.seller_email, rcpt, rng, len(out),
                                                                  bad=True), expect_reject=not for_postfix))
        elif roll < bad_share + buyer_share:
            rcpt = o.seller_email if for_postfix else o.seller_alias
            out.append(Msg(o.buyer, rcpt, buyer_message(o.buyer, rcpt, 1500, len(out))))
        else:
            if seller_cap is not None and per_order_seller.get(o.order_id, 0) >= seller_cap:
                continue
            per_order_seller[o.order_id] = per_order_seller.get(o.order_id, 0) + 1
            rcpt = o.buyer if for_postfix else o.buyer_alias
            out.append(Msg(o.seller_email, rcpt, seller_message(o.seller_name, o.seller_email, rcpt, rng, len(out))))
        if i > n * 20:
            raise RuntimeError("not enough orders for the mixed load; open more")
    return out

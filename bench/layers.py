"""What each layer of the relay costs a message: `python bench/layers.py [--n 4000] [--reps 3]`.

Four SMTP servers in this process, on uvloop, each driven in turn by
`smtp-source` (10 sessions, 2 KB messages, one connection each, as the
benchmark's buyer load), repeated `--reps` times in alternation so that the
machine's drift falls on all four alike.  For each it prints messages/s and
this process's CPU time a message (all threads, user and system):

- `floor`: an asyncio.Protocol that answers every command with a canned
  reply and finds the end of data, nothing else: what Python and uvloop
  cost for the connection, seven replies and the data, and no more.
- `aiosmtpd`: aiosmtpd's SMTP with a handler that accepts everything, as
  installed (its own command parsing, address parsing, per-connection set-up).
- `relay smtp`: the relay's daemon (relay.server, the full default settings)
  with its pipeline replaced by an immediate "250": the relay's SMTP layer,
  its session guards and the RCPT lookup of the alias, without parsing,
  filters, the store or delivery.
- `relay`: the whole relay, as bench/cpu_split.py runs it (one worker, the
  durable commit, delivery to Postfix's smtp-sink).

The differences name what a message's CPU goes to.  Needs Postfix's
smtp-source and smtp-sink (apt-get install postfix).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cpu_split import smtp_source  # noqa: E402
from inprocess import ready, relay_with_sink  # noqa: E402

WARM_UP = 200
SESSIONS = 10


class CannedSMTP(asyncio.Protocol):
    """The least an SMTP server can do for smtp-source: a reply per command,
    the end of data found, nothing parsed or kept."""

    def connection_made(self, transport) -> None:
        self.transport, self.in_data, self.buffer = transport, False, b""
        transport.write(b"220 floor.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer, self.in_data = self.buffer[end + 5:], False
                self.transport.write(b"250 2.0.0 OK\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            verb, self.buffer = self.buffer[:4].upper(), self.buffer[end + 2:]
            if verb == b"EHLO":
                self.transport.write(b"250-floor.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 Bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 OK\r\n")


class AcceptAll:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 OK"


async def _measure(port: int, rcpt: str, n: int) -> tuple[float, float]:
    """(messages/s, CPU ms a message) of this process for n smtp-source messages."""
    usage0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await smtp_source(port, rcpt, n, SESSIONS)
    wall, usage1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime
    return n / wall, cpu * 1000 / n


async def _plain_server(factory, n: int) -> tuple[float, float]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        await smtp_source(port, "sam@shop.example", WARM_UP, SESSIONS)
        return await _measure(port, "sam@shop.example", n)
    finally:
        server.close()
        await server.wait_closed()


async def floor(n: int) -> tuple[float, float]:
    return await _plain_server(CannedSMTP, n)


async def stock_aiosmtpd(n: int) -> tuple[float, float]:
    from aiosmtpd.smtp import SMTP

    return await _plain_server(lambda: SMTP(AcceptAll(), hostname="aiosmtpd.test"), n)


async def answer_250(self, *args, **kwargs):
    """In place of Pipeline.process (or of its _accept, bench/instructions.py):
    a buyer's message accepted at once, the rest of the pipeline skipped."""
    from relay import pipeline

    return pipeline.Outcome("250 2.0.0 OK", "accepted", direction="buyer_to_seller")


async def relay(n: int, stub_pipeline: bool = False) -> tuple[float, float]:
    from relay import pipeline

    original = pipeline.Pipeline.process
    if stub_pipeline:
        pipeline.Pipeline.process = answer_250
    try:
        with tempfile.TemporaryDirectory() as directory:
            limits = {"max_connections": 1000, "max_connections_per_ip": 1000}
            async with relay_with_sink(directory, limits) as (daemon, rcpt):
                from relay.server import freeze_startup_heap

                freeze_startup_heap()
                await smtp_source(daemon.port, rcpt, WARM_UP, SESSIONS)
                return await _measure(daemon.port, rcpt, n)
    finally:
        pipeline.Pipeline.process = original


LAYERS = {
    "floor": floor,
    "aiosmtpd": stock_aiosmtpd,
    "relay smtp": lambda n: relay(n, stub_pipeline=True),
    "relay": relay,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if not ready("layers") or not shutil.which("smtp-source"):
        print("layers: needs Postfix's smtp-source and smtp-sink (apt-get install postfix)", file=sys.stderr)
        return 2
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in LAYERS}
    for rep in range(args.reps):
        for name, layer in LAYERS.items():
            rate, cpu = asyncio.run(layer(args.n))
            results[name].append((rate, cpu))
            print(f"repetition {rep + 1}  {name:<11} {rate:7.0f} messages/s  {cpu:.3f} ms of CPU a message",
                  flush=True)
    print("median CPU a message, ms: " + ", ".join(
        f"{name} {statistics.median(cpu for _, cpu in runs):.3f}" for name, runs in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

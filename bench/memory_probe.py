"""Memory held for one large message through SMTP: `python bench/memory_probe.py [--size MiB] [--where] [--pdf]`.

Runs the relay's daemon in this process (uvloop, a temporary store,
delivering to Postfix's `smtp-sink`), sends one smtp-source-like message of
`--size` MiB (plain text lines; with --pdf a short text and a PDF attached,
base64) from a separate process with smtplib, and
waits until it is delivered.  A small message goes first, untraced: the
first message of a process imports and caches what every later one reuses
(idna's UTS 46 table alone is 1.1 MiB), which is no part of what a message
holds (`--cold` traces from the first message, as this probe did before
issue 7's changes).  Prints tracemalloc's peak over the whole
exchange (DATA, parse, filters, rewrite, commit, delivery) as a multiple of
the message size, received copy included, and the process's RSS high-water
mark before and after (VmHWM; it also counts SQLite's page caches, uvloop's
buffers and the allocator's slack, which tracemalloc does not see).
`--where` samples tracemalloc while it runs and lists the allocations
alive at the highest sample.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inprocess import ready, relay_with_sink  # noqa: E402
from relay.server import freeze_startup_heap  # noqa: E402

CLIENT = r"""
import base64, random, smtplib, sys
port, rcpt, size, kind = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
head = b"From: bob@buyer.test\r\nTo: " + rcpt.encode() + b"\r\nSubject: big\r\n"
if kind == "pdf":
    pdf = b"%PDF-1.4\n" + random.Random(size).randbytes(size * 3 // 4 * 76 // 78 - 9)
    message = (head + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
               b"--b1\r\nContent-Type: text/plain\r\n\r\nThe invoice is attached.\r\n"
               b"--b1\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Transfer-Encoding: base64\r\n"
               b"Content-Disposition: attachment; filename=invoice.pdf\r\n\r\n"
               + base64.encodebytes(pdf).replace(b"\n", b"\r\n") + b"--b1--\r\n")
else:
    line = b"La de da de da 1 la de da de da 2 la de da de da 3 la de da de da 4\r\n"
    message = head + b"\r\n" + line * (size // len(line))
with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
    client.sendmail("bob@buyer.test", [rcpt], message)
print(len(message))
"""


def vm(name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


async def send(daemon, rcpt: str, size: int, kind: str = "text", sent: list | None = None) -> bool:
    """Send one message of about `size` octets (its exact size is appended to
    `sent`); True once everything queued is delivered."""
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(daemon.port), rcpt, str(size),
                                                  kind, stdout=asyncio.subprocess.PIPE)
    out, _ = await client.communicate()
    if sent is not None:
        sent.append(int(out or 0))
    for _ in range(1200):
        entries = await daemon.store.queue_list()
        if entries and all(e.state == "delivered" for e in entries):
            return True
        await asyncio.sleep(0.05)
    return False


async def probe(size: int, where: bool, cold: bool, directory: str, kind: str = "text") -> None:
    async with relay_with_sink(directory) as (daemon, rcpt):
        if not cold:
            await send(daemon, rcpt, 100_000)
        freeze_startup_heap()
        rss_before = vm("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM
        tracemalloc.start(10 if where else 1)
        highest = {"size": 0, "snapshot": None}
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                current, _ = tracemalloc.get_traced_memory()
                if current > highest["size"]:
                    highest["size"], highest["snapshot"] = current, tracemalloc.take_snapshot()
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample()) if where else None
        sent: list[int] = []
        delivered = await send(daemon, rcpt, size, kind, sent)
        size = sent[0] or size
        done.set()
        if sampler:
            await sampler
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"message {size / 2**20:.1f} MiB ({kind}), delivered: {delivered}"
              + (" (first message, --cold)" if cold else ""))
        print(f"tracemalloc peak {peak / 2**20:.1f} MiB = {peak / size:.2f}x the message (received copy included)")
        print(f"RSS {rss_before / 2**20:.0f} MiB before, high-water mark {vm('VmHWM') / 2**20:.0f} MiB during "
              f"(+{(vm('VmHWM') - rss_before) / size:.1f}x the message)")
        if where and highest["snapshot"] is not None:
            print("alive at the highest sample:")
            for stat in highest["snapshot"].statistics("traceback")[:6]:
                print(f"  {stat.size / 2**20:6.1f} MiB  " + " <- ".join(
                    f"{Path(f.filename).name}:{f.lineno}" for f in reversed(stat.traceback[-4:])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=10.0, help="MiB")
    parser.add_argument("--where", action="store_true")
    parser.add_argument("--cold", action="store_true", help="no untraced message first")
    parser.add_argument("--pdf", action="store_true",
                        help="a short text and a PDF attachment (base64), instead of plain text lines")
    args = parser.parse_args()
    if not ready("memory_probe"):
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-mem-") as directory:
        asyncio.run(probe(int(args.size * 2**20), args.where, args.cold, directory, "pdf" if args.pdf else "text"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What our load generator itself costs: `python bench/loadgen_cost.py [--n 4000]`.

Drives Postfix's `smtp-sink` (which does nothing but answer) with
bench/loadgen.py at 10 and 50 sessions, with each client (the hand-written
one and aiosmtplib) on each event loop (asyncio's and uvloop), and prints
messages/s, the generator's CPU per message and its p50/p99.  Whatever it
measures here is the floor under every latency the benchmark reports, and
its CPU is taken from the systems under test (they share the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import Msg, run_load  # noqa: E402
from peers import free_port  # noqa: E402


def measure(port: int, msgs: list[Msg], sessions: int, client: str, loop: str) -> str:
    coro = run_load(port, msgs, sessions, timeout=60, client=client)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if loop == "uvloop":
        import uvloop
        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    lat = result.summary()["latency_ms"]
    return (f"{client:<10} {loop:<7} s={sessions:<3} {result.accepted / wall:7.0f}/s  "
            f"cpu {cpu * 1000 / len(msgs):.3f} ms/msg  p50 {lat['p50']} ms  p99 {lat['p99']} ms"
            + ("" if result.accepted == len(msgs) else f"  ({len(msgs) - result.accepted} not accepted)"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    if not shutil.which("smtp-sink"):
        print("loadgen_cost.py: needs Postfix's smtp-sink (apt-get install postfix)", file=sys.stderr)
        return 2
    port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # smtp-sink has no readiness signal
        body = "La de da de da " * 137
        msgs = [Msg("bob@buyer.test", "seller@relay.example",
                    f"From: bob@buyer.test\r\nTo: seller@relay.example\r\nSubject: m{i}\r\n\r\n{body}\r\n".encode())
                for i in range(args.n)]
        for client, loop in (("aiosmtplib", "asyncio"), ("aiosmtplib", "uvloop"), ("lean", "asyncio"),
                             ("lean", "uvloop")):
            for sessions in (10, 50):
                print(measure(port, msgs, sessions, client, loop), flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Garbage-collector pauses in the relay under load: `python bench/gc_probe.py [--n 4000] [--sessions 50] [--untuned]`.

Runs the relay's daemon in this process (uvloop, as `relay serve` does) on a
temporary store, delivering to Postfix's `smtp-sink`, and drives it with
bench/loadgen.py from a separate process (S sessions, 2 KB buyer messages,
one connection each).  A `gc.callbacks` hook times every collection of the
relay's process.  Prints, per generation, how many collections ran, their
total and longest wall time, then the transactions' p50/p99 latency and the
relay process's CPU time per message.

`--untuned` skips `relay.server.freeze_startup_heap()` (the start-up heap
freeze and the young-generation threshold that `serve` applies), to see what
those two do.  The other GC fixes (sessions that are not reference cycles,
the small cache for per-message header values) are code, not switches:
check out an older commit to compare with them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inprocess import ready, relay_with_sink  # noqa: E402
from relay.server import freeze_startup_heap  # noqa: E402

LOAD = """
import asyncio, json, sys
sys.path.insert(0, {here!r})
import loadgen
port, rcpt, n, sessions = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
msgs = [loadgen.Msg("bob@buyer.test", rcpt, loadgen.buyer_message("bob@buyer.test", rcpt, 2048, i))
        for i in range(n)]
print(json.dumps(asyncio.run(loadgen.run_load(port, msgs, sessions)).summary()))
"""


class PauseLog:
    """Wall time of every collection, by generation (a gc.callbacks hook)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)


async def probe(n: int, sessions: int, tuned: bool, directory: str) -> dict:
    log = PauseLog()
    async with relay_with_sink(directory, {"max_connections": 1000, "max_connections_per_ip": 1000}) as (daemon, rcpt):
        if tuned:
            freeze_startup_heap()
        gc.callbacks.append(log)
        cpu0 = time.process_time()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", LOAD.format(here=str(HERE)), str(daemon.port), rcpt, str(n), str(sessions),
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            cpu = time.process_time() - cpu0
        finally:
            gc.callbacks.remove(log)
    load = json.loads(out.decode().strip().splitlines()[-1])
    return {"tuned": tuned, "messages": n, "sessions": sessions, "accepted": load["accepted"],
            "accepted_per_s": load["accepted_per_s"], "latency_ms": load["latency_ms"],
            "relay_cpu_ms_per_msg": round(cpu * 1000 / max(1, load["accepted"]), 3),
            "gc": {gen: {"collections": len(p), "total_ms": round(sum(p) * 1000, 1),
                         "max_ms": round(max(p, default=0) * 1000, 1)} for gen, p in log.pauses.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--untuned", action="store_true")
    args = parser.parse_args()
    if not ready("gc_probe"):
        return 2
    with tempfile.TemporaryDirectory(prefix="relay-gc-") as directory:
        result = asyncio.run(probe(args.n, args.sessions, not args.untuned, directory))
    for gen, g in result["gc"].items():
        print(f"generation {gen}: {g['collections']:4d} collections, {g['total_ms']:7.1f} ms in all, "
              f"longest {g['max_ms']:6.1f} ms")
    lat = result["latency_ms"]
    print(f"{result['accepted']} of {result['messages']} accepted, {result['accepted_per_s']}/s; "
          f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
          f"relay CPU {result['relay_cpu_ms_per_msg']} ms a message (accepting and delivering)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

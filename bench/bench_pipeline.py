"""CPU per message of the relay's own work, without SMTP: `python bench/bench_pipeline.py [--n N] [--profile]`.

Runs `Pipeline.resolve_recipient` + `Pipeline.process` (parse, checks, filters,
rewrite, the durable commit of audit row, Message-ID map and queue entry) on a
real SQLite store in a temporary directory, for N distinct seller messages
across 500 orders and N buyer messages like smtp-source's (bench/loadgen.py
makes both).  Prints wall and CPU milliseconds per message for each kind
(all threads, and the event loop's thread alone);
with --profile, the top of a cProfile of the seller run.  A quick, steadier
check than the full benchmark for changes to the per-message path: the
machine's other load shows in wall time, much less in CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import buyer_message, seller_message  # noqa: E402

from relay.aliases import mint_alias  # noqa: E402
from relay.config import settings_from_dict  # noqa: E402
from relay.logs import configure_logging  # noqa: E402
from relay.pipeline import Pipeline  # noqa: E402
from relay.store import Store  # noqa: E402


async def _setup(directory: str, orders: int) -> tuple[Pipeline, Store, list[dict]]:
    settings = settings_from_dict({"store": {"path": f"{directory}/relay.sqlite3"}})
    store = await Store.open(settings.store.path)
    refs = []
    for i in range(orders):
        seller = f"s{i}"
        await store.add_seller(seller, f"Shop {i}", [f"owner{i}@shop{i}.example"])
        order = await store.open_order(f"o{i}", seller, f"buyer{i}@buyer.test", None, mint_alias)
        refs.append({"seller": f"owner{i}@shop{i}.example", "name": f"Shop {i}", "buyer": f"buyer{i}@buyer.test",
                     "buyer_alias": f"{order.buyer_alias}@{settings.relay.domain}",
                     "seller_alias": f"{order.seller_alias}@{settings.relay.domain}"})
    return Pipeline(settings, store), store, refs


async def _run(pipeline: Pipeline, batch: list[tuple[str, str, bytes]]) -> tuple[float, float, float, int]:
    wall, cpu, loop_cpu, accepted = time.perf_counter(), time.process_time(), time.thread_time(), 0
    for mail_from, rcpt, content in batch:
        recipient, reply = await pipeline.resolve_recipient(rcpt)
        assert recipient is not None, reply
        outcome = await pipeline.process(mail_from, recipient, content)
        accepted += outcome.verdict == "accepted"
    n = len(batch)
    return ((time.perf_counter() - wall) * 1000 / n, (time.process_time() - cpu) * 1000 / n,
            (time.thread_time() - loop_cpu) * 1000 / n, accepted)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    configure_logging("warning")
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as directory:
        pipeline, store, refs = await _setup(directory, 500)
        sellers = []
        for i in range(args.n):
            ref = refs[i % len(refs)]
            sellers.append((ref["seller"], ref["buyer_alias"],
                            seller_message(ref["name"], ref["seller"], ref["buyer_alias"], rng, i)))
        buyers = [(refs[i % len(refs)]["buyer"], refs[i % len(refs)]["seller_alias"],
                   buyer_message(refs[i % len(refs)]["buyer"], refs[i % len(refs)]["seller_alias"], 2048, i))
                  for i in range(args.n)]
        await _run(pipeline, buyers[:50])  # warm caches and code paths
        for name, batch in (("buyer 2KB", buyers[50:]), ("seller mixed", sellers)):
            if args.profile and name == "seller mixed":
                profiler = cProfile.Profile()
                profiler.enable()
            wall, cpu, loop_cpu, accepted = await _run(pipeline, batch)
            print(f"{name:14s} {len(batch):5d} messages, {accepted:5d} accepted: "
                  f"wall {wall:6.3f} ms/msg, CPU {cpu:6.3f} ms/msg (event loop thread {loop_cpu:6.3f})")
        if args.profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())

"""Where a transaction's time goes, phase by phase: `python bench/phases.py [--sessions 50] [--n 8000] [--reps 2]`.

Starts what `bench/run.py` starts (smtp-sink, the relay with `listen.workers`
= one per CPU; the Postfix peer too, unused) and drives the relay with
buyer-to-seller messages as the `latency 2KB` scenario does, timing each step
of each session apart: `conn` (connect, banner, EHLO), `mail`, `rcpt` (the
alias lookup), `data` (DATA to its 354), `dot` (the message to its 250:
parse, filters, rewrite, the durable commit) and `quit`.  `total` is what
run.py reports as the transaction latency: MAIL FROM to the 250.  Prints
p50/p90/p99/max of each, in ms, with the relay's CPU per message.  Needs
root (the Postfix peer), like run.py.

From the relay's own /metrics (`metrics.listen` is set for this), it also
prints how long the messages waited for their durable commit
(`relay_store_commit_wait_seconds`: p50/p90/p99 read off the histogram's
buckets, as Prometheus' histogram_quantile does) and how many commits a
message took (`relay_store_commits_total`, with the deliveries' own): the
part of `dot` that durability costs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from peers import free_port  # noqa: E402

PHASES = ("conn", "mail", "rcpt", "data", "dot", "quit")


async def timed_session(port: int, msg: loadgen.Msg, times: dict[str, list[float]]) -> None:
    """One message on a fresh connection, each step timed."""
    marks = [time.perf_counter()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await loadgen._reply(reader, (220,))
        writer.write(b"EHLO bench.client.test\r\n")
        await loadgen._reply(reader, (250,))
        for line, expected in ((f"MAIL FROM:<{msg.mail_from}>\r\n".encode(), (250,)),
                               (f"RCPT TO:<{msg.rcpt}>\r\n".encode(), (250, 251)),
                               (b"DATA\r\n", (354,)), (loadgen._dot_stuffed(msg.data), (250,)),
                               (b"QUIT\r\n", (221,))):
            marks.append(time.perf_counter())
            writer.write(line)
            await loadgen._reply(reader, expected)
        marks.append(time.perf_counter())
    finally:
        writer.close()
    for name, start, stop in zip(PHASES, marks, marks[1:]):
        times[name].append(stop - start)
    times["total"].append(marks[5] - marks[1])


async def load(port: int, msgs: list[loadgen.Msg], sessions: int) -> tuple[dict[str, list[float]], float]:
    times: dict[str, list[float]] = {name: [] for name in ("total",) + PHASES}
    todo = iter(msgs)

    async def session() -> None:
        for msg in todo:
            await timed_session(port, msg, times)

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return times, time.perf_counter() - started


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


@dataclass
class StoreSamples:
    """The relay's store metrics at one scrape: its commits, and the
    commit-wait histogram's cumulative buckets by upper bound (seconds; the
    +Inf bucket is the count)."""

    commits: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def waits(self) -> float:
        return self.buckets.get(math.inf, 0.0)


def scrape(metrics: str) -> StoreSamples:
    """The store samples from the relay's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = StoreSamples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "relay_store_commits_total":
                found.commits = sample.value
            elif sample.name == "relay_store_commit_wait_seconds_bucket":
                found.buckets[float(sample.labels["le"])] = sample.value
    return found


def settled_scrape(metrics: str, waits: float, within: float = 5.0) -> StoreSamples:
    """scrape() once the histogram holds `waits` waits: the other worker
    processes report theirs to the one serving /metrics once a second."""
    deadline = time.monotonic() + within
    while True:
        found = scrape(metrics)
        if found.waits >= waits or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def bucket_quantile(before: StoreSamples, after: StoreSamples, q: float) -> float | None:
    """The q-quantile, in ms, of what the buckets counted between two scrapes,
    interpolated within its bucket as histogram_quantile does (None if none)."""
    bounds = sorted((upper, count - before.buckets.get(upper, 0.0)) for upper, count in after.buckets.items())
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= rank:
            if upper == math.inf:
                return round(lower * 1000, 2)
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return round((lower + (upper - lower) * share) * 1000, 2)
        lower, below = upper, cumulative
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--n", type=int, default=8000, help="messages per repetition")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="listen.workers (default: one per CPU)")
    parser.add_argument("--cpu-affinity", choices=["auto", "none"], default="auto", help="listen.cpu_affinity")
    args = parser.parse_args()
    bench = run.Bench(argparse.Namespace(
        quick=True, profile=False, profile_seconds=40, only=None, sessions=[args.sessions],
        workers=args.workers or os.cpu_count() or 1, cpu_affinity=args.cpu_affinity, scale_orders=1000, reps=1,
        out=str(HERE / "results"),
        no_readme=True, readme=False, keep=False, client="lean"))
    bench.stamp = "phases"
    metrics = f"127.0.0.1:{free_port()}"
    bench.relay_extra = {"metrics": {"listen": metrics}}
    try:
        bench.start()
        for rep in range(args.reps):
            msgs = run.buyer_msgs(bench.ours, args.n, run.SMALL)
            cpu0, store0 = bench.ours.cpu(), scrape(metrics)
            times, wall = run.run_on_fast_loop(load(bench.relay.port, msgs, args.sessions))
            cpu = bench.ours.cpu() - cpu0
            print(f"repetition {rep + 1}: {args.sessions} sessions, {args.n / wall:.0f} messages/s, "
                  f"relay CPU {cpu * 1000 / args.n:.2f} ms/msg")
            for name in ("total",) + PHASES:
                values = times[name]
                print(f"  {name:5}  p50 {percentile_ms(values, .5):7}  p90 {percentile_ms(values, .9):7}  "
                      f"p99 {percentile_ms(values, .99):7}  max {percentile_ms(values, 1):7}")
            bench.settle()  # (the deliveries' commits of this repetition are counted too)
            store1 = settled_scrape(metrics, store0.waits + args.n)
            print(f"  commit wait (the relay's histogram)  p50 {bucket_quantile(store0, store1, .5)}  "
                  f"p90 {bucket_quantile(store0, store1, .9)}  p99 {bucket_quantile(store0, store1, .99)}; "
                  f"commits a message {(store1.commits - store0.commits) / args.n:.3f}")
    finally:
        bench.stop()
        shutil.rmtree(bench.tmp, ignore_errors=True)  # (Bench.run does this for its own runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Side-by-side benchmark of the relay and Postfix (issue 7).

    python bench/run.py --quick      # about 2 minutes
    python bench/run.py              # the full run (about half an hour)
    python bench/run.py --profile    # py-spy of the relay under the 10-session load

Needs root (the Postfix peer), Postfix's smtp-source / smtp-sink and the
`postfix` binary (`apt-get install postfix`, preseeded "No configuration"),
and the relay's own dependencies.  Everything listens on 127.0.0.1; every load
is bounded in count and time.  See bench/README.md for what each scenario
measures; results go to bench/results/<timestamp>.json and a table to
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from loadgen import Msg, OrderRef, buyer_message, idle_sessions, mixed_messages, run_load  # noqa: E402
from peers import (RELAY_DOMAIN, PostfixPeer, RelayUnderTest, Sink, descendants,  # noqa: E402
                   reset_peak_rss, tree_cpu_seconds, tree_pss_kb, tree_status)
import store_fill  # noqa: E402

SELLERS = [("s1", "Sam's Shop", "sam@shop.example")] + [
    (f"s{k}", f"Workshop {name}", f"seller{k}@shop.example")
    for k, name in ((2, "Birch"), (3, "Cedar"), (4, "Dune"), (5, "Elm"))]
BUYER = ("bob@buyer.test", "Bob Buyer")
SMTP_SOURCE_ORDER = "111-2223334-5556667"
SMALL = 2048  # bytes of body, smtp-source -l


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------- machine

def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    postfix_version = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                     text=True).stdout.strip()
    try:
        import aiosmtpd
        import aiosqlite
        import aiosmtplib
        libs = {"aiosmtpd": aiosmtpd.__version__, "aiosqlite": aiosqlite.__version__,
                "aiosmtplib": aiosmtplib.__version__}
    except Exception:
        libs = {}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "relay"], capture_output=True,
                                text=True).stdout.strip())
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(), "postfix": postfix_version,
            "libs": libs, "relay_commit": commit + ("+dirty" if dirty else ""),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}


def loadavg() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


def busy_since(start: tuple[float, float]) -> float | None:
    """Share of the machine's CPU time that was busy since `start` (anyone's: other jobs too)."""
    now = machine_busy()
    total = now[1] - start[1]
    return round((now[0] - start[0]) / total, 3) if total > 0 else None


# ------------------------------------------------------------- the systems

class System:
    """What a run needs to know about one system under test."""

    name = ""
    port = 0

    def rcpt_for_smtp_source(self) -> str: ...
    def wait_delivered(self, base: int, n: int, timeout: float) -> float | None: ...
    def reset_peak(self) -> None: ...
    def memory(self) -> dict[str, Any]: ...
    def cpu(self) -> float: ...


class Ours(System):
    name = "relay"

    def __init__(self, relay: RelayUnderTest, sink: Sink, seller_alias: str):
        self.relay, self.sink, self.seller_alias = relay, sink, seller_alias

    @property
    def port(self) -> int:  # type: ignore[override]
        return self.relay.port

    def rcpt_for_smtp_source(self) -> str:
        return self.seller_alias

    def wait_delivered(self, base: int, n: int, timeout: float) -> float | None:
        # The sink may see duplicates (at-least-once delivery): the run is
        # delivered once the sink has n more messages *and* the relay's queue
        # holds nothing undelivered.
        deadline = time.monotonic() + timeout
        if self.sink.wait_for(base + n, timeout) is None:
            return None
        while time.monotonic() < deadline:
            if store_fill.queue_pending(self.relay.db) == 0:
                return time.monotonic()
            time.sleep(0.02)
        return None

    def reset_peak(self) -> None:
        for pid in descendants(self.relay.pid):
            reset_peak_rss(pid)

    def memory(self) -> dict[str, Any]:
        # With listen.workers > 1: summed over the processes (the peak is then an upper bound).
        st = tree_status(self.relay.pid)
        return {"peak_rss_mb": round(st["VmHWM"] / 1024, 1), "rss_mb": round(st["VmRSS"] / 1024, 1),
                "processes": st["processes"]}

    def cpu(self) -> float:
        return tree_cpu_seconds(self.relay.pid)


class Theirs(System):
    name = "postfix"

    def __init__(self, postfix: PostfixPeer, sink: Sink):
        self.postfix, self.sink = postfix, sink

    @property
    def port(self) -> int:  # type: ignore[override]
        return self.postfix.port

    def rcpt_for_smtp_source(self) -> str:
        return SELLERS[0][2]

    def wait_delivered(self, base: int, n: int, timeout: float) -> float | None:
        return self.sink.wait_for(base + n, timeout)

    def reset_peak(self) -> None:
        pass

    def memory(self) -> dict[str, Any]:
        pid = self.postfix.master_pid()
        return {"pss_all_processes_mb": round(tree_pss_kb(pid) / 1024, 1) if pid else None}

    def cpu(self) -> float:
        pid = self.postfix.master_pid()
        return tree_cpu_seconds(pid) if pid else 0.0


# ------------------------------------------------------------------- runs

def smtp_source_run(system: System, sink: Sink, sessions: int, n: int, size: int, timeout: float,
                    sender: str = BUYER[0]) -> dict[str, Any]:
    """One smtp-source run: accepted/s from its wall time, delivered/s until the sink has them all."""
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    base = sink.count
    system.reset_peak()
    cpu0, load0, busy0 = system.cpu(), loadavg(), machine_busy()
    args = [exe, "-c", "-s", str(sessions), "-m", str(n), "-l", str(size), "-f", sender,
            "-t", system.rcpt_for_smtp_source(), "-M", "bench.client.test", f"127.0.0.1:{system.port}"]
    t0 = time.monotonic()
    try:
        out = subprocess.run(args, capture_output=True, timeout=timeout)
        rc, stdout, stderr = out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = -1, exc.stdout or b"", b"timed out"
    t1 = time.monotonic()
    counts = re.findall(rb"(\d+)", stdout.replace(b"\r", b" "))
    accepted = int(counts[-1]) if counts else 0
    delivered_at = system.wait_delivered(base, accepted, timeout) if accepted else None
    time.sleep(0.2)  # let a late duplicate reach the sink before counting
    result: dict[str, Any] = {
        "kind": "smtp-source", "system": system.name, "sessions": sessions, "size": size, "n": n,
        "accepted": accepted, "exit": rc, "stderr": stderr.decode("utf-8", "replace")[-300:] if rc else "",
        "accept_wall_s": round(t1 - t0, 3),
        "accepted_per_s": round(accepted / (t1 - t0), 2) if t1 > t0 else None,
        "delivered_wall_s": round(delivered_at - t0, 3) if delivered_at else None,
        "delivered_per_s": round(accepted / (delivered_at - t0), 2) if delivered_at else None,
        "sink_received": sink.count - base,
        "cpu_ms_per_msg": round((system.cpu() - cpu0) * 1000 / accepted, 3) if accepted else None,
        "loadavg_before": load0, "machine_busy_share": busy_since(busy0),
    }
    result["duplicates_at_sink"] = max(0, result["sink_received"] - accepted)
    result.update(system.memory())
    return result


def generator_run(system: System, sink: Sink, messages: list[Msg], sessions: int, timeout: float,
                  kind: str, client: str = "lean") -> dict[str, Any]:
    """A run of our own generator: latency per transaction, rejected apart.
    It runs on uvloop where installed: the generator shares the CPUs with
    both systems, and the less of them it takes, the less its own event loop
    adds to the latencies it measures (bench/loadgen.py)."""
    base = sink.count
    system.reset_peak()
    cpu0, load0, busy0 = system.cpu(), loadavg(), machine_busy()
    t0 = time.monotonic()
    res = run_on_fast_loop(run_load(system.port, messages, sessions, timeout=min(timeout, 120), client=client))
    delivered_at = system.wait_delivered(base, res.accepted, timeout) if res.accepted else None
    time.sleep(0.2)
    s = res.summary()
    result: dict[str, Any] = {
        "kind": kind, "system": system.name, "sessions": sessions, "n": len(messages),
        "accepted": res.accepted, "rejected": res.rejected, "deferred": res.deferred, "errors": res.errors,
        "unexpected_rejects": res.unexpected_rejects, "unexpected_accepts": res.unexpected_accepts,
        "accept_wall_s": s["wall_s"], "accepted_per_s": s["accepted_per_s"],
        "delivered_wall_s": round(delivered_at - t0, 3) if delivered_at else None,
        "delivered_per_s": round(res.accepted / (delivered_at - t0), 2) if delivered_at else None,
        "sink_received": sink.count - base,
        "latency_ms": s["latency_ms"],
        "cpu_ms_per_msg": round((system.cpu() - cpu0) * 1000 / max(1, len(messages)), 3),
        "loadavg_before": load0, "machine_busy_share": busy_since(busy0),
        "reject_samples": s["reject_samples"], "error_samples": s["error_samples"],
    }
    result["duplicates_at_sink"] = max(0, result["sink_received"] - res.accepted)
    result.update(system.memory())
    return result


def run_on_fast_loop(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def settle(systems: list[System], relay: RelayUnderTest, postfix: PostfixPeer, timeout: float = 120) -> None:
    """Wait until neither system has anything queued, then a moment of quiet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store_fill.queue_pending(relay.db) == 0 and postfix.queue_size() == 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)


def buyer_msgs(system: System, n: int, size: int) -> list[Msg]:
    rcpt = system.rcpt_for_smtp_source()
    return [Msg(BUYER[0], rcpt, buyer_message(BUYER[0], rcpt, size, i)) for i in range(n)]


# ----------------------------------------------------------------- scenarios

class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
        os.chmod(self.tmp, 0o755)
        self.runs: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.relay_extra: dict[str, dict[str, Any]] = {}  # configuration sections of the main relay (bench/phases.py)
        self.sink: Sink | None = None
        self.postfix: PostfixPeer | None = None
        self.relay: RelayUnderTest | None = None
        self.ours: Ours | None = None
        self.theirs: Theirs | None = None
        self.orders: list[OrderRef] = []
        self._next_order = 0
        self.rng = random.Random(1)
        self.target_s = 3.0 if self.quick else 20.0
        self.reps = args.reps or (1 if self.quick else 2)

    # ............................................................ set-up

    def new_relay(self, name: str, orders: int, history: str, keep: int = 5000,
                  extra: dict | None = None) -> tuple[RelayUnderTest, list[OrderRef]]:
        """A relay with its own store: sellers and the smtp-source order through the CLI (so the
        migrations ran), then `orders` orders bulk-inserted, with history for the ones the load uses
        ("sample") or for all of them ("all", two audit rows per order)."""
        assert self.sink is not None
        relay = RelayUnderTest(self.tmp / name, self.sink.port, extra, workers=self.args.workers,
                               cpu_affinity=self.args.cpu_affinity)
        for sid, sname, email in SELLERS:
            relay.cli("seller", "add", sid, "--name", sname, "--email", email)
        opened = json.loads(relay.cli("order", "open", SMTP_SOURCE_ORDER, "--seller", SELLERS[0][0],
                                      "--buyer", BUYER[0], "--buyer-name", BUYER[1]).stdout)
        relay.smtp_source_alias = opened["seller_alias"]  # type: ignore[attr-defined]
        t0 = time.monotonic()
        sample, _ = store_fill.add_orders(relay.db, orders, SELLERS, prefix=name[:8], domain=RELAY_DOMAIN,
                                          keep=min(orders, keep))
        history_rows = 2 * orders if history == "all" else 2 * len(sample)
        ids = None if history == "all" else [o.order_id for o in sample]
        store_fill.add_history(relay.db, history_rows, RELAY_DOMAIN, order_ids=ids)
        log(f"{name}: {orders} orders ({2 * orders} aliases), {history_rows} audit rows in "
            f"{time.monotonic() - t0:.1f} s; {store_fill.table_counts(relay.db)}")
        return relay, sample

    def start(self) -> None:
        self.sink = Sink(self.tmp / "sink").start()
        log(f"smtp-sink on 127.0.0.1:{self.sink.port}")
        self.postfix = PostfixPeer(self.tmp / "postfix", self.sink.port).start()
        log(f"Postfix peer on 127.0.0.1:{self.postfix.port} (config {self.postfix.conf})")
        self.relay, self.orders = self.new_relay("relay", 2000, "all", extra=self.relay_extra or None)
        self.relay.start()
        log(f"relay on 127.0.0.1:{self.relay.port} (pid {self.relay.pid})")
        self.ours = Ours(self.relay, self.sink, self.relay.smtp_source_alias)  # type: ignore[attr-defined]
        self.theirs = Theirs(self.postfix, self.sink)

    def stop(self) -> None:
        for thing in (self.relay, self.postfix, self.sink):
            if thing is not None:
                try:
                    thing.stop()
                except Exception as exc:  # keep stopping the others
                    log(f"stopping {type(thing).__name__}: {exc}")

    def pair(self, rep: int) -> list[System]:
        assert self.ours and self.theirs
        return [self.ours, self.theirs] if rep % 2 == 0 else [self.theirs, self.ours]

    def fresh_orders(self, k: int) -> list[OrderRef]:
        """k orders the relay has not had mail for yet in this run (so nothing of theirs is cached),
        from the main store's 2000; wraps around when they are used up."""
        out = [self.orders[(self._next_order + i) % len(self.orders)] for i in range(k)]
        self._next_order += k
        return out

    def settle(self) -> None:
        assert self.relay and self.postfix
        settle([], self.relay, self.postfix)

    def record(self, scenario: str, result: dict[str, Any]) -> None:
        result["scenario"] = scenario
        self.runs.append(result)
        lat = result.get("latency_ms") or {}
        log(f"  {scenario:<22} {result['system']:<7} s={result.get('sessions')!s:<3} n={result.get('accepted')!s:<6} "
            f"acc/s={result.get('accepted_per_s')!s:<8} del/s={result.get('delivered_per_s')!s:<8} "
            f"p50={lat.get('p50')!s:<7} p99={lat.get('p99')!s:<7} "
            f"rss={result.get('peak_rss_mb', result.get('pss_all_processes_mb'))!s:<6} "
            f"cpu/msg={result.get('cpu_ms_per_msg')}ms"
            + (f" rejected={result['rejected']}" if result.get("rejected") else "")
            + (f" dup={result['duplicates_at_sink']}" if result.get("duplicates_at_sink") else "")
            + (f" EXIT={result['exit']} {result['stderr'][:120]}" if result.get("exit") else ""))

    # ........................................................ scenarios

    def calibrate(self, system: System, sessions: int, size: int, cap: int) -> int:
        """A warm-up run whose rate sets N for about `target_s` seconds."""
        assert self.sink
        if size >= 100_000:
            n = max(4, sessions)
        else:  # a couple of seconds at the relay's pace, so start-up does not skew the rate
            n = max(20, 4 * sessions) if self.quick else 150 + 5 * sessions
        r = smtp_source_run(system, self.sink, sessions, n, size, timeout=120)
        self.settle()
        rate = r["accepted_per_s"] or 10
        return int(min(cap, max(5 * sessions, rate * self.target_s)))

    def throughput_and_latency(self) -> None:
        assert self.sink
        sessions_list = self.args.sessions
        cap = 2000 if self.quick else 40000
        n_for: dict[tuple[str, int], int] = {}
        for sessions in sessions_list:
            for rep in range(self.reps):
                for system in self.pair(rep):
                    key = (system.name, sessions)
                    if key not in n_for:
                        n_for[key] = self.calibrate(system, sessions, SMALL, cap)
                    n = n_for[key]
                    self.record("smtp-source 2KB", smtp_source_run(system, self.sink, sessions, n, SMALL,
                                                                    timeout=max(120, 6 * self.target_s)))
                    self.settle()
                    n_lat = max(5 * sessions, int(n * (0.5 if not self.quick else 0.6)))
                    msgs = buyer_msgs(system, n_lat, SMALL)
                    self.record("latency 2KB", generator_run(system, self.sink, msgs, sessions,
                                                             timeout=max(120, 6 * self.target_s), kind="latency",
                                                             client=self.args.client))
                    self.settle()

    def mixed(self, sessions: int = 10) -> None:
        assert self.sink and self.ours and self.theirs
        # About target_s seconds for us; the same messages for Postfix.
        n = 300 if self.quick else 1000
        for rep in range(self.reps):
            seed = 100 + rep
            # One message per order, orders the relay has not seen yet: a marketplace's stream of
            # mail spreads over far more orders than any per-order cache holds.  Postfix gets the
            # same messages.
            orders = self.fresh_orders(n)
            for system in self.pair(rep):
                msgs = mixed_messages(orders, n, seed=seed, for_postfix=system is self.theirs)
                self.record("mixed sellers", generator_run(system, self.sink, msgs, sessions,
                                                           timeout=300, kind="mixed", client=self.args.client))
                self.settle()

    def large(self) -> None:
        assert self.sink
        for label, size, sessions, n in (("smtp-source 100KB", 102_400, 10, 600),
                                          ("smtp-source 10MiB", 10 * 1024 * 1024, 2, 20)):
            for rep in range(self.reps):
                for system in self.pair(rep):
                    self.record(label, smtp_source_run(system, self.sink, sessions, n, size, timeout=900))
                    self.settle()

    def idle(self, n: int = 500) -> None:
        assert self.relay and self.postfix and self.ours and self.theirs
        hold = 3.0 if self.quick else 10.0
        # A fresh relay process (same store): its RSS before is the idle baseline, not what
        # earlier runs left in the allocator.
        self.relay.stop()
        self.relay.start()
        time.sleep(1.0)
        for system in (self.ours, self.theirs):
            before = system.memory()
            system.reset_peak()
            res = asyncio.run(idle_sessions(system.port, n, hold, on_open=system.memory))
            res.update({"scenario": f"{n} idle sessions", "system": system.name, "before": before})
            self.runs.append(res)
            log(f"  {n} idle sessions      {system.name:<7} open={res['open']} failed={res['failed']} "
                f"before={before} with_sessions={res['measured']} after_hold={res['measured_after_hold']}")
            time.sleep(1.0)
            self.settle()

    def scale(self) -> None:
        """Store size: 1k aliases, 1M aliases, 1M aliases + 1M audit rows.  On each store, the
        smtp-source buyer load (one alias: lookup and inserts only) and the mixed load over the same
        number of orders (500, the 1k store's all, each order once in every 500 messages; relay
        restarted before each run so that no store gets warmer caches than another).

        The mixed load is 3,000 messages, six an order (their buyers have written, in the stores'
        history, so no seller message counts as unsolicited).  Before the run 20261128T041055Z it was
        one message an order, 500 messages: under a second a run, after a restart, and its pairs of runs spread
        0.72-1.04x.  Each order's first message still finds nothing cached.  Every mixed run on the
        big store has 500 orders of its own, with the same history as the fresh 1k store's (one
        message each way): reused, the big store's orders carried the conversations of the runs
        before, about 25 messages an order by the last run (20261128T041827Z), against two in the 1k store.

        The 1k store is measured beside every run on a big store, just before or just after it (a
        fresh 1k store each time, whose orders have the history the big store's orders have).  Three
        pairs a load and store in full mode; the ratio is the median of the pairs' (summarize).
        Measured once at the start, as before 2026-11-28, the minutes the big stores take to fill
        came between it and them, and the machine's drift over those minutes was read as
        the cost of their size: the same code came out at 0.79-1.01x and 0.85-1.24x in four runs."""
        assert self.sink and self.postfix
        sessions = 10
        n_orders = 500
        n_mixed = 500 if self.quick else 3000
        # (1,500 messages, a second and a half, swung 0.77-1.0x between the two repetitions of one run)
        n_source = 500 if self.quick else 6000
        big_orders = self.args.scale_orders  # 500k orders: 1M aliases
        # Three pairs a cell at least: one pair's ratio ranges over 0.83-1.13x from run to run.
        reps = self.reps if self.quick else max(3, self.reps)
        big_runs = 2 * reps  # mixed runs on the big store, each with its own orders
        big, big_sample = self.new_relay("scale-1M", big_orders, "sample", keep=n_orders * big_runs)
        samples = [big_sample[k * n_orders:(k + 1) * n_orders] for k in range(big_runs)]
        pairs = 0
        for label in ("scale-1M", "scale-1M+audit"):
            if label == "scale-1M+audit":
                t0 = time.monotonic()
                store_fill.add_history(big.db, 2 * big_orders, RELAY_DOMAIN)
                log(f"{label}: +{2 * big_orders} audit rows in {time.monotonic() - t0:.1f} s; "
                    f"{store_fill.table_counts(big.db)}; file {big.db.stat().st_size / 1e9:.2f} GB")
            counts = {"label": label, **store_fill.table_counts(big.db)}
            for rep in range(reps):
                for kind in ("source", "mixed"):
                    small, small_sample = self.new_relay(f"scale-1k-{pairs}", n_orders, "all", keep=n_orders)
                    small_counts = {"label": "scale-1k", **store_fill.table_counts(small.db)}
                    # New texts on the reused big store (the same would be refused as duplicates).
                    run_orders = samples.pop(0) if kind == "mixed" else []
                    runs = [("scale-1k", small, small_sample, small_counts, 500 + pairs),
                            (label, big, run_orders, counts, 600 + pairs)]
                    # Which store goes first alternates between the repetitions of each load (by the
                    # pair's count alone, the 1k store always went first with smtp-source, last with mixed).
                    small_first = (rep + (kind == "mixed")) % 2 == 0
                    for name, relay, orders, store_counts, seed in (runs if small_first else runs[::-1]):
                        self._scale_run(name, relay, orders, store_counts, kind, sessions, n_source, n_mixed, seed,
                                        pairs)
                    shutil.rmtree(small.workdir, ignore_errors=True)
                    pairs += 1

    def _scale_run(self, label: str, relay: "RelayUnderTest", sample: list[OrderRef], counts: dict, kind: str,
                   sessions: int, n_source: int, n_mixed: int, seed: int, pair: int) -> None:
        relay.start()
        system = Ours(relay, self.sink, relay.smtp_source_alias)  # type: ignore[attr-defined]
        try:
            if kind == "source":
                r = smtp_source_run(system, self.sink, sessions, n_source, SMALL, timeout=300)
                name = f"{label} smtp-source"
            else:
                msgs = mixed_messages(sample, n_mixed, seed=seed, seller_cap=None)
                r = generator_run(system, self.sink, msgs, sessions, timeout=300, kind="mixed",
                                  client=self.args.client)
                name = f"{label} mixed"
            r["store"] = counts
            r["pair"] = pair  # the big-store run and the 1k run beside it share it (summarize)
            self.record(name, r)
            settle([], relay, self.postfix)
        finally:
            relay.stop()

    # .............................................................. profile

    def profile(self) -> None:
        """py-spy on the relay under each 10-session load (smtp-source buyer traffic, then the mixed
        seller load): an SVG flame graph and collapsed stacks each, and a hot-spot table."""
        assert self.sink and self.ours and self.relay
        exe = shutil.which("py-spy")
        if exe is None:
            raise SystemExit("py-spy is not installed: pip install py-spy")
        out_dir = Path(self.args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        duration = self.args.profile_seconds
        seed = iter(range(1000, 100000))

        def buyer_load() -> int:
            return smtp_source_run(self.ours, self.sink, 10, 300, SMALL, timeout=120)["accepted"]

        def mixed_load() -> int:
            msgs = mixed_messages(self.fresh_orders(150), 150, seed=next(seed))
            g = generator_run(self.ours, self.sink, msgs, 10, timeout=120, kind="mixed", client=self.args.client)
            return g["accepted"] + g["rejected"]

        artefacts: dict[str, Any] = {}
        for load_name, load in (("buyer", buyer_load), ("mixed", mixed_load)):
            for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
                path = out_dir / f"profile-{self.stamp}-{load_name}.{suffix}"
                spy = subprocess.Popen([exe, "record", "--pid", str(self.relay.pid), "--rate", "200", "--threads",
                                        "--subprocesses",
                                        "--format", fmt, "--duration", str(duration), "--output", str(path),
                                        "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)
                deadline = time.monotonic() + duration - 3
                cpu0, t0, total = self.ours.cpu(), time.monotonic(), 0
                while time.monotonic() < deadline:
                    total += load()
                cpu, wall = self.ours.cpu() - cpu0, time.monotonic() - t0
                spy.wait(timeout=duration + 60)
                err = spy.stderr.read().decode() if spy.stderr else ""
                entry = {"path": str(path), "messages": total, "wall_s": round(wall, 1),
                         "relay_cpu_s": round(cpu, 2), "relay_cpu_ms_per_msg": round(cpu * 1000 / max(1, total), 2),
                         "py_spy": err.strip()[-300:]}
                if fmt == "raw" and path.exists():
                    entry["hotspots"] = hotspots(path)
                    gz = path.with_suffix(".txt.gz")  # the collapsed stacks, kept small
                    gz.write_bytes(gzip.compress(path.read_bytes()))
                    path.unlink()
                    entry["path"] = str(gz)
                artefacts[f"{load_name}-{fmt}"] = entry
                log(f"profile {load_name} ({fmt}): {path}: {total} messages in {wall:.0f} s, "
                    f"relay CPU {entry['relay_cpu_ms_per_msg']} ms/msg")
                self.settle()
        self.extra["profile"] = artefacts

    # ................................................................ main

    def run(self) -> dict[str, Any]:
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        info = machine()
        log(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, Python {info['python']}, "
            f"Postfix {info['postfix']}, load {info['loadavg_at_start']}")
        started = time.monotonic()
        mode = "profile" if self.args.profile else ("quick" if self.quick else "full")
        try:
            self.start()
            if self.args.profile:
                self.profile()
            else:
                wanted = set(self.args.only or ["throughput", "mixed", "large", "idle", "scale"])
                if "throughput" in wanted:
                    log("throughput and latency, 2 KB, buyer to seller (smtp-source, then our generator)")
                    self.throughput_and_latency()
                if "mixed" in wanted:
                    log("mixed seller load: distinct messages across many orders, 10 sessions")
                    self.mixed()
                if "large" in wanted and (not self.quick or self.args.only):
                    log("large messages: 100 KB (10 sessions) and 10 MiB (2 sessions)")
                    self.large()
                if "idle" in wanted:
                    log("500 idle sessions")
                    self.idle()
                if "scale" in wanted and (not self.quick or self.args.only):
                    self.relay.stop()  # type: ignore[union-attr]
                    log("scale: 1k vs 1M aliases vs 1M aliases + 1M audit rows (mixed load, 10 sessions)")
                    self.scale()
        finally:
            self.stop()
            if not self.args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)
        report = {"mode": mode, "started_utc": self.stamp, "seconds": round(time.monotonic() - started, 1),
                  "command": "python bench/run.py" + (" --quick" if self.quick else "")
                  + (" --profile" if self.args.profile else "")
                  + (f" --workers {self.args.workers}" if self.args.workers != os.cpu_count() else "")
                  + (f" --cpu-affinity {self.args.cpu_affinity}" if self.args.cpu_affinity != "auto" else "")
                  + (f" --client {self.args.client}" if self.args.client != "lean" else ""),
                  "relay_workers": self.args.workers, "relay_cpu_affinity": self.args.cpu_affinity,
                  "generator_client": self.args.client,
                  "machine": info, "runs": self.runs, **self.extra}
        report["summary"] = summarize(self.runs)
        return report


# ------------------------------------------------------------------ reports

def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 2) if vals else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scenario and session count: medians over repetitions, relay / Postfix ratios."""
    rows: dict[tuple[str, Any], dict[str, Any]] = {}
    for r in runs:
        if "accepted_per_s" not in r:
            continue
        key = (r["scenario"], r.get("sessions"))
        row = rows.setdefault(key, {"scenario": r["scenario"], "sessions": r.get("sessions"), "relay": {},
                                    "postfix": {}})
        side = row[r["system"]]
        for metric in ("accepted_per_s", "delivered_per_s", "cpu_ms_per_msg", "peak_rss_mb",
                       "pss_all_processes_mb"):
            side.setdefault(metric, []).append(r.get(metric))
        lat = r.get("latency_ms") or {}
        side.setdefault("p50_ms", []).append(lat.get("p50"))
        side.setdefault("p99_ms", []).append(lat.get("p99"))
        side.setdefault("rejected", []).append(r.get("rejected"))
        side.setdefault("duplicates", []).append(r.get("duplicates_at_sink"))
    out = []
    pair_runs = _scale_pairs(runs)
    for row in rows.values():
        for sys_name in ("relay", "postfix"):
            side = row[sys_name]
            row[sys_name] = {k: (max((x for x in v if x is not None), default=None)
                                 if k in ("peak_rss_mb", "pss_all_processes_mb", "duplicates", "rejected")
                                 else _median(v)) for k, v in side.items()}
        ratios = {}
        for metric in ("accepted_per_s", "delivered_per_s", "p50_ms", "p99_ms", "cpu_ms_per_msg"):
            a, b = row["relay"].get(metric), row["postfix"].get(metric)
            if a is not None and b:
                ratios[metric] = round(a / b, 2)
        row["relay_over_postfix"] = ratios
        out.append(row)
    # Scale rows: relative to the 1k store.  The median of the ratios of each big-store run to the
    # 1k run beside it (the pairs), where the runs say their pair: the machine's speed drifts by
    # 10-20 % over the minutes of the scale runs, and a ratio of medians across all of them mixes
    # that drift in.  Each pair's own ratios are kept ("vs_1k_pairs").
    for r in out:
        if not r["scenario"].startswith("scale-"):
            continue
        if r["scenario"].startswith("scale-1k "):
            r["vs_1k"] = dict.fromkeys(_VS_1K, 1.0)
            continue
        load = r["scenario"].partition(" ")[2]
        base = next((b for b in out if b["scenario"] == f"scale-1k {load}"), None)
        pairs = [_vs_1k(big, small) for big, small in pair_runs.get(r["scenario"], [])]
        if pairs:
            ratios = {m: [round(pair[m], 3) for pair in pairs if m in pair] for m in _VS_1K}
            r["vs_1k_pairs"] = ratios
            r["vs_1k"] = {m: round(_median(v), 2) for m, v in ratios.items() if v}
        elif base:  # results from before the runs named their pair
            r["vs_1k"] = {m: round(v, 2) for m, v in _vs_1k(r["relay"], base["relay"]).items()}
    return out


_VS_1K = ("accepted_per_s", "delivered_per_s", "cpu_per_msg")


def _vs_1k(big: dict[str, Any], small: dict[str, Any]) -> dict[str, float]:
    """A big store's figures over the 1k store's (runs, or medians of runs): messages a second,
    and the cost, the 1k store's CPU a message over the big one's (>1: cheaper than on 1k)."""
    out = {m: big[m] / small[m] for m in _VS_1K[:2] if big.get(m) and small.get(m)}
    if big.get("cpu_ms_per_msg") and small.get("cpu_ms_per_msg"):
        out["cpu_per_msg"] = small["cpu_ms_per_msg"] / big["cpu_ms_per_msg"]
    return out


def _scale_pairs(runs: list[dict[str, Any]]) -> dict[str, list[tuple[dict, dict]]]:
    """Big-store scenario -> [(its run, the 1k run of the same pair)]."""
    by_pair: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("scenario", "").startswith("scale-") and "pair" in r:
            by_pair.setdefault(r["pair"], []).append(r)
    out: dict[str, list[tuple[dict, dict]]] = {}
    for members in by_pair.values():
        small = [r for r in members if r["scenario"].startswith("scale-1k ")]
        for big in members:
            if small and big is not small[0]:
                out.setdefault(big["scenario"], []).append((big, small[0]))
    return out


def hotspots(raw: Path, top: int = 30) -> dict[str, Any]:
    """From py-spy's collapsed stacks: where the event-loop thread (the relay's one Python thread
    that matters) spends its busy samples.  `functions`: inclusive share per function; `relay_lines`:
    inclusive share per line of relay/; `self`: exclusive share per line.  Worker threads (aiosqlite,
    executor) are counted apart in `threads`."""
    incl: dict[str, int] = {}
    lines: dict[str, int] = {}
    self_counts: dict[str, int] = {}
    threads: dict[str, int] = {}
    busy = idle = 0
    data = gzip.decompress(raw.read_bytes()) if raw.suffix == ".gz" else raw.read_bytes()
    for line in data.decode("utf-8", "replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        while frames and frames[0].startswith("process "):  # py-spy --subprocesses
            frames = frames[1:]
        thread = frames[0] if frames and frames[0].startswith("thread") else "?"
        name = re.sub(r"\(\d+\)", "", thread)
        threads[name] = threads.get(name, 0) + n
        if "MainThread" not in thread:  # every process's event loop (listen.workers) counts
            continue
        frames = frames[1:]
        if not frames:
            continue
        if frames[-1].startswith("EpollSelector.select"):
            idle += n
            continue
        busy += n
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            incl[f] = incl.get(f, 0) + n
        for f in {f for f in frames if "relay/" in f}:
            lines[f] = lines.get(f, 0) + n
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n

    def top_of(counts: dict[str, int], k: int = top) -> list[list[Any]]:
        return [[round(c / busy, 3), f] for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:k]] if busy else []
    skip = ("<module>", "main (relay/cli.py)", "_run (relay/cli.py)", "asyncio/runners.py", "<frozen runpy>",
            "run_forever", "run_until_complete", "_run_once", "Handle._run")
    incl = {f: c for f, c in incl.items() if not any(s in f for s in skip)}
    lines = {f: c for f, c in lines.items() if not any(s in f for s in skip)}
    return {"main_thread_busy_samples": busy, "main_thread_idle_samples": idle, "threads": threads,
            "functions": top_of(incl, 45), "relay_lines": top_of(lines, 40), "self": top_of(self_counts)}


def fmt(v: Any, suffix: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{v}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Run `{report['command']}` ({report['mode']} mode), {report['started_utc']}, {report['seconds']:.0f} s; "
        f"relay {m['relay_commit']}, `listen.workers = {report.get('relay_workers', 1)}`, "
        f"`listen.cpu_affinity = \"{report.get('relay_cpu_affinity', 'none')}\"`.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, Postfix {m['postfix']}, load average at start {' '.join(m['loadavg_at_start'])}. "
        "Clients, both servers and the sink share these CPUs.",
        "",
        "| scenario | sessions | relay acc/s | Postfix acc/s | ratio | relay del/s | Postfix del/s | ratio "
        "| relay p50 / p99 ms | Postfix p50 / p99 ms | p99 ratio | relay CPU ms/msg | Postfix CPU ms/msg "
        "| relay peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["summary"]:
        if row["scenario"].startswith("scale-"):
            continue
        a, b, q = row["relay"], row["postfix"], row["relay_over_postfix"]
        extra = ""
        if a.get("rejected"):
            extra += f" ({a['rejected']} rejected apart)"
        if a.get("duplicates"):
            extra += f" ({a['duplicates']} duplicate deliveries)"
        lines.append(
            f"| {row['scenario']}{extra} | {fmt(row['sessions'])} | {fmt(a.get('accepted_per_s'))} | "
            f"{fmt(b.get('accepted_per_s'))} | {fmt(q.get('accepted_per_s'), '×')} | {fmt(a.get('delivered_per_s'))} | "
            f"{fmt(b.get('delivered_per_s'))} | {fmt(q.get('delivered_per_s'), '×')} | "
            f"{fmt(a.get('p50_ms'))} / {fmt(a.get('p99_ms'))} | {fmt(b.get('p50_ms'))} / {fmt(b.get('p99_ms'))} | "
            f"{fmt(q.get('p99_ms'), '×')} | {fmt(a.get('cpu_ms_per_msg'))} | {fmt(b.get('cpu_ms_per_msg'))} | "
            f"{fmt(a.get('peak_rss_mb'))} |")
    scale = [r for r in report["summary"] if r["scenario"].startswith("scale-")]
    if scale:
        lines += ["", "Store size (relay only, 10 sessions; `smtp-source`: one alias, buyer to seller; `mixed`: "
                  "3,000 messages over 500 orders, relay restarted before each run):", "",
                  "| store | acc/s | del/s | vs 1k (acc / del) | CPU ms/msg | vs 1k (1k cost / cost) | p99 ms "
                  "| del/s vs the 1k run beside it, each pair |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for row in scale:
            a, v = row["relay"], row.get("vs_1k", {})
            lines.append(f"| {row['scenario']} | {fmt(a.get('accepted_per_s'))} | {fmt(a.get('delivered_per_s'))} | "
                         f"{fmt(v.get('accepted_per_s'), '×')} / {fmt(v.get('delivered_per_s'), '×')} | "
                         f"{fmt(a.get('cpu_ms_per_msg'))} | {fmt(v.get('cpu_per_msg'), '×')} | "
                         f"{fmt(a.get('p99_ms'))} | "
                         f"{', '.join(f'{x:.2f}' for x in row.get('vs_1k_pairs', {}).get('delivered_per_s', []))} |")
    idle = [r for r in report["runs"] if r.get("scenario", "").endswith("idle sessions")]
    if idle:
        lines += ["", "Idle sessions (banner + EHLO, then nothing):", ""]
        for r in idle:
            before, during = r.get("before") or {}, r.get("measured_after_hold") or r.get("measured") or {}
            key = "rss_mb" if "rss_mb" in before else "pss_all_processes_mb"
            what = "RSS of the relay process" if key == "rss_mb" else "PSS of all Postfix processes"
            if before.get(key) is not None and during.get(key) is not None:
                per = (during[key] - before[key]) * 1024 / max(1, r["open"])
                lines.append(f"- {r['system']}: {r['open']} of {r['requested']} sessions open; {what} "
                             f"{before[key]} MB before, {during[key]} MB with them (~{per:.0f} kB a session)")
    return "\n".join(lines) + "\n"


START, END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(text: str) -> None:
    readme = BENCH / "README.md"
    body = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in body:
        body += f"\n{START}\n{END}\n"
    head, _, rest = body.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs, 1 repetition, no large/scale scenarios")
    p.add_argument("--profile", action="store_true", help="py-spy the relay under the 10-session load")
    p.add_argument("--profile-seconds", type=int, default=40)
    p.add_argument("--only", nargs="+", choices=["throughput", "mixed", "large", "idle", "scale"])
    p.add_argument("--sessions", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--workers", type=int, default=0,
                   help="the relay's listen.workers (processes); default: one per CPU, as an operator would "
                        "set it (Postfix, too, runs its smtpd, cleanup, qmgr and smtp processes on every CPU)")
    p.add_argument("--cpu-affinity", choices=["auto", "none"], default="auto",
                   help="the relay's listen.cpu_affinity; default auto, as an operator of a host given to the "
                        "relay would set it (each worker process on a CPU of its own); runs before 20261128T0853 "
                        "had none")
    p.add_argument("--scale-orders", type=int, default=500_000, help="orders in the big stores (2 aliases each)")
    p.add_argument("--reps", type=int, default=0, help="repetitions per run (default: 1 quick, 2 full)")
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the table in bench/README.md")
    p.add_argument("--readme", action="store_true",
                   help="rewrite the table in bench/README.md after a --quick run too (full runs always do)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores, Postfix)")
    p.add_argument("--client", choices=["lean", "aiosmtplib"], default="lean",
                   help="our generator's SMTP client (bench/loadgen.py); runs before 2026-11-27 used aiosmtplib")
    args = p.parse_args(argv)
    args.workers = args.workers or os.cpu_count() or 1
    missing = [t for t in ("smtp-source", "smtp-sink", "postfix", "postconf") if not shutil.which(t)]
    if missing:
        print(f"run.py: missing {', '.join(missing)}: apt-get install postfix (preseed 'No configuration')",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run.py: the Postfix peer needs root", file=sys.stderr)
        return 2
    bench = Bench(args)
    report = bench.run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tags = ("-quick" if args.quick else "") + ("-profile" if args.profile else "") + \
        (f"-workers{args.workers}" if args.workers != os.cpu_count() else "") + \
        ("-no-affinity" if args.cpu_affinity == "none" else "")
    path = out / f"{report['started_utc']}{tags}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    log(f"results: {path}")
    if not args.profile:
        text = markdown(report)
        print(text)
        if not args.no_readme and not args.only and (not args.quick or args.readme):
            update_readme(text)
    else:
        for key, entry in report.get("profile", {}).items():
            h = entry.get("hotspots")
            if not h:
                continue
            print(f"\n== {key}: {entry['messages']} messages, relay CPU {entry['relay_cpu_ms_per_msg']} ms/msg; "
                  f"event loop busy {h['main_thread_busy_samples']} / idle {h['main_thread_idle_samples']} samples")
            for share, frame in h["functions"][:30]:
                print(f"  {share:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

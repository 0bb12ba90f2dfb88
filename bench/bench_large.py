"""Memory and CPU of one large message through the pipeline: `python bench/bench_large.py [--steps] [--reps N]`.

Runs `Pipeline.process` (as bench/bench_pipeline.py does: a real SQLite store
in a temporary directory, the default filter chain) on three kinds of buyer
message, each in its own child process so one kind's freed memory does not
hide the next one's peak:

- `text10M`: 10 MiB of smtp-source-like plain text (bench/loadgen.py
  `buyer_message`: 78-character lines, like `smtp-source -l 10485760`);
- `attach10M`: a short text and a 10 MiB base64 PDF attachment (about 7.5 MiB decoded);
- `text100K`: 100 KB of the same plain text.

For each: CPU milliseconds per message (all threads, median of the
repetitions), and the peak memory above the baseline (the store open, the code
warmed up, the message bytes already built: what the pipeline adds to the
input it is handed), as multiples of the message size, measured two ways:

- tracemalloc's peak (Python allocations only, a separate run: tracing slows
  the pipeline several times, so CPU is measured without it);
- the RSS high-water mark (VmHWM of /proc/self/status, reset by writing "5"
  to /proc/self/clear_refs before the run), the highest of the runs: includes
  SQLite's own buffers (its page cache, up to the store's cache_size, grows in
  the first run and is reused after) and the allocator's slack.

"+input" in the output adds the message itself (1x): how many times the
message is in memory at the worst moment.

With --steps, a tracemalloc table per step (parse, checks, rewrite, chain,
fingerprint, commit): the memory held on entry and the peak inside, each
above the baseline, and the top allocation sites at the overall peak.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import _setup  # noqa: E402
from loadgen import buyer_message  # noqa: E402

from relay.logs import configure_logging  # noqa: E402

MiB = 1 << 20
KINDS = ("text10M", "attach10M", "text100K")


def attachment_message(buyer: str, to: str, size: int, seq: int) -> bytes:
    """A short note and one base64 PDF attachment, about `size` octets in all."""
    raw_size = (size - 1024) * 57 // 78  # base64 in 76-character lines: 4/3 and CRLFs
    rng = random.Random(seq)
    pdf = b"%PDF-1.4\n" + rng.randbytes(raw_size - 9)
    body = base64.encodebytes(pdf).replace(b"\n", b"\r\n")
    head = (f"From: <{buyer}>\r\nTo: <{to}>\r\nDate: {formatdate(usegmt=True)}\r\n"
            f"Message-ID: <bench.att.{seq}@buyer.test>\r\nSubject: the invoice {seq}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n").encode()
    text = (b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHere is the scan of the invoice.\r\n"
            b"--b1\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    return head + text + body + b"--b1--\r\n"


def make_message(kind: str, ref: dict, seq: int) -> bytes:
    if kind == "attach10M":
        return attachment_message(ref["buyer"], ref["seller_alias"], 10 * MiB, seq)
    size = 10 * MiB if kind == "text10M" else 100_000
    head, _, body = buyer_message(ref["buyer"], ref["seller_alias"], size, seq).partition(b"\r\n\r\n")
    # A distinct first line: a text equal to the previous message's would find
    # its fingerprint cached (relay.filters.base) and hide that step's cost.
    return head + b"\r\n\r\n" + b"message %d\r\n" % seq + body


def _rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class StepTracer:
    """Wraps pipeline steps to record, with tracemalloc, the memory held on
    entry to each and the peak inside it (above the baseline)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int]] = []
        self.base = 0
        self.top_peak = 0
        self.top_snapshot: tracemalloc.Snapshot | None = None

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        tracer = self

        def wrapped(*args, **kwargs):
            current, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            try:
                return fn(*args, **kwargs)
            finally:
                _, peak = tracemalloc.get_traced_memory()
                tracer.rows.append((label, current - tracer.base, peak - tracer.base))
                if peak > tracer.top_peak:
                    tracer.top_peak = peak

        setattr(owner, name, wrapped)


def _instrument(pipeline, tracer: StepTracer) -> None:
    import relay.filters.base as base
    import relay.pipeline as pl
    tracer.wrap(pl, "parse_message", "parse")
    tracer.wrap(pl, "check_raw", "check_raw")
    tracer.wrap(pl, "check_structure", "check_structure")
    tracer.wrap(pl, "rewrite_message", "rewrite")
    tracer.wrap(pipeline.chain, "run", "filter chain")
    tracer.wrap(pl, "text_fingerprint", "fingerprint")
    tracer.wrap(base, "text_fingerprint", "fingerprint (chain)")
    store = pipeline.store
    accept = store.accept_message

    async def traced_accept(*args, **kwargs):
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        tracer.top_snapshot = tracemalloc.take_snapshot()  # what is held going into the commit
        try:
            return await accept(*args, **kwargs)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracer.rows.append(("commit", current - tracer.base, peak - tracer.base))
            tracer.top_peak = max(tracer.top_peak, peak)

    store.accept_message = traced_accept


async def _child(kind: str, reps: int, steps: bool) -> dict:
    configure_logging("warning")
    with tempfile.TemporaryDirectory() as directory:
        pipeline, store, refs = await _setup(directory, 4)
        ref = refs[0]

        async def once(content: bytes) -> str:
            recipient, reply = await pipeline.resolve_recipient(ref["seller_alias"])
            assert recipient is not None, reply
            outcome = await pipeline.process(ref["buyer"], recipient, content)
            return outcome.verdict

        for i in range(3):  # warm code paths, caches and the store
            await once(make_message("text100K", ref, 900 + i))
        cpu: list[float] = []
        size = 0
        verdict = ""
        hwm_above = 0
        rss_runs: list[float] = []
        for rep in range(reps):
            content = make_message(kind, ref, rep)
            size = len(content)
            await asyncio.sleep(0)
            _rss_reset()
            rss_base = _status_kib("VmRSS")
            started = time.process_time()
            verdict = await once(content)
            cpu.append((time.process_time() - started) * 1000)
            rss_runs.append((_status_kib("VmHWM") - rss_base) * 1024 / size)
            hwm_above = max(hwm_above, rss_runs[-1] * size)
            del content
        # The tracemalloc run.
        content = make_message(kind, ref, reps + 1)
        tracer = StepTracer()
        if steps:
            _instrument(pipeline, tracer)
        tracemalloc.start(25 if steps else 1)
        tracer.base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        traced_verdict = await once(content)
        # (the steps reset tracemalloc's peak: the overall one is the highest of theirs and the rest)
        peak = max(tracemalloc.get_traced_memory()[1], tracer.top_peak) - tracer.base
        result = {"kind": kind, "size": size, "verdict": verdict, "traced_verdict": traced_verdict,
                  "cpu_ms": statistics.median(cpu), "cpu_all": [round(c, 1) for c in cpu],
                  "tracemalloc_peak": peak, "rss_hwm": hwm_above,
                  "rss_runs": [round(r, 2) for r in rss_runs]}
        if steps:
            result["steps"] = tracer.rows
            if tracer.top_snapshot is not None:
                stats = tracer.top_snapshot.statistics("traceback")
                result["held_at_commit"] = [
                    (s.size, [f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}" for fr in list(s.traceback)[-6:]])
                    for s in stats[:8] if s.size > size // 20]
        tracemalloc.stop()
        await store.close()
        return result


def _report(r: dict) -> None:
    size = r["size"]
    print(f"{r['kind']:10s} {size / MiB:7.2f} MiB  {r['verdict']:8s} CPU {r['cpu_ms']:8.1f} ms/msg  "
          f"tracemalloc peak {r['tracemalloc_peak'] / size:5.2f}x (+input {r['tracemalloc_peak'] / size + 1:5.2f}x)  "
          f"RSS HWM {r['rss_hwm'] / size:5.2f}x (+input {r['rss_hwm'] / size + 1:5.2f}x)")
    print(f"    CPU ms of each run {r['cpu_all']}; RSS HWM of each run {r['rss_runs']}")
    for label, held, peak in r.get("steps", []):
        print(f"    {label:20s} held on entry {held / size:6.2f}x   peak inside {peak / size:6.2f}x")
    for held, frames in r.get("held_at_commit", []):
        print(f"    held going into the commit: {held / size:5.2f}x  " + " <- ".join(reversed(frames)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="untraced runs per kind (CPU: the median)")
    parser.add_argument("--steps", action="store_true", help="per-step tracemalloc table")
    parser.add_argument("--only", nargs="*", choices=KINDS, default=list(KINDS))
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.reps, args.steps))))
        return
    for kind in args.only:
        reps = args.reps if kind != "text100K" else max(args.reps, 20)
        cmd = [sys.executable, __file__, "--child", kind, "--reps", str(reps)] + (["--steps"] if args.steps else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        _report(json.loads(out.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()

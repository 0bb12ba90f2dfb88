"""Instructions a message costs the relay, counted, not timed: `python bench/instructions.py [--n 300] [--reps 2]`.

The machines are shared and their speed drifts by 10-50 % between runs
(bench/README.md), so a change that saves 2 % of a message's CPU cannot be
seen in messages/s or CPU seconds.  Instructions can: valgrind's callgrind
counts every instruction the relay's process executes, the same count for
the same code and input whatever else runs beside it (within about 1 %
here, from thread interleaving and the store's timing).

Runs the relay's daemon in a child process under `valgrind --tool=callgrind`,
in-process as bench/cpu_split.py does (one worker, uvloop, the full default
chain, the start-up heap frozen), delivering to Postfix's `smtp-sink`, and
drives it with `smtp-source` (2 KB buyer messages, one connection each, one
session, so every message has a commit of its own) twice: a warm-up of 20
messages alone, then the warm-up and N messages.  The difference over N is
a message's instructions, start-up and warm-up left out.  With
`--separate-threads` (callgrind's own option) it also prints the event
loop's and the store writer's shares; with `--layer smtp` the pipeline
answers 250 at once (the SMTP layer alone), with `--layer judgment` a
message is judged in full (parse, checks, rewrite, filters) and answered
250 without the store or delivery.

To compare two commits, run it in a worktree of each
(`git worktree add /tmp/old REV`, then `python /tmp/old/bench/instructions.py`):
the child imports the relay from the checkout that holds this file.  Needs
valgrind (`apt-get install valgrind`) and Postfix's tools; 1-2 minutes a
repetition.  Instructions are not time (the interpreter's loop runs more of
them a nanosecond than a system call does), so use it to see whether a
change makes a message cheaper, and bench/run.py for what it is worth.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM_UP = 20
_TOTAL = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def _stop_early(layer: str) -> None:
    """For `--layer`: the relay answers 250 where that layer ends (as bench/layers.py does)."""
    from layers import answer_250
    from relay import pipeline

    if layer == "smtp":  # no parse, checks, rewrite, filters, store or delivery
        pipeline.Pipeline.process = answer_250
    elif layer == "judgment":  # judged in full, then neither stored nor delivered
        pipeline.Pipeline._accept = answer_250


def _child(n: int, layer: str) -> int:
    """In the process valgrind runs: the relay, the warm-up, then n messages."""
    import asyncio

    sys.path.insert(0, str(HERE))
    from cpu_split import smtp_source
    from inprocess import ready, relay_with_sink
    from relay.server import freeze_startup_heap

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            limits = {"max_connections": 1000, "max_connections_per_ip": 1000}
            async with relay_with_sink(directory, limits) as (daemon, rcpt):
                freeze_startup_heap()
                await smtp_source(daemon.port, rcpt, WARM_UP, 1)
                if n:
                    await smtp_source(daemon.port, rcpt, n, 1)

    if not ready("instructions"):
        return 2
    _stop_early(layer)
    asyncio.run(run())
    return 0


def _thread_totals(out_prefix: str) -> dict[int, int]:
    """Thread number -> instructions, from callgrind's per-thread files (or the one file)."""
    totals: dict[int, int] = {}
    for path in sorted(glob.glob(out_prefix + "*")):
        match = re.search(r"-(\d+)$", path)
        with open(path) as data:
            found = _TOTAL.search(data.read())
        if found:
            totals[int(match.group(1)) if match else 1] = int(found.group(1))
    return totals


def count(n: int, separate_threads: bool, layer: str = "all") -> dict[int, int]:
    """Instructions of one run of the child with n messages after the warm-up, by thread."""
    with tempfile.TemporaryDirectory() as directory:
        prefix = os.path.join(directory, "callgrind.out")
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}",
                   f"--separate-threads={'yes' if separate_threads else 'no'}",
                   sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--layer", layer]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        totals = _thread_totals(prefix)
    if not totals:
        raise RuntimeError("callgrind wrote no counts")
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="messages counted after the warm-up")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--separate-threads", action="store_true",
                        help="also the event loop's (thread 1) and the other threads' instructions")
    parser.add_argument("--layer", choices=("all", "smtp", "judgment"), default="all",
                        help="smtp: the pipeline answers 250 at once; judgment: a message is judged in full, "
                             "then answered 250 without the store or delivery")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return _child(args.child, args.layer)
    missing = [tool for tool in ("valgrind", "smtp-source", "smtp-sink") if not shutil.which(tool)]
    if missing:
        print(f"instructions: needs {', '.join(missing)} (apt-get install valgrind postfix)", file=sys.stderr)
        return 2
    per_message: list[float] = []
    for rep in range(args.reps):
        base = count(0, args.separate_threads, args.layer)
        loaded = count(args.n, args.separate_threads, args.layer)
        per_message.append((sum(loaded.values()) - sum(base.values())) / args.n)
        line = f"repetition {rep + 1}: {per_message[-1] / 1e6:.3f} M instructions a message"
        if args.separate_threads:
            shares = {thread: (loaded.get(thread, 0) - base.get(thread, 0)) / args.n / 1e6
                      for thread in sorted(set(base) | set(loaded))}
            line += " (" + ", ".join(f"thread {t}: {m:.3f} M" for t, m in shares.items() if abs(m) >= 0.001) + ")"
        print(line, flush=True)
    print(f"median {statistics.median(per_message) / 1e6:.3f} M instructions a message "
          f"over {args.reps} repetitions of {args.n} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

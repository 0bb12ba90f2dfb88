"""Where the relay's CPU goes, thread by thread: `python bench/cpu_split.py [--n 6000] [--sessions 10] [--reps 3]`.

Runs the relay's daemon in this process (one worker, uvloop, the full default
chain, the start-up heap frozen as `relay serve` does) on a temporary store,
delivering to Postfix's `smtp-sink`, and drives it with `smtp-source` (2 KB
buyer messages, one connection each) after a 200-message warm-up.  For each
repetition it prints messages/s, the process's CPU time a message, each
thread's user and system time a message (from /proc/self/task/*/stat: the
event loop, the store's writer, the reader, the checkpointer), commits a
message, and how many RCPTs were answered from memory (relay.aliascache).

One process, so the numbers leave out what a second worker process adds
(commits of its own, waits for the write turn): `bench/run.py` measures the
service as it is deployed.  Used for bench/README.md, "Where a message's CPU
goes now".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inprocess import ready, relay_with_sink  # noqa: E402
from relay.server import freeze_startup_heap  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_times() -> dict[str, tuple[str, int, int]]:
    """Thread id -> (Python thread name, user ticks, system ticks)."""
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[tid] = (names.get(tid, "?"), int(fields[11]), int(fields[12]))
    return out


async def smtp_source(port: int, rcpt: str, n: int, sessions: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "smtp-source", "-c", "-s", str(sessions), "-m", str(n), "-l", "2048", "-f", "bob@buyer.test",
        "-t", rcpt, "-M", "bench.client.test", f"127.0.0.1:{port}", stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()


async def one(n: int, sessions: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        limits = {"max_connections": 1000, "max_connections_per_ip": 1000}
        async with relay_with_sink(directory, limits) as (daemon, rcpt):
            freeze_startup_heap()
            await smtp_source(daemon.port, rcpt, 200, sessions)  # warm-up: imports, caches, the alias
            aliases = getattr(daemon.pipeline, "aliases", None)  # (None before relay.aliascache)
            hits0, reads0 = (aliases.hits, aliases.reads) if aliases else (0, 0)
            commits0 = daemon.store.commits
            before, usage0, t0 = thread_times(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            await smtp_source(daemon.port, rcpt, n, sessions)
            wall, usage1, after = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF), thread_times()
            cpu = usage1.ru_utime - usage0.ru_utime + usage1.ru_stime - usage0.ru_stime
            print(f"{n / wall:.0f} messages/s, relay CPU {cpu * 1000 / n:.2f} ms a message "
                  f"(user {(usage1.ru_utime - usage0.ru_utime) * 1000 / n:.2f}); "
                  f"commits a message {(daemon.store.commits - commits0) / n:.3f}; "
                  + (f"RCPTs from memory {aliases.hits - hits0} of {aliases.hits - hits0 + aliases.reads - reads0}"
                     if aliases else "no alias memory"))
            for tid, (name, user, system) in sorted(after.items()):
                u0, s0 = before.get(tid, (name, 0, 0))[1:]
                user_ms, system_ms = (user - u0) * 1000 / TICK / n, (system - s0) * 1000 / TICK / n
                if user_ms + system_ms >= 0.005:
                    label = "event loop" if tid == str(os.getpid()) else name
                    print(f"  {label:<24} user {user_ms:.3f}  system {system_ms:.3f} ms a message")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if not ready("cpu_split") or not shutil.which("smtp-source"):
        print("cpu_split: needs Postfix's smtp-source and smtp-sink (apt-get install postfix)", file=sys.stderr)
        return 2
    for _ in range(args.reps):
        asyncio.run(one(args.n, args.sessions))
    return 0


if __name__ == "__main__":
    sys.exit(main())

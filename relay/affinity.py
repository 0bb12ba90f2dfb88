"""One CPU for each worker process: `listen.cpu_affinity = "auto"`.

A relay process is two busy threads taking turns at one interpreter lock:
the event loop, and the store's writer, which it wakes for every group
commit and which wakes it back when the commit is durable.  Left to the
scheduler, the two often run on different CPUs, so each hand-over of the
lock moves the interpreter's hot data from one CPU's cache to the other's,
and each worker's threads wander between CPUs that the other worker is
using.  Kept on one CPU, a process's threads hand the lock over in place.
Measured with two workers on two CPUs under smtp-source (2 KB messages,
pinned and unpinned runs alternating, 10 and 50 sessions): 6-26 % more
messages a second, 1-16 % less CPU a message (bench/README.md).  nginx's
`worker_cpu_affinity auto` and HAProxy's `cpu-map` do the same for their
workers.

Off by default: on a host where other busy programs share the CPUs, a
process that cannot move to an idle CPU waits instead.  The CPUs used are
the ones the service may run on (its cgroup cpuset or systemd's
CPUAffinity=), in order: worker k gets the k-th, wrapping around when there
are more workers than CPUs.  A replacement for a worker that died gets the
CPU its predecessor had (relay.workers).

On its one CPU, a process's store writer is a batch thread
(`defer_to_the_event_loop`): woken for a commit, it waits for the event loop
to pause rather than preempting it.
"""

from __future__ import annotations

import os

# What the log says when pinning is refused: the shipped unit denies the
# @resources system calls, sched_setaffinity among them.
AFFINITY_UNDER_SYSTEMD = ("under the shipped systemd unit, allow it in a drop-in: "
                          "SystemCallFilter=sched_setaffinity sched_setscheduler (docs/operations.md)")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order; [] where the platform
    cannot say (not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def cpu_plan(mode: str, workers: int) -> list[int]:
    """The CPU of each worker process (index 0 the primary), or [] for none:
    affinity off, or only one CPU to run on, where pinning changes nothing."""
    cpus = allowed_cpus()
    if mode != "auto" or len(cpus) < 2:
        return []
    return [cpus[k % len(cpus)] for k in range(workers)]


def pin_process(cpu: int) -> str | None:
    """Keep every thread of this process, and those it starts later, on
    `cpu`.  Called before the event loop and the store's threads exist, but
    any thread already running is moved too.  None when done; else why the
    system refused (a CPU outside the cgroup's set; a seccomp filter, such as
    the shipped systemd unit's, that denies sched_setaffinity), and the
    process runs unpinned."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    try:
        for tid in threads:
            os.sched_setaffinity(tid, {cpu})
    except AttributeError:
        return "this platform cannot set a CPU affinity"
    except OSError as exc:
        return f"sched_setaffinity to CPU {cpu}: {exc.strerror or exc}"
    return None


def defer_to_the_event_loop() -> bool:
    """For the store's writer thread, at its start: when its process is kept
    on one CPU, schedule it as SCHED_BATCH, so that its wake-up (the event
    loop asking for a commit) never preempts the event loop.  Preempted, the
    loop still held the interpreter lock, so the writer could only ask for
    it and sleep again: two context switches for nothing, on every commit.
    As a batch thread it runs when the loop next waits for the network, which
    is when the lock is free anyway.

    Measured under smtp-source, runs with and without it alternating: in one
    pinned in-process worker at 10 sessions, 12-44 % more messages a second
    and 10-32 % less CPU a message; in the service with two pinned workers,
    3-12 % less CPU a message at 10 sessions (messages a second within the
    noise, -3 to +6 %) and 7-18 % less at 50.  The price is a commit that
    waits longer for its turn at the CPU: bench/phases.py at 50 sessions,
    four pairs, 1,378-1,516 messages/s against 1,049-1,317, the 250 after
    the data p50 16-17 ms against 12-15, the transaction's p99 65-76 ms
    against 62-68.  A process free to use several CPUs is left as it is (no
    difference measured there).

    False where this thread was not changed: not pinned, or the system
    refused (a seccomp filter that denies sched_setscheduler)."""
    if len(allowed_cpus()) != 1:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True

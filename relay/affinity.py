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
"""

from __future__ import annotations

import os

# What the log says when pinning is refused: the shipped unit denies the
# @resources system calls, sched_setaffinity among them.
AFFINITY_UNDER_SYSTEMD = ("under the shipped systemd unit, allow it in a drop-in: "
                          "SystemCallFilter=sched_setaffinity (docs/operations.md)")


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

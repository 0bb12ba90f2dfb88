"""listen.cpu_affinity = "auto": each worker process on a CPU of its own,
kept by its replacement; "none" (the default) leaves placement to the kernel;
anything else is a configuration error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import free_port
from relay.affinity import cpu_plan
from relay.config import ConfigError, load_settings
from relay.workers import Workers
from service_support import wait_for_event
from test_workers import child_pids
from test_durability_and_delivery import wait_until

ALLOWED = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning needs two CPUs to choose from")


def _settings(tmp_path, listen: str):
    path = tmp_path / "relay.toml"
    path.write_text(f'[listen]\nmx = "127.0.0.1:{free_port()}"\n{listen}\n[store]\npath = "{tmp_path / "s.db"}"\n')
    return load_settings(str(path))


def test_affinity_is_off_unless_asked_for(tmp_path):
    assert _settings(tmp_path, "").listen.cpu_affinity == "none"
    assert cpu_plan("none", 4) == []


def test_an_unknown_affinity_is_a_configuration_error_that_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"listen.cpu_affinity must be one of none, auto, not 'all'"):
        _settings(tmp_path, 'cpu_affinity = "all"')


@needs_two_cpus
def test_auto_gives_worker_k_the_kth_allowed_cpu_wrapping_around():
    plan = cpu_plan("auto", len(ALLOWED) + 1)
    assert plan == ALLOWED + [ALLOWED[0]]


def test_a_refused_cpu_leaves_the_process_as_it_was():
    before = os.sched_getaffinity(0)
    code = ("import os, sys; from relay.affinity import pin_process; "
            "print(pin_process(100000)); print(sorted(os.sched_getaffinity(0)) == sorted(map(int, sys.argv[1:])))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, sorted(before))],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["sched_setaffinity to CPU 100000: Invalid argument", "True"]


@needs_two_cpus
def test_pinning_moves_threads_already_running_and_those_started_later():
    code = ("import os, threading; from relay.affinity import pin_process; "
            "e = threading.Event(); t = threading.Thread(target=e.wait); t.start(); "
            f"ok = pin_process({ALLOWED[1]}); "
            "later = []; u = threading.Thread(target=lambda: later.append(os.sched_getaffinity(0))); "
            "u.start(); u.join(); "
            "print(ok is None, sorted(os.sched_getaffinity(t.native_id)), sorted(later[0])); e.set()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", f"[{ALLOWED[1]}]", f"[{ALLOWED[1]}]"]


@needs_two_cpus
async def test_each_worker_runs_on_its_own_cpu_and_a_replacement_takes_its_predecessors(relay_factory):
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2,
                                            "cpu_affinity": "auto"}})
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    await wait_for_event(relay, "relay.started", count=2, timeout=30)
    assert os.sched_getaffinity(relay.proc.pid) == {ALLOWED[0]}
    assert os.sched_getaffinity(acceptor) == {ALLOWED[1]}
    for pid in (relay.proc.pid, acceptor):  # the event loop and the store's threads alike
        assert all(os.sched_getaffinity(int(tid)) == os.sched_getaffinity(pid)
                   for tid in os.listdir(f"/proc/{pid}/task"))
    for pid in (relay.proc.pid, acceptor):  # the store's writer alone defers to the event loop
        assert _batch_threads(pid) == 1
    started = {e["pid"]: e["cpus"] for e in relay.events("relay.started")}
    assert started == {relay.proc.pid: [ALLOWED[0]], acceptor: [ALLOWED[1]]}

    os.kill(acceptor, signal.SIGKILL)
    (replaced,) = await wait_for_event(relay, "relay.worker_started", timeout=20)
    await wait_for_event(relay, "relay.started", count=3, timeout=30)
    assert os.sched_getaffinity(replaced["pid"]) == {ALLOWED[1]}
    assert relay.events("relay.started")[-1]["cpus"] == [ALLOWED[1]]
    assert not relay.events("relay.cpu_affinity_refused")


async def test_without_affinity_the_workers_keep_every_cpu(relay_factory):
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2}})
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    await wait_for_event(relay, "relay.started", count=2, timeout=30)
    for pid in (relay.proc.pid, acceptor):
        assert sorted(os.sched_getaffinity(pid)) == ALLOWED
        assert _batch_threads(pid) == 0


def _batch_threads(pid: int) -> int:
    """How many of the process's threads are scheduled as SCHED_BATCH."""
    return sum(os.sched_getscheduler(int(tid)) == os.SCHED_BATCH for tid in os.listdir(f"/proc/{pid}/task"))


def _said(path) -> str:
    return path.read_text() if path.exists() else ""


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def info(self, name: str, **fields) -> None:
        self.events.append((name, fields))

    error = info


async def test_workers_that_die_together_are_all_replaced_each_on_its_own_cpu(tmp_path):
    """Two acceptors gone at once: both come back (one replacement used to
    be started for the pair), each told the CPU of a slot left free."""

    async def nothing(pid: int) -> None:
        return None

    record = tmp_path / "argv"
    command = [sys.executable, "-c", f"import sys, time; open({str(record)!r} + str(__import__('os').getpid()), 'w')"
               ".write(' '.join(sys.argv[1:])); time.sleep(60)"]
    first = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    log = _Log()
    pool = Workers((command, []), log, nothing, cpus=[7, 8, 9])
    pool.watch([p.pid for p in first])
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while sum(1 for name, _ in log.events if name == "relay.worker_started") < 2:
            assert loop.time() < deadline, log.events
            await asyncio.sleep(0.05)
        replacements = [fields["pid"] for name, fields in log.events if name == "relay.worker_started"]
        assert sorted(pool.pids) == sorted(replacements)
        while not all(_said(tmp_path / f"argv{pid}") for pid in replacements):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        told = sorted((tmp_path / f"argv{pid}").read_text() for pid in replacements)
        assert told == ["--cpu 8", "--cpu 9"]
    finally:
        pool.terminate()
        await pool.reap(10)
        for p in first:
            p.returncode = 0  # reaped by the pool, not by Popen


def test_a_refused_pin_is_logged_with_the_reason_and_the_systemd_drop_in():
    code = ("from relay.logs import configure_logging; from relay.cli import _pin; "
            "configure_logging('info'); _pin(100000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    (line,) = [json.loads(x) for x in out.stderr.splitlines() if "relay.cpu_affinity_refused" in x]
    assert line["cpu"] == 100000 and line["error"] == "sched_setaffinity to CPU 100000: Invalid argument"
    assert "SystemCallFilter=sched_setaffinity" in line["hint"]


@needs_two_cpus
def test_a_pinned_stores_writer_never_preempts_the_event_loop_and_an_unpinned_ones_is_left_alone(tmp_path):
    code = ("import asyncio, os, sys, threading; from relay.affinity import pin_process; "
            "from relay.store import Store\n"
            "async def main():\n"
            "    if sys.argv[1] == 'pinned': pin_process(os.sched_getaffinity(0).pop())\n"
            "    store = await Store.open(sys.argv[2])\n"
            "    (writer,) = [t for t in threading.enumerate() if t.name == 'store-writer']\n"
            "    print(os.sched_getscheduler(writer.native_id) == os.SCHED_BATCH,"
            " os.sched_getscheduler(0) == os.SCHED_BATCH)\n"
            "    await store.close()\n"
            "asyncio.run(main())\n")
    for mode, expected in (("pinned", ["True", "False"]), ("free", ["False", "False"])):
        out = subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / f"{mode}.db")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == expected, mode

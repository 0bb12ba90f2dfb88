"""The acceptor processes of `listen.workers > 1`, as the primary sees them.

The CLI forks them before any event loop or thread exists.  The primary
watches each one; when one dies (a crash, the OOM killer, a stray
`kill -9`) it says so (`relay.worker_exited`), gives the dead process's
delivery claims back to the queue, so its messages go out now rather than a
lease later, and starts a replacement.  Without this the service would run
on with fewer processes than configured and nobody would know.

A replacement cannot be forked from the running primary (its SQLite and
executor threads would be copied mid-flight), so it is a fresh interpreter
running `relay serve --acceptor`: it inherits the listening sockets
(relay.sharing) and reads the configuration file as a reload would.  One that dies soon
after its start is replaced after a pause that doubles up to a minute, so a
broken configuration does not spin the CPU.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Awaitable, Callable

from relay import notify
from relay.config import RUNNING_SETTINGS_ENV
from relay.sharing import Shared

# An acceptor that lived at least this long died of something other than
# its start-up; it is replaced at once.
STEADY_AFTER = 30.0
FIRST_PAUSE = 1.0
LONGEST_PAUSE = 60.0


def acceptor_command(config_path: str | None, shared: Shared) -> tuple[list[str], list[int]]:
    """The command line of a replacement acceptor, and the descriptors it
    inherits (relay.sharing)."""
    config = ["--config", config_path] if config_path else []
    fd_args, fds = shared.fd_arguments()
    return [sys.executable, "-m", "relay", *config, "serve", "--acceptor", *fd_args], fds


def acceptor_environment() -> dict[str, str]:
    env = dict(os.environ)
    notify.leave_to_the_primary(env)
    return env


class Workers:
    """The primary's view of its acceptors: watch, replace, signal, reap."""

    def __init__(self, command: tuple[list[str], list[int]], log, on_exit: Callable[[int], Awaitable[None]],
                 cpus: list[int] | None = None, running_settings: Callable[[], str] | None = None):
        self.command, self.pass_fds = command
        # The primary's configuration as it runs now (relay.config
        # settings_to_json): what a replacement starts on.
        self.running_settings = running_settings
        # listen.cpu_affinity (relay.affinity): the CPU of each process, the
        # primary's first.  Each acceptor holds a slot (1 to the number the
        # CLI forked, its index there); a dead one's slot, and with it its
        # CPU, passes to its replacement.
        self.cpus = list(cpus or [])
        self._slots: dict[int, int] = {}  # pid -> slot
        self._acceptors = 0
        self._processes: dict[int, subprocess.Popen] = {}  # the replacements
        self.log = log
        self.on_exit = on_exit  # gives a dead process's claims back
        self.stopping = False
        self._started: dict[int, float] = {}
        self._pidfds: dict[int, int] = {}
        self._pause = FIRST_PAUSE
        self._pending_start: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def pids(self) -> list[int]:
        return list(self._started)

    def watch(self, pids: list[int]) -> None:
        """Watch the acceptors the CLI forked."""
        loop = asyncio.get_running_loop()
        self._acceptors = len(pids)
        for slot, pid in enumerate(pids, start=1):
            self._slots[pid] = slot
            self._watch(pid, loop.time())

    def _watch(self, pid: int, started: float) -> None:
        self._started[pid] = started
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
            self._reap_later(pid)
            return
        self._pidfds[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self._exited, pid)

    def _reap_later(self, pid: int) -> None:
        """No pidfd: look for the exit once a second instead."""
        async def poll() -> None:
            while pid in self._started:
                if self._reap(pid) is not None:
                    self._after_exit(pid)
                    return
                await asyncio.sleep(1.0)
        self._spawn_task(poll())

    def _exited(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        if self._reap(pid) is None:  # readable yet not exited: cannot happen; keep watching
            self._reap_later(pid)
            return
        self._after_exit(pid)

    def _reap(self, pid: int) -> int | None:
        """The process's exit code (negative: killed by that signal), or None."""
        process = self._processes.get(pid)
        if process is not None:  # Popen reaps its own, and keeps the code
            code = process.poll()
            if code is not None:
                del self._processes[pid]
            return code
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        return os.waitstatus_to_exitcode(status) if done else None

    def _after_exit(self, pid: int) -> None:
        loop = asyncio.get_running_loop()
        started = self._started.pop(pid, loop.time())
        self._slots.pop(pid, None)
        if self.stopping:
            return
        lived = loop.time() - started
        if lived >= STEADY_AFTER:
            pause, self._pause = 0.0, FIRST_PAUSE
        else:
            pause, self._pause = self._pause, min(self._pause * 2, LONGEST_PAUSE)
        self.log.error("relay.worker_exited", pid=pid, lived_s=round(lived, 1), restart_in_s=pause)
        self._spawn_task(self.on_exit(pid))
        if self._pending_start is None:
            self._pending_start = loop.call_later(pause, self._start_one)

    def _start_one(self) -> None:
        self._pending_start = None
        if self.stopping:
            return
        slot = self._free_slot()
        command = self.command
        if slot is not None and slot < len(self.cpus):
            command = [*command, "--cpu", str(self.cpus[slot])]
        env = acceptor_environment()
        if self.running_settings is not None:
            env[RUNNING_SETTINGS_ENV] = self.running_settings()
        try:
            process = subprocess.Popen(command, env=env, pass_fds=self.pass_fds,
                                       stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.log.error("relay.worker_start_failed", error=str(exc))
            self._pending_start = asyncio.get_running_loop().call_later(LONGEST_PAUSE, self._start_one)
            return
        pid = process.pid
        if slot is not None:
            self._slots[pid] = slot
        self._processes[pid] = process
        self.log.info("relay.worker_started", pid=pid)
        self._watch(pid, asyncio.get_running_loop().time())
        if self._free_slot() is not None:  # another died while this one waited: its replacement next
            self._pending_start = asyncio.get_running_loop().call_later(0, self._start_one)

    def _free_slot(self) -> int | None:
        """The first slot no live acceptor holds, or None."""
        taken = set(self._slots.values())
        return next((slot for slot in range(1, self._acceptors + 1) if slot not in taken), None)

    def _spawn_task(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def signal(self, sig: int) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """SIGTERM every acceptor (they drain as the primary does); nothing
        is replaced from here on."""
        self.stopping = True
        if self._pending_start is not None:
            self._pending_start.cancel()
        loop = asyncio.get_running_loop()
        for fd in self._pidfds.values():
            loop.remove_reader(fd)
            os.close(fd)
        self._pidfds.clear()
        self.signal(signal.SIGTERM)

    async def reap(self, timeout: float) -> None:
        """Wait for the acceptors to exit; kill what is left at `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._started:
            for pid in self.pids:
                if self._reap(pid) is not None:
                    self._started.pop(pid, None)
            if not self._started:
                break
            if loop.time() > deadline:
                self.signal(signal.SIGKILL)
                deadline = loop.time() + 5
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()

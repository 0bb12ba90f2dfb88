"""Turn-taking between the processes that write one SQLite store.

With `listen.workers = 2` two processes commit to the same file.  SQLite lets
one writer in at a time, and the one that finds the file locked calls its busy
handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms
between tries whatever the other one is doing.  A commit here takes about a
millisecond (median 0.6-0.8 ms), yet under load 30 % of a process's
transactions started late, by 22 to 34 ms at the 99th percentile and up to
133 ms (bench/run.py, 10 and 50 sessions): the sleep, not the other writer,
was the wait.

So each writer first takes an flock on a file beside the store
(`<store>-writer.lock`) and holds it from BEGIN to COMMIT, and while it sets
a new file up (WAL mode, migrations: relay.store `Store._open_writer`) or
releases the delivery claims at start-up (`release_all_claims`): `turn_at`.  It tries again
after 50 microseconds, doubling up to half a millisecond, so it starts about
as soon as the other commit ends.  flock is released by the kernel when a
process dies, so a crash never leaves the store locked; a process that holds
the turn for longer than `store.busy_timeout` (stopped, or stuck on a disk)
makes the waiter give up as SQLite would: "database is locked", which the
SMTP layer answers with 451.  The flock only orders the relay's own writers
(the CLI's commands too: they open the store the same way); SQLite's locking
still guards the file against every other writer (sqlite3, a backup), and the
busy timeout still applies to them.

Taking the turn as soon as it is free is not enough once a process commits
batch after batch: the writer that lets the turn go wants it again at once,
and takes it again before the other process's next try (bench/phases.py).
So a waiter first takes a second flock, on `<store>-writer.queue`: the right
to wait.  It holds that one until it has the turn, and a writer coming back
for the turn must take it too, so it waits behind the one already waiting:
two busy processes take turns about.

The lock file also carries one number: the parties' version (relay.store,
relay.aliascache), written by the writer whose commit changed it, after the
COMMIT and before the turn is let go.  Every relay process reads it before it
answers a RCPT from memory, so a change made with the CLI reaches the next
RCPT of every worker.  It reads it through a shared mapping of the file: a
read of memory, where asking the store would be a trip to its reader thread
and a pread() a system call that lets go of the GIL on every RCPT (with
another thread wanting the GIL, 470 µs a read instead of 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import sqlite3
import struct
import time
from typing import Iterator

FIRST_PAUSE = 0.00005  # seconds between the first tries for a held turn
LONGEST_PAUSE = 0.0005  # ...doubling up to this


class WriteTurn:
    """An exclusive, cross-process turn at writing the store at `path`."""

    def __init__(self, store_path: str):
        self.path = f"{store_path}-writer.lock"
        store = os.stat(store_path)
        self._fd = _open_beside(self.path, store)
        try:
            self._queue_fd = _open_beside(f"{store_path}-writer.queue", store)
        except BaseException:
            os.close(self._fd)
            raise
        self._note: mmap.mmap | None = None  # mapped at the first read of the parties' version

    @contextlib.contextmanager
    def held(self, timeout: float) -> Iterator[None]:
        """Hold the turn for the `with` block; sqlite3.OperationalError
        ("database is locked") when another process kept it `timeout` seconds."""
        self._take(timeout)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _take(self, timeout: float) -> None:
        """The right to wait first (the queue file), then the turn; the
        timeout counts from the first lock found held."""
        deadline: list[float] = []
        _lock(self._queue_fd, timeout, deadline)
        try:
            _lock(self._fd, timeout, deadline)
        finally:
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def note_parties_version(self, version: int) -> None:
        """Tell every relay process the parties' version a commit made (in the turn)."""
        os.pwrite(self._fd, struct.pack("<Q", version), 0)

    def parties_version_noted(self) -> int:
        """The newest parties' version a relay process committed (0 if none yet)."""
        if self._fd < 0:
            return 0  # closed: the store answers nothing any more
        if self._note is None:
            if os.fstat(self._fd).st_size < 8:
                os.ftruncate(self._fd, 8)  # (only ever lengthens: never clears a note already written)
            self._note = mmap.mmap(self._fd, 8, access=mmap.ACCESS_READ)
        return struct.unpack_from("<Q", self._note)[0]

    def close(self) -> None:
        if self._note is not None:
            self._note.close()
            self._note = None
        if self._fd >= 0:
            os.close(self._fd)
            os.close(self._queue_fd)
            self._fd = self._queue_fd = -1


def _open_beside(path: str, store: os.stat_result) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, store.st_mode & 0o666)
    if os.geteuid() == 0:
        # As SQLite does for its -wal and -shm files: a CLI command run as
        # root must not leave a file the service's user cannot open.
        os.fchown(fd, store.st_uid, store.st_gid)
    return fd


def _lock(fd: int, timeout: float, deadline: list[float]) -> None:
    """flock `fd`, trying again after a pause while another process holds
    it; sqlite3.OperationalError once `timeout` has passed since `deadline`
    was first set (by this call or an earlier one of the same take)."""
    pause = FIRST_PAUSE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if not deadline:
                deadline.append(now + timeout)
            elif now >= deadline[0]:
                raise sqlite3.OperationalError(
                    "database is locked (another relay process kept its write turn)") from None
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)


@contextlib.contextmanager
def turn_at(store_path: str, timeout: float) -> Iterator[None]:
    """The write turn for one `with` block, its lock file open only as long:
    for a writer that does one thing (the store's set-up, the start-up
    release of delivery claims) rather than commit batches."""
    turn = WriteTurn(store_path)
    try:
        with turn.held(timeout):
            yield
    finally:
        turn.close()


def hold_the_service(store_path: str) -> int | None:
    """Take the store for one `relay serve` (all its worker processes): an
    flock on `<store>-service.lock`, held as long as a process of the
    service lives (forked workers share it; the descriptor is not passed to
    anything exec'd).  None when another service holds it.

    A service start drops every delivery claim in the store, those of a
    killed process included (relay.cli).  A second `relay serve` on the same
    store (another port, another configuration) thus took the first one's
    messages in flight and sent them again: a black-box probe got 30 of 30
    messages twice.  The descriptor is kept open until the process ends."""
    fd = os.open(f"{store_path}-service.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd

"""WAL checkpoints of the store, run beside the commits instead of inside one.

By default SQLite copies the WAL back into the database file (a checkpoint,
with an fsync of the database file) inside whichever COMMIT takes the WAL past
1000 pages.  Under load that is every few hundred messages, and that commit
took 5 to 11 ms instead of the usual 0.7, while it held the store's write
turn (relay.storelock): every other transaction of both worker processes
waited behind it.

So the writer's own automatic checkpoint is pushed out to
WRITER_AUTOCHECKPOINT_PAGES, a safety net for when this one falls behind, and
`Checkpointer` runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection and
thread CHECKPOINT_DELAY after a commit.  A passive checkpoint never waits for
readers or writers and never blocks them; what it cannot copy yet (pages a
reader still needs) the next one copies.  Durability does not change: a
commit is on disk once its WAL frames are fsync'ed, checkpoint or not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3

from relay.logs import get_logger

CHECKPOINT_DELAY = 0.5  # seconds from a commit to the checkpoint that copies it
WRITER_AUTOCHECKPOINT_PAGES = 16384  # 64 MiB of WAL at 4 KiB pages: only if the checkpointer falls behind

class Checkpointer:
    """Checkpoints the WAL of the store at `path` after commits, in the background."""

    def __init__(self, path: str):
        self._path = path
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task | None = None
        self._dirty = False  # committed since the last checkpoint started
        self._closed = False
        self.done = 0  # checkpoints run, for tests and curiosity

    def committed(self) -> None:
        """Called after every commit: a checkpoint follows CHECKPOINT_DELAY
        later, and another one after it if commits came in meanwhile."""
        self._dirty = True
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._checkpoint_soon())

    async def _checkpoint_soon(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._dirty and not self._closed:
                await asyncio.sleep(CHECKPOINT_DELAY)
                self._dirty = False
                try:
                    await loop.run_in_executor(self._thread, self._checkpoint)
                    self.done += 1
                except (sqlite3.Error, OSError) as exc:
                    # Nothing is lost: the frames stay in the WAL and the next
                    # try (or the writer's safety net) copies them.  A full
                    # disk is reported where it matters, by the commits.
                    get_logger().warning("store.checkpoint_failed", error=str(exc))
        finally:
            self._task = None

    async def settled(self) -> None:
        """Return once no checkpoint is due or running."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def _checkpoint(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        loop = asyncio.get_running_loop()
        if self._conn is not None:  # after a running checkpoint: one thread
            await loop.run_in_executor(self._thread, self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=False)

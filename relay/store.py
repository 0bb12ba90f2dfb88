"""The SQLite store: parties, orders, opt-outs, the audit record and the queue.

Durability is the point of this module.  The database runs in WAL mode with
`synchronous=FULL`, so a COMMIT returns only once the WAL is fsync'ed (a
`synchronous=NORMAL` WAL may lose the last commits on power loss).  The SMTP
layer answers `250` only after `accept_message` has returned, i.e. after the
transaction holding the audit row, the Message-ID mapping and the queue entry
has been committed.

Writes go through one group-commit writer: concurrent transactions are
batched into one SQLite transaction and share one fsync, each inside its own
SAVEPOINT so that one failing item does not fail its neighbours.  The writer
is a plain sqlite3 connection owned by one thread, and a whole batch (BEGIN,
every item, COMMIT) runs there in one hop from the event loop: with a hop per
statement, as aiosqlite does, the loop spent more time waking up for
statement results than the statements took.  Reads go through aiosqlite,
one hop per query.  Worker processes writing the same file take turns
(relay.storelock); the WAL is checkpointed beside the commits
(relay.checkpoint); a delivery's outcome rides on the next commit
(LAZY_COMMIT_DELAY).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, TypeVar

import aiosqlite

from relay.affinity import defer_to_the_event_loop
from relay.checkpoint import WRITER_AUTOCHECKPOINT_PAGES, Checkpointer
from relay.chunks import Chunks, buffers
from relay.logs import get_logger
from relay.storelock import WriteTurn, turn_at

if TYPE_CHECKING:
    from relay.filters.policy import CommitGuard

T = TypeVar("T")

# Page cache per connection, in KiB when negative (SQLite's default is 2 MiB).
# Alias, Message-ID and bounce-token lookups and inserts land on random pages
# of their indexes; with a million orders those indexes outgrow 2 MiB and
# every message paid for page reads from the OS.
CACHE_SIZE = -32768

# Python 3.11's sqlite3 binds an int, float or str parameter as it is, and
# sends every other value, None and bytes among them, through its adapter
# protocol: a dict lookup, then a `__adapt__` looked up on a type that has
# none, which builds an AttributeError's message only to drop it.  A batch's
# row has 31 parameters, most of them None (and a padding row all of them):
# 15 % of the writer thread's instructions went there (callgrind,
# bench/instructions.py's run).  Registered adapters are found by the lookup
# first; these two are C callables that return the value they are given,
# so what is stored is unchanged (tests/test_store_writer.py).
sqlite3.register_adapter(type(None), {}.get)
sqlite3.register_adapter(bytes, bytes)

# How long a delivery claim on a queue entry lasts.  The process that holds
# it renews it while the entry waits or is being sent (relay.delivery), so
# the lease only runs out when that process died: another one then takes the
# entry over, at most this long after the death.  A restarted service drops
# every claim at once (`release_all_claims`).
CLAIM_LEASE = 120.0
# How long a commit nobody is waiting on (a delivery's outcome) waits for other
# work to share its fsync.  Under load an accepted message comes along within a
# millisecond or two; without this, 30 % of the commits carried only delivery
# outcomes, each one an fsync and a turn at the store (relay.storelock).
LAZY_COMMIT_DELAY = 0.005
# Delivered entries recorded by one UPDATE (SQLite allows 32,766 parameters).
DELIVERED_AT_ONCE = 500
# What ends a claim: a release, or the entry's next state (sent, deferred, failed).
_UNCLAIM = "claimed_by = NULL, claimed_until = 0"

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE sellers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE seller_emails (
        seller_id TEXT NOT NULL REFERENCES sellers(id),
        address TEXT NOT NULL,            -- normalised, lowercase
        position INTEGER NOT NULL,        -- 0 is where buyer mail is delivered
        PRIMARY KEY (seller_id, address)
    );
    CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        seller_id TEXT NOT NULL REFERENCES sellers(id),
        buyer_address TEXT NOT NULL,
        buyer_name TEXT,
        buyer_alias TEXT NOT NULL UNIQUE,  -- local part the seller writes to
        seller_alias TEXT NOT NULL UNIQUE, -- local part the buyer writes to
        created_at TEXT NOT NULL
    );
    CREATE TABLE optouts (
        address TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        received_at TEXT NOT NULL,
        order_id TEXT,
        direction TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reasons TEXT NOT NULL,            -- JSON list of reason codes
        findings TEXT NOT NULL,           -- JSON list of {code, fragment, location}
        critical INTEGER NOT NULL DEFAULT 0,
        unsolicited INTEGER NOT NULL DEFAULT 0,
        to_opted_out INTEGER NOT NULL DEFAULT 0,
        subject TEXT,
        fingerprint TEXT,
        inbound BLOB,
        outbound BLOB
    );
    CREATE INDEX audit_order ON audit(order_id, direction, verdict);
    CREATE INDEX audit_critical ON audit(received_at) WHERE critical = 1 AND to_opted_out = 1;
    CREATE TABLE message_ids (
        relay_id TEXT PRIMARY KEY,        -- the id we gave the message, on our hostname
        original_id TEXT,                 -- the id the writer's client gave it
        order_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        audit_id INTEGER NOT NULL
    );
    CREATE INDEX message_ids_original ON message_ids(order_id, original_id);
    CREATE TABLE queue (
        id INTEGER PRIMARY KEY,
        audit_id INTEGER,                 -- null for bounces and notices
        kind TEXT NOT NULL,               -- relay | bounce | postmaster
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        message BLOB,                     -- null: the audit row's outbound bytes
        bounce_token TEXT UNIQUE,
        notify TEXT,                      -- where a failure notice goes (real sender)
        notify_alias TEXT,                -- the alias the failure notice may name
        state TEXT NOT NULL,              -- queued | deferred | delivered | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_error TEXT
    );
    CREATE INDEX queue_due ON queue(next_attempt) WHERE state IN ('queued', 'deferred');
    CREATE INDEX queue_audit ON queue(audit_id);
    """,
    # 2: submission passwords (relay.passwords hashes), one per seller
    """
    CREATE TABLE seller_passwords (
        seller_id TEXT PRIMARY KEY REFERENCES sellers(id),
        hash TEXT NOT NULL,               -- scrypt$n$r$p$salt$hash
        updated_at TEXT NOT NULL
    );
    """,
    # 3: delivery claims, so that every worker process delivers what it took
    # (from memory) and scans for the rest without two of them sending one entry
    """
    ALTER TABLE queue ADD COLUMN claimed_by TEXT;
    ALTER TABLE queue ADD COLUMN claimed_until REAL NOT NULL DEFAULT 0;
    """,
    # 4: a counter of changes to what an alias lookup returns (relay.aliascache):
    # a seller's name or addresses, an order's buyer name.  New orders and new
    # sellers change no existing alias, so they leave it alone.  Triggers, so
    # that a change made by any program (the CLI, sqlite3) counts.
    """
    CREATE TABLE parties_version (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO parties_version (only, version) VALUES (1, 0);
    """ + "".join(
        f"CREATE TRIGGER {table}_{event.lower()} AFTER {event} ON {table} "
        "BEGIN UPDATE parties_version SET version = version + 1; END;\n"
        for table, events in (("sellers", ("UPDATE", "DELETE")), ("seller_emails", ("INSERT", "UPDATE", "DELETE")),
                              ("orders", ("UPDATE", "DELETE")))
        for event in events),
    # 5: what the filters ask about an order (ORDER_FACTS) answered from one
    # index: before, each of the order's seller messages was also a read of
    # its audit row, a page of a file that grows to gigabytes, so a message
    # cost more the longer its conversation and the larger the store.  The
    # index starts with the old one's columns and replaces it.  Building it
    # reads the audit table once: about 1 s a million rows with the file in
    # memory, 10 s from disk (measured).
    """
    CREATE INDEX audit_order_facts ON audit(order_id, direction, verdict, unsolicited, fingerprint);
    DROP INDEX audit_order;
    """,
]


# The facts Store.order_history gives the filters; every column it reads of
# the audit table is in the audit_order_facts index (migration 5).  A seller
# message whose delivery failed for good (its queue entry, by queue_audit) was
# never sent, so it is no `duplicate` of the next.  An automatic reply from
# the buyer's mailbox (an out-of-office, recorded with the `auto_reply`
# reason) is not the buyer writing: it lifts neither the unsolicited limit
# nor the opt-out.  (Its row is read for that, the index has no reasons; the
# first accepted buyer row answers, as a rule.)
ORDER_FACTS = (
    "SELECT EXISTS(SELECT 1 FROM audit WHERE order_id = :o AND direction = 'buyer_to_seller' "
    "              AND verdict = 'accepted' AND reasons NOT LIKE '%\"auto_reply\"%') AS buyer_wrote, "
    "(SELECT COUNT(*) FROM audit WHERE order_id = :o AND direction = 'seller_to_buyer' "
    " AND verdict = 'accepted' AND unsolicited = 1) AS unsolicited, "
    "(SELECT group_concat(fingerprint, ' ') FROM audit WHERE order_id = :o "
    " AND direction = 'seller_to_buyer' AND verdict = 'accepted' AND fingerprint IS NOT NULL "
    " AND NOT EXISTS(SELECT 1 FROM queue q WHERE q.audit_id = audit.id AND q.state = 'failed')) AS prints, "
    "EXISTS(SELECT 1 FROM optouts WHERE address = :b) AS opted_out")


class StorageError(Exception):
    """The store could not do what was asked; `full` tells disk-full apart."""

    def __init__(self, message: str, full: bool = False):
        super().__init__(message)
        self.full = full


class NotFound(Exception):
    pass


class StaleParties(Exception):
    """The sellers or orders changed after the alias lookup a decision was
    made on (relay.aliascache): nothing was written; look the alias up again
    and decide again."""

    def __init__(self, version: int):
        super().__init__(f"the sellers or orders changed after version {version}")


class OrderChanged(Exception):
    """An accepted seller message's commit found that a limit it was judged
    on no longer holds (relay.filters.policy CommitGuard): the seller's
    other messages, committed meanwhile, filled the order's unsolicited
    allowance or the seller's critical budget, or carried the same text.
    Nothing was written; judge the message again on the order's history."""

    def __init__(self) -> None:
        super().__init__("the order's history changed while the message was judged")


class AliasMatch(NamedTuple):
    """What an alias names, and the parties' version it was read at."""
    order: Order
    role: str  # "buyer" | "seller": whose alias it is
    seller: Seller
    parties_version: int


@dataclass(frozen=True)
class Seller:
    id: str
    name: str
    emails: tuple[str, ...]


@dataclass(frozen=True)
class Order:
    id: str
    seller_id: str
    buyer_address: str
    buyer_name: str | None
    buyer_alias: str
    seller_alias: str


@dataclass(frozen=True)
class QueueEntry:
    id: int
    audit_id: int | None
    kind: str
    mail_from: str
    rcpt_to: str
    state: str
    attempts: int
    created_at: float
    next_attempt: float
    last_error: str | None
    notify: str | None
    notify_alias: str | None


@dataclass(frozen=True)
class AuditRecord:
    """What one exchange leaves in the audit record (accepted or rejected)."""

    received_at: str
    order_id: str | None
    direction: str
    sender: str
    recipient: str
    verdict: str
    reasons: list[str]
    findings: list[dict[str, str]]
    critical: bool = False
    unsolicited: bool = False
    to_opted_out: bool = False
    subject: str | None = None
    fingerprint: str | None = None
    inbound: bytes | None = None
    outbound: bytes | Chunks | None = None  # a large rewritten message stays in pieces (relay.chunks)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _storage_error(exc: BaseException) -> StorageError:
    text = str(exc).lower()
    full = "full" in text or getattr(exc, "errno", None) == 28
    return StorageError(str(exc), full=full)


class Store:
    """Async access to the SQLite file. Open with `await Store.open(path)`."""

    def __init__(self, path: str, writer: sqlite3.Connection, reader: aiosqlite.Connection, turn: WriteTurn,
                 busy_timeout: float):
        self.path = path
        self._writer = writer  # used only by the writer thread
        self._turn = turn  # taken around every batch: other relay processes write this file too
        self._busy_timeout = busy_timeout
        self.checkpointer = Checkpointer(path)  # the WAL is copied back beside the commits, not in one
        self.commits = 0  # transactions committed (each batch is one), for tests and benchmarks
        # Told of every commit, and of how long each exchange's audit row (the
        # commit an SMTP reply waits on) waited to be durable (relay.metrics,
        # through the daemon).
        self.on_commit: Callable[[], None] | None = None
        self.on_commit_wait: Callable[[float], None] | None = None
        # The newest parties' version this process has read (relay.aliascache),
        # and a monotonic time at or before the snapshot it was read in.
        self.parties_seen: tuple[int, float] = (-1, float("-inf"))
        self._reader = reader
        # Handed in by the event loop, taken by the writer thread once it holds the write turn.
        self._pending: collections.deque[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = \
            collections.deque()
        self._wanted = threading.Event()  # a commit is wanted now (set by the event loop, cleared by the writer)
        self._lazy_wake: asyncio.TimerHandle | None = None  # a commit is wanted soon (transact can_wait)
        self._writer_stopped: asyncio.Future | None = None  # done once the writer thread has finished
        self._closed = False
        self._files_at_open: tuple[tuple[int, int], ...] | None = None  # (_confirm_files)
        self._replaced_logged = False

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(cls, path: str, busy_timeout: float = 10.0) -> "Store":
        loop = asyncio.get_running_loop()
        writer = turn = None
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            writer = await asyncio.to_thread(cls._open_writer, path, busy_timeout)
            turn = WriteTurn(path)
            reader = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
            await cls._configure_reader(reader, busy_timeout)
        except (sqlite3.Error, OSError) as exc:
            if writer is not None:
                writer.close()
            if turn is not None:
                turn.close()
            raise _storage_error(exc) from exc
        store = cls(path, writer, reader, turn, busy_timeout)
        store._files_at_open = store._files()
        store._writer_stopped = loop.create_future()
        threading.Thread(target=store._write_loop, args=(loop,), name="store-writer", daemon=True).start()
        return store

    @staticmethod
    def _open_writer(path: str, busy_timeout: float) -> sqlite3.Connection:
        """The writer connection, with the file set up (WAL, migrations) in a
        write turn like any commit (relay.storelock).  Two processes creating
        a new store at once (worker processes on a first start, or a CLI
        command beside them) thus take turns: while the file was still in
        rollback-journal mode, SQLite answered one of them "database is
        locked" at once when it switched to WAL, without waiting for the
        busy timeout."""
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            with turn_at(path, busy_timeout):  # (the file exists once connect() returns)
                _configure_writer(conn, busy_timeout)
                _migrate(conn)
            for statement in _BATCH_SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    async def _configure_reader(conn: aiosqlite.Connection, busy_timeout: float) -> None:
        """The reader only reads: the writer has put the file in WAL mode
        (a property of the file), and durability settings concern commits."""
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        await conn.execute(f"PRAGMA cache_size = {CACHE_SIZE}")

    async def close(self) -> None:
        """Finish the transactions already handed in, then close both connections."""
        if self._closed:
            return
        self._closed = True
        if self._lazy_wake is not None:
            self._lazy_wake.cancel()  # (what waited is committed now)
            self._lazy_wake = None
        self._wanted.set()
        if self._writer_stopped is not None:
            await self._writer_stopped  # everything handed in is committed, the writer connection closed
        self._turn.close()
        await self.checkpointer.close()
        try:
            await self._reader.close()
        except Exception:
            pass

    # ---------------------------------------------------------- group commit

    async def transact(self, work: Callable[[sqlite3.Connection], T], can_wait: bool = False,
                       client_waits: bool = False) -> T:
        """Run `work(db)` in the writer thread inside a committed transaction;
        return its result once it is durable.

        `can_wait`: nobody waits on this commit but its caller (a delivery's
        outcome, not an SMTP client), so it may wait LAZY_COMMIT_DELAY for
        other work to share its commit instead of starting one of its own.
        `client_waits`: an SMTP client's reply waits on this commit (an
        exchange's audit row); its wait goes to on_commit_wait."""
        if self._closed:
            raise StorageError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((work, future))
        if can_wait:
            if self._lazy_wake is None:
                self._lazy_wake = loop.call_later(LAZY_COMMIT_DELAY, self._lazy_due)
            return await future
        # (The writer clears the flag before it looks at what is pending,
        # so a flag still set means this work will be seen.)
        if not self._wanted.is_set():
            self._wanted.set()
        if not client_waits or self.on_commit_wait is None:
            return await future
        handed_in = time.perf_counter()
        result = await future
        self.on_commit_wait(time.perf_counter() - handed_in)
        return result

    def _lazy_due(self) -> None:
        self._lazy_wake = None  # (what it waited for may have gone out already, in a batch taken since)
        self._wanted.set()

    def _write_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread's life: commit whatever is pending, batch after
        batch, as long as there is something; then wait to be wanted.

        The thread goes from one batch to the next by itself.  When the event
        loop started every batch (a task that woke when a commit was wanted,
        handed the batch to an executor thread and heard of its end through
        the executor's future), a message handed in during a commit waited
        for two or three passes of the event loop after it, milliseconds
        each under load, and for the thread to wake and take the GIL back
        (bench/phases.py at 50 sessions: 0.9 ms on average, 8 ms at the
        99th percentile).  One worker process now relays 10-30 % more
        messages a second (bench/cpu_split.py); with two, each waits for the
        other's turn at the store between its batches, and the time from
        hand-in to result stayed what it was.  Once closed, everything
        handed in is committed at once, and the thread closes the writer
        connection and ends."""
        defer_to_the_event_loop()  # (when the process is kept on one CPU: listen.cpu_affinity)
        try:
            while True:
                if not self._closed:
                    self._wanted.wait()
                    self._wanted.clear()
                if self._pending:
                    self._run_batch(loop)
                elif self._closed:
                    return
        finally:
            try:
                self._writer.close()
            finally:
                _call_soon(loop, _settle, self._writer_stopped)

    def _run_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the writer thread: once it holds the write turn, one transaction
        for everything handed in so far.  What arrived while the other worker
        process held the turn joins this commit rather than waiting for the
        next one (at 10 sessions on two processes, 0.47 commits a message,
        each with its fsync, when the batch was taken before the turn).  The
        outcomes go to the event loop at once (_committed), with the parties'
        version the batch saw, which keeps alias lookups cached in memory
        known to be current while the relay is busy (relay.aliascache); a
        batch that could not be committed fails whole (_failed)."""
        started = time.monotonic()
        batch = outcomes = None
        try:
            with self._turn.held(self._busy_timeout):
                self._confirm_files()
                batch = _drain(self._pending)
                works = [work for work, _ in batch]
                in_one = _commit_in_one_statement(self._writer, works)
                outcomes, parties_version = in_one if in_one is not None else self._commit_in_turn(works)
        except BaseException as exc:
            if outcomes is None:  # nobody gets a 250
                # What the writer took, or, if the turn never came, what it would have taken.
                _call_soon(loop, self._failed, batch if batch is not None else _drain(self._pending), exc)
                return
        _call_soon(loop, self._committed, batch, outcomes, parties_version, started)

    def _files(self) -> tuple[tuple[int, int], ...] | None:
        """(device, inode) of the store's file and of its WAL, at their paths
        (None when one is missing)."""
        try:
            return tuple((st.st_dev, st.st_ino) for st in (os.stat(self.path), os.stat(f"{self.path}-wal")))
        except FileNotFoundError:
            return None

    def _confirm_files(self) -> None:
        """Before a commit: the files at the store's path are the ones the
        writer commits into.  Deleted or replaced under a running relay, its
        commits went into unlinked files, every client got 250, and all of
        it was gone at the next start (a black-box probe): a StorageError
        instead (451), logged once.  Two stat() calls a batch."""
        found = self._files()
        if self._files_at_open is None:  # (the WAL did not exist yet at open)
            self._files_at_open = found
        if found is not None and found == self._files_at_open:
            return
        if not self._replaced_logged:
            self._replaced_logged = True
            get_logger().error("store.replaced", path=self.path,
                               error="the store file or its -wal was removed or replaced while the relay had it "
                                     "open; nothing more is accepted until the relay is restarted")
        raise StorageError(f"the store file {self.path} was removed or replaced while in use")

    def _committed(self, batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]],
                   outcomes: list[tuple[Any, Exception | None]], parties_version: int, started: float) -> None:
        """In the event loop, as soon as it learns that the batch is durable:
        the callers' results."""
        self.commits += 1
        if self.on_commit is not None and any(error is None for _, error in outcomes):  # (else rolled back)
            self.on_commit()
        self.checkpointer.committed()
        self._saw_parties(parties_version, started)
        for (_, future), (result, error) in zip(batch, outcomes):
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    @staticmethod
    def _failed(batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]], exc: BaseException) -> None:
        error = _storage_error(exc) if isinstance(exc, (sqlite3.Error, OSError)) else exc
        if not isinstance(error, Exception):
            error = StorageError(str(error) or type(error).__name__)
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _commit_in_turn(self, works: list[Callable[[sqlite3.Connection], Any]]) \
            -> tuple[list[tuple[Any, Exception | None]], int]:
        """Every item runs straight in the batch's transaction.  Should one
        fail (a refusal: ITEM_FAILURES), the whole transaction is rolled back
        and the batch runs again with each item inside its own SAVEPOINT, so
        that only the failed one's writes are undone.  Items almost never
        fail, and the two savepoint statements an item took were as many as
        its own inserts (every statement also lets go of the GIL and takes
        it back from the event loop)."""
        db = self._writer
        try:
            db.execute("BEGIN IMMEDIATE")
            version_before = _parties_version(db)
            outcomes, failure = _run_together(db, works)
            if failure is not None:
                db.execute("ROLLBACK")
                if len(works) == 1:  # nothing else to keep: the item's failure is the batch's outcome
                    return [(None, failure)], version_before
                db.execute("BEGIN IMMEDIATE")
                outcomes = _run_isolated(db, works)
            parties_version = _parties_version(db)
            db.execute("COMMIT")
            if parties_version != version_before:  # this batch changed a seller or an order
                self._turn.note_parties_version(parties_version)
        except BaseException:
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except Exception:
                pass
            raise
        return outcomes, parties_version

    def parties_version_noted(self) -> int:
        """The parties' version the newest change by a relay process made
        (relay.storelock); a change made by another program is not in it."""
        return self._turn.parties_version_noted()

    def _saw_parties(self, version: int, at: float) -> None:
        """Keep the newest observation: the version only ever grows."""
        seen, seen_at = self.parties_seen
        if version > seen or (version == seen and at > seen_at):
            self.parties_seen = (version, at)

    async def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        try:
            # One thread hop that steps the statement to its end: with execute()
            # + fetchall() the statement stayed pending between hops and held the
            # reader on an old snapshot (stale reads found by the benchmark).
            return list(await self._reader.execute_fetchall(
                sql, params if isinstance(params, dict) else tuple(params)))
        except (sqlite3.Error, OSError) as exc:
            raise _storage_error(exc) from exc

    async def _read_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    # --------------------------------------------------------------- parties

    async def add_seller(self, seller_id: str, name: str, emails: list[str]) -> Seller:
        """Register a seller, or replace its name and approved addresses."""

        def work(db: sqlite3.Connection) -> Seller:
            db.execute(
                "INSERT INTO sellers (id, name, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name",
                (seller_id, name, utc_now_iso()),
            )
            db.execute("DELETE FROM seller_emails WHERE seller_id = ?", (seller_id,))
            db.executemany(
                "INSERT INTO seller_emails (seller_id, address, position) VALUES (?, ?, ?)",
                [(seller_id, address, i) for i, address in enumerate(emails)],
            )
            return Seller(seller_id, name, tuple(emails))

        return await self.transact(work)

    async def get_seller(self, seller_id: str) -> Seller | None:
        row = await self._read_one("SELECT id, name FROM sellers WHERE id = ?", (seller_id,))
        if row is None:
            return None
        emails = await self._read(
            "SELECT address FROM seller_emails WHERE seller_id = ? ORDER BY position", (seller_id,))
        return Seller(row["id"], row["name"], tuple(r["address"] for r in emails))

    async def set_seller_password(self, seller_id: str, password_hash: str) -> None:
        """Store (or replace) a seller's submission password hash; NotFound for an unknown seller."""

        def work(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM sellers WHERE id = ?", (seller_id,)).fetchone() is None:
                raise NotFound(f"unknown seller {seller_id}")
            db.execute(
                "INSERT INTO seller_passwords (seller_id, hash, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(seller_id) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
                (seller_id, password_hash, utc_now_iso()))

        await self.transact(work)

    async def seller_password(self, seller_id: str) -> str | None:
        """The seller's password hash, or None (unknown seller or no password set)."""
        row = await self._read_one("SELECT hash FROM seller_passwords WHERE seller_id = ?", (seller_id,))
        return row["hash"] if row else None

    async def open_order(self, order_id: str, seller_id: str, buyer: str, buyer_name: str | None,
                         mint: Callable[[], str]) -> Order:
        """Create the order with two fresh aliases, or return the existing one.

        Opening an order again with the same seller and buyer is idempotent;
        with a different seller or buyer it is refused (ValueError), since the
        aliases already handed out must keep meaning the same two parties.
        """

        def work(db: sqlite3.Connection) -> Order:
            row = db.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
            if row is not None:
                order = _order(row)
                if order.seller_id != seller_id or order.buyer_address != buyer:
                    raise ValueError(f"order {order_id} is already open for another seller or buyer")
                if buyer_name is not None and buyer_name != order.buyer_name:
                    db.execute("UPDATE orders SET buyer_name = ? WHERE id = ?", (buyer_name, order_id))
                    order = Order(**{**order.__dict__, "buyer_name": buyer_name})
                return order
            if db.execute("SELECT 1 FROM sellers WHERE id = ?", (seller_id,)).fetchone() is None:
                raise NotFound(f"unknown seller {seller_id}")
            buyer_alias, seller_alias = mint(), mint()
            db.execute(
                "INSERT INTO orders (id, seller_id, buyer_address, buyer_name, buyer_alias, seller_alias, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (order_id, seller_id, buyer, buyer_name, buyer_alias, seller_alias, utc_now_iso()),
            )
            return Order(order_id, seller_id, buyer, buyer_name, buyer_alias, seller_alias)

        return await self.transact(work)

    async def get_order(self, order_id: str) -> Order | None:
        row = await self._read_one("SELECT * FROM orders WHERE id = ?", (order_id,))
        return _order(row) if row else None

    async def find_alias(self, local: str) -> AliasMatch | None:
        """Exact lookup of an alias local part: the order, whose alias it is,
        the order's seller and the parties' version read with them, in one
        query (relay.aliascache answers most RCPTs without it)."""
        started = time.monotonic()
        row = await self._read_one(
            "SELECT o.*, s.name AS seller_name, "
            "(SELECT group_concat(address, ' ') FROM (SELECT address FROM seller_emails "
            " WHERE seller_id = o.seller_id ORDER BY position)) AS seller_emails, "
            "COALESCE((SELECT version FROM parties_version), 0) AS parties_version "
            "FROM (SELECT *, 'buyer' AS role FROM orders WHERE buyer_alias = ? "
            "      UNION ALL SELECT *, 'seller' AS role FROM orders WHERE seller_alias = ?) AS o "
            "JOIN sellers s ON s.id = o.seller_id",
            (local, local),
        )
        if row is None:
            return None
        emails = tuple((row["seller_emails"] or "").split())
        self._saw_parties(row["parties_version"], started)
        return AliasMatch(_order(row), row["role"], Seller(row["seller_id"], row["seller_name"], emails),
                          row["parties_version"])

    # -------------------------------------------------------------- opt-outs

    async def optout_add(self, address: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO optouts (address, created_at) VALUES (?, ?)",
                             (address, utc_now_iso()))

        await self.transact(work)

    async def optout_remove(self, address: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM optouts WHERE address = ?", (address,))
            return cur.rowcount > 0

        return await self.transact(work)

    async def optout_list(self) -> list[str]:
        return [r["address"] for r in await self._read("SELECT address FROM optouts ORDER BY address")]

    async def is_opted_out(self, address: str) -> bool:
        return await self._read_one("SELECT 1 FROM optouts WHERE address = ?", (address,)) is not None

    # ------------------------------------------------- facts for the filters

    async def order_history(self, order_id: str, buyer: str) -> dict[str, Any]:
        """What the over-messaging, duplicate and opt-out rules need to know,
        in one query that reads indexes only (ORDER_FACTS)."""
        row = await self._read_one(ORDER_FACTS, {"o": order_id, "b": buyer})
        return {
            "buyer_has_written": bool(row["buyer_wrote"]),
            "unsolicited_sent": row["unsolicited"],
            "previous_fingerprints": frozenset((row["prints"] or "").split()),
            "buyer_opted_out": bool(row["opted_out"]),
        }

    async def critical_sent_since(self, seller_id: str, since_iso: str) -> int:
        row = await self._read_one(
            "SELECT COUNT(*) AS n FROM audit a JOIN orders o ON o.id = a.order_id "
            "WHERE a.critical = 1 AND a.to_opted_out = 1 AND a.verdict = 'accepted' "
            "AND a.direction = 'seller_to_buyer' AND a.received_at >= ? AND o.seller_id = ?",
            (since_iso, seller_id))
        return row["n"]

    async def recent_auto_reply(self, order_id: str, direction: str, since_iso: str) -> bool:
        row = await self._read_one(
            "SELECT 1 FROM audit WHERE order_id = ? AND direction = ? AND verdict = 'accepted' "
            "AND received_at >= ? AND reasons LIKE '%\"auto_reply\"%' LIMIT 1", (order_id, direction, since_iso))
        return row is not None

    async def lookup_relay_id(self, relay_id: str) -> sqlite3.Row | None:
        return await self._read_one("SELECT * FROM message_ids WHERE relay_id = ?", (relay_id,))

    async def lookup_original_id(self, order_id: str, original_id: str) -> sqlite3.Row | None:
        return await self._read_one(
            "SELECT * FROM message_ids WHERE order_id = ? AND original_id = ? ORDER BY audit_id DESC LIMIT 1",
            (order_id, original_id))

    # ------------------------------------------------------ audit and queue

    async def record_rejection(self, record: AuditRecord, parties_version: int | None = None) -> int:
        """With `parties_version` (that of the alias lookup the refusal was
        decided on), StaleParties if the parties changed since."""
        def work(db: sqlite3.Connection) -> int:
            _confirm_parties(db, parties_version)
            return _insert_audit(db, record)

        return await self.transact(work, client_waits=True)

    async def accept_message(self, record: AuditRecord, relay_id: str, original_id: str | None,
                             mail_from: str, rcpt_to: str, bounce_token: str, notify: str | None,
                             notify_alias: str | None, kind: str = "relay",
                             claim_owner: str | None = None,
                             parties_version: int | None = None,
                             guard: CommitGuard | None = None) -> tuple[int, QueueEntry]:
        """Commit audit row + Message-ID mapping + queue entry together.

        Returns (audit id, the queue entry) once durable; only then may the
        SMTP layer answer 250.  With `claim_owner` the entry is committed
        already claimed by that deliverer, which sends it from memory: no
        other process's queue scan takes it while the claim lasts.  With
        `parties_version`, StaleParties (and nothing written) if the sellers
        or orders changed after the alias lookup the message was judged on;
        with `guard`, OrderChanged (and nothing written) if a limit it was
        judged under no longer holds.
        """

        return await self.transact(_Acceptance(record, relay_id, original_id, mail_from, rcpt_to, bounce_token,
                                               notify, notify_alias, kind, claim_owner, parties_version, guard),
                                  client_waits=True)

    async def enqueue_notice(self, mail_from: str, rcpt_to: str, message: bytes, kind: str = "bounce") -> int:
        """Queue a message of our own (a failure notice); never bounced itself."""

        def work(db: sqlite3.Connection) -> int:
            now = time.time()
            cur = db.execute(
                "INSERT INTO queue (audit_id, kind, mail_from, rcpt_to, message, state, created_at, "
                "next_attempt, updated_at) VALUES (NULL, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (kind, mail_from, rcpt_to, message, now, now, now))
            return cur.lastrowid

        return await self.transact(work)

    async def audit_list(self, order_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT a.id, a.received_at, a.order_id, a.direction, a.sender, a.recipient, a.verdict, "
            "a.reasons, a.findings, a.critical, a.subject, "
            "(SELECT q.state FROM queue q WHERE q.audit_id = a.id ORDER BY q.id LIMIT 1) AS delivery "
            "FROM audit a"
        )
        params: list[Any] = []
        if order_id is not None:
            sql += " WHERE a.order_id = ?"
            params.append(order_id)
        sql += " ORDER BY a.id"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        return [_audit_dict(r) for r in await self._read(sql, params)]

    async def audit_get(self, audit_id: int) -> sqlite3.Row | None:
        return await self._read_one("SELECT * FROM audit WHERE id = ?", (audit_id,))

    async def queue_list(self) -> list[QueueEntry]:
        rows = await self._read("SELECT * FROM queue ORDER BY id")
        return [_queue_entry(r) for r in rows]

    async def queue_due(self, now: float, limit: int = 100, exclude: Iterable[int] = ()) -> list[QueueEntry]:
        """Entries due for delivery and claimed by nobody, read through the
        writer (see `queue_claim`), without claiming them."""
        sql, params = _due_query(now, limit, exclude)

        def work(db: sqlite3.Connection) -> list[QueueEntry]:
            return [_queue_entry(r) for r in db.execute(sql, params).fetchall()]

        return await self.transact(work)

    async def queue_claim(self, owner: str, now: float, limit: int = 100,
                          exclude: Iterable[int] = ()) -> list[QueueEntry]:
        """Claim up to `limit` due entries for `owner` and return them.

        One write transaction finds and claims them, so two worker processes
        scanning at once never take the same entry.  It runs in the writer,
        which always sees its own commits: the reader connection was once
        seen (bench, 50 sessions) to return an entry as still queued right
        after its delivery had been committed, and it was sent twice."""
        sql, params = _due_query(now, limit, exclude)

        def work(db: sqlite3.Connection) -> list[QueueEntry]:
            entries = [_queue_entry(r) for r in db.execute(sql, params).fetchall()]
            if entries:
                db.executemany("UPDATE queue SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                               [(owner, now + CLAIM_LEASE, e.id) for e in entries])
            return entries

        return await self.transact(work)

    async def renew_claims(self, owner: str, entry_ids: Iterable[int]) -> None:
        """Extend `owner`'s claims on entries it still holds."""
        ids = list(entry_ids)
        if not ids:
            return

        def work(db: sqlite3.Connection) -> None:
            until = time.time() + CLAIM_LEASE
            db.executemany("UPDATE queue SET claimed_until = ? WHERE id = ? AND claimed_by = ?",
                           [(until, i, owner) for i in ids])

        await self.transact(work)

    async def release_claims(self, owner: str, entry_ids: Iterable[int]) -> None:
        """Give entries back to the queue scan (a deliverer that stops)."""
        ids = list(entry_ids)
        if not ids:
            return

        def work(db: sqlite3.Connection) -> None:
            db.executemany(f"UPDATE queue SET {_UNCLAIM} WHERE id = ? AND claimed_by = ?",
                           [(i, owner) for i in ids])

        await self.transact(work)

    async def release_claims_of_process(self, pid: int) -> int:
        """Give back every entry a dead worker process held (its deliverer's
        owner is "<pid>.<random>"); returns how many."""
        def work(db: sqlite3.Connection) -> int:
            return db.execute(f"UPDATE queue SET {_UNCLAIM} WHERE claimed_by LIKE ?",
                              (f"{int(pid)}.%",)).rowcount

        return await self.transact(work)

    async def queue_message(self, entry_id: int) -> bytes | None:
        row = await self._read_one(
            "SELECT COALESCE(q.message, a.outbound) AS data FROM queue q LEFT JOIN audit a ON a.id = q.audit_id "
            "WHERE q.id = ?", (entry_id,))
        return bytes(row["data"]) if row and row["data"] is not None else None

    async def queue_stats(self, now: float) -> tuple[int, float]:
        row = await self._read_one(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM queue WHERE state IN ('queued', 'deferred')")
        oldest = now - row["oldest"] if row["oldest"] is not None else 0.0
        return row["n"], oldest

    async def queue_retry(self, entry_id: int | None = None) -> int:
        """Make deferred entries (or one entry, failed ones included) due now."""

        def work(db: sqlite3.Connection) -> int:
            now = time.time()
            if entry_id is None:
                cur = db.execute(
                    "UPDATE queue SET next_attempt = ?, updated_at = ? WHERE state IN ('queued', 'deferred')",
                    (now, now))
            else:
                cur = db.execute(
                    "UPDATE queue SET next_attempt = ?, updated_at = ?, "
                    "state = CASE WHEN state = 'failed' THEN 'deferred' ELSE state END "
                    "WHERE id = ? AND state != 'delivered'", (now, now, entry_id))
                if cur.rowcount == 0:
                    row = db.execute("SELECT state FROM queue WHERE id = ?", (entry_id,)).fetchone()
                    if row is None:
                        raise NotFound(f"no queue entry {entry_id}")
            return cur.rowcount

        return await self.transact(work)

    async def mark_delivered_many(self, entry_ids: list[int]) -> None:
        """Record entries handed over to the next hop, in one statement per
        DELIVERED_AT_ONCE of them: at a thousand messages a second, one
        UPDATE (and one trip through the writer thread) a message was the
        writer's most frequent statement."""
        # The outcome shares the next commit: the entries stay claimed by this
        # process until they are recorded, so no one else sends them again.
        await self.transact(_Delivered(entry_ids), can_wait=True)

    async def mark_deferred(self, entry_id: int, error: str, next_attempt: float) -> None:
        await self._set_state(entry_id, "deferred", error, next_attempt)

    async def mark_failed(self, entry_id: int, error: str, notice: tuple[str, str, bytes] | None) -> None:
        """Fail an entry and queue its failure notice in the same transaction."""

        def work(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                "UPDATE queue SET state = 'failed', last_error = ?, attempts = attempts + 1, updated_at = ?, "
                f"{_UNCLAIM} WHERE id = ?", (error, now, entry_id))
            if notice is not None:
                _queue_notice(db, notice, now)

        await self.transact(work)

    async def mark_bounced(self, entry_id: int, error: str, notice: tuple[str, str, bytes]) -> bool:
        """A failure report came back for an entry already handed over: fail
        it and queue its notice in one transaction, unless it had failed
        already (one notice a message, however many reports arrive).  True
        when the notice was queued."""

        def work(db: sqlite3.Connection) -> bool:
            now = time.time()
            changed = db.execute("UPDATE queue SET state = 'failed', last_error = ?, updated_at = ? "
                                 "WHERE id = ? AND state != 'failed'", (error, now, entry_id)).rowcount
            if changed:
                _queue_notice(db, notice, now)
            return bool(changed)

        return await self.transact(work)

    async def _set_state(self, entry_id: int, state: str, error: str | None, next_attempt: float | None) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                "UPDATE queue SET state = ?, last_error = ?, attempts = attempts + 1, updated_at = ?, "
                f"next_attempt = COALESCE(?, next_attempt), {_UNCLAIM} WHERE id = ?",
                (state, error, now, next_attempt, entry_id))

        # A delivery's outcome shares the next commit: the entry stays claimed
        # by this process until it is recorded, so no one else sends it again.
        await self.transact(work, can_wait=True)

    async def bounce_token_entry(self, token: str) -> QueueEntry | None:
        row = await self._read_one("SELECT * FROM queue WHERE bounce_token = ?", (token,))
        return _queue_entry(row) if row else None


def _queue_notice(db: sqlite3.Connection, notice: tuple[str, str, bytes], now: float) -> None:
    """Queue a failure notice (mail_from, rcpt_to, message) in the caller's transaction."""
    mail_from, rcpt_to, message = notice
    db.execute("INSERT INTO queue (audit_id, kind, mail_from, rcpt_to, message, state, created_at, next_attempt, "
               "updated_at) VALUES (NULL, 'bounce', ?, ?, ?, 'queued', ?, ?, ?)",
               (mail_from, rcpt_to, message, now, now, now))


# Message copies larger than this go into the audit row by incremental blob
# I/O.  Bound as parameters, each is copied by SQLite (the sqlite3 module binds
# SQLITE_TRANSIENT) and then copied again into one buffer of the whole row:
# four times a message's size for its two copies, on top of the pages written.
# A zeroblob placeholder filled in slices costs none of that.
LARGE_BLOB = 256 * 1024
BLOB_SLICE = 1 << 20


_AUDIT_COLUMNS = ("received_at, order_id, direction, sender, recipient, verdict, reasons, findings, critical, "
                  "unsolicited, to_opted_out, subject, fingerprint, inbound, outbound")
# The id and every column but the two copies, bound as they are (_insert_audit adds the copies' slots).
_AUDIT_PLAIN_SLOTS = ["?"] * (1 + len(_AUDIT_COLUMNS.split(",")) - 2)


def _audit_values(r: AuditRecord, copies: dict[str, Any], large: dict[str, Any]) -> tuple:
    """The audit row's values in _AUDIT_COLUMNS order; a copy in `large` is
    its length (a zeroblob, filled by _write_blob)."""
    return (r.received_at, r.order_id, r.direction, r.sender, r.recipient, r.verdict, json.dumps(r.reasons),
            json.dumps(r.findings), int(r.critical), int(r.unsolicited), int(r.to_opted_out), r.subject,
            r.fingerprint, *(len(data) if name in large else data for name, data in copies.items()))


def _copies(r: AuditRecord) -> dict[str, Any]:
    copies = {"inbound": r.inbound, "outbound": r.outbound}
    if isinstance(r.outbound, Chunks) and len(r.outbound) <= LARGE_BLOB:
        copies["outbound"] = r.outbound.join()
    return copies


def _large(copies: dict[str, Any]) -> dict[str, Any]:
    return {name: data for name, data in copies.items() if data is not None and len(data) > LARGE_BLOB}


def _insert_audit(db: sqlite3.Connection, r: AuditRecord, audit_id: int | None = None) -> int:
    copies = _copies(r)
    large = _large(copies)
    slots = _AUDIT_PLAIN_SLOTS + ["zeroblob(?)" if name in large else "?" for name in copies]
    cur = db.execute(f"INSERT INTO audit (id, {_AUDIT_COLUMNS}) VALUES ({', '.join(slots)})",
                     (audit_id, *_audit_values(r, copies, large)))
    for name, data in large.items():
        _write_blob(db, "audit", name, cur.lastrowid, data)
    return cur.lastrowid


class _Acceptance:
    """The rows of one accepted message: its audit row, its Message-ID
    mapping and its queue entry, committed together.

    Their values are made when the message is handed in, in the event loop;
    the writer thread gives them ids and writes them as rows of the
    batch_row view, whose trigger is the one place that says how an
    accepted message is stored.  A batch of them goes in as one statement
    (_commit_in_one_statement); on the long way (a batch with other work in
    it, or a refusal), the acceptances that follow one another go in
    together (_insert_acceptances).  Every statement lets go of the GIL and
    must take it back from the busy event loop, and the batch holds the
    write turn that the other worker process waits for.  Called alone (a
    batch's items each in its own savepoint, after a refusal), it inserts
    its own rows."""

    __slots__ = ("record", "large", "audit_values", "message_id", "queue", "parties_version", "guard")

    def __init__(self, record: AuditRecord, relay_id: str, original_id: str | None, mail_from: str, rcpt_to: str,
                 bounce_token: str, notify: str | None, notify_alias: str | None, kind: str,
                 claim_owner: str | None, parties_version: int | None, guard: CommitGuard | None = None):
        self.record = record
        copies = _copies(record)
        self.large = _large(copies)  # (its audit row is written apart, its copies by blob writes)
        self.audit_values = _audit_values(record, dict.fromkeys(copies) if self.large else copies, {})
        self.message_id = (relay_id, original_id, record.order_id, record.direction) \
            if record.order_id is not None else None
        self.queue = (kind, mail_from, rcpt_to, bounce_token, notify, notify_alias, claim_owner)
        self.parties_version = parties_version
        self.guard = (None, None, None, None) if guard is None else (
            guard.unsolicited_limit, 1 if guard.duplicate else None, guard.critical_since, guard.critical_quota)

    def __call__(self, db: sqlite3.Connection) -> tuple[int, QueueEntry]:
        return _insert_acceptances(db, [self])[0]

    def batch_row(self, audit_id: int, queue_id: int, now: float) -> tuple:
        """Its values in _BATCH_COLUMNS order."""
        kind, mail_from, rcpt_to, bounce_token, notify, notify_alias, claim_owner = self.queue
        relay_id, original_id = self.message_id[:2] if self.message_id is not None else (None, None)
        return (audit_id, *self.audit_values, 1 if self.large else None, relay_id, original_id,
                queue_id, kind, mail_from, rcpt_to, bounce_token, notify, notify_alias,
                now, claim_owner, now + CLAIM_LEASE if claim_owner else 0.0, self.parties_version, *self.guard, None)

    def entry(self, queue_id: int, audit_id: int, now: float) -> QueueEntry:
        kind, mail_from, rcpt_to, _, notify, notify_alias, _ = self.queue
        return QueueEntry(queue_id, audit_id, kind, mail_from, rcpt_to, "queued", 0, now, now, None, notify,
                          notify_alias)


def _insert_acceptances(db: sqlite3.Connection, items: list[_Acceptance]) -> list[tuple[int, QueueEntry]]:
    """Insert the rows of `items`, in order, in the open transaction; their
    (audit id, queue entry).

    StaleParties (the caller rolls back) if the parties changed after the
    alias lookup one of them was judged on.  The ids are the ones SQLite
    would give (one more than the largest in the table, row after row),
    given here so that each item knows its audit row's id; the batch holds
    the write lock, so nobody else inserts meanwhile."""
    current, audit_base, queue_base = db.execute(_BATCH_START).fetchone()
    stale = _stale_version(items, current)
    if stale is not None:
        raise StaleParties(stale)
    now = time.time()
    for n, item in enumerate(items, 1):
        if item.large:
            _insert_audit(db, item.record, audit_base + n)
    results = []
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        values, outcomes = _batch_values(items[start:start + ROWS_PER_STATEMENT], audit_base + start,
                                         queue_base + start, now)
        try:
            _insert_batch_rows(db, values)
        except sqlite3.IntegrityError as exc:
            if str(exc) == _ORDER_CHANGED:
                raise OrderChanged() from None
            raise
        results += [result for result, _ in outcomes]
    return results


def _stale_version(works: list, current: int) -> int | None:
    """The parties' version an accepted message in `works` was judged on, if
    it is not `current` (the trigger of batch_row checks it again, in the
    statement that writes)."""
    for work in works:
        if type(work) is _Acceptance and work.parties_version not in (None, current):
            return work.parties_version
    return None


class _Delivered:
    """Queue entries handed over to the next hop (Store.mark_delivered_many),
    as data: in a batch with accepted messages it goes into the batch's one
    statement (_commit_in_one_statement); called, it runs its own UPDATEs."""

    __slots__ = ("entry_ids",)

    def __init__(self, entry_ids: list[int]):
        self.entry_ids = list(entry_ids)

    def __call__(self, db: sqlite3.Connection) -> None:
        now = time.time()
        for start in range(0, len(self.entry_ids), DELIVERED_AT_ONCE):
            ids = self.entry_ids[start:start + DELIVERED_AT_ONCE]
            db.execute(f"UPDATE queue SET {_DELIVERED} WHERE id IN ({', '.join('?' * len(ids))})", (now, *ids))


_DELIVERED = f"state = 'delivered', last_error = NULL, attempts = attempts + 1, updated_at = ?, {_UNCLAIM}"

# Accepted messages and delivered entries as rows inserted into this view,
# which holds none: how both are written, for the one statement a busy
# relay's batch is (_commit_in_one_statement) and on the long way
# (_insert_acceptances).  Its triggers do the work: for an accepted message
# (audit_id), check the parties' version and write its audit row (unless it
# was written apart: audit_written, a large message), its Message-ID mapping
# and its queue entry; for a delivered entry (delivered_id), mark it
# delivered.  A row with neither does nothing: it pads a statement to a
# power of two rows, so that few statements are prepared and cached (each
# row count is a statement of its own; one for every count up to 256 took
# 98 MB).  TEMP objects, made by the writer connection when it opens:
# nothing of them is in the file.
_QUEUE_COLUMNS = ("id, audit_id, kind, mail_from, rcpt_to, bounce_token, notify, notify_alias, state, created_at, "
                  "next_attempt, updated_at, claimed_by, claimed_until")
_AUDIT_NAMES = [name.strip() for name in _AUDIT_COLUMNS.split(",")]
_BATCH_COLUMNS = (["audit_id"] + _AUDIT_NAMES + ["audit_written", "relay_id", "original_id"]
                  + ["queue_id", "kind", "mail_from", "rcpt_to", "bounce_token", "notify", "notify_alias", "now",
                     "claimed_by", "claimed_until"]
                  + ["parties_version", "guard_unsolicited", "guard_duplicate", "guard_critical_since",
                     "guard_critical_quota", "delivered_id"])
_BATCH_ROW = "(" + ", ".join(["?"] * len(_BATCH_COLUMNS)) + ")"
_NOW, _DELIVERED_ID = _BATCH_COLUMNS.index("now"), _BATCH_COLUMNS.index("delivered_id")
# An accepted seller message's guard (relay.filters.policy CommitGuard), asked
# of the rows before its own: those committed earlier, and those earlier in
# its batch (the trigger runs row by row, and a large message's audit row is
# written before the batch's rows: _insert_acceptances).  Each question is
# ORDER_FACTS' or critical_sent_since's, on the same indexes.
_ORDER_CHANGED = "the order changed"
_GUARD_FAILS = (
    "(NEW.guard_unsolicited IS NOT NULL AND NEW.guard_unsolicited <= (SELECT COUNT(*) FROM audit "
    " WHERE order_id = NEW.order_id AND direction = 'seller_to_buyer' AND verdict = 'accepted' AND unsolicited = 1 "
    " AND id < NEW.audit_id)) "
    "OR (NEW.guard_duplicate IS NOT NULL AND EXISTS(SELECT 1 FROM audit WHERE order_id = NEW.order_id "
    " AND direction = 'seller_to_buyer' AND verdict = 'accepted' AND fingerprint = NEW.fingerprint "
    " AND id < NEW.audit_id "
    " AND NOT EXISTS(SELECT 1 FROM queue q WHERE q.audit_id = audit.id AND q.state = 'failed'))) "
    "OR (NEW.guard_critical_since IS NOT NULL AND NEW.guard_critical_quota <= (SELECT COUNT(*) FROM audit a "
    " JOIN orders o ON o.id = a.order_id WHERE a.critical = 1 AND a.to_opted_out = 1 AND a.verdict = 'accepted' "
    " AND a.direction = 'seller_to_buyer' AND a.received_at >= NEW.guard_critical_since AND a.id < NEW.audit_id "
    " AND o.seller_id = (SELECT seller_id FROM orders WHERE id = NEW.order_id)))")
_CURRENT_PARTIES = "coalesce((SELECT version FROM parties_version), 0)"  # (as _parties_version reads it)
_BATCH_SCHEMA = (
    f"CREATE TEMP VIEW batch_row ({', '.join(_BATCH_COLUMNS)}) AS "
    f"SELECT {', '.join(['NULL'] * len(_BATCH_COLUMNS))} WHERE 0",
    "CREATE TEMP TRIGGER batch_row_accepted INSTEAD OF INSERT ON batch_row WHEN NEW.audit_id IS NOT NULL BEGIN "
    "SELECT RAISE(ABORT, 'the parties changed') "
    f"WHERE NEW.parties_version IS NOT NULL AND NEW.parties_version IS NOT {_CURRENT_PARTIES}; "
    f"INSERT INTO audit (id, {_AUDIT_COLUMNS}) "
    f"SELECT NEW.audit_id, {', '.join('NEW.' + name for name in _AUDIT_NAMES)} WHERE NEW.audit_written IS NULL; "
    "INSERT INTO message_ids (relay_id, original_id, order_id, direction, audit_id) "
    "SELECT NEW.relay_id, NEW.original_id, NEW.order_id, NEW.direction, NEW.audit_id "
    "WHERE NEW.relay_id IS NOT NULL; "
    f"INSERT INTO queue ({_QUEUE_COLUMNS}) VALUES "
    "(NEW.queue_id, NEW.audit_id, NEW.kind, NEW.mail_from, NEW.rcpt_to, NEW.bounce_token, NEW.notify, "
    "NEW.notify_alias, 'queued', NEW.now, NEW.now, NEW.now, NEW.claimed_by, NEW.claimed_until); "
    "END",
    # (a trigger of its own, so that a message without a guard, a buyer's, skips its program: 65,000
    # instructions a message in the statement of the accepted message, bench/instructions.py)
    "CREATE TEMP TRIGGER batch_row_guarded INSTEAD OF INSERT ON batch_row WHEN NEW.audit_id IS NOT NULL AND "
    "(NEW.guard_unsolicited IS NOT NULL OR NEW.guard_duplicate IS NOT NULL OR NEW.guard_critical_since IS NOT NULL) "
    f"BEGIN SELECT RAISE(ABORT, '{_ORDER_CHANGED}') WHERE {_GUARD_FAILS}; END",
    "CREATE TEMP TRIGGER batch_row_delivered INSTEAD OF INSERT ON batch_row WHEN NEW.delivered_id IS NOT NULL "
    f"BEGIN UPDATE queue SET {_DELIVERED.replace('?', 'NEW.now')} WHERE id = NEW.delivered_id; END")
_BATCH_START = (f"SELECT {_CURRENT_PARTIES}, (SELECT coalesce(max(id), 0) FROM audit), "
                "(SELECT coalesce(max(id), 0) FROM queue)")
# At most this many rows in one statement (31 values a row: SQLite binds up
# to 32,766); a larger batch runs the long way, in statements of this many.
ROWS_PER_STATEMENT = 128


def _batch_values(works: list, audit_base: int, queue_base: int, now: float) \
        -> tuple[list[Any], list[tuple[Any, Exception | None]]]:
    """The batch_row values of `works` (acceptances and delivered entries),
    the acceptances numbered from the bases on, and each work's outcome."""
    values: list[Any] = []
    outcomes: list[tuple[Any, Exception | None]] = []
    for work in works:
        if type(work) is _Delivered:
            row = [None] * len(_BATCH_COLUMNS)
            row[_NOW] = now
            for entry_id in work.entry_ids:
                row[_DELIVERED_ID] = entry_id
                values += row
            outcomes.append((None, None))
            continue
        audit_base, queue_base = audit_base + 1, queue_base + 1
        values += work.batch_row(audit_base, queue_base, now)
        outcomes.append(((audit_base, work.entry(queue_base, audit_base, now)), None))
    return values, outcomes


def _insert_batch_rows(db: sqlite3.Connection, values: list[Any]) -> None:
    """One INSERT into batch_row, padded to a power of two rows."""
    rows = len(values) // len(_BATCH_COLUMNS)
    if rows:
        padded = 1 << (rows - 1).bit_length()
        db.execute("INSERT INTO batch_row VALUES " + ", ".join([_BATCH_ROW] * padded),
                   values + [None] * (len(_BATCH_COLUMNS) * (padded - rows)))


def _commit_in_one_statement(db: sqlite3.Connection, works: list[Callable[[sqlite3.Connection], Any]]) \
        -> tuple[list[tuple[Any, Exception | None]], int] | None:
    """A batch made only of accepted messages and delivered entries (what a
    busy relay commits), written and committed by one INSERT into the
    batch_row view, which is its own transaction: the outcomes and the
    parties' version; or None for a batch this does not take, or one with a
    refusal in it (nothing is written then; _commit_in_turn runs it and
    finds which item to refuse).

    Why one statement: the writer thread lets go of the GIL for every
    statement it runs and must take it back from the event loop, which under
    load keeps it until the interpreter's switch interval (5 ms) makes it let
    go.  BEGIN, the reads, three INSERTs, an UPDATE and COMMIT each paid that
    while the batch held the write turn that the other worker process
    waited for.  Here the ids and the parties' version are read by one
    statement, and the INSERT does the rest.  Between the two no other relay
    process writes (the write turn is held); should another program write,
    the INSERT fails on an id taken or a version changed, and the batch runs
    the long way."""
    rows = 0
    for work in works:
        if type(work) is _Delivered:
            rows += len(work.entry_ids)
        elif type(work) is _Acceptance and not work.large:
            rows += 1
        else:
            return None
    if not works or rows > ROWS_PER_STATEMENT:
        return None
    version, audit_base, queue_base = db.execute(_BATCH_START).fetchone()
    if _stale_version(works, version) is not None:
        return None
    values, outcomes = _batch_values(works, audit_base, queue_base, time.time())
    try:
        _insert_batch_rows(db, values)
    except sqlite3.IntegrityError:
        return None
    return outcomes, version


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """From the writer thread: `callback(*args)` in the event loop, unless
    that loop is closed already (its callers are gone)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _drain(pending: collections.deque) -> list:
    """Everything in `pending` now, oldest first (another thread may append meanwhile)."""
    taken = []
    while True:
        try:
            taken.append(pending.popleft())
        except IndexError:
            return taken


# What one transaction's work may raise without failing the rest of its batch:
# a refusal of that item (a constraint, an order opened for another party, an
# unknown id), not a failure of the store.
ITEM_FAILURES = (sqlite3.IntegrityError, ValueError, NotFound, StaleParties, OrderChanged)


def _parties_version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT version FROM parties_version").fetchone()
    return row[0] if row is not None else 0  # (its row deleted by hand: no commit fails over it)


def _confirm_parties(db: sqlite3.Connection, version: int | None) -> None:
    """In the transaction that records a decision: the parties it was made
    on are still the parties (StaleParties if not)."""
    if version is not None and _parties_version(db) != version:
        raise StaleParties(version)


def _run_together(db: sqlite3.Connection, works: list[Callable[[sqlite3.Connection], Any]]) \
        -> tuple[list[tuple[Any, Exception | None]], Exception | None]:
    """Each item's (result, None) in one open transaction, and the refusal
    that stopped the run, if one did (the caller then rolls everything back).
    Acceptances that follow one another go in together (_Acceptance)."""
    outcomes: list[tuple[Any, Exception | None]] = []
    start = 0
    while start < len(works):
        stop = start + 1
        try:
            if type(works[start]) is _Acceptance:
                while stop < len(works) and type(works[stop]) is _Acceptance:
                    stop += 1
                outcomes.extend((result, None) for result in _insert_acceptances(db, works[start:stop]))
            else:
                outcomes.append((works[start](db), None))
        except ITEM_FAILURES as exc:
            return outcomes, exc
        start = stop
    return outcomes, None


def _run_isolated(db: sqlite3.Connection, works: list[Callable[[sqlite3.Connection], Any]]) \
        -> list[tuple[Any, Exception | None]]:
    """Each item in its own savepoint: a failed one's writes are undone, the
    others' kept."""
    outcomes: list[tuple[Any, Exception | None]] = []
    for work in works:
        db.execute("SAVEPOINT item")
        try:
            result = work(db)
        except ITEM_FAILURES as exc:
            db.execute("ROLLBACK TO item")
            outcomes.append((None, exc))
        else:
            outcomes.append((result, None))
        db.execute("RELEASE item")
    return outcomes


def _due_query(now: float, limit: int, exclude: Iterable[int]) -> tuple[str, tuple]:
    skip = tuple(exclude)
    sql = ("SELECT * FROM queue WHERE state IN ('queued', 'deferred') AND next_attempt <= ? "
           "AND claimed_until <= ?")
    if skip:
        sql += f" AND id NOT IN ({','.join('?' * len(skip))})"
    return sql + " ORDER BY next_attempt LIMIT ?", (now, now, *skip, limit)


def release_all_claims(path: str, busy_timeout: float = 10.0) -> int:
    """Drop every delivery claim in the store at `path`: called once as the
    service starts, before any of its processes delivers, so that messages a
    killed process had taken are sent at once and not a lease later.  Returns
    how many claims there were; a store that does not exist yet has none."""
    if not Path(path).exists():
        return 0
    conn = Store._open_writer(path, busy_timeout)
    try:
        with turn_at(path, busy_timeout):  # a writer like any other (relay.storelock)
            return conn.execute(f"UPDATE queue SET {_UNCLAIM} WHERE claimed_until > 0").rowcount
    finally:
        conn.close()


def _write_blob(db: sqlite3.Connection, table: str, column: str, rowid: int, data: bytes | Chunks) -> None:
    """Fill a zeroblob column with `data`, a slice at a time (views, not copies)."""
    with db.blobopen(table, column, rowid) as blob:
        for piece in buffers(data):
            with memoryview(piece) as view:
                for start in range(0, len(view), BLOB_SLICE):
                    blob.write(view[start:start + BLOB_SLICE])


def _order(row: sqlite3.Row) -> Order:
    return Order(row["id"], row["seller_id"], row["buyer_address"], row["buyer_name"],
                 row["buyer_alias"], row["seller_alias"])


def _queue_entry(row: sqlite3.Row) -> QueueEntry:
    return QueueEntry(row["id"], row["audit_id"], row["kind"], row["mail_from"], row["rcpt_to"], row["state"],
                      row["attempts"], row["created_at"], row["next_attempt"], row["last_error"],
                      row["notify"], row["notify_alias"])


def _audit_dict(row: sqlite3.Row) -> dict[str, Any]:
    verdict = row["verdict"]
    return {
        "id": row["id"],
        "received_at": row["received_at"],
        "order": row["order_id"],
        "direction": row["direction"],
        "sender": row["sender"],
        "recipient": row["recipient"],
        "verdict": verdict,
        "reasons": json.loads(row["reasons"]),
        "findings": json.loads(row["findings"]),
        "critical": bool(row["critical"]),
        "subject": row["subject"],
        "delivery": row["delivery"] if verdict == "accepted" else None,
    }


def _split_sql(script: str) -> list[str]:
    """The script's statements; a trigger's body keeps its own semicolons."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    return statements


def _configure_writer(conn: sqlite3.Connection, busy_timeout: float) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute(f"PRAGMA cache_size = {CACHE_SIZE}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode[0].lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch {mode[0]} journal to WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}")  # relay.checkpoint does it
    conn.execute("PRAGMA foreign_keys = ON")


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise sqlite3.OperationalError(
                f"the store has schema version {version}, newer than this relay knows ({len(MIGRATIONS)})")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _split_sql(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

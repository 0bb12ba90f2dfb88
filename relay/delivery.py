"""The outbound queue worker: hand queued messages to the next hop.

The queue lives in the store, so it survives restarts.  Delivery is
at-least-once: an entry is marked delivered only after the next hop said 250;
a crash in between re-sends it with the same Message-ID (THREATS #44).
Transient failures (4xx, timeouts, refused connections) are retried with
exponential back-off up to the configured lifetime (RFC 5321 section
4.5.4.1); permanent ones (5xx) fail at once.  The writer then gets a notice
that names only the alias and a generic status, never the other side's real
address nor the remote server's text (THREATS #37).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import time
from email.utils import formatdate
from pathlib import Path

import aiosmtplib

from relay import tokens
from relay.chunks import Chunks, buffers, joined
from relay.config import Settings, parse_hostport
from relay.logs import get_logger
from relay.parsing import parse_message
from relay.pipelining import PipelinedConnection, take_over
from relay.tasks import cancel_and_wait
from relay.store import CLAIM_LEASE, QueueEntry, StorageError, Store

# How long a stop waits for sends already under way (the next hop's answer to
# a message's data, most often milliseconds) before it cuts them off.
SEND_GRACE = 5.0
_SAFE_ADDRESS = re.compile(r"[^\s<>\r\n\0]*")


class PermanentFailure(Exception):
    pass


class TransientFailure(Exception):
    pass


def failure_notice(settings: Settings, to: str, alias: str) -> bytes:
    """A neutral delivery-failure notice: the alias and a generic status only."""
    domain = settings.relay.domain
    text = (
        f"Your message to {alias} could not be delivered.\r\n"
        "\r\n"
        "The relay gave up after the recipient's mail system refused it or could not be reached.\r\n"
        "No further attempts will be made. You may write again later.\r\n"
    )
    headers = (
        f"From: Mail Delivery System <mailer-daemon@{domain}>\r\n"
        f"To: {to}\r\n"
        f"Subject: Undeliverable: your message to {alias}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{tokens.token_hex(16)}@{settings.relay.hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
    )
    return (headers + "\r\n" + text).encode("ascii")


_ACTION_FAILED = re.compile(rb"^action[ \t]*:[ \t]*failed[ \t]*(?:\r?\n|$)", re.IGNORECASE | re.MULTILINE)
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")


def reports_failure(content: bytes) -> bool:
    """Does a message to a bounce address report that the relayed message
    failed: a delivery status report (RFC 3464, in a multipart/report of RFC
    6522) with a recipient whose Action is "failed"?  A vacation reply (RFC
    3834 sends it to the Return-Path), a report that a message is delayed,
    relayed or delivered, and anything else do not."""
    message = parse_message(content)
    if message.get_content_type() != "multipart/report":
        return False
    for part in message.walk():
        if part.get_content_type() in _STATUS_TYPES:
            try:
                fields = part.as_bytes()
            except Exception:  # (a report the generator cannot write back is no report to trust)
                continue
            if _ACTION_FAILED.search(fields):
                return True
    return False


class Delivery:
    """Delivers what this process accepted, from memory, and scans the queue
    for the rest (retries, notices, what a dead process had taken).

    Every entry it works on is claimed in the store under `owner` (see
    relay.store.CLAIM_LEASE), so with several worker processes each one
    delivers its own messages and no two send the same entry.  The claims
    are renewed while entries wait or are sent, and given back on stop."""

    def __init__(self, settings: Settings, store: Store, clock=time.time):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.log = get_logger()
        # "<pid>.": the primary gives a dead worker's claims back by its pid
        # (Store.release_claims_of_process).
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._in_flight: set[int] = set()
        # Handed over to the next hop, but the store could not record it yet
        # (disk full, locked): never re-send these while this process lives.
        self._unrecorded: set[int] = set()
        self._work: asyncio.Queue[tuple[QueueEntry, bytes | Chunks | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._recorder: asyncio.Task | None = None  # _record_delivered, while it runs
        self._sending: set[asyncio.Task] = set()  # workers in the middle of an entry
        self._stopping = False
        self._clients: list[aiosmtplib.SMTP | PipelinedConnection | None] = []

    def wake(self) -> None:
        self._wake.set()

    def submit(self, entry: QueueEntry, data: bytes | Chunks) -> None:
        """A message just committed, claimed by `owner`: deliver it now, from
        memory (no query, no read of its bytes; a large one in pieces, relay.chunks).
        `data` is the rewriter's output, whose line endings are all CRLF
        (relay.rewrite.normalize_line_endings): framing it for the next hop
        does not count them again (_deliver)."""
        if entry.id in self._in_flight:
            return
        self._in_flight.add(entry.id)
        self._work.put_nowait((entry, data))

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings

    async def start(self) -> None:
        n = max(1, self.settings.delivery.connections)
        self._clients = [None] * n
        self._tasks = [asyncio.create_task(self._scan_loop()), asyncio.create_task(self._renew_loop())]
        self._tasks += [asyncio.create_task(self._worker(i)) for i in range(n)]

    async def stop(self) -> None:
        """Stop taking entries; let sends under way finish (SEND_GRACE at
        most), record them, and give back every claim not sent.  A send cut
        off after the next hop had the data went back to the queue and out
        again after the restart: a duplicate made by a graceful stop alone."""
        self._stopping = True
        await cancel_and_wait([task for task in self._tasks if task not in self._sending])
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=SEND_GRACE)
        await cancel_and_wait(self._tasks)  # what still sends after the grace is cut off
        # What was handed over is recorded before the process goes: else its
        # claim would run out and another process would send it again.
        if self._recorder is not None and not self._recorder.done():
            await asyncio.wait([self._recorder])
        if self._unrecorded:
            await self._record_delivered()
        for client in self._clients:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass
        # Entries taken but not sent go back to the queue at once, for the
        # next start or another worker process (not a lease later).
        try:
            await self.store.release_claims(self.owner, self._in_flight)
        except StorageError:
            pass

    async def _scan_loop(self) -> None:
        while True:
            try:
                self._record_soon()
                due = await self.store.queue_claim(self.owner, self.clock(), limit=200,
                                                   exclude=self._in_flight | self._unrecorded)
                for entry in due:
                    if entry.id not in self._in_flight:
                        self._in_flight.add(entry.id)
                        self._work.put_nowait((entry, None))
            except StorageError as exc:
                self.log.warning("delivery.error", error="queue scan failed", detail=str(exc)[:200])
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.delivery.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _renew_loop(self) -> None:
        """Keep the claims on entries this process holds (waiting, being
        sent, or sent but not yet recorded) from running out."""
        while True:
            await asyncio.sleep(CLAIM_LEASE / 4)
            try:
                await self.store.renew_claims(self.owner, self._in_flight | self._unrecorded)
            except StorageError as exc:
                self.log.warning("delivery.error", error="claim renewal failed", detail=str(exc)[:200])

    async def _worker(self, slot: int) -> None:
        task = asyncio.current_task()
        while not self._stopping:
            entry, data = await self._work.get()
            self._sending.add(task)
            try:
                await self._deliver(entry, slot, data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one entry kill the worker
                self.log.error("delivery.error", queue_id=entry.id, error=type(exc).__name__)
            finally:
                self._in_flight.discard(entry.id)
                self._sending.discard(task)

    async def _deliver(self, entry: QueueEntry, slot: int, data: bytes | Chunks | None = None) -> None:
        crlf_known = data is not None  # handed over by submit(), not read back from the store
        if data is None:
            data = await self.store.queue_message(entry.id)
        if data is None:
            await self.store.mark_failed(entry.id, "message data missing", None)
            return
        try:
            _check_address(entry.mail_from, allow_empty=True)
            _check_address(entry.rcpt_to, allow_empty=False)
            if self.settings.delivery.mode == "maildir":
                await asyncio.get_running_loop().run_in_executor(None, self._to_maildir, entry, data)
            else:
                await self._to_smarthost(entry, data, slot, crlf_known)
        except PermanentFailure as exc:
            await self._fail(entry, str(exc))
            return
        except (TransientFailure, OSError, asyncio.TimeoutError, aiosmtplib.SMTPException) as exc:
            await self._defer(entry, str(exc) or type(exc).__name__)
            return
        self._record_soon(entry.id)
        self.log.info("delivery.sent", queue_id=entry.id, audit_id=entry.audit_id, kind=entry.kind,
                      attempts=entry.attempts + 1)

    def _record_soon(self, entry_id: int | None = None) -> None:
        """Have what was handed over recorded as delivered: every entry sent
        since the last record goes in one statement, by one task, and the
        worker that sent it takes its next entry meanwhile instead of waiting
        for the commit.  Until recorded, an entry stays in `_unrecorded`,
        claimed by this process (renewed by _renew_loop) and never sent again."""
        if entry_id is not None:
            self._unrecorded.add(entry_id)
        if self._unrecorded and (self._recorder is None or self._recorder.done()):
            self._recorder = asyncio.create_task(self._record_delivered())

    async def _record_delivered(self) -> None:
        while self._unrecorded:
            entry_ids = sorted(self._unrecorded)
            try:
                await self.store.mark_delivered_many(entry_ids)
            except StorageError as exc:  # the next queue scan tries again
                self.log.warning("delivery.error", error="recording deliveries failed", detail=str(exc)[:200])
                return
            self._unrecorded.difference_update(entry_ids)

    async def _defer(self, entry: QueueEntry, error: str) -> None:
        now = self.clock()
        d = self.settings.delivery
        if now - entry.created_at >= d.lifetime:
            await self._fail(entry, f"gave up after {int(now - entry.created_at)} s: {error}")
            return
        delay = min(d.retry_max, d.retry_initial * (2 ** min(entry.attempts, 30)))
        await self.store.mark_deferred(entry.id, error[:500], now + delay)
        self.log.info("delivery.deferred", queue_id=entry.id, audit_id=entry.audit_id, retry_in=round(delay, 3),
                      attempts=entry.attempts + 1)

    async def _fail(self, entry: QueueEntry, error: str) -> None:
        notice = None
        # Never bounce a bounce or a postmaster message (no loops, no backscatter).
        if entry.kind == "relay" and entry.notify and entry.notify_alias:
            notice = ("", entry.notify, failure_notice(self.settings, entry.notify, entry.notify_alias))
        await self.store.mark_failed(entry.id, error[:500], notice)
        self.log.warning("delivery.failed", queue_id=entry.id, audit_id=entry.audit_id, kind=entry.kind)
        if notice:
            self._wake.set()

    # ------------------------------------------------------------ targets

    def _to_maildir(self, entry: QueueEntry, data: bytes | Chunks) -> None:
        """Development target: one file per message in a Maildir, written
        atomically (tmp, fsync, rename into new/)."""
        root = Path(self.settings.delivery.maildir)
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        name = f"{int(time.time())}.Q{entry.id}R{secrets.token_hex(4)}.{socket.gethostname()}"
        envelope = f"Return-Path: <{entry.mail_from}>\r\nDelivered-To: {entry.rcpt_to}\r\n".encode()
        tmp = root / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(envelope)
            for piece in buffers(data):
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, root / "new" / name)
        dir_fd = os.open(root / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def _to_smarthost(self, entry: QueueEntry, data: bytes | Chunks, slot: int, crlf_known: bool) -> None:
        for attempt in (0, 1):
            client = self._clients[slot] if slot < len(self._clients) else None
            reused = client is not None and client.is_connected
            try:
                if not reused:
                    client = await self._connect()
                    if slot < len(self._clients):
                        self._clients[slot] = client
                await self._send(client, entry, data, crlf_known)
                return
            except aiosmtplib.SMTPServerDisconnected:
                self._drop(slot)
                if reused and attempt == 0:
                    continue  # an idle pooled connection was closed by the peer: retry fresh
                raise TransientFailure("connection lost")
            except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError, asyncio.TimeoutError) as exc:
                self._drop(slot)
                raise TransientFailure(type(exc).__name__) from exc

    async def _connect(self) -> aiosmtplib.SMTP | PipelinedConnection:
        from relay.tls import client_context

        host, port = parse_hostport("delivery.smarthost", self.settings.delivery.smarthost)
        tls = self.settings.delivery.tls
        # "required": the smarthost's chain must verify against delivery.cafile
        # (or the system store) and name the configured host; "opportunistic":
        # encrypt when offered, without authentication (RFC 7435).  A CA file
        # that cannot be read is an OSError: the entry is deferred, not lost.
        context = None
        if tls == "required":
            context = client_context(verify=True, cafile=self.settings.delivery.cafile or None)
        elif tls == "opportunistic":
            context = client_context(verify=False)
        client = aiosmtplib.SMTP(
            hostname=host, port=port, timeout=self.settings.delivery.timeout,
            local_hostname=self.settings.relay.hostname,
            start_tls=(None if tls == "opportunistic" else tls == "required"),
            validate_certs=(tls == "required"), tls_context=context)
        await client.connect()
        try:
            return await take_over(client)
        except BaseException:
            client.close()
            raise

    def _drop(self, slot: int) -> None:
        if slot < len(self._clients) and self._clients[slot] is not None:
            try:
                self._clients[slot].close()
            except Exception:
                pass
            self._clients[slot] = None

    async def _send(self, client: aiosmtplib.SMTP | PipelinedConnection, entry: QueueEntry,
                    data: bytes | Chunks, crlf_known: bool) -> None:
        try:
            if isinstance(client, aiosmtplib.SMTP):
                # aiosmtplib takes one bytes object (and makes its own framed copies of it).
                errors, _ = await client.sendmail(entry.mail_from, [entry.rcpt_to], joined(data))
            else:
                errors, _ = await client.sendmail(entry.mail_from, [entry.rcpt_to], data, crlf_known)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            await _reset(client)
            if codes and all(500 <= c < 600 for c in codes):
                raise PermanentFailure(f"recipient refused ({codes[0]})") from None
            raise TransientFailure(f"recipient deferred ({codes[0] if codes else '?'})") from None
        except aiosmtplib.SMTPResponseException as exc:
            await _reset(client)
            if 500 <= exc.code < 600:
                raise PermanentFailure(f"refused ({exc.code})") from None
            raise TransientFailure(f"deferred ({exc.code})") from None
        if errors:
            code = next(iter(errors.values())).code
            if 500 <= code < 600:
                raise PermanentFailure(f"recipient refused ({code})")
            raise TransientFailure(f"recipient deferred ({code})")


async def _reset(client: aiosmtplib.SMTP | PipelinedConnection) -> None:
    try:
        if client.is_connected:
            await client.rset()
    except Exception:
        client.close()


def _check_address(address: str, allow_empty: bool) -> None:
    """Re-validate stored addresses before they reach the SMTP library
    (CR/LF in an address is a command injection, GHSA-v3q9-hj7j-63hq)."""
    if not address and allow_empty:
        return
    if not address or not _SAFE_ADDRESS.fullmatch(address) or "@" not in address:
        raise PermanentFailure("invalid stored address")
    if not address.isascii():  # THREATS #57: refused at `order open` since; an older store may hold one
        raise PermanentFailure("the address needs SMTPUTF8, which the relay does not use")

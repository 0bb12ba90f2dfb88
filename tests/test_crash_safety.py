"""kill -9 under load: every message that got 250 is delivered, audited and whole.

Ten client sessions send over a thousand distinct messages while the relay is
killed with SIGKILL ten times at random moments and restarted.  Clients act
like real MTAs: whatever did not get 250 is sent again.  Afterwards every
accepted message reached the downstream at least once, duplicates carry the
same relay Message-ID (at-least-once, THREATS #44) and are counted, and the
store holds no half-written row.
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
import time

import aiosmtplib

MESSAGES = 1000
SESSIONS = 10
KILLS = 10
TOKEN = re.compile(rb"crash-token-(\d+)")


async def test_sigkill_ten_times_under_load_loses_nothing(relay_factory, sink):
    relay = await relay_factory({"delivery": {"connections": 4}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test", "Bob")
    seller_alias = aliases["seller_alias"]  # buyer -> seller: no content rules, only rewriting
    accepted: set[int] = set()
    pending = list(range(MESSAGES))
    random.Random(7).shuffle(pending)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in pending:
        queue.put_nowait(n)
    done = asyncio.Event()
    deadline = time.monotonic() + 240

    async def client(worker: int) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            n = await queue.get()
            data = (f"From: bob@buyer.test\r\nTo: {seller_alias}\r\nSubject: question {n}\r\n"
                    f"Message-ID: <q{n}@buyer.test>\r\n\r\nHello, crash-token-{n} from session {worker}.\r\n")
            try:
                smtp = aiosmtplib.SMTP(hostname=relay.mx[0], port=relay.mx[1], timeout=10)
                await smtp.connect()
                errors, reply = await smtp.sendmail("bob@buyer.test", [seller_alias], data)
                accepted.add(n)
                try:
                    await smtp.quit()
                except aiosmtplib.SMTPException:
                    pass
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                queue.put_nowait(n)  # no 250 seen: send it again, as an MTA would
                await asyncio.sleep(0.05)
        done.set()

    async def killer() -> None:
        rng = random.Random(11)
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            await relay.kill()
            await relay.start()

    clients = [asyncio.create_task(client(i)) for i in range(SESSIONS)]
    await killer()
    await asyncio.gather(*clients)
    assert len(accepted) == MESSAGES, f"only {len(accepted)} accepted before the deadline"

    # Every accepted message arrives downstream (at least once).
    await sink.wait_for_count(MESSAGES, timeout=120)
    deadline = time.monotonic() + 60
    while True:
        delivered_tokens = {int(m.group(1)) for d in sink.messages for m in [TOKEN.search(d.data)] if m}
        if accepted <= delivered_tokens or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    missing = accepted - delivered_tokens
    assert not missing, f"{len(missing)} accepted messages never delivered"

    # Duplicates are recognisable: one relay Message-ID per stored exchange.
    by_id: dict[bytes, int] = {}
    for d in sink.messages:
        mid = re.search(rb"Message-ID: (<[^>]+>)", d.data).group(1)
        by_id[mid] = by_id.get(mid, 0) + 1
    redelivered = sum(c - 1 for c in by_id.values())
    print(f"\ncrash test: {MESSAGES} messages, {KILLS} SIGKILLs, {len(sink.messages)} deliveries, "
          f"{redelivered} re-deliveries of the same Message-ID, "
          f"{len(by_id) - MESSAGES} extra exchanges from clients re-sending after a lost 250")

    # Nothing half-written: every accepted audit row is whole and queued.
    await relay.stop()
    db = sqlite3.connect(relay.config["store"]["path"])
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT id, inbound, outbound FROM audit WHERE verdict = 'accepted'").fetchall()
        audited = {int(TOKEN.search(r[1]).group(1)) for r in rows}
        assert accepted <= audited
        assert all(r[1] and r[2] for r in rows)
        orphans = db.execute("SELECT COUNT(*) FROM audit a LEFT JOIN queue q ON q.audit_id = a.id "
                             "WHERE a.verdict = 'accepted' AND q.id IS NULL").fetchone()[0]
        assert orphans == 0
    finally:
        db.close()

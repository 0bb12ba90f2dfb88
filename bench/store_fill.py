"""Fill the relay's SQLite file directly (sqlite3 executemany), for scale runs.

The schema comes from the relay itself: the file is created by `relay seller
add` first, so its migrations ran; here we only add rows, with the columns
relay/store.py writes.  Orders get aliases minted by relay.aliases (so they
pass `looks_like_alias`); audit rows come with the Message-ID map and queue
rows a real store accumulates (one of each per accepted message).
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from loadgen import OrderRef

BATCH = 20_000


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # bulk load only; the relay itself runs FULL
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def _alias_minter():
    from relay.aliases import ALIAS_ALPHABET, ALIAS_LENGTH
    alphabet = ALIAS_ALPHABET
    # Seeded from the OS, but not SystemRandom per character: a million aliases in seconds.
    rand = random.Random(secrets.randbits(128))

    def mint() -> str:
        return "".join(rand.choices(alphabet, k=ALIAS_LENGTH))
    return mint


def add_orders(db: Path, n: int, sellers: list[tuple[str, str, str]], prefix: str, domain: str,
               keep: int = 5000) -> tuple[list[OrderRef], int]:
    """Insert `n` orders spread over `sellers` [(id, name, email)]; returns a random sample of at
    most `keep` of them (for the load) and how many were inserted."""
    mint = _alias_minter()
    conn = _connect(db)
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rng = random.Random(7)
    sample: list[OrderRef] = []
    seen = 0
    try:
        for start in range(0, n, BATCH):
            rows = []
            for i in range(start, min(n, start + BATCH)):
                sid, sname, semail = sellers[i % len(sellers)]
                order_id = f"{prefix}-{i:07d}-{rng.randrange(10**7):07d}"
                buyer = f"buyer{i}@buyer.test"
                ba, sa = mint(), mint()
                rows.append((order_id, sid, buyer, f"Buyer {i}", ba, sa, now))
                seen += 1
                ref = OrderRef(order_id, sid, sname, semail, buyer, f"{ba}@{domain}", f"{sa}@{domain}")
                if len(sample) < keep:
                    sample.append(ref)
                else:  # reservoir sampling: the load hits orders anywhere in the table
                    j = rng.randrange(seen)
                    if j < keep:
                        sample[j] = ref
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO orders (id, seller_id, buyer_address, buyer_name, buyer_alias, seller_alias, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sample, n


def add_history(db: Path, n: int, domain: str, order_ids: list[str] | None = None, inbound_size: int = 2300,
                outbound_size: int = 2500) -> int:
    """Insert `n` accepted exchanges (audit row + Message-ID map + delivered queue row), two per order
    (one each way, so the buyer has written), over `order_ids` or every order in the store, with
    message bodies of the size the 2 KB runs store."""
    conn = _connect(db)
    try:
        if order_ids is None:
            orders = conn.execute("SELECT id, buyer_address, buyer_alias, seller_alias FROM orders").fetchall()
        else:
            orders = []
            for start in range(0, len(order_ids), 500):
                chunk = order_ids[start:start + 500]
                orders += conn.execute(
                    "SELECT id, buyer_address, buyer_alias, seller_alias FROM orders WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
        if not orders:
            raise RuntimeError("no orders to attach history to")
        base = datetime.now(timezone.utc) - timedelta(days=60)
        inbound = b"X" * inbound_size
        outbound = b"Y" * outbound_size
        next_audit = (conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0]) + 1
        t_now = time.time()
        for start in range(0, n, BATCH):
            audit_rows, mid_rows, queue_rows = [], [], []
            for k in range(start, min(n, start + BATCH)):
                order_id, buyer, buyer_alias, seller_alias = orders[(k // 2) % len(orders)]
                seller_to_buyer = k % 2 == 0
                aid = next_audit + k
                received = (base + timedelta(seconds=k * 5)).isoformat(timespec="milliseconds")
                received = received.replace("+00:00", "Z")
                direction = "seller_to_buyer" if seller_to_buyer else "buyer_to_seller"
                sender = "seller@shop.example" if seller_to_buyer else buyer
                recipient = f"{buyer_alias if seller_to_buyer else seller_alias}@{domain}"
                audit_rows.append((aid, received, order_id, direction, sender, recipient, "accepted", "[]", "[]",
                                   0, 1 if seller_to_buyer else 0, 0, f"history {k}",
                                   secrets.token_hex(16) if seller_to_buyer else None, inbound, outbound))
                mid_rows.append((f"<{secrets.token_hex(16)}@mx.relay.example>", f"<h{k}@orig.example>", order_id,
                                 direction, aid))
                token = secrets.token_hex(12)
                queue_rows.append((aid, "relay", f"bounces-{token}@{domain}", sender, token, "delivered", 1,
                                   t_now - 86400, t_now - 86400, t_now - 86400))
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO audit (id, received_at, order_id, direction, sender, recipient, verdict, reasons, "
                "findings, critical, unsolicited, to_opted_out, subject, fingerprint, inbound, outbound) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", audit_rows)
            conn.executemany(
                "INSERT INTO message_ids (relay_id, original_id, order_id, direction, audit_id) VALUES (?, ?, ?, ?, ?)",
                mid_rows)
            conn.executemany(
                "INSERT INTO queue (audit_id, kind, mail_from, rcpt_to, bounce_token, state, attempts, created_at, "
                "next_attempt, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", queue_rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return n


def table_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db, timeout=60)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("orders", "audit", "queue", "message_ids")}
    finally:
        conn.close()


def queue_pending(db: Path) -> int:
    """Entries the relay still has to deliver (read-only peek; WAL lets it run beside the daemon)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM queue WHERE state IN ('queued', 'deferred')").fetchone()[0]
    finally:
        conn.close()

"""What the filters ask the store about an order, on a large store: `python bench/order_facts.py`.

Store.order_history runs relay.store.ORDER_FACTS for every seller message
(has the buyer written, unsolicited messages so far, the fingerprints of the
seller's earlier texts).  This builds a store with the relay's schema and
`--audit` audit rows over half as many orders (bench/store_fill.py, about 80 s
for a million), gives `--orders` of its orders k seller messages each,
interleaved as conversations are (so an order's rows lie on different pages),
and times the query per order: on a fresh connection (cold: nothing in
SQLite's cache, the file in the operating system's) and once more (warm).
Each k is timed with the index the relay has (audit_order_facts, schema 5)
and with the one before it (audit_order: each seller message also a read of
its row in the audit table).

Under load the cold figure is the one that counts: a connection's cache is
dropped whenever another connection commits, and the relay commits many
times a second.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import store_fill  # noqa: E402
from relay.store import MIGRATIONS, ORDER_FACTS, _migrate, _split_sql  # noqa: E402

SELLERS = [(f"s{i}", f"Shop {i}", f"seller{i}@shop{i}.example") for i in range(20)]
def _create_index(name: str) -> str:
    """The relay's own CREATE INDEX statement for `name`, from its migrations."""
    for script in MIGRATIONS:
        for statement in _split_sql(script):
            if statement.startswith(f"CREATE INDEX {name} "):
                return statement
    raise LookupError(name)


# The index the relay reads an order's facts from (schema 5), and the one before it.
INDEXES = {name: _create_index(name) for name in ("audit_order_facts", "audit_order")}


def build(path: Path, audit_rows: int, keep: int) -> list[str]:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    _migrate(conn)
    for sid, name, email in SELLERS:
        conn.execute("INSERT INTO sellers VALUES (?, ?, '2026-01-01T00:00:00Z')", (sid, name))
        conn.execute("INSERT INTO seller_emails VALUES (?, ?, 0)", (sid, email))
    conn.commit()
    conn.close()
    sample, _ = store_fill.add_orders(path, audit_rows // 2, SELLERS, prefix="of", domain="relay.example", keep=keep)
    store_fill.add_history(path, audit_rows, "relay.example")
    return [o.order_id for o in sample]


def add_seller_messages(path: Path, order_ids: list[str], k: int) -> None:
    """Seller messages until each order has k (history gave each one already)."""
    conn = sqlite3.connect(path, isolation_level=None)
    have = conn.execute("SELECT COUNT(*) FROM audit WHERE order_id = ? AND direction = 'seller_to_buyer'",
                        (order_ids[0],)).fetchone()[0]
    conn.execute("BEGIN")
    for _ in range(k - have):
        for order_id in order_ids:
            conn.execute(
                "INSERT INTO audit (received_at, order_id, direction, sender, recipient, verdict, reasons, findings, "
                "unsolicited, fingerprint, inbound, outbound) VALUES ('2026-11-01T00:00:00Z', ?, 'seller_to_buyer', "
                "'s@shop.example', 'b@relay.example', 'accepted', '[]', '[]', 0, ?, ?, ?)",
                (order_id, secrets.token_hex(32), b"X" * 2300, b"Y" * 2500))
    conn.execute("COMMIT")
    conn.close()


def use_index(path: Path, name: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for other in INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {other}")
    conn.execute(INDEXES[name])
    conn.close()


def time_queries(path: Path, order_ids: list[str]) -> tuple[float, float]:
    """Microseconds of CPU a query: cold (fresh connection), then warm."""
    ids = list(order_ids)
    random.Random(2).shuffle(ids)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA cache_size = -32768")  # the relay's
    out = []
    for _ in range(2):
        t0 = time.process_time()
        for order_id in ids:
            conn.execute(ORDER_FACTS, {"o": order_id, "b": "buyer@buyer.test"}).fetchone()
        out.append((time.process_time() - t0) * 1e6 / len(ids))
    conn.close()
    return out[0], out[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--messages", type=int, nargs="+", default=[2, 10, 30])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="order-facts-") as directory:
        path = Path(directory) / "relay.sqlite3"
        t0 = time.monotonic()
        order_ids = build(path, args.audit, args.orders)
        print(f"store: {store_fill.table_counts(path)}, {path.stat().st_size / 1e9:.2f} GB, "
              f"built in {time.monotonic() - t0:.0f} s")
        results = []
        for k in sorted(args.messages):
            add_seller_messages(path, order_ids, k)
            for name in INDEXES:
                use_index(path, name)
                cold, warm = time_queries(path, order_ids)
                results.append({"seller_messages": k, "index": name, "cold_us": round(cold), "warm_us": round(warm)})
                print(f"{k:3} seller messages an order, {name:<17}: cold {cold:5.0f} us, warm {warm:5.0f} us a query")
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

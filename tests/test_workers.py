"""listen.workers: several processes share the MX port (SO_REUSEPORT); each
delivers what it accepted, none sends a message twice; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import smtplib

import aiosmtplib

from conftest import free_port
from test_durability_and_delivery import queue


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []


async def test_two_workers_accept_and_deliver_everything(relay_factory, sink):
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    alias = relay.open_order("o1", "s1", "bob@buyer.test")["seller_alias"]
    children = child_pids(relay.proc.pid)
    assert len(children) == 1, children
    count = 60

    async def send(n: int) -> None:
        data = (f"From: bob@buyer.test\r\nTo: {alias}\r\nSubject: q{n}\r\n\r\nQuestion number {n}.\r\n")
        client = aiosmtplib.SMTP(hostname=relay.mx[0], port=relay.mx[1], timeout=30)
        await client.connect()
        await client.sendmail("bob@buyer.test", [alias], data)
        await client.quit()

    for batch in range(0, count, 10):
        await asyncio.gather(*(send(n) for n in range(batch, batch + 10)))
    delivered = await sink.wait_for_count(count, timeout=30)
    assert sorted(int(d.data.split(b"Subject: q")[1].split(b"\r\n")[0]) for d in delivered) == list(range(count))
    rows = relay.audit("o1")
    assert len(rows) == count and all(r["verdict"] == "accepted" for r in rows)
    assert await relay.stop(timeout=60) == 0
    assert len(sink.messages) == count  # nothing sent twice by the two deliverers
    assert {e["state"] for e in queue(relay)} == {"delivered"}
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


async def test_more_workers_need_a_fixed_port(tmp_path):
    import subprocess
    import sys
    config = tmp_path / "c.toml"
    config.write_text('[listen]\nmx = "127.0.0.1:0"\nworkers = 2\n')
    result = subprocess.run([sys.executable, "-m", "relay", "--config", str(config), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "listen.workers" in result.stderr

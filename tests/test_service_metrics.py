"""Metrics and health over HTTP from a real `relay serve`, after real traffic."""

from __future__ import annotations

import asyncio
import smtplib

from service_support import AsyncSMTP, fetch, sample, scrape_until, seller_message, started


async def test_metrics_after_traffic(relay_factory):
    relay = await relay_factory({"metrics": {"listen": "127.0.0.1:0"}})
    base = f"http://{started(relay)['metrics']}"
    assert await asyncio.to_thread(fetch, base + "/healthz") == (200, "ok\n")
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")

    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.sendmail("sam@shop.example", [aliases["buyer_alias"]],
                        seller_message("sam@shop.example", aliases["buyer_alias"]))
        for rcpt, code in (("nobody@relay.example", 550), ("x@elsewhere.example", 550),
                           (aliases["buyer_alias"], 550)):
            client.rset()
            client.mail("intruder@evil.example")
            assert client.rcpt(rcpt)[0] == code
    await relay.sink.wait_for_count(1)
    open_session = await AsyncSMTP.open(*relay.mx)

    def settled(text: str) -> bool:
        return sample(text, "relay_deliveries_total", 'outcome="delivered"') == 1.0 and \
            sample(text, "relay_queue_depth") == 0.0 and sample(text, "relay_sessions_open") == 1.0

    text = await scrape_until(base + "/metrics", settled)
    assert sample(text, "relay_messages_accepted_total") == 1.0
    for reason in ("unknown_recipient", "foreign_domain", "sender_not_authorized"):
        assert sample(text, "relay_messages_rejected_total", f'reason="{reason}"') == 1.0, reason
    assert sample(text, "relay_deliveries_total", 'outcome="deferred"') == 0.0
    assert sample(text, "relay_transaction_seconds_count") == 1.0
    # Two exchanges wrote an audit row before their reply: the message, and the stranger refused at
    # RCPT to the order's alias (an unknown or foreign address belongs to no order: nothing to audit).
    assert sample(text, "relay_store_commits_total") >= 2.0
    assert sample(text, "relay_store_commit_wait_seconds_count") == 2.0
    assert sample(text, "relay_store_commit_wait_seconds_sum") > 0
    assert sample(text, "relay_queue_oldest_age_seconds") == 0.0
    assert "bob@buyer.test" not in text and "sam@shop.example" not in text and "127.0.0.1" not in text
    open_session.close()

    # /healthz turns 503 once shutdown begins (the drain waits for a client in DATA).
    busy = await AsyncSMTP.open(*relay.mx)
    await busy.cmd("EHLO shop.example")
    await busy.cmd("MAIL FROM:<sam@shop.example>")
    await busy.cmd(f"RCPT TO:<{aliases['buyer_alias']}>")
    assert (await busy.cmd("DATA")).startswith("354")
    relay.proc.terminate()
    deadline = asyncio.get_running_loop().time() + 10
    while (status := (await asyncio.to_thread(fetch, base + "/healthz"))[0]) == 200:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert status == 503
    busy.close()


async def test_metrics_endpoint_is_off_by_default(relay_factory):
    relay = await relay_factory()
    assert started(relay)["metrics"] is None

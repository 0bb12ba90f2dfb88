"""Session and resource guards (THREATS section B, #33) through a real process:
connection caps at accept time, the session and command time caps, the error
budget, the transaction and NOOP budgets, and the directory-harvest tarpit."""

from __future__ import annotations

import asyncio
import time

import pytest

from service_support import AsyncSMTP

# How far the relay's timers may run ahead of this process's clock (see
# test_the_command_timeout_runs_from_the_last_command).
CLOCK_SLACK = 0.005


@pytest.fixture
async def harvest_relay(relay_factory):
    relay = await relay_factory({"limits": {"harvest_limit": 4, "harvest_window": 60.0, "tarpit_free": 1,
                                            "tarpit_step": 0.2, "tarpit_max": 0.2, "error_limit": 100}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    return relay, aliases


async def test_connection_caps_per_ip_and_in_total(relay_factory):
    relay = await relay_factory({"limits": {"max_connections": 3, "max_connections_per_ip": 2}})
    host, port = relay.mx
    a = await AsyncSMTP.open(host, port)
    b = await AsyncSMTP.open(host, port)
    assert a.banner.startswith("220") and b.banner.startswith("220")
    third = await AsyncSMTP.open(host, port)
    assert third.banner.startswith("421 4.7.0"), third.banner
    assert await third.closed()
    other = await AsyncSMTP.open(host, port, source="127.0.0.2")  # another client: its own per-IP budget
    assert other.banner.startswith("220")
    over = await AsyncSMTP.open(host, port, source="127.0.0.3")  # the global cap of 3
    assert over.banner.startswith("421 4.7.0")
    assert await over.closed()

    assert (await a.cmd("QUIT")).startswith("221")
    assert await a.closed()
    # The slot comes back once the relay has seen the close.
    deadline = time.monotonic() + 5
    while True:
        again = await AsyncSMTP.open(host, port)
        if again.banner.startswith("220"):
            break
        assert time.monotonic() < deadline, "the connection slot was never released"
        await asyncio.sleep(0.05)
    assert (await again.cmd("EHLO client.example")).startswith("250")
    reasons = {e["reason"] for e in relay.events("session.refused")}
    assert reasons == {"too_many_connections"}


async def test_session_time_cap(relay_factory):
    relay = await relay_factory({"limits": {"session_timeout": 0.3}})
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO client.example")).startswith("250")
    # However busy the client keeps the session, it ends at the cap.
    reply = await client.reply(timeout=5)
    assert reply.startswith("421 4.4.2"), reply
    assert await client.closed()


async def test_command_timeout_says_421_before_closing(relay_factory):
    relay = await relay_factory({"limits": {"command_timeout": 0.3}})
    client = await AsyncSMTP.open(*relay.mx)
    reply = await client.reply(timeout=5)
    assert reply.startswith("421 4.4.2"), reply
    assert await client.closed()


async def test_the_command_timeout_runs_from_the_last_command(relay_factory):
    relay = await relay_factory({"limits": {"command_timeout": 0.4, "command_limit": 100}})
    client = await AsyncSMTP.open(*relay.mx)
    # Commands every 0.15 s for three times the timeout: never cut off.
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        assert (await client.cmd("NOOP")).startswith("250")
        await asyncio.sleep(0.15)
    last = time.monotonic()
    assert (await client.cmd("NOOP")).startswith("250")
    reply = await client.reply(timeout=5)
    assert reply.startswith("421 4.4.2"), reply
    # From the last command, not an earlier one (those came 0.15 s apart).  The
    # relay's clock is the event loop's: uvloop reads it in milliseconds, once
    # per pass of the loop, so its deadline can fall a fraction of a millisecond
    # before this client's clock says 0.4 s (seen in CI: 0.39983 s).
    assert time.monotonic() - last >= 0.4 - CLOCK_SLACK
    assert await client.closed()


async def test_error_budget(relay_factory):
    relay = await relay_factory({"limits": {"error_limit": 3}})
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO client.example")).startswith("250")
    assert (await client.cmd("RCPT TO:<a@relay.example>")).startswith("503")
    assert (await client.cmd("MAIL FROM:<a@b@c>")).startswith("5")
    assert (await client.cmd("RCPT TO:<a@relay.example>")).startswith("503")
    assert (await client.reply()).startswith("421 4.7.0")
    assert await client.closed()


async def test_transactions_per_session_cap(relay_factory):
    relay = await relay_factory({"limits": {"transactions": 2}})
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO client.example")).startswith("250")
    for _ in range(2):
        assert (await client.cmd("MAIL FROM:<a@client.example>")).startswith("250")
        assert (await client.cmd("RSET")).startswith("250")
    assert (await client.cmd("MAIL FROM:<a@client.example>")).startswith("421 4.7.0")
    assert await client.closed()


async def test_noop_budget(relay_factory):
    relay = await relay_factory({"limits": {"command_limit": 2}})
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("NOOP")).startswith("250")
    assert (await client.cmd("NOOP")).startswith("250")
    assert (await client.cmd("NOOP")).startswith("421 4.7.0")
    assert await client.closed()


async def test_directory_harvest_is_tarpitted_then_cut_off(harvest_relay):
    relay, aliases = harvest_relay
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO client.example")).startswith("250")
    assert (await client.cmd("MAIL FROM:<harvester@evil.example>")).startswith("250")
    timings = []
    for n in range(4):
        start = time.monotonic()
        reply = await client.cmd(f"RCPT TO:<guess{n}@relay.example>")
        timings.append(time.monotonic() - start)
        assert reply.startswith("550 5.1.1"), reply
    assert timings[0] < 0.2  # the first mistake is free
    assert all(t >= 0.15 for t in timings[1:]), timings  # then each answer waits
    assert (await client.cmd("RCPT TO:<guess5@relay.example>")).startswith("421 4.7.0")
    assert await client.closed()

    # The same client stays cut off for unknown recipients on a new connection ...
    again = await AsyncSMTP.open(*relay.mx)
    await again.cmd("EHLO client.example")
    await again.cmd("MAIL FROM:<harvester@evil.example>")
    assert (await again.cmd("RCPT TO:<guess6@relay.example>")).startswith("421 4.7.0")
    # ... while real mail from that address and other clients' mistakes are unaffected.
    fresh = await AsyncSMTP.open(*relay.mx)
    await fresh.cmd("EHLO shop.example")
    await fresh.cmd("MAIL FROM:<sam@shop.example>")
    assert (await fresh.cmd(f"RCPT TO:<{aliases['buyer_alias']}>")).startswith("250")
    other = await AsyncSMTP.open(*relay.mx, source="127.0.0.2")
    await other.cmd("EHLO other.example")
    await other.cmd("MAIL FROM:<a@other.example>")
    assert (await other.cmd("RCPT TO:<typo@relay.example>")).startswith("550 5.1.1")



async def _start_data(relay) -> AsyncSMTP:
    """A seller's session, standing just after the 354 of DATA."""
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO client.example")).startswith("250")
    assert (await client.cmd("MAIL FROM:<sam@shop.example>")).startswith("250")
    assert (await client.cmd(f"RCPT TO:<{aliases['buyer_alias']}>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    client.send(f"From: sam@shop.example\r\nTo: {aliases['buyer_alias']}\r\nSubject: pace\r\n\r\n")
    return client


async def test_slow_loris_in_data_is_cut_off_below_the_minimum_rate(relay_factory):
    relay = await relay_factory({"limits": {"command_timeout": 0.5, "min_data_rate": 1000}})
    client = await _start_data(relay)
    # Never silent for command_timeout, but ~100 bytes a second: a slow-loris.
    started = time.monotonic()
    reply = None
    while time.monotonic() - started < 10:
        client.send(b"x" * 19 + b"\n")
        try:
            reply = await client.reply(timeout=0.2)
            break
        except asyncio.TimeoutError:
            continue
    assert reply is not None and reply.startswith("421 4.4.2"), reply
    assert await client.closed()
    assert "data_rate" in {e["reason"] for e in relay.events("session.refused")}
    assert relay.audit() == []  # nothing half-stored


async def test_silence_in_data_is_measured_from_the_last_bytes(relay_factory):
    relay = await relay_factory({"limits": {"command_timeout": 0.5, "min_data_rate": 0}})
    client = await _start_data(relay)
    reply = await client.reply(timeout=5)
    assert reply.startswith("421 4.4.2"), reply
    assert await client.closed()
    assert relay.audit() == []  # nothing half-stored


async def test_a_steady_sender_may_take_longer_than_the_command_timeout(relay_factory):
    relay = await relay_factory({"limits": {"command_timeout": 0.4, "min_data_rate": 100}})
    client = await _start_data(relay)
    # About 2 s of DATA at ~4 KB/s: five times the command timeout, never silent for it.
    line = b"Thank you for your order, it ships on Monday morning.\r\n"
    for _ in range(20):
        client.send(line * 8)
        await asyncio.sleep(0.1)
    reply = await client.cmd(".")
    assert reply.startswith("250"), reply

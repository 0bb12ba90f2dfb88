"""The daemon as a system service: sd_notify, SIGHUP reload, SIGTERM drain.

Every test runs `relay serve` as a real process (conftest's relay_factory)."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import smtplib
import socket

import pytest

from conftest import free_port
from service_support import AsyncSMTP, seller_message, wait_for_event


def send(relay, mail_from: str, to: str, data: str) -> dict:
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        return client.sendmail(mail_from, [to], data)


# ------------------------------------------------------------------ sd_notify

class NotifySocket:
    """The service manager's end of $NOTIFY_SOCKET: an abstract datagram socket."""

    def __init__(self):
        self.name = f"relay-test-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.received: list[str] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    async def wait_for(self, state: str, timeout: float = 15) -> list[str]:
        """Read datagrams until one holds the line `state`; returns all read so far."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = (await loop.sock_recv(self.sock, 4096)).decode()
                self.received.append(data)
                if state in data.split("\n"):
                    return self.received

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket(monkeypatch):
    ns = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    yield ns
    ns.close()


async def test_notify_protocol_ready_watchdog_reload_stopping(relay_factory, notify_socket):
    port = free_port()
    starting = asyncio.create_task(relay_factory({"listen": {"mx": f"127.0.0.1:{port}"}}))
    await notify_socket.wait_for("READY=1")
    # READY=1 came after the listener was bound: a connection made right now gets the banner.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(100).startswith(b"220 ")
    relay = await starting
    await notify_socket.wait_for("WATCHDOG=1")

    notify_socket.received.clear()
    relay.proc.send_signal(signal.SIGHUP)
    states = await notify_socket.wait_for("READY=1")
    lines = [line for data in states for line in data.split("\n") if line != "WATCHDOG=1"]
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and lines[-1] == "READY=1"
    await wait_for_event(relay, "relay.reloaded")

    notify_socket.received.clear()
    stopping = asyncio.create_task(notify_socket.wait_for("STOPPING=1"))
    assert await relay.stop() == 0
    await stopping


# --------------------------------------------------------------------- SIGHUP

async def test_sighup_applies_a_new_filter_limit_without_dropping_sessions(scenario):
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias,
         seller_message(scenario.seller_email, scenario.buyer_alias, "Your parcel leaves tomorrow.", mid="a"))
    session = await AsyncSMTP.open(*relay.mx)
    assert (await session.cmd("EHLO shop.example")).startswith("250")

    relay.rewrite_config({"filters": {"unsolicited_limit": 1}})
    relay.proc.send_signal(signal.SIGHUP)
    await wait_for_event(relay, "relay.reloaded")

    # The session opened before the reload is still there and sees the new limit.
    assert (await session.cmd(f"MAIL FROM:<{scenario.seller_email}>")).startswith("250")
    assert (await session.cmd(f"RCPT TO:<{scenario.buyer_alias}>")).startswith("250")
    assert (await session.cmd("DATA")).startswith("354")
    body = seller_message(scenario.seller_email, scenario.buyer_alias, "A second note about the parcel.", mid="b")
    reply = await session.cmd(body + ".")
    assert reply.startswith("550 5.7.1 [too_many_messages]"), reply
    assert (await session.cmd("QUIT")).startswith("221")
    assert [r["reasons"] for r in relay.audit(scenario.order)] == [[], ["too_many_messages"]]


@pytest.mark.parametrize("broken", ["[filters]\nunsolicited_limit = 1\n[relay\n",
                                    "[filters]\nunsolicited_limit = 1\nno_such_key = 2\n",
                                    '[filters]\nunsolicited_limit = 1\n[tls]\ncert = "missing.pem"\nkey = "k.pem"\n'])
async def test_broken_config_on_sighup_is_refused_and_the_old_one_stays(scenario, broken):
    relay = scenario.relay
    send(relay, scenario.seller_email, scenario.buyer_alias,
         seller_message(scenario.seller_email, scenario.buyer_alias, "Your parcel leaves tomorrow.", mid="a"))
    good = relay.config_path.read_text()
    relay.config_path.write_text(good + "\n" + broken)
    relay.proc.send_signal(signal.SIGHUP)
    (failed,) = await wait_for_event(relay, "relay.reload_failed")
    assert failed["level"] == "error" and failed["error"]
    assert relay.events("relay.reloaded") == []
    # Still serving, still on the old limit of 3.
    send(relay, scenario.seller_email, scenario.buyer_alias,
         seller_message(scenario.seller_email, scenario.buyer_alias, "A second note about the parcel.", mid="b"))
    await relay.sink.wait_for_count(2)
    assert relay.proc.returncode is None


# -------------------------------------------------------------------- SIGTERM

async def _in_data(relay, scenario) -> tuple[AsyncSMTP, str]:
    client = await AsyncSMTP.open(*relay.mx)
    assert (await client.cmd("EHLO shop.example")).startswith("250")
    assert (await client.cmd(f"MAIL FROM:<{scenario.seller_email}>")).startswith("250")
    assert (await client.cmd(f"RCPT TO:<{scenario.buyer_alias}>")).startswith("250")
    assert (await client.cmd("DATA")).startswith("354")
    message = seller_message(scenario.seller_email, scenario.buyer_alias, "Sent while the relay stops.")
    half = len(message) // 2
    client.send(message[:half])
    await client.writer.drain()
    return client, message[half:]


async def test_sigterm_during_data_lets_the_transaction_finish(scenario):
    relay = scenario.relay
    idle = await AsyncSMTP.open(*relay.mx)
    assert (await idle.cmd("EHLO idle.example")).startswith("250")
    client, rest = await _in_data(relay, scenario)

    relay.proc.send_signal(signal.SIGTERM)
    (stopping,) = await wait_for_event(relay, "relay.stopping")
    assert stopping["in_data"] == 1
    # A session between transactions is told at once; new connections are refused.
    assert (await idle.reply()).startswith("421 4.3.2")
    assert await idle.closed()
    with pytest.raises(OSError):
        await asyncio.open_connection(*relay.mx)

    client.send(rest + ".\r\n")
    reply = await client.reply()
    assert reply.startswith("250 "), reply
    assert (await client.reply()).startswith("421 4.3.2")
    assert await client.closed()
    assert await asyncio.wait_for(relay.proc.wait(), 20) == 0
    assert relay.events("relay.stopped")

    # The 250 was durable: the message reaches the buyer (now or after the next start), once.
    await relay.start()
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == [scenario.buyer_email]
    queue = [json.loads(line) for line in relay.cli("queue", "list", "--json", check=True).stdout.splitlines()]
    assert [e["state"] for e in queue] == ["delivered"]


async def test_sigterm_drain_is_bounded_and_an_unfinished_message_leaves_nothing(relay_factory, sink):
    from conftest import Scenario

    relay = await relay_factory({"limits": {"drain_timeout": 0.3}})
    scenario = Scenario(relay)
    relay.add_seller("s1", scenario.seller_name, [scenario.seller_email])
    scenario.aliases = relay.open_order(scenario.order, "s1", scenario.buyer_email)
    client, _rest = await _in_data(relay, scenario)

    relay.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(relay.proc.wait(), 15) == 0
    # No 250 ever came: the client sees 421 or a closed connection, never a success.
    try:
        reply = await client.reply()
        assert reply.startswith("421 4.3.2"), reply
    except ConnectionError:
        pass
    assert relay.cli("queue", "list", "--json", check=True).stdout == b""
    assert relay.audit() == []
    assert sink.messages == []


async def test_a_second_service_on_the_same_store_refuses_to_start(relay_factory, sink, tmp_path):
    """Two `relay serve` on one store (another port, another config): the
    second dropped the first one's delivery claims as a service start does,
    and sent again every message the first was sending (a black-box probe:
    30 of 30 twice).  It now refuses to start, exit 1, and the first goes on."""
    import sys

    from conftest import deep_merge
    from relay.config import to_toml

    first = await relay_factory()
    first.add_seller("s1", "Shop", ["sam@shop.example"])
    alias = first.open_order("o1", "s1", "bob@buyer.test")["buyer_alias"]
    second_config = tmp_path / "second.toml"
    second_config.write_text(to_toml(deep_merge(first.config, {"listen": {"mx": f"127.0.0.1:{free_port()}"}})))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay", "--config", str(second_config),
                                                "serve", stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the second service started") from None
    assert proc.returncode == 1, stderr
    assert b"another relay serve" in stderr and str(first.workdir / "relay.sqlite3").encode() in stderr
    with smtplib.SMTP(*first.mx, timeout=30) as client:
        client.sendmail("sam@shop.example", [alias], seller_message("sam@shop.example", alias))
    await sink.wait_for_count(1)

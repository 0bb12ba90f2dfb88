"""Shared fixtures: a real relay process, a real downstream SMTP sink.

`relay serve` runs as a subprocess on a real SQLite file in a temporary
folder and listens on a free loopback port; it delivers to an aiosmtpd sink
running in a thread of the test process, so tests may use blocking clients
(smtplib, swaks) as well as asyncio ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from relay.config import settings_from_dict, to_toml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


class SinkHandler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.sink.pipelining:  # like Postfix and smtp-sink; aiosmtpd reads pipelined commands in order
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.next_reply("RCPT")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = self.sink.next_reply("DATA")
        if reply:
            if reply == "DISCONNECT":
                server.transport.close()
                return "421 closing"
            return reply
        self.sink.record(Delivered(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"


class Sink:
    """A downstream SMTP server; scripted replies model a faulty next hop."""

    def __init__(self, pipelining: bool = True):
        self.pipelining = pipelining
        self.messages: list[Delivered] = []
        self.scripted: dict[str, list[str]] = {"RCPT": [], "DATA": []}
        self._cond = threading.Condition()
        self.controller = Controller(SinkHandler(self), hostname="127.0.0.1", port=free_port(),
                                     server_hostname="sink.test", ready_timeout=10)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.server.sockets[0].getsockname()[1]

    def next_reply(self, verb: str) -> str | None:
        with self._cond:
            if self.scripted[verb]:
                return self.scripted[verb].pop(0)
        return None

    def script(self, verb: str, *replies: str) -> None:
        with self._cond:
            self.scripted[verb].extend(replies)

    def record(self, message: Delivered) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for_count_sync(self, n: int, timeout: float = 10) -> list[Delivered]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout=timeout):
                raise AssertionError(f"sink has {len(self.messages)} messages, expected {n} within {timeout}s")
            return list(self.messages)

    async def wait_for_count(self, n: int, timeout: float = 10) -> list[Delivered]:
        return await asyncio.to_thread(self.wait_for_count_sync, n, timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class RelayProcess:
    """`python -m relay serve` as a subprocess, plus its CLI."""

    def __init__(self, workdir: Path, sink: Sink, overrides: dict[str, Any] | None = None):
        self.workdir = workdir
        self.sink = sink
        self.domain = "relay.example"
        base = {
            "relay": {"domain": self.domain, "hostname": "mx.relay.example"},
            "store": {"path": str(workdir / "relay.sqlite3")},
            "listen": {"mx": "127.0.0.1:0"},
            "delivery": {"mode": "smtp", "smarthost": f"127.0.0.1:{sink.port}", "retry_initial": 0.2,
                         "retry_max": 1.0, "poll_interval": 0.2, "timeout": 10, "tls": "none"},
        }
        self.config = deep_merge(base, overrides or {})
        self.config_path = workdir / "relay.toml"
        self.config_path.write_text(to_toml(self.config))
        self.proc: asyncio.subprocess.Process | None = None
        self.log_lines: list[str] = []
        self.mx: tuple[str, int] = ("127.0.0.1", 0)
        self._started = asyncio.Event()
        self._reader: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.mx[1]

    def rewrite_config(self, overrides: dict[str, Any]) -> None:
        self.config = deep_merge(self.config, overrides)
        self.config_path.write_text(to_toml(self.config))

    async def start(self, timeout: float = 20) -> "RelayProcess":
        self._started = asyncio.Event()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("RELAY_CONFIG", None)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "--config", str(self.config_path), "serve",
            cwd=str(self.workdir), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = asyncio.create_task(self._read_log(self.proc))
        waiter = asyncio.create_task(self._started.wait())
        exited = asyncio.create_task(self.proc.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            exited.cancel()
            raise AssertionError("relay did not start:\n" + "\n".join(self.log_lines[-20:]))
        exited.cancel()
        return self

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.log_lines.append(text)
            if '"relay.started"' in text:
                event = json.loads(text)
                host, _, port = event["listen"].rpartition(":")
                self.mx = (host, int(port))
                self._started.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_lines:
            if f'"{name}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._reader:
            try:
                await asyncio.wait_for(self._reader, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        return code

    async def kill(self) -> int | None:
        return await self.stop(signal.SIGKILL)

    async def restart(self) -> "RelayProcess":
        await self.stop()
        return await self.start()

    def cli(self, *args: str, input: bytes | None = None, check: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("RELAY_CONFIG", None)
        result = subprocess.run([sys.executable, "-m", "relay", "--config", str(self.config_path), *args],
                                cwd=str(self.workdir), env=env, input=input, capture_output=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"relay {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
        return result

    def add_seller(self, seller_id: str, name: str, emails: list[str]) -> dict[str, Any]:
        args = ["seller", "add", seller_id, "--name", name]
        for e in emails:
            args += ["--email", e]
        return json.loads(self.cli(*args, check=True).stdout)

    def open_order(self, order_id: str, seller_id: str, buyer: str, buyer_name: str | None = None) -> dict[str, Any]:
        args = ["order", "open", order_id, "--seller", seller_id, "--buyer", buyer]
        if buyer_name:
            args += ["--buyer-name", buyer_name]
        return json.loads(self.cli(*args, check=True).stdout)

    def audit(self, order: str | None = None) -> list[dict[str, Any]]:
        args = ["audit", "list", "--json"] + (["--order", order] if order else [])
        out = self.cli(*args, check=True).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
async def relay_factory(tmp_path, sink):
    started: list[RelayProcess] = []
    counter = 0

    async def factory(overrides: dict[str, Any] | None = None) -> RelayProcess:
        nonlocal counter
        counter += 1
        workdir = tmp_path / f"relay{counter}"
        workdir.mkdir()
        proc = RelayProcess(workdir, sink, overrides)
        started.append(proc)
        return await proc.start()

    yield factory
    for proc in started:
        await proc.stop()


@pytest.fixture
async def relay(relay_factory):
    return await relay_factory()


@dataclass
class Scenario:
    """A seller, a buyer and an open order, ready to exchange mail."""

    relay: RelayProcess
    seller_email: str = "sam@shop.example"
    seller_name: str = "Sam's Shop"
    buyer_email: str = "bob@buyer.test"
    buyer_name: str = "Bob Buyer"
    order: str = "111-2223334-5556667"
    aliases: dict[str, Any] = field(default_factory=dict)

    @property
    def buyer_alias(self) -> str:
        return self.aliases["buyer_alias"]

    @property
    def seller_alias(self) -> str:
        return self.aliases["seller_alias"]


@pytest.fixture
async def scenario(relay) -> Scenario:
    sc = Scenario(relay)
    relay.add_seller("s1", sc.seller_name, [sc.seller_email, "orders@shop.example"])
    sc.aliases = relay.open_order(sc.order, "s1", sc.buyer_email, sc.buyer_name)
    return sc


@pytest.fixture
async def daemon(tmp_path):
    """A RelayDaemon in the test's own process and event loop (its next hop
    is a closed port: for tests of sessions and protocols, not delivery)."""
    from relay.server import RelayDaemon
    settings = settings_from_dict({"store": {"path": str(tmp_path / "relay.sqlite3")},
                                   "listen": {"mx": "127.0.0.1:0"}, "delivery": {"smarthost": "127.0.0.1:9"}})
    relay = RelayDaemon(settings)
    await relay.start()
    yield relay
    await relay.stop(drain_seconds=1)

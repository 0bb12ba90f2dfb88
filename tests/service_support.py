"""Helpers for the tests/test_service_*.py tests: an asyncio SMTP client that
lets a test interleave a session with signals and log events, log waiting,
TLS material from trustme, and a metrics scrape."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

SELLER_MESSAGE = (
    "From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{mid}@mail.shop.example>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
)


def seller_message(frm: str, to: str, body: str = "Your parcel leaves tomorrow.", subject: str = "Your order",
                   mid: str = "m1") -> str:
    return SELLER_MESSAGE.format(frm=frm, to=to, body=body, subject=subject, mid=mid)


class AsyncSMTP:
    """A line-level SMTP client on asyncio streams (the relay's log reader
    keeps running while a test waits for a reply)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.banner = ""

    @classmethod
    async def open(cls, host: str, port: int, source: str | None = None, timeout: float = 10) -> "AsyncSMTP":
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0) if source else None), timeout)
        client = cls(reader, writer)
        client.banner = await client.reply(timeout)
        return client

    async def reply(self, timeout: float = 10) -> str:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line.endswith(b"\r\n"):
                raise ConnectionError("closed: " + "\n".join(lines) + line.decode("latin-1"))
            text = line[:-2].decode("utf-8", "replace")
            lines.append(text)
            if not re.match(r"^\d{3}-", text):
                return "\n".join(lines)

    def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def cmd(self, line: str | bytes, timeout: float = 10) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply(timeout)

    async def closed(self, timeout: float = 10) -> bool:
        """True once the server has closed the connection (whatever it said before)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


async def wait_for_event(relay, name: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
    """Wait until the relay has logged `name` at least `count` times."""
    deadline = time.monotonic() + timeout
    while True:
        events = relay.events(name)
        if len(events) >= count:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} event within {timeout}s:\n" + "\n".join(relay.log_lines[-15:]))
        await asyncio.sleep(0.02)


def started(relay) -> dict[str, Any]:
    return relay.events("relay.started")[-1]


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class TLSFiles:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_tls_files(folder: Path, *identities: str) -> TLSFiles:
    """A throw-away CA and a certificate for `identities` (default: the relay
    hostname and 127.0.0.1, which smtplib checks when it connects by IP)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert(*(identities or ("mx.relay.example", "127.0.0.1")))
    cert, key, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return TLSFiles(ca, cert, key, ca_file)


def fetch(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in a Prometheus exposition, or None."""
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def scrape_until(url: str, check, timeout: float = 10) -> str:
    """Scrape `url` until `check(text)` holds (the gauges follow events a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        status, text = await asyncio.to_thread(fetch, url)
        if status == 200 and check(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the check:\n{text}")
        await asyncio.sleep(0.05)

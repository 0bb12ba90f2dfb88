"""TLS: STARTTLS offered (never required) on the MX with a certificate made in
the test, no AUTH there, the certificate re-read on SIGHUP, broken files named
by check-config, and verified TLS to the smarthost (delivery.tls = "required")."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import subprocess
import sys
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from conftest import ROOT, free_port
from service_support import AsyncSMTP, make_tls_files, seller_message, wait_for_event


@pytest.fixture
def tls_files(tmp_path):
    return make_tls_files(tmp_path / "tls")


async def test_starttls_on_the_mx_is_offered_not_required_and_never_offers_auth(relay_factory, tls_files):
    relay = await relay_factory({"tls": {"cert": str(tls_files.cert), "key": str(tls_files.key)}})
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    message = seller_message("sam@shop.example", aliases["buyer_alias"])

    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.ehlo("shop.example")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        code, _ = client.starttls(context=tls_files.client_context())
        assert code == 220
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.ehlo("shop.example")
        assert not client.has_extn("starttls") and not client.has_extn("auth")
        assert client.docmd("STARTTLS")[0] == 503
        assert client.docmd("AUTH", "PLAIN AHNhbQBzZWNyZXQ=")[0] == 502
        client.sendmail("sam@shop.example", [aliases["buyer_alias"]], message)
    # Plain text still works: the public MX must not require STARTTLS (RFC 3207 section 4).
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.sendmail("sam@shop.example", [aliases["buyer_alias"]],
                        seller_message("sam@shop.example", aliases["buyer_alias"], "Second note.", mid="m2"))
    delivered = await relay.sink.wait_for_count(2)
    assert {d.rcpt_tos[0] for d in delivered} == {"bob@buyer.test"}
    assert relay.events("relay.started")[-1]["starttls"] is True


async def test_a_broken_tls_handshake_closes_the_session_and_frees_its_slot(relay_factory, tls_files):
    relay = await relay_factory({"tls": {"cert": str(tls_files.cert), "key": str(tls_files.key)},
                                 "limits": {"max_connections_per_ip": 1}})
    client = await AsyncSMTP.open(*relay.mx)
    await client.cmd("EHLO client.example")
    assert (await client.cmd("STARTTLS")).startswith("220")
    client.send(b"this is not a TLS client hello\r\n" * 20)
    assert await client.closed()
    deadline = asyncio.get_running_loop().time() + 5
    while not (again := await AsyncSMTP.open(*relay.mx)).banner.startswith("220"):
        assert asyncio.get_running_loop().time() < deadline, "the slot of the broken session was never freed"
        await asyncio.sleep(0.05)
    assert (await again.cmd("EHLO client.example")).startswith("250")
    assert not any("Traceback" in line for line in relay.log_lines)


async def test_sighup_rereads_the_certificate(relay_factory, tls_files, tmp_path):
    relay = await relay_factory({"tls": {"cert": str(tls_files.cert), "key": str(tls_files.key)}})
    renewed = make_tls_files(tmp_path / "renewed")  # a new CA, as after a certificate change
    relay.rewrite_config({"tls": {"cert": str(renewed.cert), "key": str(renewed.key)}})
    relay.proc.send_signal(signal.SIGHUP)
    await wait_for_event(relay, "relay.reloaded")
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.starttls(context=renewed.client_context())
        assert client.ehlo()[0] == 250


def check_config(config: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "check.toml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "relay", "--config", str(path), "check-config"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                            "PYTHONPATH": str(ROOT)})


def test_check_config_names_broken_tls_files(tmp_path, tls_files):
    ok = check_config(f'[tls]\ncert = "{tls_files.cert}"\nkey = "{tls_files.key}"\n'
                      f'[delivery]\ncafile = "{tls_files.ca_file}"\n', tmp_path)
    assert ok.returncode == 0, ok.stderr
    cases = [
        (f'[tls]\ncert = "{tmp_path}/missing.pem"\nkey = "{tls_files.key}"\n', "tls.cert"),
        (f'[tls]\ncert = "{tls_files.cert}"\n', "tls.key"),
        (f'[tls]\ncert = "{tls_files.ca_file}"\nkey = "{tls_files.key}"\n', "tls.cert"),  # key does not match
        ('[listen]\nsubmission = "127.0.0.1:0"\n', "listen.submission"),
        (f'[delivery]\ncafile = "{tmp_path}/nope.pem"\n', "delivery.cafile"),
        ('[metrics]\nlisten = "everywhere"\n', "metrics.listen"),
    ]
    for config, key in cases:
        result = check_config(config, tmp_path)
        assert result.returncode == 2, (config, result.stderr)
        assert key in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


class TLSSinkHandler:
    def __init__(self):
        self.messages: list[tuple[bool, list[str]]] = []
        self.arrived = threading.Event()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # Offered, so the relay's pipelined sending (relay.pipelining) runs over the TLS transport.
        session.host_name = hostname
        responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((session.ssl is not None, list(envelope.rcpt_tos)))
        self.arrived.set()
        return "250 2.0.0 OK"


@pytest.fixture
def tls_smarthost(tls_files):
    """A smarthost that offers STARTTLS with the test CA's certificate for 127.0.0.1."""
    from relay.tls import server_context

    handler = TLSSinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), server_hostname="smarthost.test",
                            tls_context=server_context(tls_files.cert, tls_files.key), ready_timeout=10)
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.mark.parametrize("trusted", [True, False])
async def test_required_tls_to_the_smarthost_is_verified(relay_factory, tls_files, tls_smarthost, tmp_path,
                                                         trusted):
    handler, port = tls_smarthost
    cafile = tls_files.ca_file if trusted else make_tls_files(tmp_path / "other-ca").ca_file
    relay = await relay_factory({"delivery": {"smarthost": f"127.0.0.1:{port}", "tls": "required",
                                              "cafile": str(cafile), "retry_initial": 30.0}})
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.sendmail("sam@shop.example", [aliases["buyer_alias"]],
                        seller_message("sam@shop.example", aliases["buyer_alias"]))
    if trusted:
        assert await asyncio.to_thread(handler.arrived.wait, 10)
        assert handler.messages == [(True, ["bob@buyer.test"])]
    else:
        # A certificate the CA file does not vouch for: deferred, never sent in clear or unverified.
        await wait_for_event(relay, "delivery.deferred")
        assert handler.messages == []


async def test_starttls_command_injection_is_discarded(relay_factory, tls_files):
    """THREATS #11 (CVE-2011-0411 class): plaintext pipelined after STARTTLS
    must not be executed inside the TLS session; the client must EHLO again."""
    import socket

    relay = await relay_factory({"tls": {"cert": str(tls_files.cert), "key": str(tls_files.key)}})
    sock = socket.create_connection(relay.mx, timeout=15)
    reader = sock.makefile("rb")

    def reply(stream) -> bytes:
        lines = []
        while True:
            line = stream.readline()
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    assert reply(reader).startswith(b"220")
    sock.sendall(b"EHLO attacker.test\r\n")
    reply(reader)
    assert sock.sendall(b"STARTTLS arg\r\n") is None and reply(reader).startswith(b"501")
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")  # one segment
    assert reply(reader).startswith(b"220")
    tls = tls_files.client_context().wrap_socket(sock, server_hostname="mx.relay.example")
    stream = tls.makefile("rb")
    tls.sendall(b"RCPT TO:<postmaster@relay.example>\r\n")
    answer = reply(stream)
    # The injected MAIL was discarded, and the session was reset: EHLO first, or MAIL first.
    assert answer.startswith(b"503"), answer
    tls.sendall(b"EHLO attacker.test\r\n")
    assert reply(stream).startswith(b"250")
    tls.sendall(b"QUIT\r\n")
    tls.close()


class _InjectingSMTP(SMTP):
    """A smarthost under a man-in-the-middle: right behind its `220` to
    STARTTLS, in the same segment, comes a plaintext reply that a careless
    client would read as the answer to its first command inside TLS."""

    async def push(self, status):
        if status.startswith("220 Ready to start TLS"):
            status += "\r\n554 5.7.1 injected before TLS"
        await super().push(status)


class _InjectingController(Controller):
    def factory(self):
        return _InjectingSMTP(self.handler, **self.SMTP_kwargs)


async def test_outbound_starttls_discards_a_response_injected_before_tls(relay_factory, tls_files):
    """THREATS #11, second half ("NO STARTTLS" response injection): our
    client to the smarthost must drop bytes buffered before the handshake, so
    the message is delivered over TLS instead of failing on the fake 554."""
    from relay.tls import server_context

    handler = TLSSinkHandler()
    controller = _InjectingController(handler, hostname="127.0.0.1", port=free_port(),
                                      server_hostname="smarthost.test", ready_timeout=10,
                                      tls_context=server_context(tls_files.cert, tls_files.key))
    controller.start()
    try:
        relay = await relay_factory({"delivery": {"smarthost": f"127.0.0.1:{controller.port}", "tls": "required",
                                                  "cafile": str(tls_files.ca_file), "retry_initial": 30.0}})
        relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
        aliases = relay.open_order("o1", "s1", "bob@buyer.test")
        with smtplib.SMTP(*relay.mx, timeout=30) as client:
            client.sendmail("sam@shop.example", [aliases["buyer_alias"]],
                            seller_message("sam@shop.example", aliases["buyer_alias"]))
        assert await asyncio.to_thread(handler.arrived.wait, 10), "\n".join(relay.log_lines[-10:])
        assert handler.messages == [(True, ["bob@buyer.test"])]
        assert relay.events("delivery.failed") == [] and relay.events("delivery.deferred") == []
    finally:
        controller.stop()

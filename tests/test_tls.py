"""relay.tls: real TLS handshakes over loopback with a throwaway CA (trustme)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.tls import client_context, server_context

trustme = pytest.importorskip("trustme", reason="trustme is in the test extras")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(ca, tmp_path: Path) -> dict[str, Path]:
    leaf = ca.issue_cert("mx.relay.test", "localhost", "127.0.0.1")
    paths = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(paths["cert"]), append=True)
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return paths


@pytest.fixture
async def tls_echo(pki) -> AsyncIterator[int]:
    """A TLS echo server on an ephemeral loopback port using server_context()."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            version = writer.get_extra_info("ssl_object").version()
            writer.write(line.strip() + b" " + version.encode() + b"\n")
            await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context(pki["cert"], pki["key"]))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname), 5
    )
    try:
        writer.write(b"hello\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def test_verified_handshake(tls_echo: int, pki) -> None:
    reply = await exchange(tls_echo, client_context(verify=True, cafile=pki["ca"]), "mx.relay.test")
    assert reply.startswith(b"hello TLSv1.")
    assert reply.strip().rsplit(b" ", 1)[1] in (b"TLSv1.2", b"TLSv1.3")


async def test_wrong_host_name_is_refused(tls_echo: int, pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await exchange(tls_echo, client_context(verify=True, cafile=pki["ca"]), "other.relay.test")


async def test_unknown_ca_is_refused(tls_echo: int) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await exchange(tls_echo, client_context(verify=True), "mx.relay.test")


async def test_opportunistic_client_accepts_any_certificate(tls_echo: int) -> None:
    reply = await exchange(tls_echo, client_context(verify=False), "whatever.invalid")
    assert reply.startswith(b"hello TLSv1.")


async def test_tls_1_1_client_is_refused(tls_echo: int) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        # SECLEVEL=0 so that this client really offers TLS 1.1 and the refusal is the server's.
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await exchange(tls_echo, old, "mx.relay.test")


def test_context_settings(pki) -> None:
    server = server_context(pki["cert"], pki["key"])
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.options & ssl.OP_NO_COMPRESSION
    assert server.options & ssl.OP_NO_RENEGOTIATION
    verified = client_context(verify=True, cafile=str(pki["ca"]))
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    assert verified.minimum_version == ssl.TLSVersion.TLSv1_2
    loose = client_context(verify=False, cafile=pki["ca"])
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    assert loose.minimum_version == ssl.TLSVersion.TLSv1_2


def test_bad_key_pair_is_an_error(ca, pki, tmp_path: Path) -> None:
    other_key = tmp_path / "other.key"
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ssl.SSLError):
        server_context(pki["cert"], other_key)
    with pytest.raises(OSError):
        server_context(tmp_path / "missing.pem", pki["key"])


async def test_starttls_with_aiosmtpd(pki) -> None:
    """The way server.py wires it: aiosmtpd's tls_context=, aiosmtplib's tls_context=."""
    aiosmtpd_smtp = pytest.importorskip("aiosmtpd.smtp")
    aiosmtplib = pytest.importorskip("aiosmtplib")

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
            return "250 2.0.0 OK"

    loop = asyncio.get_running_loop()
    tls = server_context(pki["cert"], pki["key"])
    server = await loop.create_server(
        lambda: aiosmtpd_smtp.SMTP(Handler(), hostname="mx.relay.test", tls_context=tls, require_starttls=True),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            tls_context=client_context(verify=True, cafile=pki["ca"]),
            timeout=5,
        )
        await client.connect()
        try:
            await client.ehlo()
            assert client.supports_extension("starttls")
            await client.starttls(server_hostname="mx.relay.test")
            await client.ehlo()
            code, _ = await client.sendmail("a@relay.test", ["b@relay.test"], b"Subject: t\r\n\r\nx\r\n")
            assert code == {}  # no refused recipients
        finally:
            await client.quit()
    finally:
        server.close()
        await server.wait_closed()

"""THREATS #35, spoofed party: with `[sender_auth] mode = "enforce"`, mail from a
registered party is relayed only when SPF or DKIM passes for a domain aligned
with its From address.

Everything is real: `relay serve` as a process, SMTP over loopback, a small
authoritative DNS server (tests/dnsserver.py) publishing SPF policies and DKIM
keys for reserved test domains, and messages signed with dkimpy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import sqlite3
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dnsserver import DnsServer
from relay.config import ConfigError, SenderAuthSection, settings_from_dict
from relay.sender_auth import ClientInfo, Lookups, aligned, evaluate, make_resolver, organizational_domain

SELLER = "sam@shop.test"
SELLER_OTHER = "orders@other.test"  # the seller's second registered address, on another domain
BUYER = "bob@buyer.test"
SPF_LOOPBACK = "v=spf1 ip4:127.0.0.1 -all"
SPF_ELSEWHERE = "v=spf1 ip4:192.0.2.1 -all"  # TEST-NET-1: the relay's test client is never there

MESSAGE = (
    "From: {frm}\r\n"
    "To: {to}\r\n"
    "Subject: Parcel\r\n"
    "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    "Message-ID: <m-{n}@mail.shop.test>\r\n"
    "\r\n"
    "Your parcel leaves tomorrow morning.\r\n"
)


# ----------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    """An RSA key made for this test run: (private PEM for dkimpy, public p= for DNS)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


def publish_key(server: DnsServer, key: tuple[bytes, str], domain: str = "shop.test", selector: str = "sel") -> None:
    server.add(f"{selector}._domainkey.{domain}", "TXT", f"v=DKIM1; k=rsa; p={key[1]}")


def signed(data: str, key: tuple[bytes, str], domain: str = "shop.test", selector: str = "sel") -> bytes:
    raw = data.encode()
    signature = dkim.sign(raw, selector.encode(), domain.encode(), key[0],
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + raw


async def enforcing_relay(relay_factory, server: DnsServer | None, **options):
    section = {"mode": "enforce", "nameservers": [server.address] if server else []}
    section.update(options)
    relay = await relay_factory({"sender_auth": section})
    relay.add_seller("s1", "Sam's Shop", [SELLER, SELLER_OTHER])
    relay.aliases = relay.open_order("o-1", "s1", BUYER, "Bob")
    return relay


def send(relay, mail_from: str, to: str, data: str | bytes) -> tuple[int, str]:
    """One transaction over real SMTP; the final reply (RCPT's if it refused)."""
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.ehlo("client.shop.test")
        client.mail(mail_from)
        code, text = client.rcpt(to)
        if code != 250:
            return code, text.decode()
        code, text = client.data(data.encode() if isinstance(data, str) else data)
        return code, text.decode()


def audit_rows(relay) -> list[dict]:
    """The audit table as stored (the CLI's JSON leaves the findings out)."""
    with sqlite3.connect(relay.workdir / "relay.sqlite3") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT verdict, reasons, findings FROM audit ORDER BY id").fetchall()
    return [{"verdict": r["verdict"], "reasons": json.loads(r["reasons"]), "findings": json.loads(r["findings"])}
            for r in rows]


def auth_note(row: dict) -> dict:
    (note,) = [f for f in row["findings"] if f["location"] == "authentication"]
    return note


def queued(relay) -> list[str]:
    return relay.cli("queue", "list").stdout.decode().splitlines()


async def logged(relay, event: str, timeout: float = 5) -> list[dict]:
    """The relay's log lines of one event, once its log has been read that far."""
    deadline = time.monotonic() + timeout
    while not relay.events(event) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return relay.events(event)


def seller_mail(relay, n: int = 1, frm: str = SELLER) -> str:
    return MESSAGE.format(frm=f"Sam <{frm}>", to=relay.aliases["buyer_alias"], n=n)


# ------------------------------------------------- through the relay

async def test_aligned_spf_pass_is_delivered(relay_factory, dns_server):
    dns_server.add("shop.test", "TXT", SPF_LOOPBACK)
    relay = await enforcing_relay(relay_factory, dns_server)
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], seller_mail(relay))
    assert code == 250, text
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == [BUYER]
    (row,) = audit_rows(relay)
    assert row["verdict"] == "accepted" and row["reasons"] == []
    note = auth_note(row)
    assert note["code"] == "sender_auth"
    assert "spf=pass smtp.mailfrom=shop.test" in note["fragment"]
    assert "dmarc=pass (relaxed alignment by spf) header.from=shop.test" in note["fragment"]
    # The summary stays in the audit record: never in the relayed message.
    assert b"Authentication-Results" not in delivered.data and b"shop.test" not in delivered.data
    (event,) = await logged(relay, "sender_auth.checked")
    assert (event["verdict"], event["spf"], event["aligned_by"]) == ("pass", "pass", "spf")
    assert "shop.test" not in json.dumps(event)  # no party's domain in INFO logs


async def test_spf_fail_without_dkim_is_refused_and_audited(relay_factory, dns_server):
    dns_server.add("shop.test", "TXT", SPF_ELSEWHERE)
    relay = await enforcing_relay(relay_factory, dns_server)
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], seller_mail(relay))
    assert code == 550 and text.startswith("5.7.1 [sender_not_authorized] "), text
    assert "SPF fail" in text and "DKIM none" in text
    (row,) = audit_rows(relay)
    assert row["verdict"] == "rejected" and row["reasons"] == ["sender_not_authorized"]
    note = auth_note(row)
    assert note["code"] == "sender_not_authorized"
    assert note["fragment"].startswith("spf=fail smtp.mailfrom=shop.test; dkim=none; dmarc=fail")
    assert relay.audit()[0]["verdict"] == "rejected"
    assert queued(relay) == []
    assert relay.sink.messages == []


async def test_spf_pass_for_an_unaligned_envelope_domain_is_refused(relay_factory, dns_server):
    # Both addresses are the seller's, and other.test does authorize the
    # client; but From names shop.test, which nothing authenticated.
    dns_server.add("other.test", "TXT", SPF_LOOPBACK)
    relay = await enforcing_relay(relay_factory, dns_server)
    code, text = send(relay, SELLER_OTHER, relay.aliases["buyer_alias"], seller_mail(relay, frm=SELLER))
    assert code == 550 and "[sender_not_authorized]" in text, text
    note = auth_note(audit_rows(relay)[0])
    assert "spf=pass smtp.mailfrom=other.test" in note["fragment"]
    assert "dmarc=fail" in note["fragment"] and "header.from=shop.test" in note["fragment"]
    assert relay.sink.messages == []


async def test_aligned_dkim_pass_is_delivered_although_spf_fails(relay_factory, dns_server, key):
    dns_server.add("shop.test", "TXT", SPF_ELSEWHERE)
    publish_key(dns_server, key)
    relay = await enforcing_relay(relay_factory, dns_server)
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], signed(seller_mail(relay), key))
    assert code == 250, text
    await relay.sink.wait_for_count(1)
    fragment = auth_note(audit_rows(relay)[0])["fragment"]
    assert "spf=fail" in fragment and "dkim=pass header.d=shop.test header.s=sel" in fragment
    assert "by dkim" in fragment


async def test_dkim_signature_broken_by_an_altered_body_is_refused(relay_factory, dns_server, key):
    dns_server.add("shop.test", "TXT", SPF_ELSEWHERE)
    publish_key(dns_server, key)
    relay = await enforcing_relay(relay_factory, dns_server)
    tampered = signed(seller_mail(relay), key).replace(b"tomorrow morning", b"never, pay me elsewhere")
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], tampered)
    assert code == 550 and "[sender_not_authorized]" in text and "DKIM fail" in text, text
    assert "dkim=fail" in auth_note(audit_rows(relay)[0])["fragment"]
    assert relay.sink.messages == []


async def test_dns_servfail_defers_with_451_and_keeps_nothing(relay_factory, dns_server):
    dns_server.add("shop.test", "TXT", SPF_LOOPBACK)
    dns_server.servfail.add("*")
    relay = await enforcing_relay(relay_factory, dns_server)
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], seller_mail(relay))
    assert code == 451 and text.startswith("4.7.24 "), text  # RFC 7372: SPF validation error
    assert audit_rows(relay) == [] and queued(relay) == []
    assert await logged(relay, "message.deferred_by_dns")
    # Once DNS answers again, the sender's retry goes through.
    dns_server.servfail.clear()
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], seller_mail(relay))
    assert code == 250, text
    await relay.sink.wait_for_count(1)


async def test_dns_silence_defers_with_451_within_the_time_limit(relay_factory, dns_server):
    dns_server.silent.add("*")
    relay = await enforcing_relay(relay_factory, dns_server, timeout=1.5)
    started = time.monotonic()
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], seller_mail(relay))
    elapsed = time.monotonic() - started
    assert code == 451 and text.startswith("4."), text
    assert elapsed < 6, elapsed
    assert audit_rows(relay) == [] and queued(relay) == []
    assert relay.sink.messages == []


async def test_default_mode_off_does_no_dns_at_all(relay_factory, dns_server):
    # The configured resolver would answer SERVFAIL to anything (a 451 in
    # mode "enforce"); with the default mode it is never even asked.
    dns_server.servfail.add("*")
    relay = await relay_factory({"sender_auth": {"nameservers": [dns_server.address]}})
    relay.add_seller("s1", "Sam's Shop", [SELLER])
    aliases = relay.open_order("o-1", "s1", BUYER)
    relay.aliases = aliases
    assert send(relay, SELLER, aliases["buyer_alias"], seller_mail(relay))[0] == 250
    await relay.sink.wait_for_count(1)
    assert dns_server.queries == []
    assert await logged(relay, "message.accepted")
    assert relay.events("sender_auth.checked") == []
    assert all(f["location"] != "authentication" for f in audit_rows(relay)[0]["findings"])


async def test_buyer_to_seller_mail_is_checked_too(relay_factory, dns_server):
    dns_server.add("buyer.test", "TXT", SPF_ELSEWHERE)
    relay = await enforcing_relay(relay_factory, dns_server)
    reply = MESSAGE.format(frm=f"Bob <{BUYER}>", to=relay.aliases["seller_alias"], n=2)
    code, text = send(relay, BUYER, relay.aliases["seller_alias"], reply)
    assert code == 550 and "[sender_not_authorized]" in text, text
    (row,) = audit_rows(relay)
    assert row["reasons"] == ["sender_not_authorized"]
    assert "smtp.mailfrom=buyer.test" in auth_note(row)["fragment"]
    assert relay.audit()[0]["direction"] == "buyer_to_seller"
    # With the buyer's domain authorizing the client, the same reply is relayed.
    dns_server.records[("buyer.test", "TXT")] = []
    dns_server.add("buyer.test", "TXT", SPF_LOOPBACK)
    code, text = send(relay, BUYER, relay.aliases["seller_alias"], reply)
    assert code == 250, text
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == [SELLER]


async def test_record_mode_delivers_and_records_the_failure(relay_factory, dns_server):
    dns_server.add("shop.test", "TXT", SPF_ELSEWHERE)
    relay = await enforcing_relay(relay_factory, dns_server, mode="record")
    code, text = send(relay, SELLER, relay.aliases["buyer_alias"], seller_mail(relay))
    assert code == 250, text
    await relay.sink.wait_for_count(1)
    (row,) = audit_rows(relay)
    assert row["verdict"] == "accepted" and row["reasons"] == ["sender_not_authorized"]
    assert auth_note(row)["fragment"].startswith("spf=fail")


# -------------------------------------- the evaluation, without the relay

def evaluate_here(server: DnsServer, mail_from: str, from_domain: str, data: bytes, alignment: str = "relaxed",
                  timeout: float = 5.0):
    resolver = make_resolver(SenderAuthSection(mode="enforce", nameservers=(server.address,)))
    lookups = Lookups(resolver, time.monotonic() + timeout)
    return evaluate(ClientInfo("127.0.0.1", "client.shop.test"), mail_from, from_domain, data, alignment, lookups)


def test_dkim_from_a_subdomain_aligns_relaxed_but_not_strict(dns_server, key):
    publish_key(dns_server, key, domain="mail.shop.test")
    data = signed(MESSAGE.format(frm=SELLER, to="x@relay.example", n=3), key, domain="mail.shop.test")
    relaxed = evaluate_here(dns_server, SELLER, "shop.test", data)
    assert relaxed.verdict == "pass" and relaxed.aligned_by == "dkim"
    strict = evaluate_here(dns_server, SELLER, "shop.test", data, alignment="strict")
    assert strict.verdict == "fail"
    # Not aligned under strict, so not even looked up.
    assert [d.result for d in strict.dkim] == ["neutral"]


def test_unaligned_signatures_are_not_verified(dns_server, key):
    publish_key(dns_server, key, domain="other.test")
    data = signed(MESSAGE.format(frm=SELLER, to="x@relay.example", n=4), key, domain="other.test")
    result = evaluate_here(dns_server, SELLER, "shop.test", data)
    assert result.verdict == "fail"
    assert ("sel._domainkey.other.test", "TXT") not in dns_server.queries


def test_signature_with_a_body_length_limit_never_passes(dns_server, key):
    publish_key(dns_server, key)
    raw = MESSAGE.format(frm=SELLER, to="x@relay.example", n=5).encode()
    signature = dkim.sign(raw, b"sel", b"shop.test", key[0], length=True)
    result = evaluate_here(dns_server, SELLER, "shop.test", signature + raw + b"Unsigned text appended.\r\n")
    assert [d.result for d in result.dkim] == ["policy"] and result.verdict == "fail"


def test_missing_dkim_key_is_a_failure_not_a_temporary_error(dns_server, key):
    data = signed(MESSAGE.format(frm=SELLER, to="x@relay.example", n=6), key)
    result = evaluate_here(dns_server, SELLER, "shop.test", data)
    assert [d.result for d in result.dkim] == ["fail"] and result.verdict == "fail"


def test_dkim_key_lookup_timeout_is_a_temporary_error(dns_server, key):
    dns_server.add("shop.test", "TXT", SPF_ELSEWHERE)
    dns_server.silent.add("sel._domainkey.shop.test")
    data = signed(MESSAGE.format(frm=SELLER, to="x@relay.example", n=7), key)
    result = evaluate_here(dns_server, SELLER, "shop.test", data, timeout=1.0)
    assert result.verdict == "temperror"
    assert result.temporary_reply().startswith("451 4.4.3 ")


def test_null_sender_is_checked_against_the_helo_name(dns_server):
    dns_server.add("client.shop.test", "TXT", SPF_LOOPBACK)
    result = evaluate_here(dns_server, "", "shop.test", MESSAGE.format(frm=SELLER, to="x", n=8).encode())
    assert (result.spf.identity, result.spf.domain, result.spf.result) == ("helo", "client.shop.test", "pass")
    assert result.verdict == "pass"


@pytest.mark.parametrize("domain, organizational", [
    ("shop.test", "shop.test"),
    ("mail.eu.shop.test", "shop.test"),
    ("Mail.Shop.Example.", "shop.example"),
    ("shop.co.uk", "shop.co.uk"),
    ("mail.shop.co.uk", "shop.co.uk"),
    ("alice.github.io", "alice.github.io"),  # private PSL section: sites on one host do not align
    ("www.alice.github.io", "alice.github.io"),
    ("mail.bücher.de", "xn--bcher-kva.de"),
    ("host.unknown-tld-zz", "host.unknown-tld-zz"),
])
def test_organizational_domain(domain, organizational):
    assert organizational_domain(domain) == organizational


@pytest.mark.parametrize("authenticated, from_domain, relaxed, strict", [
    ("shop.test", "shop.test", True, True),
    ("mail.shop.test", "shop.test", True, False),
    ("shop.test", "mail.shop.test", True, False),
    ("SHOP.test", "shop.TEST", True, True),
    ("shop.test", "shop2.test", False, False),
    ("alice.github.io", "bob.github.io", False, False),
    ("shop.co.uk", "other.co.uk", False, False),
    ("", "shop.test", False, False),
])
def test_alignment(authenticated, from_domain, relaxed, strict):
    assert aligned(authenticated, from_domain, "relaxed") is relaxed
    assert aligned(authenticated, from_domain, "strict") is strict


# ------------------------------------------------------ configuration

def test_default_is_off_with_the_system_resolver():
    section = settings_from_dict({}).sender_auth
    assert (section.mode, section.alignment, section.nameservers) == ("off", "relaxed", ())


@pytest.mark.parametrize("raw, needle", [
    ({"mode": "on"}, "sender_auth.mode"),
    ({"alignment": "loose"}, "sender_auth.alignment"),
    ({"nameservers": "127.0.0.1"}, "sender_auth.nameservers"),
    ({"nameservers": ["dns.example"]}, "sender_auth.nameservers"),
    ({"nameservers": ["127.0.0.1:0"]}, "sender_auth.nameservers"),
    ({"timeout": 0}, "sender_auth.timeout"),
    ({"timeout": "10"}, "sender_auth.timeout"),
    ({"resolver": "x"}, "sender_auth.resolver"),
])
def test_bad_sender_auth_configuration_names_the_key(raw, needle):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"sender_auth": raw})
    assert needle in str(info.value)


def test_nameserver_forms():
    section = settings_from_dict({"sender_auth": {"nameservers": ["192.0.2.53", "127.0.0.1:5353", "::1",
                                                                  "[::1]:5353"]}}).sender_auth
    resolver = make_resolver(section)
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [
        ("192.0.2.53", 53), ("127.0.0.1", 5353), ("::1", 53), ("::1", 5353)]

"""The sellers' submission listener: STARTTLS, then AUTH with seller id and
password (`relay seller passwd`); an authenticated seller writes to the buyer
aliases of its own orders from any address, and to nothing else."""

from __future__ import annotations

import base64
import smtplib
import sqlite3
from email import message_from_bytes, policy

import pytest

from service_support import hostport, make_tls_files, seller_message, started, wait_for_event

PASSWORD = "correct horse battery staple"
INVALID = (535, b"5.7.8 Authentication credentials invalid")


@pytest.fixture
async def submission(relay_factory, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    relay = await relay_factory({"listen": {"submission": "127.0.0.1:0"},
                                 "tls": {"cert": str(tls.cert), "key": str(tls.key)}})
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    relay.add_seller("s2", "Olga's Shop", ["olga@other.example"])
    relay.own = relay.open_order("o1", "s1", "bob@buyer.test", "Bob")
    relay.other = relay.open_order("o2", "s2", "carl@buyer.test")
    relay.cli("seller", "passwd", "s1", input=(PASSWORD + "\n").encode(), check=True)
    relay.submission = hostport(started(relay)["submission"])
    relay.tls = tls
    return relay


def connect(relay) -> smtplib.SMTP:
    client = smtplib.SMTP(*relay.submission, timeout=30)
    client.ehlo("laptop.example")
    client.starttls(context=relay.tls.client_context())
    client.ehlo("laptop.example")
    return client


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_seller_passwd_stores_a_hash_and_refuses_bad_input(relay_factory, submission):
    relay = submission
    result = relay.cli("seller", "passwd", "nobody", input=b"secret\n")
    assert result.returncode == 2 and b"unknown seller" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert relay.cli("seller", "passwd", "s2", input=b"\n").returncode == 2  # empty
    db = sqlite3.connect(relay.config["store"]["path"])
    rows = db.execute("SELECT seller_id, hash FROM seller_passwords").fetchall()
    db.close()
    assert [r[0] for r in rows] == ["s1"]  # nothing written for the refused ones
    assert rows[0][1].startswith("scrypt$") and PASSWORD not in rows[0][1]
    assert relay.cli("seller", "passwd", "s2", input=b"only the first line\nsecond line\n").returncode == 0


async def test_submission_needs_starttls_before_auth_and_auth_before_mail(submission):
    with smtplib.SMTP(*submission.submission, timeout=30) as client:
        client.ehlo("laptop.example")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN " + plain("s1", PASSWORD))[0] == 530
        assert client.docmd("MAIL", "FROM:<sam@shop.example>")[0] == 530
    with connect(submission) as client:
        assert sorted(client.esmtp_features["auth"].split()) == ["LOGIN", "PLAIN"]
        assert client.docmd("MAIL", "FROM:<sam@shop.example>")[:2] == (530, b"5.7.0 Authentication required")


async def test_auth_failures_get_one_reply_and_the_third_closes(submission):
    with connect(submission) as client:
        assert client.docmd("AUTH", "PLAIN " + plain("s1", "wrong password")) == INVALID
        assert client.docmd("AUTH", "PLAIN " + plain("no-such-seller", PASSWORD)) == INVALID
        assert client.docmd("AUTH", "LOGIN " + b64("s2"))[0] == 334  # s2 has no password
        code, text = client.docmd(b64("anything"))
        assert (code, text.split(b"\n")[0]) == INVALID
        # After the third failure the relay says 421 and closes.
        assert text.endswith(b"4.7.0 Too many failed authentication attempts, closing connection") or \
            client.getreply()[0] == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
            client.noop()
    refusals = [e["reason"] for e in await wait_for_event(submission, "session.refused", 4)]
    assert refusals == ["auth_failed"] * 3 + ["auth_failures"]


async def test_auth_failures_are_rate_limited_per_client(relay_factory, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    relay = await relay_factory({"listen": {"submission": "127.0.0.1:0"},
                                 "tls": {"cert": str(tls.cert), "key": str(tls.key)},
                                 "limits": {"auth_ip_failures": 2, "auth_window": 60.0}})
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    relay.cli("seller", "passwd", "s1", input=(PASSWORD + "\n").encode(), check=True)
    relay.submission, relay.tls = hostport(started(relay)["submission"]), tls
    with connect(relay) as client:
        assert client.docmd("AUTH", "PLAIN " + plain("s1", "guess one")) == INVALID
        assert client.docmd("AUTH", "PLAIN " + plain("s1", "guess two")) == INVALID
    with connect(relay) as client:
        # Blocked for a while, even with the right password: guessing gains nothing.
        code, text = client.docmd("AUTH", "PLAIN " + plain("s1", PASSWORD))
        assert code == 454 and text.startswith(b"4.7.0"), text


async def test_authenticated_seller_writes_to_its_own_buyer_from_any_address(submission):
    relay = submission
    alias = relay.own["buyer_alias"]
    private = "sam.private@mailbox.example"
    with connect(relay) as client:
        client.login("s1", PASSWORD)
        client.sendmail(private, [alias], seller_message(
            f"Sam <{private}>", alias, f"Your parcel leaves tomorrow.\r\nSam ({private})"))
    (delivered,) = await relay.sink.wait_for_count(1)
    assert delivered.rcpt_tos == ["bob@buyer.test"]
    msg = message_from_bytes(delivered.data, policy=policy.default)
    assert msg["From"].addresses[0].addr_spec == relay.own["seller_alias"]
    assert msg["From"].addresses[0].display_name == "Sam's Shop"
    assert b"mailbox.example" not in delivered.data.lower() and b"shop.example" not in delivered.data.lower()
    (row,) = relay.audit("o1")
    assert row["verdict"] == "accepted" and row["sender"] == private  # the real envelope sender is audited


async def test_authenticated_seller_cannot_write_to_another_sellers_order(submission):
    relay = submission
    with connect(relay) as client:
        client.login("s1", PASSWORD)
        assert client.docmd("MAIL", "FROM:<sam@shop.example>")[0] == 250
        code, text = client.docmd("RCPT", f"TO:<{relay.other['buyer_alias']}>")
        assert code == 550 and text.startswith(b"5.7.1 [sender_not_authorized]")
        # Nor to its own order's seller alias (that is the buyer's way back), nor to postmaster.
        code, text = client.docmd("RCPT", f"TO:<{relay.own['seller_alias']}>")
        assert code == 550 and text.startswith(b"5.7.1 [sender_not_authorized]")
        assert client.docmd("RCPT", "TO:<postmaster@relay.example>")[0] == 550
        assert client.docmd("RCPT", f"TO:<{relay.own['buyer_alias']}>")[0] == 250
    (refusal,) = relay.audit("o2")
    assert refusal["verdict"] == "rejected" and refusal["reasons"] == ["sender_not_authorized"]
    assert relay.sink.messages == []

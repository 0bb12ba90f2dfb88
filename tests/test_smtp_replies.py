"""Each row of the contract's SMTP table, and the envelope attacks of THREATS C/D."""

from __future__ import annotations

import re

import pytest

from relay.pipeline import UNKNOWN_ALIAS
from relay.server import INTERNAL_ERROR, RelayHandler
from smtp_dialogue import RawSMTP

CLEAN = "From: {frm}\r\nTo: {to}\r\nSubject: Parcel\r\n\r\nYour parcel leaves tomorrow.\r\n"


def session(relay) -> RawSMTP:
    s = RawSMTP(*relay.mx)
    assert s.cmd("EHLO client.test").startswith("250")
    return s


async def test_banner_names_no_software_or_version(relay):
    with RawSMTP(*relay.mx) as s:
        assert re.fullmatch(r"220 mx\.relay\.example ESMTP ready", s.banner)
        ehlo = s.cmd("EHLO client.test")
    assert "python" not in (s.banner + ehlo).lower()
    assert "SIZE 26214400" in ehlo


async def test_ehlo_offers_pipelining_and_enhanced_status_codes(relay):
    with RawSMTP(*relay.mx) as s:
        ehlo = s.cmd("EHLO client.test").splitlines()
    assert {"250-PIPELINING", "250-ENHANCEDSTATUSCODES"} <= set(ehlo) and ehlo[-1].startswith("250 ")


ENHANCED = re.compile(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3} \S")


async def test_every_reply_carries_an_enhanced_status_code(scenario):
    """RFC 2034 section 3: once ENHANCEDSTATUSCODES is offered, every 2xx,
    4xx and 5xx reply but the greeting's and HELO's or EHLO's carries one."""
    alias = scenario.buyer_alias
    replies = []
    with RawSMTP(*scenario.relay.mx) as s:
        assert s.cmd("HELO client.test") == "250 mx.relay.example"
        for line in ("NOOP", "RSET", "HELP", "HELP MAIL", "HELP FOO", "DATA", f"RCPT TO:<{alias}>", "MAIL",
                     f"MAIL FROM:<{scenario.seller_email}> XYZ=1", f"MAIL FROM:<{scenario.seller_email}> BODY=FOO",
                     f"MAIL FROM:<{scenario.seller_email}> SIZE=abc", f"MAIL FROM:<{scenario.seller_email}>",
                     f"MAIL FROM:<{scenario.seller_email}>", "RCPT", "RCPT TO:<nobody@relay.example>",
                     "RCPT TO:<x@else.example>", f"RCPT TO:<{alias}>", "DATA x", "VRFY bob", "EXPN staff", "FOO",
                     "AUTH PLAIN", "STARTTLS", "RSET", "QUIT"):
            replies.append(s.cmd(line))
    assert [r for r in replies if not ENHANCED.match(r)] == []
    assert replies[-1] == "221 2.0.0 Bye"


async def test_pipelined_commands_get_their_replies_in_order(scenario, sink):
    """What PIPELINING promises (RFC 2920): a group of commands in one write
    is answered command by command, nothing lost."""
    relay = scenario.relay
    with RawSMTP(*relay.mx) as s:
        s.cmd("EHLO client.test")
        s.send(f"MAIL FROM:<{scenario.seller_email}>\r\nRCPT TO:<nobody@relay.example>\r\n"
               f"RCPT TO:<{scenario.buyer_alias}>\r\nDATA\r\n".encode())
        assert [s.reply()[:9] for _ in range(4)] == ["250 2.1.0", "550 5.1.1", "250 2.1.5", "354 End d"]
        body = CLEAN.format(frm=scenario.seller_email, to=scenario.buyer_alias).encode()
        s.send(body + b".\r\nRSET\r\nNOOP\r\n")
        assert [s.reply()[:5] for _ in range(3)] == ["250 2", "250 2", "250 2"]
    await sink.wait_for_count(1)


async def test_foreign_domain_is_never_relayed(relay):
    with session(relay) as s:
        assert s.cmd("MAIL FROM:<>").startswith("250")
        assert s.cmd("RCPT TO:<victim@external.example>").startswith("550 5.7.1")
        assert s.cmd("RCPT TO:<victim@relay.example.external.example>").startswith("550 5.7.1")


async def test_unknown_aliases_get_one_identical_reply(scenario):
    relay = scenario.relay
    alias = scenario.buyer_alias.split("@")[0]
    one_letter_off = alias[:-1] + ("y" if alias.endswith("x") else "x")  # (1 alias in 31 ends in x)
    replies = set()
    with session(relay) as s:
        s.cmd(f"MAIL FROM:<{scenario.seller_email}>")
        for local in ("zzzzzzzzzzzzzzzzzz", "nobody", "a" * 64, one_letter_off,
                      "bounces-00112233445566778899aabb", "victim%external.example",
                      "external.example!victim", '"victim@external.example"'):
            replies.add(s.cmd(f"RCPT TO:<{local}@relay.example>"))
    assert replies == {UNKNOWN_ALIAS}


async def test_sender_not_authorized_at_rcpt(scenario):
    with session(scenario.relay) as s:
        s.cmd("MAIL FROM:<stranger@else.example>")
        reply = s.cmd(f"RCPT TO:<{scenario.buyer_alias}>")
    assert reply.startswith("550 5.7.1 [sender_not_authorized] ")


async def test_size_limit_is_advertised_and_enforced(relay_factory, sink):
    relay = await relay_factory({"limits": {"message_size": 2000}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    with session(relay) as s:
        assert s.cmd("MAIL FROM:<sam@shop.example> SIZE=999999999").startswith("552 5.3.4")
        assert s.cmd("MAIL FROM:<sam@shop.example> SIZE=100").startswith("250")
        assert s.cmd(f"RCPT TO:<{aliases['buyer_alias']}>").startswith("250")
        assert s.cmd("DATA").startswith("354")
        body = CLEAN.format(frm="sam@shop.example", to=aliases["buyer_alias"]) + ("x" * 70 + "\r\n") * 40
        reply = s.cmd(body.encode() + b".")
        assert reply.startswith("552 5.3.4"), reply
        # The session stays in sync: a fitting message still goes through.
        assert s.cmd("MAIL FROM:<sam@shop.example>").startswith("250")
        assert s.cmd(f"RCPT TO:<{aliases['buyer_alias']}>").startswith("250")
        assert s.cmd("DATA").startswith("354")
        assert s.cmd(CLEAN.format(frm="sam@shop.example", to="x").encode() + b".").startswith("250")
    await sink.wait_for_count(1)
    # The contract: every message to a known alias is an exchange and is
    # audited, the one refused for its size too (its octets were never kept).
    refused, accepted = relay.audit("o1")
    assert (refused["verdict"], refused["reasons"], refused["delivery"]) == ("rejected", ["message_too_large"], None)
    assert refused["recipient"] == aliases["buyer_alias"] and refused["sender"] == "sam@shop.example"
    shown = relay.cli("audit", "show", str(refused["id"]))
    assert shown.returncode == 2 and b"refused before its content was read" in shown.stderr
    assert accepted["verdict"] == "accepted"


async def test_a_line_too_long_is_refused_and_audited(relay_factory, sink):
    relay = await relay_factory()
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    with session(relay) as s:
        for header in ("", "X-Long: " + "y" * 1200 + "\r\n"):
            assert s.cmd("MAIL FROM:<sam@shop.example>").startswith("250")
            assert s.cmd(f"RCPT TO:<{aliases['buyer_alias']}>").startswith("250")
            assert s.cmd("DATA").startswith("354")
            body = header + CLEAN.format(frm="sam@shop.example", to=aliases["buyer_alias"])
            if not header:
                body += "z" * 1200 + "\r\n"
            assert s.cmd(body.encode() + b".").startswith("500 5.5.2")
    rows = relay.audit("o1")
    assert [(r["verdict"], r["reasons"], r["direction"]) for r in rows] == [("rejected", ["malformed"],
                                                                             "seller_to_buyer")] * 2
    assert sink.messages == []


async def test_data_cut_off_by_the_client_is_no_exchange(relay_factory):
    relay = await relay_factory({"limits": {"message_size": 2000}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    for tail in (b"x" * 5000 + b"\r\n", b"y" * 1500 + b"\r\n"):  # too much, a line too long: never ended
        with session(relay) as s:
            s.cmd("MAIL FROM:<sam@shop.example>")
            s.cmd(f"RCPT TO:<{aliases['buyer_alias']}>")
            assert s.cmd("DATA").startswith("354")
            s.send(b"Subject: cut\r\n\r\n" + tail)
    with session(relay) as s:  # (the sessions above have ended once this one is served)
        assert s.cmd("NOOP").startswith("250")
    assert relay.audit("o1") == []


async def test_one_alias_per_transaction(scenario):
    relay = scenario.relay
    relay.open_order("o-2", "s1", "carl@buyer.test")
    other = relay.open_order("o-2", "s1", "carl@buyer.test")["buyer_alias"]
    with session(relay) as s:
        s.cmd(f"MAIL FROM:<{scenario.seller_email}>")
        assert s.cmd(f"RCPT TO:<{scenario.buyer_alias}>").startswith("250")
        assert s.cmd(f"RCPT TO:<{scenario.buyer_alias}>").startswith("250")  # duplicate ignored
        assert s.cmd(f"RCPT TO:<{other}>").startswith("452 4.5.3")


async def test_postmaster_is_accepted_and_reaches_the_operator(relay, sink):
    with session(relay) as s:
        s.cmd("MAIL FROM:<someone@else.example>")
        assert s.cmd("RCPT TO:<postmaster>").startswith("250")
        assert s.cmd("DATA").startswith("354")
        assert s.cmd(b"Subject: abuse report\r\n\r\nhello\r\n.").startswith("250")
        s.cmd("MAIL FROM:<someone@else.example>")
        assert s.cmd("RCPT TO:<PostMaster@relay.example>").startswith("250")
    (delivered,) = await sink.wait_for_count(1)
    assert delivered.rcpt_tos == ["postmaster@localhost"]


async def test_vrfy_and_expn_confirm_nothing(scenario):
    with session(scenario.relay) as s:
        assert s.cmd(f"VRFY {scenario.buyer_alias}").startswith("252")
        assert s.cmd("VRFY nobody@relay.example").startswith("252")
        assert s.cmd("EXPN staff").startswith("502")


@pytest.mark.parametrize("rcpt, expected", [
    ("<victim@external.example>", "550 5.7.1"),                       # 21 plain relay
    ("<victim%external.example@relay.example>", "550 5.1.1"),         # 22 percent hack
    ("<@relay.example:victim@external.example>", "550 5.7.1"),        # 23 source route
    ('<"victim@external.example"@relay.example>', "550 5.1.1"),       # 24 quoted @
    ("<victim@external.example@relay.example>", "5"),                 # 25 double @ -> 501/553
    ("<external.example!victim@relay.example>", "550 5.1.1"),         # 26 bang path
    ("<x@[203.0.113.5]>", "550 5.7.1"),                               # 26 IP literal
    ("<x@[IPv6:::1]>", "550 5.7.1"),                                  # 26 IPv6 literal
    ("<victim@relay.example.>", "5"),                                 # 27 trailing dot -> 501/553 5.1.3
    ('<a"@relay.example>', "5"),                                      # 28 unbalanced quote
    ("<victim@EXTERNAL.example>", "550 5.7.1"),
    ("<" + "a" * 65 + "@relay.example>", "501"),                      # 30 local part > 64
    ("<victim@external.example> NOTIFY=SUCCESS", "5"),
    ("<victim@xn--rlay-5qa.example>", "550 5.7.1"),                   # IDN look-alike
    ("<victim\\@external.example@relay.example>", "5"),
    ("<victim@external.example>,<x@relay.example>", "5"),
    ("<;sleep 66;@external.example>", "5"),                           # 31 hostile characters
])
async def test_open_relay_variants_are_refused(relay, sink, rcpt, expected):
    with session(relay) as s:
        assert s.cmd("MAIL FROM:<attacker@evil.example>").startswith("250")
        reply = s.cmd(f"RCPT TO:{rcpt}")
        assert reply.startswith(expected), reply
        assert s.cmd("DATA").startswith("503")  # no recipient was accepted
    assert sink.messages == []


async def test_alias_in_upper_case_and_with_source_route_matches(scenario):
    with session(scenario.relay) as s:
        s.cmd(f"MAIL FROM:<{scenario.seller_email.upper()}>")
        assert s.cmd(f"RCPT TO:<{scenario.buyer_alias.upper()}>").startswith("250")
        s.cmd("RSET")
        s.cmd(f"MAIL FROM:<{scenario.seller_email}>")
        assert s.cmd(f"RCPT TO:<@relay.example:{scenario.buyer_alias}>").startswith("250")


async def test_control_characters_in_a_command_get_501_and_the_session_goes_on(scenario, sink):
    """THREATS #4: a bare CR (or a NUL, or another control character) in a
    command is a syntax error, never a part stripped away: a probe's
    `EHLO evil\\rInjected: yes`, `HELO a\\0b`, `MAIL FROM:<...\\r>` and
    `RCPT TO:<...\\r>` all got 250, and the message was relayed."""
    seller, alias = scenario.seller_email, scenario.buyer_alias
    with RawSMTP(*scenario.relay.mx) as s:
        for line in (b"EHLO evil\rInjected: yes", b"HELO a\0b", b"EHLO client\x1b.test"):
            assert s.cmd(line).startswith("501 5.5.2"), line
        assert s.cmd("EHLO client.test").startswith("250")
        assert s.cmd(f"MAIL FROM:<{seller}\r>".encode()).startswith("501 5.5.2")
        assert s.cmd(f"MAIL FROM:<{seller}>").startswith("250")
        assert s.cmd(f"RCPT TO:<{alias}\r>".encode()).startswith("501 5.5.2")
        assert s.cmd(f"RCPT TO:<{alias}\0>".encode()).startswith("501 5.5.2")
        assert s.cmd("RSET").startswith("250")
    assert scenario.relay.audit() == [] and sink.messages == []


async def test_out_of_order_verbs(relay):
    with RawSMTP(*relay.mx) as s:
        assert s.cmd("DATA").startswith("503")
        assert s.cmd("EHLO client.test").startswith("250")
        assert s.cmd("RCPT TO:<x@relay.example>").startswith("503")
        assert s.cmd("MAIL FROM:<a@b.example>").startswith("250")
        assert s.cmd("MAIL FROM:<a@b.example>").startswith("503")
        assert s.cmd("DATA").startswith("503")


async def test_internal_errors_answer_451_without_detail():
    handler = RelayHandler(pipeline=None)  # type: ignore[arg-type]
    reply = await handler.handle_exception(ValueError("bob@buyer.test exploded in /srv/relay/x.py"))
    assert reply == INTERNAL_ERROR
    assert "bob" not in reply and "ValueError" not in reply

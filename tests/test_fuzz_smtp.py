"""Hypothesis against a running relay: random dialogues and random message
bytes always get a well-formed reply, never a crash, a hang or a traceback."""

from __future__ import annotations

import re
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtp_dialogue import RawSMTP

REPLY = re.compile(r"^[2-5]\d\d[ -]")
LEAKY = ("Traceback", "Error: (", "Exception", "sqlite", "File \"")

VERBS = ["HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT",
         "STARTTLS", "AUTH PLAIN", "BDAT", "XCLIENT", "GET / HTTP/1.1", "\x00", "MAIL FROM:<>", "RCPT TO:<postmaster>"]
ARG = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF, blacklist_characters="\r\n"), max_size=80)
LINE = st.one_of(
    st.tuples(st.sampled_from(VERBS), ARG).map(lambda t: (t[0] + " " + t[1]).encode("utf-8", "replace")),
    st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


def check_reply(reply: str) -> None:
    for line in reply.splitlines():
        assert REPLY.match(line), f"malformed reply {reply!r}"
    assert not any(word in reply for word in LEAKY), reply


def alive(relay) -> None:
    with RawSMTP(*relay.mx, timeout=10) as s:
        assert s.cmd("EHLO check.test").startswith("250")


async def test_random_dialogues_get_well_formed_replies(relay):
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    relay.open_order("o1", "s1", "bob@buyer.test")

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(LINE, min_size=1, max_size=12))
    def dialogue(lines):
        try:
            with RawSMTP(*relay.mx, timeout=10) as s:
                check_reply(s.banner)
                for line in lines:
                    try:
                        s.send(line + b"\r\n")
                        reply = s.reply()
                    except (ConnectionError, BrokenPipeError):
                        break  # the relay may close a session that misbehaves
                    check_reply(reply)
                    if reply.startswith("354"):
                        s.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
                        check_reply(s.reply())
        except socket.timeout:
            raise AssertionError(f"the relay hung on {lines!r}")

    dialogue()
    alive(relay)
    assert not any("Traceback" in line for line in relay.log_lines)


async def test_random_message_bytes_get_well_formed_replies(relay, sink):
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    aliases = relay.open_order("o1", "s1", "bob@buyer.test")
    alias = aliases["seller_alias"]
    header = f"From: bob@buyer.test\r\nTo: {alias}\r\n".encode()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=3000), st.booleans())
    def message(body, with_header):
        data = (header if with_header else b"") + body
        data = data.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b"."):
            data = b"." + data
        with RawSMTP(*relay.mx, timeout=20) as s:
            s.cmd("EHLO fuzz.test")
            assert s.cmd("MAIL FROM:<bob@buyer.test>").startswith("250")
            assert s.cmd(f"RCPT TO:<{alias}>").startswith("250")
            assert s.cmd("DATA").startswith("354")
            s.send(data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            reply = s.reply()
            check_reply(reply)
            assert reply[:3] in ("250", "500", "550", "552", "554"), reply

    message()
    alive(relay)
    assert not any("Traceback" in line for line in relay.log_lines)

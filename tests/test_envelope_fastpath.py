"""The fast path for plain envelope paths (relay.server.plain_path and the
plain-address shortcut of the defect check) gives exactly what the stdlib's
parser gives whenever it answers, and leaves every other form to the parser."""

from __future__ import annotations

from email._header_value_parser import get_angle_addr, get_addr_spec
from email.errors import HeaderParseError

from hypothesis import HealthCheck, given, settings, strategies as st

from relay.server import _PLAIN_ADDRESS, plain_path

PIECES = ["a", "Z", "0", ".", "..", "@", "<", ">", " ", "  ", "\t", "(", ")", "\"", "\\", "-", "+", "_", "=",
          "x.example", "[1.2.3.4]", ":", ",", ";", "SIZE=10", "BODY=8BITMIME", "é", "!", "%", "'", "`"]


def stdlib(arg: str):
    try:
        token, rest = get_angle_addr(arg)
    except HeaderParseError:
        return None
    return token.addr_spec, rest, bool(token.all_defects)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=12).map("".join))
def test_plain_path_agrees_with_the_stdlib(tail):
    for arg in ("<" + tail, "<a" + tail, "<a@" + tail, "<a.b@x" + tail, "<ab@x.example>" + tail, tail):
        fast = plain_path(arg)
        if fast is None:
            continue
        slow = stdlib(arg)
        assert slow is not None, arg
        assert fast == slow[:2] and not slow[2], (arg, fast, slow)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=10).map("".join))
def test_plain_address_has_no_defects_in_the_stdlib(text):
    for address in (text, "a" + text, text + "@x.example", "a@" + text):
        if _PLAIN_ADDRESS.fullmatch(address):
            token, rest = get_addr_spec(address)
            assert rest == "" and not token.all_defects and token.addr_spec == address, address


def test_common_forms_take_the_fast_path():
    assert plain_path("<sam@shop.example>") == ("sam@shop.example", "")
    assert plain_path("<sam.o-k+tag@mail.shop.example> SIZE=2048 BODY=8BITMIME") == \
        ("sam.o-k+tag@mail.shop.example", "SIZE=2048 BODY=8BITMIME")
    for odd in ('<"a b"@x.example>', "<@route:a@x.example>", "<a@[1.2.3.4]>", "<a@x.example> (c) SIZE=1",
                "<a@x.example>\tSIZE=1", "<a..b@x.example>", "<a@x.example.>", "<>", "a@x.example"):
        assert plain_path(odd) is None, odd

"""The caching parse policy (relay.parsing) gives exactly what policy.default
gives, shares nothing mutable between messages, and keeps long values out of
its cache."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

from relay import parsing

MESSAGE = (b"From: \"Sam\" <sam@shop.example>\r\nTo: a@relay.example, \"B\" <b@relay.example>\r\n"
           b"Subject: =?utf-8?q?Caf=C3=A9?= order\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Message-ID: <m1@shop.example>\r\nX-Long: " + b"word " * 100 + b"\r\n\r\nHello\r\n")


def test_cached_fields_equal_the_stdlib_parse():
    ours = parsing.parse_message(MESSAGE)
    stdlib = BytesParser(policy=policy.default).parsebytes(MESSAGE)
    for name in ("From", "To", "Subject", "Content-Type", "Message-ID", "X-Long"):
        for _ in range(2):  # the second read comes from the cache
            a, b = ours[name], stdlib[name]
            assert str(a) == str(b) and type(a).__mro__[1:] == type(b).__mro__[1:] and a.defects == b.defects, name
    assert [x.addr_spec for x in ours["To"].addresses] == ["a@relay.example", "b@relay.example"]
    assert ours.get_content_type() == "text/plain" and ours.get_content_charset() == "utf-8"


def test_two_messages_get_their_own_values():
    first = parsing.parse_message(MESSAGE)
    second = parsing.parse_message(MESSAGE.replace(b"m1@shop", b"m2@shop"))
    assert first["Message-ID"] == "<m1@shop.example>" and second["Message-ID"] == "<m2@shop.example>"
    assert first["From"] is second["From"]  # same raw value: one parse, immutable


def test_long_values_are_not_cached():
    message = parsing.parse_message(MESSAGE)
    parsing._parsed.cache_clear()
    assert len(str(message["X-Long"])) > parsing.CACHED_VALUE_LENGTH
    assert parsing._parsed.cache_info().currsize == 0
    message["Content-Type"]
    assert parsing._parsed.cache_info().currsize == 1


def test_values_new_in_every_message_do_not_push_out_the_repeating_ones():
    parsing._parsed.cache_clear()
    parsing._parsed_unique.cache_clear()
    first = parsing.parse_message(MESSAGE)
    content_type = first["Content-Type"]
    for n in range(parsing.CACHE_ENTRIES + 10):
        other = parsing.parse_message(MESSAGE.replace(b"m1@shop", f"n{n}@shop".encode())
                                      .replace(b"Caf=C3=A9", f"Caf=C3=A9 {n}".encode()))
        assert other["Message-ID"] == f"<n{n}@shop.example>" and other["Subject"] == f"Café {n} order"
        assert other["Date"] is None
    assert parsing._parsed.cache_info().currsize == 1
    assert parsing._parsed_unique.cache_info().currsize == parsing.UNIQUE_CACHE_ENTRIES
    assert parsing.parse_message(MESSAGE)["Content-Type"] is content_type  # still cached

"""Spellings that sellers use to slip an address, a phone number or a web address past the
content filters (tabs, line breaks, bracketed or spaced signs, look-alike and invisible
characters), and the everyday prose beside them that must stay clean."""

from __future__ import annotations

import pytest

from relay.filters import content
from relay.filters.addresses import EmailAddress
from relay.filters.base import SELLER_TO_BUYER, FilterContext, MessageView, TextPart
from relay.filters.links import Link
from relay.filters.phones import PhoneNumber
from relay.filters.settings import FilterSettings

CTX = FilterContext(direction=SELLER_TO_BUYER, relay_domain="relay.example",
                    own_aliases=frozenset({"k7m2x9q4p8r3t6w5zc@relay.example"}))
EMAIL = EmailAddress(FilterSettings())
LINK = Link(FilterSettings())
PHONE = PhoneNumber(FilterSettings())


def fragments(flt, text: str) -> list[str]:
    content.clear_caches()
    view = MessageView(subject="Your order", parts=(TextPart("text/plain part 1", "text/plain", text),))
    return [f.fragment for f in flt.check(view, CTX)]


# ------------------------------------------------------------------ email_address


@pytest.mark.parametrize("text", [
    "write to john\tat\tgmail dot com",
    "write to john\tat\tgmail\tdot\tcom",
    "write to john at\ngmail dot com",
    "write to john\nat gmail dot com",
    "write to john at\r\ngmail dot com",
    "write to john at gmail\ndot com",
    "write to john [ at ] gmail.com",
    "write to john ( at ) gmail . com",
    "write to john{at}gmail{dot}com",
    "write to john (@) gmail (.) com",
    "write to john [ @ ] gmail [ . ] com",
    "write to john\t[at]\tgmail\t[dot]\tcom",
    "write to john @ gmail . com",
    "write to john\uff20gmail.com",  # full-width commercial at
    "write to john\ufe6bgmail.com",  # small commercial at
    "write to \uff4a\uff4f\uff48\uff4e\uff20\uff47\uff4d\uff41\uff49\uff4c\uff0e\uff43\uff4f\uff4d",  # all full-width
    "write to john\u200b@gmail.com",  # zero-width space
    "write to john\u2060@\u2060gmail.com",  # word joiners
    "write to john@gmail\u200b.com",
    "write to john at gmail\ufe52com",  # small full stop
    'write to "john"@gmail.com',  # a quoted local part (RFC 5322 section 3.4.1)
    'write to "john.smith" @ gmail.com',
    # Found by a black-box probe: refused as [link] only, never named an address.
    "Write to john@gmail dot com",
    "write to john@gmail(dot)com or john@gmail [dot] com",
    "Write to john%40gmail.com",
])
def test_obfuscated_email_address_is_found(text):
    assert fragments(EMAIL, text)


@pytest.mark.parametrize("text", [
    "look at the gmail app",
    "meet at 5 dot com",
    "I looked at gmail dot com yesterday",
    "we ship at noon [at] the latest",
    "look (at) this",
    "priced at 12 dot 50",
    "the item at position 4 dot 2",
    "see you at\nthe office.",
    "It arrives at\n5 pm.",
    "We stayed at\thome.",
    "Please look at\nthe photos; the box is at\tthe depot.",
    "3 units (@) 12.50 each",
])
def test_prose_near_at_and_dot_is_no_email_address(text):
    assert fragments(EMAIL, text) == []


# ------------------------------------------------------------------ phone_number


@pytest.mark.parametrize("text", [
    "call 415\t555\t2671",
    "call 06\t12\t34\t56\t78",
    "call +1\t415\t555\t2671",
    "call 4 1 5 - 5 5 5 - 2 6 7 1",
    "call 4.1.5.5.5.5.2.6.7.1",
    "call 06 . 12 . 34 . 56 . 78",
    "four one five, five five five, two six seven one",
    "zero six, one two, three four, five six, seven eight",
    "call 0\u200b6 12 34 56 78",  # zero-width space
    "call \uff10\uff16 \uff11\uff12 \uff13\uff14 \uff15\uff16 \uff17\uff18",  # full-width digits
])
def test_phone_number_with_odd_separators_is_found(text):
    assert fragments(PHONE, text)


@pytest.mark.parametrize("text", [
    "order\t123-4567890-1234567",
    "USPS 9400\t1000\t0000\t0000\t0000\t00",
    "dates 2024-03-15\tand\t15/03/2024",
    "invoice\t2024-000457\ttotal\t$1,234.56\tqty\t12",
])
def test_tab_separated_references_are_no_phone_number(text):
    assert fragments(PHONE, text) == []


# ------------------------------------------------------------------ link


@pytest.mark.parametrize("text", [
    "visit example\tdot\tcom",
    "visit example dot\ncom",
    "visit example(punkt)de",
    "visit shop\u200b.com",
    "visit www\uff0eexample\uff0ecom",
    "visit \uff57\uff57\uff57.example.com",
])
def test_spelled_or_disguised_web_address_is_found(text):
    assert fragments(LINK, text)


@pytest.mark.parametrize("text", [
    "meet at 5 dot com",
    "the box has a red dot\tin the corner",
    "score 3 dot 0 in the review",
])
def test_prose_with_dot_is_no_link(text):
    assert fragments(LINK, text) == []


# ------------------------------------------------------------------ text hidden by CSS


def html_fragments(flt, html: str) -> list[str]:
    content.clear_caches()
    view = MessageView(subject="Your order", parts=(TextPart("text/html part 1", "text/html", html),))
    return [f.fragment for f in flt.check(view, CTX)]


@pytest.mark.parametrize("veil", [
    '<span style="display:none">7</span>', '<span style="DISPLAY: none !important">7</span>',
    "<span hidden>7</span>", '<font style="font-size:0px">7</font>', '<span style="visibility:hidden">7</span>',
    '<span style="opacity:0">7</span>', '<span style="mso-hide:all;display:none"><span>7</span>7</span>',
])
def test_a_phone_number_split_by_hidden_text_is_found(veil):
    """The reader sees 415-555-2671: what CSS hides between its digits is no separator."""
    assert html_fragments(PHONE, f"<p>Call me on 415{veil}-555-2671 tonight</p>") == ["415-555-2671"]


def test_an_address_split_by_hidden_text_is_found_as_shown():
    found = html_fragments(EMAIL, '<p>write to john<span style="display:none">zz</span>@gmail.com</p>')
    assert "john@gmail.com" in found


@pytest.mark.parametrize("html", [
    # A preheader: hidden text of its own, nothing joined across it.
    '<span style="display:none;max-height:0;overflow:hidden">Your parcel ships Monday</span><p>Hello Bob</p>',
    '<p>Order 4521<br style="display:none">339 ships today</p><p>Thanks for your order</p>',
    '<div hidden>old note</div><p>Thanks, 2 items</p>',
])
def test_hidden_text_alone_raises_nothing(html):
    assert html_fragments(PHONE, html) == [] and html_fragments(EMAIL, html) == [] and html_fragments(LINK, html) == []


def test_a_finding_only_the_displayed_text_shows_is_rejected_even_where_redaction_is_asked():
    """The redaction replaces a fragment where the seller wrote it; a number
    that only the rendering joins is not written anywhere, so it cannot be
    redacted, and the message is refused rather than relayed with it."""
    from relay.filters.chain import Chain
    from relay.filters.settings import parse_filter_settings

    content.clear_caches()
    chain = Chain(parse_filter_settings({"actions": {"phone_number": "redact"}}))
    html = '<p>Call 415<span style="display:none">7</span>-555-2671 or 415-555-0123</p>'
    result = chain.run(MessageView(subject="x", parts=(TextPart("text/html part 1", "text/html", html),)), CTX)
    assert result.rejection is not None and result.rejection.code == "phone_number"
    assert result.rejection.fragment == "415-555-2671"
    assert ("415-555-0123", "[phone number removed]") in result.redactions

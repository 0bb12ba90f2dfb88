"""Unit tests of the content filters: link, email_address, phone_number, promotion, tracking_pixel."""

from __future__ import annotations

import pytest

from relay.filters.addresses import EmailAddress
from relay.filters.base import BUYER_TO_SELLER, SELLER_TO_BUYER, FilterContext, MessageView, TextPart
from relay.filters.chain import Chain, rejection_reply
from relay.filters.links import Link
from relay.filters.phones import PhoneNumber
from relay.filters.pixels import TrackingPixel
from relay.filters.promotion import Promotion
from relay.filters.settings import FilterSettings

ALIAS = "k7m2x9q4p8r3t6w5zc@relay.example"
CTX = FilterContext(direction=SELLER_TO_BUYER, relay_domain="relay.example", own_aliases=frozenset({ALIAS}))
SETTINGS = FilterSettings()


def plain(text: str, subject: str = "Your order") -> MessageView:
    return MessageView(subject=subject, parts=(TextPart("text/plain part 1", "text/plain", text),))


def html(markup: str, subject: str = "Your order") -> MessageView:
    return MessageView(subject=subject, parts=(TextPart("text/html part 1", "text/html", markup),))


def fragments(flt, view: MessageView, ctx: FilterContext = CTX) -> list[str]:
    return [f.fragment for f in flt.check(view, ctx)]


# ------------------------------------------------------------------ link

LINK = Link(SETTINGS)


@pytest.mark.parametrize("text, fragment", [
    ("see https://shop.example.com/item?id=3.", "https://shop.example.com/item?id=3"),
    ("go to www.luna-crafts.com now", "www.luna-crafts.com"),
    ("we are on lunacrafts.shop/about", "lunacrafts.shop/about"),
    ("visit example.co.uk", "example.co.uk"),
    ("photos on example[.]com", "example[.]com"),
    ("photos on example(dot)com", "example(dot)com"),
    ("go to example dot com", "example dot com"),
    ("le site atelier point fr", "atelier point fr"),
    ("open evil.example for details", "evil.example"),
    ("(see http://evil.example/a_(b))", "http://evil.example/a_(b)"),
    ("defanged hxxps://bad.site/x", "hxxps://bad.site/x"),
])
def test_link_found(text, fragment):
    assert fragment in fragments(LINK, plain(text))


@pytest.mark.parametrize("text", [
    "e.g. the blue one, i.e. the cheaper model",
    "attached invoice.pdf and photo.jpg and notes.txt and report.docx",
    "the archive backup.zip is too big",
    "version 2.4.1 and 10.0.19045",
    "total 12.50 EUR, 1,234.56 USD",
    "It was done.Thanks for waiting",
    "Arrived at the depot.Best regards",
    "Mr. Smith from St. Louis, approx. 3 days",
    f"write to {ALIAS}",
    "reply to john@gmail.com",  # an address is email_address's, not a link
    "the shop at relay.example is ours",
    "https://relay.example/help is our own help page",
    "There is a red dot in the corner of the box.",
    "Le point de retrait ferme à 19 h, au point fort du quartier.",
    "Thanks.it works now, ref.no 5, done.now",
])
def test_link_not_found(text):
    assert fragments(LINK, plain(text)) == []


def test_link_allowlist_covers_subdomains_and_not_lookalikes():
    flt = Link(FilterSettings(link_allow_domains=("shop-market.com",)))
    assert fragments(flt, plain("see https://www.shop-market.com/orders/1 and shop-market.com")) == []
    assert fragments(flt, plain("see https://shop-market.com.evil.io/login"))
    assert fragments(flt, plain("see https://notshop-market.com/"))


def test_link_in_html_href_and_visible_text():
    view = html('<p>Details: <a href="https://evil.example/x">here</a> or www.other.com</p>')
    found = fragments(LINK, view)
    assert "https://evil.example/x" in found and "www.other.com" in found


def test_link_ignores_mailto_cid_and_fragment_hrefs():
    view = html(f'<a href="mailto:{ALIAS}">reply</a><a href="#top">top</a><img src="cid:logo">')
    assert fragments(LINK, view) == []


def test_link_in_subject():
    findings = LINK.check(plain("hello", subject="see www.shop.com"), CTX)
    assert [(f.location, f.fragment) for f in findings] == [("subject", "www.shop.com")]


def test_link_finding_is_actionable():
    [finding] = LINK.check(plain("see www.shop.com"), CTX)
    assert finding.code == "link" and finding.location == "text/plain part 1"
    reply = rejection_reply(finding)
    assert reply.startswith("550 5.7.1 [link] ") and '"www.shop.com"' in reply


# ------------------------------------------------------------------ email_address

EMAIL = EmailAddress(SETTINGS)


@pytest.mark.parametrize("text", [
    "write to john.smith@gmail.com",
    "contact: seller@othershop.example",
    "john at gmail dot com",
    "john[at]gmail.com",
    "john (at) gmail (dot) com",
    "marie arobase free point fr",
    "sales @ widgets.com",
    "JOHN@EXAMPLE.ORG",
])
def test_email_found(text):
    assert fragments(EMAIL, plain(text))


@pytest.mark.parametrize("text", [
    f"reply to {ALIAS}",
    "b3n8v1c6x4z9q2w7ea@relay.example is the buyer's alias",
    "anything@relay.example is ours",
    "3 units @ 12.50 each",
    "I'll be at home tomorrow",
    "see you at work.It will be fine",
    "Full details at lunacrafts.shop",  # a link, not an address
    "meet at 5.30 pm",
])
def test_email_not_found(text):
    assert fragments(EMAIL, plain(text)) == []


def test_email_in_mailto_and_entities():
    found = fragments(EMAIL, html('<a href="mailto:a%40shop.com?cc=b@shop.com">x</a><p>c&#64;shop.com</p>'))
    assert "c@shop.com" in found and any(f.startswith("mailto:") for f in found)


def test_email_mailto_own_alias_is_fine():
    assert fragments(EMAIL, html(f'<a href="mailto:{ALIAS}">{ALIAS}</a>')) == []


# ------------------------------------------------------------------ phone_number

PHONE = PhoneNumber(SETTINGS)


@pytest.mark.parametrize("text", [
    "call 06 12 34 56 78",
    "ring +44 20 7946 0958",
    "text (415) 555-2671",
    "WhatsApp +49 171 2345678",
    "mon portable 0612345678",
    "call 1-800-555-0199",
    "dial 0044 20 7946 0958",
    "zero six one two three four five six seven eight",
])
def test_phone_found(text):
    assert fragments(PHONE, plain(text))


@pytest.mark.parametrize("text", [
    "order 123-4567890-1234567",
    "UPS 1Z999AA10123456784",
    "UPS 1Z 999 AA1 01 2345 6784 shipped.",  # UPS's own spaced layout
    "UPS tracking: 1Z 12E 020 42 1234 5670",
    "USPS 9400 1000 0000 0000 0000 00",
    "FedEx 123456789012",
    "price $1,234.56 or 12,50 €",
    "dates 2024-03-15 and 15/03/2024 and 15.03.2024",
    "invoice 20240315 and INV-2024-00123 and 2024-000457",
    "postcode 75011, SW1A 1AA, 90210-1234",
    "SKU BLK-XL-0042, qty 1500000",
    "SIRET 123 456 789 00012, TVA FR 12 345678901",
    "order number 4155552671",
    "serial 2207-1145-8890",
])
def test_phone_not_found(text):
    assert fragments(PHONE, plain(text)) == []



@pytest.mark.parametrize("text", [
    "we still have sizes 38 40 42 in black",
    "EU sizes 36 38 40 44, US 6 8 10",
    "the set holds 24 36 48 pieces",
    "rooms 12 14 16 are booked",
])
def test_numbers_without_a_trunk_prefix_are_no_phone_numbers(text):
    """libphonenumber reads "38 40 42" as a valid German number (+49 384042): German,
    British and French numbers are written with their trunk prefix 0 (or +49 ...), so
    one without it is at most a local number, and only a phone word makes it one."""
    assert fragments(PHONE, plain(text)) == []


@pytest.mark.parametrize("text", [
    "Tel. 38 40 42",
    "Anruf unter 38 40 42",
    "415 555 2671",  # US numbers have no trunk prefix 0: found without a phone word
    "030 1234567",
    "07700 900123",
])
def test_numbers_without_a_trunk_prefix_after_a_phone_word_still_are(text):
    assert fragments(PHONE, plain(text))

@pytest.mark.parametrize("text", [
    "Call me at 555-123-4567.",
    "Call me at (555) 123-4567.",
    "call 555.123.4567",
    "555 123 4567 anytime",
    "My cell is 555-555-5555",
    "Phone: 123-456-7890",
    "Call me at (123) 456-7890",
    "555-123-4567 is my direct line",
])
def test_a_north_american_number_in_its_usual_grouping_is_found_whatever_its_range(text):
    """555-123-4567 is no assigned number (libphonenumber calls it invalid),
    yet every reader takes it for a phone number, and it is the one tests and
    examples use: written 3-3-4 with separators, it is one."""
    assert fragments(PHONE, plain(text))


@pytest.mark.parametrize("text", [
    "SKU 555-123-4567",
    "order 555-1234567-1234567",
    "ISBN 978-0-306-40615-7",
    "SSN-like 123-45-6789 and date 2026-11-28",
])
def test_other_dashed_numbers_stay_clean(text):
    assert fragments(PHONE, plain(text)) == []


@pytest.mark.parametrize("text", [
    # Found by a black-box probe: each was refused [phone_number].
    "Hi Bob, the dress comes in kids' sizes 06 08 10 12 14 (years). Which one do you need?",
    "Hi, the pyjamas come in 02 04 06 08 ans.",
    "Hi Bob, the dress is available in EU sizes 36 38 40 42 44 - which one would you like?",
    "Hi, the shelf comes in widths 30 35 40 45 50 cm.",
    "Holzwerk Meier GmbH, USt-IdNr. DE123456789, Steuernummer 143/123/45678",
    "Hallo Bob, Ihre Bestellnummer 01712345678 ist unterwegs.",
    "Hola Bob, tu pedido 0612345678 ya ha salido.",
    "Please write RMA 4457 8891 22 on the parcel when you send it back.",
    "Bitte die Retourennummer 0612345678 auf das Paket schreiben.",
    "Votre numéro de retour: 06 12 34 56 78.",
])
def test_size_runs_tax_numbers_and_labelled_order_numbers_are_no_phone_numbers(text):
    assert fragments(PHONE, plain(text)) == []


def test_the_orders_own_id_is_no_phone_number():
    ctx = FilterContext(direction=SELLER_TO_BUYER, relay_domain="relay.example", own_aliases=frozenset({ALIAS}),
                        order_id="0612347067")
    text = "Hi Bob, your order 0612347067 has shipped. Please quote 0612347067 if you contact us."
    assert fragments(PHONE, plain(text), ctx) == []
    assert fragments(PHONE, plain(text + " Or call 06 12 34 56 78."), ctx) == ["06 12 34 56 78"]


def test_phone_tel_link():
    assert fragments(PHONE, html('<a href="tel:+33612345678">call</a>')) == ["tel:+33612345678"]


def test_phone_regions_setting():
    # A Belgian national number is only recognised when BE is listed.
    text = "bel me op 0471 12 34 57"
    assert fragments(PhoneNumber(FilterSettings(phone_regions=("US",))), plain(text)) == []
    assert fragments(PhoneNumber(FilterSettings(phone_regions=("BE",))), plain(text))


# ------------------------------------------------------------------ promotion

PROMO = Promotion(FilterSettings(promotion_phrases=("vip club",)))


@pytest.mark.parametrize("text", [
    "Leave a 5-star review and get a free gift",
    "We will refund you after your review is posted",
    "Only leave a review if you're happy",
    "If you are satisfied, please leave positive feedback",
    "Please contact us before leaving a review",
    "Use code SAVE10 for 10% off your next order",
    "Sign up to our newsletter",
    "Follow us on Instagram",
    "Laissez-nous 5 étoiles",
    "Un cadeau en échange de votre avis",
    "Code promo MERCI10",
    "Join our VIP Club",
])
def test_promotion_found(text):
    assert fragments(PROMO, plain(text))


@pytest.mark.parametrize("text", [
    "Please leave feedback about your experience.",
    "N'hésitez pas à laisser un avis sur votre expérience.",
    "Please review the attached proof; changes are free.",
    "We refunded the shipping fee because the parcel was late.",
    "Nous avons appliqué une remise de 5 € pour le retard.",
    "The door code is 4521B, the postal code 75011.",
    "Vous avez reçu un avis de passage, le retrait est gratuit.",
    "Would you like us to ship it today?",
    "Your parcel is held at customs clearance.",
    "Free gift wrapping for all orders; add a note at checkout.",
    "You can subscribe to delivery notifications in the carrier's app.",
    "Vous allez avoir une réponse sous 24 h, merci pour votre note.",
    "The hotel is a 5-star one, please add the room number.",
])
def test_promotion_not_found(text):
    assert fragments(PROMO, plain(text)) == []


@pytest.mark.parametrize("text", [
    # Found by a black-box probe: each passed.
    "5 stars and we refund you",
    "5 stars = full refund!",
    "Five stars and we send you a gift.",
    "Post a review with photos and we'll give you $10 back.",
    "A positive review would mean the world to us, and we'll refund your shipping.",
    "Please rate us 5/5",
    "Please leave 5\u2605",
    "Buy now and save 30%!",
])
def test_review_bribes_and_offers_the_probe_found(text):
    assert fragments(PROMO, plain(text))


@pytest.mark.parametrize("text", [
    "Thanks for the great feedback; your refund is on its way.",
    "The 5-star hotel near you offers free parking.",
    "Rated 5/5 by the carrier for packaging, your parcel ships today.",
    "You saved 30% on this order with the bundle.",
    "Size 5/5.5 is out of stock, we refunded the difference.",
])
def test_words_near_those_bribes_stay_clean(text):
    assert fragments(PROMO, plain(text)) == []


def test_promotion_sentences_tell_what_to_fix():
    review = PROMO.check(plain("Leave us 5 stars!"), CTX)
    marketing = PROMO.check(plain("Subscribe to our newsletter"), CTX)
    assert review and all("review" in f.sentence.lower() for f in review)
    assert marketing and all("marketing" in f.sentence.lower() for f in marketing)


# ------------------------------------------------------------------ tracking_pixel

PIXEL = TrackingPixel(FilterSettings(link_allow_domains=("shop-market.com",)))


@pytest.mark.parametrize("markup", [
    '<img src="https://t.example/o.gif">',
    '<img src="//t.example/o.gif">',
    '<img src="pixel.gif" width="1" height="1">',
    '<img srcset="https://t.example/a.png 2x">',
    '<div style="background-image:url(https://t.example/b.png)"></div>',
    '<table background="https://t.example/b.png"></table>',
    '<style>@import url("https://t.example/a.css");</style>',
    '<style>p{background:url(https://t.example/b.png)}</style>',
    '<link rel="stylesheet" href="https://t.example/a.css">',
    '<iframe src="https://t.example/w"></iframe>',
    '<a href="https://t.example"><img src="cid:logo"></a>',
    '<base href="https://t.example/"><img src="logo.png">',
    '<img src="https://img.shop-market.com/logo.png">',  # remote loads are beacons even on allowed domains
])
def test_pixel_found(markup):
    assert fragments(PIXEL, html(markup))


@pytest.mark.parametrize("markup", [
    '<img src="cid:logo@shop">',
    '<img src="data:image/png;base64,iVBORw0KGgo=" width="1" height="1">',
    '<p style="color:red">hi</p><style>p{color:blue}</style>',
    '<svg><rect style="fill:url(#grad)"/></svg>',
    '<a href="https://www.shop-market.com/help"><img src="cid:mkt"></a>',
    '<a href="mailto:x@relay.example"><img src="cid:m"></a>',
])
def test_pixel_not_found(markup):
    assert fragments(PIXEL, html(markup)) == []


def test_pixel_ignores_plain_text():
    assert fragments(PIXEL, plain('<img src="https://t.example/o.gif">')) == []


# ------------------------------------------------------------------ directions and chain


def test_content_filters_only_judge_seller_mail():
    view = plain("call 06 12 34 56 78 or john@gmail.com, www.shop.com, 5 stars please")
    buyer = FilterContext(direction=BUYER_TO_SELLER, relay_domain="relay.example")
    assert Chain(SETTINGS).run(view, buyer).findings == ()
    seller = Chain(SETTINGS).run(view, CTX)
    assert {"link", "email_address", "phone_number", "promotion"} <= set(seller.reasons)


def test_redact_action_gets_exact_fragments():
    settings = FilterSettings(actions={"phone_number": "redact", "email_address": "redact"})
    text = "Call 06 12 34 56 78 or mail john@gmail.com"
    result = Chain(settings).run(plain(text), CTX)
    assert result.rejection is None
    for fragment, _marker in result.redactions:
        assert fragment in text


def test_too_many_fragments_cannot_be_redacted_away():
    settings = FilterSettings(actions={"email_address": "redact"})
    text = " ".join(f"user{i}@shop{i}.com" for i in range(250))
    result = Chain(settings).run(plain(text), CTX)
    assert result.rejection is not None and result.rejection.code == "email_address"


def test_text_attachments_are_read_like_text_parts():
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["Subject"] = "Your order"
    msg.set_content("The details are attached.")
    msg.add_attachment("Call 06 12 34 56 78 or see www.shop.com", filename="notes.txt")
    msg.add_attachment('<a href="mailto:john@gmail.com">write</a>', subtype="html", filename="page.html")
    msg.add_attachment(b"\x89PNG\r\n\x1a\n 06 12 34 56 78", maintype="image", subtype="png", filename="p.png")
    view = MessageView.from_message(msg)
    found = {(f.code, f.location) for f in Chain(SETTINGS).run(view, CTX).findings}
    assert {("phone_number", "attachment notes.txt"), ("link", "attachment notes.txt"),
            ("email_address", "attachment page.html")} <= found
    assert not any(location == "attachment p.png" and code != "attachment_type" for code, location in found)


# ------------------------------------------------------------------ attachment names

def with_file(name: str) -> MessageView:
    from relay.filters.base import Attachment

    return MessageView(subject="Your order", parts=(TextPart("text/plain part 1", "text/plain", "See the file."),),
                       attachments=(Attachment("attachment 1", name, "image/png", b"\x89PNG\r\n\x1a\n"),))


@pytest.mark.parametrize("flt, name", [
    (PHONE, "invoice_+44 20 7946 0958.pdf"),
    (PhoneNumber(SETTINGS), "call me 415-555-2671.png"),
    (EmailAddress(SETTINGS), "john@gmail.com.png"),
    (LINK, "visit www.luna-crafts.com.pdf"),
])
def test_contact_details_in_an_attachment_name_are_found(flt, name):
    """A file's name is shown to the buyer like its text (found by a black-box probe)."""
    assert fragments(flt, with_file(name))


@pytest.mark.parametrize("name", ["logo@2x.png", "WhatsApp Image 2023-11-15 at 12.34.56.jpeg",
                                  "IMG_20231115_123456.jpg", "Screenshot 2024-03-15 at 10.22.33 AM.png",
                                  "invoice_2024-000457.pdf", "report.final.v2.docx"])
def test_ordinary_attachment_names_stay_clean(name):
    for flt in (LINK, EmailAddress(SETTINGS), PHONE, PROMO):
        assert fragments(flt, with_file(name)) == [], (flt, name)


def test_logo_at_2x_in_text_is_no_address():
    assert fragments(EmailAddress(SETTINGS), plain("Use logo@2x.png and icon@3x.webp for retina screens.")) == []


def test_a_finding_in_an_attachment_name_is_rejected_even_where_redaction_is_asked():
    from relay.filters.chain import Chain
    from relay.filters.settings import parse_filter_settings

    chain = Chain(parse_filter_settings({"actions": {"phone_number": "redact"}}))
    result = chain.run(with_file("call me 415-555-2671.png"), CTX)
    assert result.rejection is not None and result.rejection.code == "phone_number" and not result.redactions

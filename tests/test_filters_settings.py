"""[filters] configuration: defaults, new keys, and errors that name the key."""

from __future__ import annotations

import pytest

from relay.filters.chain import Chain
from relay.filters.registry import FILTERS, REASON_CODES
from relay.filters.settings import DEFAULT_ORDER, FilterSettings, parse_filter_settings


def test_every_default_filter_is_registered_and_on():
    assert set(DEFAULT_ORDER) == set(FILTERS)
    chain = Chain(FilterSettings())
    assert [f.name for f in chain.filters] == list(DEFAULT_ORDER)
    for name in DEFAULT_ORDER:
        assert FilterSettings().action_for(name) == "reject"
        assert name in REASON_CODES


def test_defaults():
    s = parse_filter_settings({})
    assert s.link_allow_domains == ()
    assert s.attachment_max_bytes == 10 * 1024 * 1024
    assert s.attachment_max_count == 20
    assert s.attachment_types == ("jpeg", "png", "gif", "pdf", "txt", "doc", "docx")
    assert s.phone_regions == ("US", "GB", "FR", "DE")
    assert s.promotion_phrases == ()


def test_values_are_normalised():
    s = parse_filter_settings({
        "link_allow_domains": ["*.Shop-Market.com", "Example.org."],
        "attachment_types": ["JPG", ".pdf", "text"],
        "phone_regions": ["fr", "be"],
        "promotion_phrases": ["VIP Club"],
    })
    assert s.link_allow_domains == ("shop-market.com", "example.org")
    assert s.attachment_types == ("jpeg", "pdf", "txt")
    assert s.phone_regions == ("FR", "BE")
    assert s.promotion_phrases == ("VIP Club",)


@pytest.mark.parametrize("raw, key", [
    ({"order": ["link", "no_such_filter"]}, "filters.order"),
    ({"actions": {"link": "explode"}}, "filters.actions.link"),
    ({"actions": {"no_such_code": "reject"}}, "filters.actions.no_such_code"),
    ({"actions": "reject"}, "filters.actions"),
    ({"no_such_key": 1}, "filters.no_such_key"),
    ({"attachment_max_bytes": -1}, "filters.attachment_max_bytes"),
    ({"attachment_max_bytes": "10MB"}, "filters.attachment_max_bytes"),
    ({"attachment_max_count": True}, "filters.attachment_max_count"),
    ({"attachment_types": ["exe"]}, "filters.attachment_types"),
    ({"attachment_types": "pdf"}, "filters.attachment_types"),
    ({"phone_regions": ["XX"]}, "filters.phone_regions"),
    ({"link_allow_domains": ["https://shop.com/"]}, "filters.link_allow_domains"),
    ({"link_allow_domains": [""]}, "filters.link_allow_domains"),
    ({"promotion_phrases": [1]}, "filters.promotion_phrases"),
])
def test_errors_name_the_key(raw, key):
    with pytest.raises(ValueError) as err:
        parse_filter_settings(raw)
    assert key in str(err.value)


def test_not_a_table():
    with pytest.raises(ValueError, match=r"\[filters\]"):
        parse_filter_settings(["link"])


def test_order_subset_runs_only_those_filters():
    s = parse_filter_settings({"order": ["phone_number", "link"]})
    assert [f.name for f in Chain(s).filters] == ["phone_number", "link"]


def test_actions_accepted():
    s = parse_filter_settings({"actions": {"link": "redact", "promotion": "flag"}})
    assert s.action_for("link") == "redact" and s.action_for("promotion") == "flag"
    assert s.action_for("phone_number") == "reject"

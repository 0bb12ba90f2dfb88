"""The [filters] configuration section: chain order, per-rule action, limits.

Parsed here rather than in relay.config so that a new filter's options live
beside the filter.  Errors are ValueError naming the key; relay.config turns
them into ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

ACTIONS = ("reject", "redact", "flag")

# The chain, in order.  Cheap envelope-level rules first, content later.
DEFAULT_ORDER = (
    "opted_out",
    "critical_quota",
    "too_many_messages",
    "duplicate",
    "attachment_too_large",
    "attachment_type",
    "link",
    "email_address",
    "phone_number",
    "promotion",
    "tracking_pixel",
)


@dataclass(frozen=True)
class FilterSettings:
    order: tuple[str, ...] = DEFAULT_ORDER
    actions: dict[str, str] = field(default_factory=dict)  # reason code -> action; default "reject"
    link_allow_domains: tuple[str, ...] = ()  # no link domain is allowed until listed
    attachment_max_bytes: int = 10 * 1024 * 1024  # decoded, all attachments together
    attachment_max_count: int = 20
    attachment_types: tuple[str, ...] = ("jpeg", "png", "gif", "pdf", "txt", "doc", "docx")
    unsolicited_limit: int = 3  # seller messages per order before the buyer writes
    critical_quota: int = 10  # critical messages to opted-out buyers per seller per window
    critical_window_days: int = 30
    promotion_phrases: tuple[str, ...] = ()  # added to the built-in English and French lists
    phone_regions: tuple[str, ...] = ("US", "GB", "FR", "DE")  # national formats recognised; +international always

    def action_for(self, code: str) -> str:
        return self.actions.get(code, "reject")


_LIST_KEYS = {"order", "link_allow_domains", "attachment_types", "promotion_phrases", "phone_regions"}
# Kinds relay.filters.attachments can recognise by content, name and declared type.
ATTACHMENT_KINDS = ("jpeg", "png", "gif", "pdf", "txt", "doc", "docx")
_INT_KEYS = {"attachment_max_bytes", "attachment_max_count", "unsolicited_limit", "critical_quota", "critical_window_days"}


def parse_filter_settings(raw: Any) -> FilterSettings:
    from relay.filters.registry import FILTERS, REASON_CODES

    if not isinstance(raw, dict):
        raise ValueError("[filters] must be a table")
    known = {f.name for f in fields(FilterSettings)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"filters.{key}"
        if key not in known:
            raise ValueError(f"unknown key {name}")
        if key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of strings")
            if key == "promotion_phrases":
                values[key] = tuple(value)
            elif key == "phone_regions":
                values[key] = tuple(_phone_region(name, v) for v in value)
            elif key == "attachment_types":
                values[key] = tuple(_attachment_kind(name, v) for v in value)
            elif key == "link_allow_domains":
                values[key] = tuple(_allow_domain(name, v) for v in value)
            else:
                values[key] = tuple(v.lower() for v in value)
        elif key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
            values[key] = value
        elif key == "actions":
            if not isinstance(value, dict):
                raise ValueError("filters.actions must be a table of reason code = action")
            for code, action in value.items():
                if code not in REASON_CODES:
                    raise ValueError(f"unknown reason code filters.actions.{code}")
                if action not in ACTIONS:
                    raise ValueError(f"filters.actions.{code} must be one of {', '.join(ACTIONS)}, not {action!r}")
            values[key] = dict(value)
    for filter_name in values.get("order", ()):
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r} in filters.order")
    return FilterSettings(**values)


def _phone_region(key: str, value: str) -> str:
    import phonenumbers

    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{key}: {value!r} is not a two-letter region code known to libphonenumber")
    return region


def _attachment_kind(key: str, value: str) -> str:
    kind = value.strip().lower().lstrip(".")
    kind = {"jpg": "jpeg", "text": "txt"}.get(kind, kind)
    if kind not in ATTACHMENT_KINDS:
        raise ValueError(f"{key}: unknown attachment type {value!r}; known types are {', '.join(ATTACHMENT_KINDS)}")
    return kind


def _allow_domain(key: str, value: str) -> str:
    domain = value.strip().lower()
    if domain.startswith("*."):
        domain = domain[2:]
    domain = domain.strip(".")
    if not domain or "/" in domain or "@" in domain or " " in domain:
        raise ValueError(f"{key}: {value!r} is not a domain name")
    return domain

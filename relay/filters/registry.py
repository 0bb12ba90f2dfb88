"""Filter name -> class.  Adding a filter is one class and one line here."""

from __future__ import annotations

from relay.filters import addresses, attachments, links, phones, pixels, policy, promotion

FILTERS: dict[str, type] = {
    "opted_out": policy.OptedOut,
    "critical_quota": policy.CriticalQuota,
    "too_many_messages": policy.TooManyMessages,
    "duplicate": policy.Duplicate,
    "attachment_too_large": attachments.AttachmentTooLarge,
    "attachment_type": attachments.AttachmentType,
    "link": links.Link,
    "email_address": addresses.EmailAddress,
    "phone_number": phones.PhoneNumber,
    "promotion": promotion.Promotion,
    "tracking_pixel": pixels.TrackingPixel,
}

# Every reason code the chain knows (contract, "Filters and reason codes").
REASON_CODES = frozenset({
    "link", "email_address", "phone_number", "promotion", "tracking_pixel", "opted_out",
    "critical_quota", "attachment_too_large", "attachment_type", "too_many_messages",
    "duplicate", "sender_not_authorized",
})

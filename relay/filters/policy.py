"""Messaging-policy rules that depend on the order's history, not on content.

The facts come precomputed in the FilterContext (see relay.server), so each
rule is a comparison, testable without a store.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView, text_fingerprint
from relay.filters.settings import FilterSettings


@dataclass
class OptedOut:
    """A buyer who opted out gets only critical mail, and the seller's
    mail in orders where the buyer has written (ctx.buyer_has_written)."""

    settings: FilterSettings
    name: str = "opted_out"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        if not ctx.buyer_opted_out or ctx.critical or ctx.buyer_has_written:
            return []
        return [Finding("opted_out", "", "envelope",
                        "The buyer has opted out of unsolicited messages; until the buyer writes to you in this "
                        "order, only messages marked [Important] are delivered.")]


@dataclass
class CriticalQuota:
    """[Important] bypasses an opt-out, so it is rationed per seller, where
    it is what lets the message through (not where the buyer has written)."""

    settings: FilterSettings
    name: str = "critical_quota"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        if not (ctx.critical and ctx.buyer_opted_out) or ctx.buyer_has_written:
            return []
        if ctx.critical_sent_window < self.settings.critical_quota:
            return []
        return [Finding("critical_quota", "[Important]", "subject",
                        f"You have sent {ctx.critical_sent_window} messages marked [Important] to opted-out buyers "
                        f"in the last {self.settings.critical_window_days} days; the limit is "
                        f"{self.settings.critical_quota}.")]


@dataclass
class TooManyMessages:
    """Unsolicited seller mail per order is capped until the buyer writes back."""

    settings: FilterSettings
    name: str = "too_many_messages"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        if ctx.buyer_has_written or ctx.unsolicited_sent < self.settings.unsolicited_limit:
            return []
        return [Finding("too_many_messages", "", "order",
                        f"You have already sent {ctx.unsolicited_sent} messages in this order without a reply "
                        f"from the buyer; the limit is {self.settings.unsolicited_limit}.")]


@dataclass
class Duplicate:
    """The same words sent twice in one order are noise, however reformatted."""

    settings: FilterSettings
    name: str = "duplicate"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        if text_fingerprint(view) not in ctx.previous_fingerprints:
            return []
        return [Finding("duplicate", "", "body", "The same message was already sent in this order.")]

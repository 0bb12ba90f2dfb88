"""Messaging-policy rules that depend on the order's history, not on content.

The facts come precomputed in the FilterContext (see relay.server), so each
rule is a comparison, testable without a store.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.filters.base import FROM_SELLER, SELLER_TO_BUYER, FilterContext, Finding, MessageView, text_fingerprint
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


@dataclass(frozen=True)
class CommitGuard:
    """What an accepted seller message was judged on that the seller's other
    messages can change before it is committed: each rule's answer was read
    from the store before the chain ran, so messages judged side by side
    (a shop's mailer opens many sessions at once) each saw room under the
    limit, and all were accepted (7 to 10 of 12 unsolicited messages to one
    order, in a black-box probe).  The transaction that commits the message
    asks again (relay.store, the batch_row trigger), and a message whose
    answer changed is judged again (relay.pipeline).  Set only for the rules
    in the chain whose finding refuses the message."""

    unsolicited_limit: int | None = None  # this unsolicited message needs fewer accepted ones before it
    duplicate: bool = False  # no accepted message of this order may have its fingerprint
    critical_since: str | None = None  # this critical message to an opted-out buyer needs the seller's
    critical_quota: int | None = None  # ...critical messages to opted-out buyers since then below the quota


def commit_guard(settings: FilterSettings, in_chain: frozenset[str], ctx: FilterContext) -> CommitGuard | None:
    """The guard of a seller message accepted on `ctx`; None when nothing it
    was judged on can be changed by another message (a buyer's message)."""
    if ctx.direction != SELLER_TO_BUYER:
        return None

    def refusing(name: str) -> bool:
        return name in in_chain and settings.action_for(name) in ("reject", "redact")

    unsolicited = not ctx.buyer_has_written
    critical = ctx.critical and ctx.buyer_opted_out and unsolicited and refusing("critical_quota")
    guard = CommitGuard(
        unsolicited_limit=settings.unsolicited_limit if unsolicited and refusing("too_many_messages") else None,
        duplicate=refusing("duplicate"),
        critical_since=ctx.critical_since if critical else None,
        critical_quota=settings.critical_quota if critical else None)
    return guard if guard != CommitGuard() else None

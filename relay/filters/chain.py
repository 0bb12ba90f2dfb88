"""One chain runs the filters in the configured order and applies policy.

All findings are recorded; the first one whose action is `reject` decides the
SMTP reply.  `redact` findings are handed to the rewriter, which replaces the
fragment with a visible marker; `flag` findings are only recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.filters.base import FilterContext, Finding, MessageView
from relay.filters.content import redactable
from relay.filters.registry import FILTERS
from relay.filters.settings import FilterSettings

REDACTION_MARKERS = {
    "link": "[link removed]",
    "email_address": "[email address removed]",
    "phone_number": "[phone number removed]",
    "promotion": "[promotion removed]",
}


@dataclass(frozen=True)
class ChainResult:
    findings: tuple[Finding, ...]
    rejection: Finding | None
    redactions: tuple[tuple[str, str], ...]  # (fragment, marker)

    @property
    def reasons(self) -> list[str]:
        seen: list[str] = []
        for f in self.findings:
            if f.code not in seen:
                seen.append(f.code)
        return seen


class Chain:
    def __init__(self, settings: FilterSettings):
        self.settings = settings
        self.filters = [FILTERS[name](settings) for name in settings.order if name in FILTERS]
        self.names = frozenset(flt.name for flt in self.filters)

    def run(self, view: MessageView, ctx: FilterContext) -> ChainResult:
        findings: list[Finding] = []
        rejection: Finding | None = None
        redactions: list[tuple[str, str]] = []
        for flt in self.filters:
            if ctx.direction not in flt.directions:
                continue
            for finding in flt.check(view, ctx):
                findings.append(finding)
                action = self.settings.action_for(finding.code)
                marker = REDACTION_MARKERS.get(finding.code)
                if action == "redact" and marker and finding.fragment and redactable(finding.location):
                    redactions.append((finding.fragment, marker))
                elif action in ("reject", "redact") and rejection is None:
                    # A finding that cannot be redacted (an attachment, a quota, what only the
                    # displayed text shows, a file's name) is rejected.
                    rejection = finding
        return ChainResult(tuple(findings), rejection, tuple(redactions))


def rejection_reply(finding: Finding) -> str:
    """`550 5.7.1 [code] sentence "fragment"`, on one line, shortened."""
    text = finding.sentence
    if finding.fragment:
        fragment = " ".join(finding.fragment.split())
        if len(fragment) > 60:
            fragment = fragment[:57] + "..."
        text = f'{text} Found "{fragment}" in the {finding.location}.'
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return f"550 5.7.1 [{finding.code}] {text}"[:500]

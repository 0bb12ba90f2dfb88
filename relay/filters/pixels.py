"""`tracking_pixel`: remote images and other web beacons in HTML parts.

Anything a mail client would fetch from the network when the buyer opens the
message tells the sender that (and where, and when) it was read:

- `<img src>` / `srcset`, `<input type=image>`, `<video poster>`, `<iframe>`,
  `<embed>`, `<object data>`, `<audio>`/`<source>`, SVG `<image href>`, with an
  http(s), ftp or protocol-relative (`//host`) address, or a relative one under a
  remote `<base href>`;
- `background=` attributes, CSS `url(...)` and `@import` in style attributes and
  `<style>` blocks, `<link rel=stylesheet|icon|preload...>`;
- images sized 0 or 1 px, or hidden, whatever their source, unless embedded;
- images inside a link to an outside site (the classic linked logo).

Embedded images (`cid:` parts of the message, `data:` URIs) are fine.  Remote
loads are flagged even from allowed link domains: the allowlist is about where a
buyer may click, not about who may watch the message being opened.

An HTML part too broken to be read whole (content.scan_html read part of it only as
text: pathological markup, see content._parse_markup) is reported too, with an empty
fragment: what it would load is unknown, so it cannot pass for checked (and an empty
fragment cannot be redacted away).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import Findings, domain_allowed, html_scans, is_remote, url_scheme
from relay.filters.links import _host_of
from relay.filters.settings import FilterSettings

SENTENCE = ("Remote images and other web beacons are not allowed in HTML messages; attach images to the "
            "message instead of loading them from a web server, and remove linked logos and external styles.")
UNREADABLE = ("The HTML part is too malformed to be checked for remote images and other web beacons; send "
              "the message again from a regular mail client, or as plain text.")


@dataclass
class TrackingPixel:
    settings: FilterSettings
    name: str = "tracking_pixel"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        out = Findings("tracking_pixel", SENTENCE)
        for location, scan in html_scans(view):
            if not scan.complete:
                out.add("", location, UNREADABLE)
            for _tag, _attr, value in scan.resources:
                if is_remote(value, scan.base_href):
                    out.add(value.strip(), location)
            for src in scan.tiny_images:
                if url_scheme(src) not in ("cid", "data") and src.strip():
                    out.add(src.strip(), location)
            for href, src in scan.linked_images:
                scheme = url_scheme(href)
                if scheme in ("http", "https", "//", "ftp") or (not scheme and href.strip().lower().startswith("www.")):
                    host = _host_of(href)
                    if not host or not domain_allowed(host, self.settings.link_allow_domains, ctx.relay_domain):
                        out.add(f'<a href="{href.strip()}"><img src="{src.strip()}">', location)
        return out.items

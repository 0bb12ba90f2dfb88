"""Cost of the filter chain per message: `python bench/bench_filters.py [--runs N]`.

Three messages, each parsed into a MessageView once, then judged by the full
default chain (seller to buyer, so every filter runs):

- a 2 KB plain-text seller message (order numbers, prices, dates, a phone number),
- a 100 KB HTML newsletter-like message (tables, inline cid: images, links),
- a message with a 10 MiB PDF attachment.

The filters' caches (folded text, parsed HTML, libphonenumber windows) are cleared
before every run, so each run pays what a new message pays.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.filters import content, phones  # noqa: E402
from relay.filters.base import SELLER_TO_BUYER, FilterContext, MessageView  # noqa: E402
from relay.filters.chain import Chain  # noqa: E402
from relay.filters.settings import FilterSettings  # noqa: E402

SENTENCES = [
    "Hi Sarah, thanks for your order 112-4567890-1234567.",
    "It shipped this morning with UPS, tracking 1Z999AA10123456784, expected on 2024-03-18.",
    "The total was $1,234.56 including tax; the invoice is attached as invoice.pdf.",
    "Le colis sera livré le 15/03/2024 entre 8h et 13h, merci de prévoir quelqu'un.",
    "If anything is wrong, just reply to this message and we will sort it out under warranty.",
    "Firmware version 2.4.1 fixes the pairing issue, e.g. when the device restarts.",
    "Call me on 06 12 34 56 78 if the courier cannot find you.",
]


def text_message(size: int = 2048) -> EmailMessage:
    body, i = [], 0
    while sum(len(s) + 1 for s in body) < size:
        body.append(SENTENCES[i % len(SENTENCES)])
        i += 1
    msg = EmailMessage()
    msg["Subject"] = "Your order 112-4567890-1234567"
    msg.set_content("\n".join(body))
    return msg


def html_message(size: int = 100 * 1024) -> EmailMessage:
    rows, i = [], 0
    while sum(len(r) for r in rows) < size:
        s = SENTENCES[i % len(SENTENCES)]
        rows.append(f'<tr><td style="padding:4px;color:#333">{i}</td><td><p>{s}</p>'
                    f'<a href="https://www.shop-market.com/o/{i}">order page</a> '
                    f'<img src="cid:p{i}" width="80"></td></tr>\n')
        i += 1
    msg = EmailMessage()
    msg["Subject"] = "Your orders"
    msg.set_content("See the HTML version.")
    msg.add_alternative(f"<html><head><style>td{{font-family:Arial}}</style></head><body><table>{''.join(rows)}"
                        "</table></body></html>", subtype="html")
    return msg


def attachment_message(size: int = 10 * 1024 * 1024) -> EmailMessage:
    msg = text_message(512)
    msg.add_attachment(b"%PDF-1.7\n" + b"0" * (size - 9), maintype="application", subtype="pdf",
                       filename="catalogue.pdf")
    return msg


def measure(chain: Chain, view: MessageView, ctx: FilterContext, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        content.fold.cache_clear()
        content.scan_html.cache_clear()
        phones._match_window.cache_clear()
        start = time.perf_counter()
        chain.run(view, ctx)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=0, help="runs per message (default: 300 / 60 / 20)")
    args = parser.parse_args()
    chain = Chain(FilterSettings(link_allow_domains=("shop-market.com",)))
    ctx = FilterContext(direction=SELLER_TO_BUYER, relay_domain="relay.example", buyer_has_written=True)
    cases = [
        ("2 KB text", text_message(), 300),
        ("100 KB HTML", html_message(), 60),
        ("10 MiB attachment", attachment_message(), 20),
    ]
    print(f"{'message':<20}{'runs':>6}{'median ms':>12}{'p99 ms':>10}{'findings':>10}")
    for name, msg, runs in cases:
        view = MessageView.from_message(msg)
        chain.run(view, ctx)  # warm-up: imports, the public suffix list
        times = measure(chain, view, ctx, args.runs or runs)
        reasons = ",".join(chain.run(view, ctx).reasons) or "-"
        print(f"{name:<20}{len(times):>6}{statistics.median(times) * 1000:>12.2f}"
              f"{percentile(times, 0.99) * 1000:>10.2f}  {reasons}")


if __name__ == "__main__":
    main()

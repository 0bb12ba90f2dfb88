"""`phone_number`: a phone number in the text.

Detection is libphonenumber's (the `phonenumbers` package): PhoneNumberMatcher
with leniency VALID, for each region of settings.phone_regions (US, GB, FR, DE
by default); numbers written in international form (+33..., 0044...) are found
whatever the region list.  libphonenumber already refuses most look-alikes; what
it would still take for a phone number is removed first, or refused after:

- masked before matching: Amazon order numbers (123-4567890-1234567), dates
  (2024-03-15, 15/03/2024, 15.03.24), year-prefixed references (2024-000457,
  2024-03-0457), prices with a currency ($1,234.56, 12,50 €, EUR 45), UPS tracking
  (1Z...), long digit runs (USPS 9400 1000 0000 ..., 14+ digits);
- refused after matching: a number right after a reference word (order, invoice,
  tracking, SKU, serial, n°, #, commande, facture, suivi, colis, ...), and a bare
  run of digits without separators that neither starts with a trunk prefix (0)
  nor follows a phone word (call, phone, tel, WhatsApp, appelez, portable, ...).

Also flagged: tel:/sms:/callto: links in HTML, and numbers spelled out as nine or
more digit words ("zero seven seven zero zero nine...", "zéro six un deux...").

Only short windows around digit runs are handed to libphonenumber, so the cost
does not grow with the prose around them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

import phonenumbers

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import Findings, fold, html_scans, mask, text_sources, url_scheme
from relay.filters.settings import FilterSettings

SENTENCE = ("Phone numbers may not be shared in messages; remove the number and keep the conversation "
            "on the marketplace.")

# (regex, gate): the regex runs only if one of the gate strings occurs in the lower-cased text.
_NOT_PHONES_GATED = [
    re.compile(r"(?<![\d-])\d{3}-\d{7}-\d{7}(?![\d-])"),  # Amazon order
    re.compile(r"(?<![\d.\-/])\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?![\d]|[-/.]\d)"),  # ISO date
    re.compile(r"(?<![\d.\-/])\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})(?![\d]|[-/.]\d)"),  # 15/03/2024
    re.compile(r"(?<![\d.\-/])(?:19|20)\d{2}[-/](?:\d{1,8}[-/]){0,3}\d{1,8}(?![\d]|[-/]\d)"),  # 2024-000457
    # EU VAT numbers: FR 12 345678901, DE123456789, GB 123 4567 89
    re.compile(r"(?-i:\b(?:AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|GB|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI)"
               r"\s?[0-9A-Z]{2}\s?\d{3}\s?\d{2,4}\s?\d{2,3}(?:\s?\d{2,3})?\b)"),
    re.compile(r"(?:[$€£¥]|\b(?:usd|eur|gbp|chf|cad|aud)\b)\s?\d{1,3}(?:[,. ]\d{3}){0,4}(?:[.,]\d{1,2})?",
               re.IGNORECASE),
    re.compile(r"(?<![\w.,])\d{1,3}(?:[,. ]\d{3}){0,4}(?:[.,]\d{1,2})?\s?(?:[$€£¥]|(?:usd|eur|gbp|chf|euros?|"
               r"dollars?|pounds?)\b)", re.IGNORECASE),
    re.compile(r"\b1Z[0-9A-Z]{16}\b", re.IGNORECASE),  # UPS
    re.compile(r"(?<![+\d])\d{14,}"),  # long runs: USPS, FedEx, EAN, IMEI, SIRET
    re.compile(r"(?<![\w+])\d{4}(?: \d{4}){3,6}(?: \d{1,4})?(?!\w)"),  # USPS in groups of four
]
_CURRENCY_GATE = ("$", "€", "£", "¥", "usd", "eur", "gbp", "chf", "cad", "aud", "dollar", "pound")
_NOT_PHONES = [(regex, _CURRENCY_GATE if i in (5, 6) else ("1z",) if i == 7 else ())
               for i, regex in enumerate(_NOT_PHONES_GATED)]
# A digit run not glued to a word ("facture_2024-03-0457", "SN4155552671" are no phone numbers).
_CANDIDATE = re.compile(r"(?<!\w)(?<!\w[-/])[+(]?\d[\d \t().\-/]{4,40}\d(?!\w)")
_REFERENCE_BEFORE = re.compile(
    r"(?:order|commande|cmd|invoice|facture|inv|ref|reference|tracking|suivi|colis|parcel|package|shipment|sku|"
    r"serial|serie|lot|batch|imei|siret|siren|tva|vat|ean|upc|isbn|gtin|asin|waybill|awb|item|article|ticket|"
    r"case|claim|dossier|account|compte|iban|rib|model|modele|part|piece|receipt|recu|transaction|"
    r"confirmation|booking|reservation|code|id|pin|n°|no\.|nr\.?|#)"
    r"(?:\s{0,2}(?:number|numero|no\.?|nr\.?|n°|#|id|code|de suivi|ref))?\s{0,3}[:#.]?\s{0,3}$",
    re.IGNORECASE,
)
_PHONE_WORDS = re.compile(
    r"(?:phone|call|tel|telephone|mobile|cell|whatsapp|signal|viber|telegram|sms|text|ring|reach|dial|"
    r"appel|telephon|portable|fixe|joindre|joignable|numero|contact|anruf|handy|rufen)",
    re.IGNORECASE,
)
_DIGIT_WORD = (r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine|un|deux|trois|quatre|cinq|sept|huit|"
               r"neuf|null|eins|zwei|drei|vier|funf|sechs|sieben|acht|\d)")
_SPELLED_ONLY = _DIGIT_WORD[:-4] + ")"  # the digit words without \d
SPELLED_DIGITS = re.compile(
    rf"(?<![\w-]){_SPELLED_ONLY}(?:[\s,.\-]{{1,3}}|$)(?:{_DIGIT_WORD}(?:[\s,.\-]{{1,3}}|$)){{8,24}}", re.IGNORECASE)
_SPELLED_GATE = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "deux", "trois",
                 "quatre", "cinq", "sept", "huit", "neuf", "null", "eins", "zwei", "drei", "vier", "funf", "sechs",
                 "sieben", "acht")
_SPELLED_WORD = re.compile(r"[a-z]{2,}", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_LENIENCY = phonenumbers.Leniency.VALID
_POSSIBLE = phonenumbers.Leniency.POSSIBLE


# Digit runs handed to libphonenumber per text: a real message has a handful; a wall of digits
# (a data dump, or an attempt to slow the relay down) is not read past this many.
MAX_CANDIDATES = 1000


@lru_cache(maxsize=4096)
def _match_window(window: str, regions: tuple[str, ...], international: bool) -> tuple[tuple[int, int], ...]:
    # "+44 7700 900 456": a number written in international form is a phone number even when
    # libphonenumber's metadata calls its range unassigned (fictional, new or reserved ranges).
    leniency = _POSSIBLE if international else _LENIENCY
    hits: dict[tuple[int, int], None] = {}
    for region in regions:
        try:
            for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency, max_tries=50):
                hits[(match.start, match.end)] = None
        except Exception:  # never let a library corner case crash the chain
            continue
    return tuple(_merge(list(hits)))


def _phone_spans(folded: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    lowered = folded.lower()
    masked = mask(folded, [m.span() for regex, gates in _NOT_PHONES
                           if not gates or any(g in lowered for g in gates) for m in regex.finditer(folded)])
    spans: list[tuple[int, int]] = []
    for count, cand in enumerate(_CANDIDATE.finditer(masked)):
        if count >= MAX_CANDIDATES:
            break
        lo, hi = max(0, cand.start() - 1), min(len(masked), cand.end() + 1)
        for start, end in _match_window(masked[lo:hi], regions, cand.group(0).startswith("+")):
            if _plausible(folded, lo + start, lo + end):
                spans.append((lo + start, lo + end))
    return spans


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _plausible(text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    line_start = text.rfind("\n", 0, start) + 1
    before = text[max(line_start, start - 40):start]
    international = raw.startswith("+") or raw.startswith("00")
    if not international and _REFERENCE_BEFORE.search(before):
        return False
    if raw.isdigit() and not international:
        return raw.startswith("0") or bool(_PHONE_WORDS.search(before))
    return True


def find_phones(text: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    folded = fold(text)
    spans = _phone_spans(folded, regions) if _DIGIT.search(folded) else []
    lowered = folded.lower()
    if not any(word in lowered for word in _SPELLED_GATE):
        return spans
    for m in SPELLED_DIGITS.finditer(folded):
        words = _SPELLED_WORD.findall(m.group(0))
        if len(words) >= 4:
            spans.append((m.start(), m.end()))
    return spans


@dataclass
class PhoneNumber:
    settings: FilterSettings
    name: str = "phone_number"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        regions = self.settings.phone_regions
        out = Findings("phone_number", SENTENCE)
        for location, text in text_sources(view):
            for start, end in find_phones(text, regions):
                out.add(text[start:end], location)
        for location, scan in html_scans(view):
            for _tag, _attr, value in scan.hrefs:
                if url_scheme(value) in ("tel", "sms", "callto", "facetime", "whatsapp", "viber", "skype"):
                    target = unquote(value.strip().split(":", 1)[1])
                    if sum(ch.isdigit() for ch in target) >= 6:
                        out.add(value.strip(), location)
        return out.items

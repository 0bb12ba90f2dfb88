"""`phone_number`: a phone number in the text.

Detection is libphonenumber's (the `phonenumbers` package): PhoneNumberMatcher
with leniency VALID, for each region of settings.phone_regions (US, GB, FR, DE
by default); numbers written in international form (+33..., 0044...) are found
whatever the region list.  libphonenumber already refuses most look-alikes; what
it would still take for a phone number is removed first, or refused after:

- masked before matching: Amazon order numbers (123-4567890-1234567), dates
  (2024-03-15, 15/03/2024, 15.03.24), year-prefixed references (2024-000457,
  2024-03-0457), prices with a currency ($1,234.56, 12,50 €, EUR 45), UPS tracking
  (1Z..., also in UPS's spaced layout), long digit runs (USPS 9400 1000 0000 ..., 14+ digits);
- refused after matching: a number right after a reference word (order, invoice,
  tracking, SKU, serial, RMA, return, n°, #, commande, facture, suivi, colis, ...); a bare
  run of digits without separators that neither starts with a trunk prefix (0)
  nor follows a phone word (call, phone, tel, WhatsApp, appelez, portable, ...);
  and, unless a phone word comes before it, a number without its trunk prefix
  that only regions whose numbers are written with one (GB, FR, DE: 0) would
  take: "sizes 38 40 42" is a valid German number, +49 384042, to libphonenumber,
  but a German writes 038 40 42 or +49 38 40 42.

A North American number written 3-3-4 with separators ((555) 123-4567,
555.123.4567) is a phone number whatever its range (NANP_SHAPE): libphonenumber
calls the 555 numbers that examples and test suites use invalid.

Also flagged: tel:/sms:/callto: links in HTML, and numbers spelled out as nine or
more digit words ("zero seven seven zero zero nine...", "zéro six un deux...").
Tabs read as spaces, invisible characters as nothing, full-width digits as digits.

Only short windows around digit runs are handed to libphonenumber, and the masks
and the digit-run search themselves run only on the text around its digits (see
_digit_windows), so the cost does not grow with the prose around them.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from urllib.parse import unquote

import phonenumbers

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import (
    Findings, fold, html_scans, mask, on_visible_text, per_message_cache, register_words, text_sources, word_bytes,
    words_present,
)
from relay.filters.settings import FilterSettings

SENTENCE = ("Phone numbers may not be shared in messages; remove the number and keep the conversation "
            "on the marketplace.")

# (regex, gate): the regex runs only if one of the gate strings occurs in the lower-cased text.
#
# Written for speed: a regex that starts with a look-behind makes the engine try every
# position of the text, one that starts with a character class lets it skip to where the
# class matches.  So "(?<![\d-])\d{3}" is written "\d(?<![\d-]\d)\d{2}": the look-behind, moved
# after the first digit, tests the same character (tests/test_filters_fastpaths.py checks
# each against its plain form, kept in the comment beside it).
_NOT_PHONES_GATED = [
    # (?<![\d-])\d{3}-\d{7}-\d{7}(?![\d-])
    re.compile(r"\d(?<![\d-]\d)\d{2}-\d{7}-\d{7}(?![\d-])"),  # Amazon order
    # (?<![\d.\-/])\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?![\d]|[-/.]\d)
    re.compile(r"\d(?<![\d.\-/]\d)\d{3}[-/.]\d{1,2}[-/.]\d{1,2}(?![\d]|[-/.]\d)"),  # ISO date
    # (?<![\d.\-/])\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})(?![\d]|[-/.]\d)
    re.compile(r"\d(?<![\d.\-/]\d)\d?[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})(?![\d]|[-/.]\d)"),  # 15/03/2024
    # (?<![\d.\-/])(?:19|20)\d{2}[-/](?:\d{1,8}[-/]){0,3}\d{1,8}(?![\d]|[-/]\d)
    re.compile(r"[12](?<![\d.\-/][12])(?:(?<=1)9|(?<=2)0)\d{2}[-/](?:\d{1,8}[-/]){0,3}\d{1,8}"  # 2024-000457
               r"(?![\d]|[-/]\d)"),
    # EU VAT numbers: FR 12 345678901, DE123456789, GB 123 4567 89
    # \b(?:AT|BE|...|XI)\s?[0-9A-Z]{2}\s?\d{3}\s?\d{2,4}\s?\d{2,3}(?:\s?\d{2,3})?\b  (case-sensitive)
    re.compile(r"(?:AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|GB|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI)(?<!\w..)"
               r"\s?[0-9A-Z]{2}\s?\d{3}\s?\d{2,4}\s?\d{2,3}(?:\s?\d{2,3})?\b"),
    # (?i:(?:[$€£¥]|\b(?:usd|eur|gbp|chf|cad|aud)\b)\s?\d{1,3}(?:[,. ]\d{3}){0,4}(?:[.,]\d{1,2})?)
    re.compile(r"[$€£¥uUeEgGcCaA](?:(?<=[$€£¥])|(?<!\w.)(?:(?<=[uU])[sS][dD]|(?<=[eE])[uU][rR]|(?<=[gG])[bB][pP]"
               r"|(?<=[cC])[hH][fF]|(?<=[cC])[aA][dD]|(?<=[aA])[uU][dD])\b)"
               r"\s?\d{1,3}(?:[,. ]\d{3}){0,4}(?:[.,]\d{1,2})?"),
    # (?<![\w.,])\d{1,3}(?:[,. ]\d{3}){0,4}(?:[.,]\d{1,2})?\s?(?:[$€£¥]|(?:usd|...|pounds?)\b)
    re.compile(r"\d(?<![\w.,]\d)\d{0,2}(?:[,. ]\d{3}){0,4}(?:[.,]\d{1,2})?\s?(?:[$€£¥]|(?:usd|eur|gbp|chf|euros?|"
               r"dollars?|pounds?)\b)", re.IGNORECASE),
    # \b1Z(?:[0-9A-Z]{16}|(?: ?[0-9A-Z]){6}(?: ?\d){10})\b: as printed, or in UPS's own spaced
    # layout (1Z 999 AA1 01 2345 6784: shipper, service, package digits), which ends in a digit
    re.compile(r"1(?<!\w1)Z(?:[0-9A-Z]{16}|(?: ?[0-9A-Z]){6}(?: ?\d){10})\b", re.IGNORECASE),  # UPS
    # (?<![+\d])\d{14,}
    re.compile(r"\d(?<![+\d]\d)\d{13,}"),  # long runs: USPS, FedEx, EAN, IMEI, SIRET
    # (?<![\w+])\d{4}(?: \d{4}){3,6}(?: \d{1,4})?(?!\w)
    re.compile(r"\d(?<![\w+]\d)\d{3}(?: \d{4}){3,6}(?: \d{1,4})?(?!\w)"),  # USPS in groups of four
]
_CURRENCY_GATE = ("$", "€", "£", "¥", "usd", "eur", "gbp", "chf", "cad", "aud", "dollar", "pound")
_NOT_PHONES = [(regex, _CURRENCY_GATE if i in (5, 6) else ("1z",) if i == 7 else ())
               for i, regex in enumerate(_NOT_PHONES_GATED)]
# A digit run not glued to a word ("facture_2024-03-0457", "SN4155552671" are no phone numbers).
# (?<!\w)(?<!\w[-/])[+(]?\d[\d \t().\-/]{4,40}\d(?!\w)
_CANDIDATE = re.compile(r"[+(\d](?<!\w.)(?<!\w[-/].)(?:(?<=[+(])\d|(?<=\d))[\d \t().\-/]{4,40}\d(?!\w)")
_REFERENCE_BEFORE = re.compile(
    r"(?:order|commande|cmd|invoice|facture|inv|ref|reference|tracking|suivi|colis|parcel|package|shipment|sku|"
    r"serial|serie|lot|batch|imei|siret|siren|tva|vat|ean|upc|isbn|gtin|asin|waybill|awb|item|article|ticket|"
    r"case|claim|dossier|account|compte|iban|rib|model|modele|part|piece|receipt|recu|transaction|"
    r"confirmation|booking|reservation|code|id|pin|n°|no\.|nr\.?|#|"
    # a return's authorization (RMA), in English, French and German
    r"rma|return|retour\w*|"
    # German and Spanish: order, invoice, consignment, customer numbers; tax numbers of an imprint
    r"bestell\w*|auftrag\w*|rechnung\w*|sendung\w*|kunden\w*|steuer\w*|ust-idnr\.?|hrb|"
    r"pedido|factura|envio|albaran|referencia|nif|cif)"
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


# A North American number as people write it: 3-3-4 digits with separators, the
# area code perhaps in parentheses.  Such a number is a phone number to every
# reader whether or not its range is assigned: 555-123-4567 is the one examples
# and tests use, and libphonenumber calls it invalid.
NANP_SHAPE = re.compile(r"(?:\(\d{3}\)[ \t]?|\d{3}[-. \t])\d{3}[-. \t]\d{4}")


def _nanp(region: str) -> bool:
    return phonenumbers.country_code_for_region(region) == 1


@per_message_cache(4096)  # (the benchmark clears it; the relay keeps it across messages)
def _match_window(window: str, regions: tuple[str, ...], international: bool) -> tuple[tuple[int, int], ...]:
    # "+44 7700 900 456": a number written in international form is a phone number even when
    # libphonenumber's metadata calls its range unassigned (fictional, new or reserved ranges).
    leniency = _POSSIBLE if international else _LENIENCY
    hits: dict[tuple[int, int], None] = {}
    for region in regions:
        try:
            for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency, max_tries=50):
                hits[(match.start, match.end)] = None
            if not international and _nanp(region) and NANP_SHAPE.search(window):
                for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=_POSSIBLE, max_tries=50):
                    if NANP_SHAPE.fullmatch(match.raw_string):
                        hits[(match.start, match.end)] = None
        except Exception:  # never let a library corner case crash the chain
            continue
    return tuple(_merge(list(hits)))


# Every match of the regexes above (the not-phone masks and _CANDIDATE) holds a digit; the
# digits of one match are at most 41 characters apart (_CANDIDATE's 40 separators); a match,
# with what its look-arounds read, starts at most 8 characters before its first digit (a VAT
# number's "FR AB ") and ends at most 20 after its last (a UPS number's 17 letters, "dollars"),
# and a candidate's libphonenumber window is one character wider.  So the masks and the
# candidate search run on the text's digit clusters (digits less than _GAP apart) padded by
# _PAD_BEFORE and _PAD_AFTER characters, joined by NULs that no regex here matches across,
# and find exactly what they find in the whole text.
_GAP, _PAD_BEFORE, _PAD_AFTER = 48, 10, 22
_CLUSTER = re.compile(rf"\d(?:\D{{0,{_GAP - 1}}}+\d)*+")


# ASCII text: its digits as b"1", every other character as b"0"; clusters are then runs of
# "1"s less than _GAP apart, which the regex engine finds by searching for a literal.
_BITS = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))
_CLUSTER_BITS = re.compile(rb"1(?:0{0,%d}+1)*+" % (_GAP - 1))


def _digit_bits(folded: str) -> bytes | None:
    return folded.encode("ascii").translate(_BITS) if folded.isascii() else None


def _digit_windows(folded: str, bits: bytes | None = None) -> list[tuple[int, int]]:
    if bits is None:
        bits = _digit_bits(folded)
    clusters = _CLUSTER.finditer(folded) if bits is None else _CLUSTER_BITS.finditer(bits)
    n = len(folded)
    wins: list[tuple[int, int]] = []
    for m in clusters:
        s, e = max(0, m.start() - _PAD_BEFORE), min(n, m.end() + _PAD_AFTER)
        if wins and s <= wins[-1][1]:
            wins[-1] = (wins[-1][0], e)
        else:
            wins.append((s, e))
    return wins


# More necessary conditions, cheaper than the scans they spare.  In ASCII text, what a mask
# needs in the digit bits ("1" a digit, "0" anything else): "\d{3}-\d{7}-\d{7}" needs
# 111 0 1111111 0 1111111, and so on.
_BITS_NEEDED = {0: b"1110111111101111111", 1: b"111101", 2: b"1011", 3: b"11110", 8: b"1" * 14,
                9: b"1111011110111101111"}
# The currency masks need a currency next to a digit: before it (5), or after it (6).
_CURRENCY_BEFORE = ("$", "€", "£", "¥", "usd", "eur", "gbp", "chf", "cad", "aud")
_CURRENCY_AFTER = ("$", "€", "£", "¥", "usd", "eur", "gbp", "chf", "dollar", "pound")


def _currency_by_digit(low: str, currencies: tuple[str, ...], digit_after: bool) -> list[int]:
    """Where a currency in `low` has a digit right after it (or before it), one space apart
    at most."""
    n = len(low)
    hits = []
    for currency in currencies:
        i = low.find(currency)
        while i >= 0:
            if digit_after:
                j = i + len(currency)
                if j < n and low[j].isspace():
                    j += 1
                if j < n and low[j].isdecimal():
                    hits.append(i)
            else:
                j = i - 1
                if j >= 0 and low[j].isspace():
                    j -= 1
                if j >= 0 and low[j].isdecimal():
                    hits.append(i)
            i = low.find(currency, i + 1)
    return hits


def _mask_spans(folded: str, compact: str, bits: bytes | None,
                wins: list[tuple[int, int]], starts: list[int]) -> list[tuple[int, int]]:
    """The spans of the not-phone masks in `compact` (the windows `wins` of the text, starting
    at `starts` in it).  Each mask runs only on the windows that hold what it needs: all of
    a match is in one window."""
    # A gate string is in each match of its regex, and every match is in the compact text:
    # the gates are tested there (shorter than the whole text).
    low_compact = compact.lower()
    gated = low_compact
    if len(low_compact) != len(compact):
        low_compact, gated = "", folded.lower()  # (cannot happen to folded text) the currency checks pass
    everywhere = [(0, len(compact))]
    single = len(wins) <= 1
    open_gates: dict[tuple[str, ...], bool] = {}
    spans: list[tuple[int, int]] = []
    for i, (regex, gates) in enumerate(_NOT_PHONES):
        if gates:
            hit = open_gates.get(gates)
            if hit is None:
                hit = open_gates[gates] = any(g in gated for g in gates)
            if not hit:
                continue
        needed = _BITS_NEEDED.get(i)
        ranges = everywhere
        if needed is not None and bits is not None:
            if needed not in bits:
                continue
            if not single:
                ranges = _joined([k for k, (s, e) in enumerate(wins) if bits.find(needed, s, e) >= 0], wins, starts)
        elif low_compact and i in (5, 6):
            hits = _currency_by_digit(low_compact, _CURRENCY_BEFORE if i == 5 else _CURRENCY_AFTER, i == 5)
            if not hits:
                continue
            if not single:
                ranges = _joined(sorted({bisect_right(starts, hit) - 1 for hit in hits}), wins, starts)
        for start, end in ranges:
            for m in regex.finditer(compact, start, end):
                spans.append(m.span())
    return spans


def _joined(picked: list[int], wins: list[tuple[int, int]], starts: list[int]) -> list[tuple[int, int]]:
    """The compact ranges of the picked windows (in order), neighbours run together: no
    match crosses the NUL between two windows, so one scan does for both."""
    ranges: list[tuple[int, int]] = []
    previous = -2
    for k in picked:
        end = starts[k] + wins[k][1] - wins[k][0]
        if k == previous + 1:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((starts[k], end))
        previous = k
    return ranges


def _phone_spans(folded: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    bits = _digit_bits(folded)
    wins = _digit_windows(folded, bits)
    # compact: the windows joined by NULs; starts[i] is where window i begins in it
    compact = "\x00".join(folded[s:e] for s, e in wins)
    starts, at = [], 0
    for s, e in wins:
        starts.append(at)
        at += e - s + 1
    masked = mask(compact, _mask_spans(folded, compact, bits, wins, starts))
    spans: list[tuple[int, int]] = []
    k = 0
    for count, cand in enumerate(_CANDIDATE.finditer(masked)):
        if count >= MAX_CANDIDATES:
            break
        while k + 1 < len(starts) and starts[k + 1] <= cand.start():
            k += 1
        shift = wins[k][0] - starts[k]  # compact offset + shift = offset in folded
        lo, hi = max(0, cand.start() - 1), min(len(masked), cand.end() + 1)
        for start, end in _match_window(masked[lo:hi], regions, cand.group(0).startswith("+")):
            if _plausible(folded, lo + shift + start, lo + shift + end, regions):
                spans.append((lo + shift + start, lo + shift + end))
    return spans


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# A run of four or more small numbers: "36 38 40 42 44", "06 08 10 12 14".
_NUMBER_RUN = re.compile(r"\d{1,3}(?:[ ,]{1,2}\d{1,3}){3,}")


def _arithmetic_run(raw: str) -> bool:
    """Sizes, ages or widths in steps ("EU sizes 36 38 40 42 44", "02 04 06 08
    ans", "30 35 40 45 50 cm"): four or more numbers rising by one step.  A
    French mobile number is written the same way (06 12 34 56 78), but its
    pairs never rise evenly."""
    if not _NUMBER_RUN.fullmatch(raw):
        return False
    numbers = [int(n) for n in re.findall(r"\d+", raw)]
    step = numbers[1] - numbers[0]
    return step > 0 and all(b - a == step for a, b in zip(numbers, numbers[1:]))


def _plausible(text: str, start: int, end: int, regions: tuple[str, ...]) -> bool:
    raw = text[start:end]
    if _arithmetic_run(raw):
        return False
    line_start = text.rfind("\n", 0, start) + 1
    before = text[max(line_start, start - 40):start]
    international = raw.startswith("+") or raw.startswith("00")
    if international:
        return True
    if _REFERENCE_BEFORE.search(before):
        return False
    if raw.isdigit():
        return raw.startswith("0") or bool(_PHONE_WORDS.search(before))
    if raw.lstrip("( ").startswith("0") or _valid_as_written(raw, regions):
        return True
    if NANP_SHAPE.fullmatch(raw) and any(map(_nanp, regions)):
        return True
    return bool(_PHONE_WORDS.search(before))


def _valid_as_written(raw: str, regions: tuple[str, ...]) -> bool:
    """Is `raw` a valid number of a region whose national numbers are written without
    a trunk prefix 0 (US: none needed; IT: the 0 is part of the number)?  Asked only
    of the few matches that reach it, so nothing is cached (the text of a message
    is not kept past it)."""
    for region in regions:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if metadata is None or metadata.national_prefix == "0":
            continue
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(raw, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


_DIGIT_WORDS = frozenset(w.encode() for w in _SPELLED_GATE + ("oh", "un"))
register_words(whole=_DIGIT_WORDS)


_DIGITS_BETWEEN = re.compile(rb" +(?:[0-9] +)*")


def _may_spell_digits(folded: str) -> bool:
    """A SPELLED_DIGITS match is kept only with 4 digit words or more: whole words, in a row
    of words separated by nothing but spaces, commas, dots, hyphens and single digits."""
    present = [word for kind, word in words_present(folded) if kind == "e" and word in _DIGIT_WORDS]
    if not present:
        return False
    padded = b" " + word_bytes(folded) + b" "
    found = []  # (start, end) of each digit word in padded
    for word in present:
        needle = b" " + word + b" "
        i = padded.find(needle)
        while i >= 0:
            found.append((i + 1, i + 1 + len(word)))
            i = padded.find(needle, i + 1)
    if len(found) < 4:
        return False
    found.sort()
    run = 1
    for (_, end), (start, _) in zip(found, found[1:]):
        run = run + 1 if _DIGITS_BETWEEN.fullmatch(padded, end, start) else 1
        if run >= 4:
            return True
    return False


@on_visible_text
@per_message_cache(8)
def find_phones(text: str, regions: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    folded = fold(text)
    if "\t" in folded:  # "415<tab>555<tab>2671" reads as a number; libphonenumber takes no tabs
        folded = folded.replace("\t", " ")
    spans = _phone_spans(folded, regions) if _DIGIT.search(folded) else []
    if not _may_spell_digits(folded):
        return tuple(spans)
    lowered = folded.lower()
    if not any(word in lowered for word in _SPELLED_GATE):
        return tuple(spans)
    for m in SPELLED_DIGITS.finditer(folded):
        words = _SPELLED_WORD.findall(m.group(0))
        if len(words) >= 4:
            spans.append((m.start(), m.end()))
    return tuple(spans)


@dataclass
class PhoneNumber:
    settings: FilterSettings
    name: str = "phone_number"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        regions = self.settings.phone_regions
        out = Findings("phone_number", SENTENCE)
        # The order's own id is no phone number, whatever it looks like.
        own_id = re.sub(r"\D", "", ctx.order_id or "")
        for location, text in text_sources(view):
            for start, end in find_phones(text, regions):
                if len(own_id) >= 6 and re.sub(r"\D", "", text[start:end]) == own_id:
                    continue
                out.add(text[start:end], location)
        for location, scan in html_scans(view):
            for value, _url, scheme in scan.targets():
                if scheme in ("tel", "sms", "callto", "facetime", "whatsapp", "viber", "skype"):
                    target = unquote(value.strip().split(":", 1)[1])
                    if sum(ch.isdigit() for ch in target) >= 6:
                        out.add(value.strip(), location)
        return out.items

"""`email_address`: an email address in the text other than the relay's own.

Finds literal addresses (`john@gmail.com`, `design @ printhouse.com`) and the
usual obfuscations (`john at gmail dot com`, `john[at]gmail.com`,
`john (at) gmail (dot) com`, `john (@) gmail (.) com`, French `arobase` /
`point`; tabs and line breaks as spaces; full-width and small `＠`/`﹫`,
invisible characters between letters), in the subject, the text parts, the text
of HTML parts and mailto: links.  Addresses on the relay's
own domain (the order's aliases) are never flagged: content filters run after
the parties' real addresses were replaced by their aliases.

Literal addresses are flagged whatever their top-level domain (`.example` and
`.test` addresses are real to operators and test suites); obfuscated ones need
a known public suffix, since "meet me at home dot..." is not an address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import (
    Findings, Spans, casefree, fold, html_scans, on_visible_text, per_message_cache, split_host, text_sources,
    windowed_finditer, windows,
)
from relay.filters.settings import FilterSettings

SENTENCE = ("Email addresses may not be shared in messages; remove the address and keep the conversation "
            "on the marketplace (replies to this message reach the buyer).")

_LABEL = r"[\w-]{1,63}"
# A literal address; '@' may have a space or two around it, and a quote before it ("bob"@example.com).
LITERAL_EMAIL = re.compile(
    r"(?<![\w.%+'-])([\w.%+'-]{1,64})(\"?\s{0,2}@\s{0,2})((?:[\w-]{1,63}\.){1,8}[\w-]{2,63}|localhost)(?![\w-]|\.[\w-])"
)
_DOT_STRONG = (r"\s{0,3}[\[\(\{<]\s{0,2}(?:dot|point|\.)\s{0,2}[\]\)\}>]\s{0,3}|\s{1,3}(?:dot|point)\s{1,3}"
               r"|\s{1,2}\.\s{1,2}")
_DOT = rf"(?:{_DOT_STRONG}|\.)"
# A bare "@" is obfuscated when the domain's first dot is ("john@gmail dot com"); "%40"
# is an "@" escaped as in a URL ("john%40gmail.com").
_AT_STRONG = (r"\s{0,3}[\[\(\{<]\s{0,2}(?:at|arobase|@)\s{0,2}[\]\)\}>]\s{0,3}|\s{1,3}@\s{0,3}|@\s{1,3}|%40"
              rf"|@(?=[\w-]{{1,63}}(?:{_DOT_STRONG}))")
_AT_WEAK = r"\s{1,3}(?:at|arobase)\s{1,3}"
OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.%+-])(?P<local>{_LABEL}(?:{_DOT}{_LABEL}){{0,3}})"
    rf"(?P<at>{_AT_STRONG}|{_AT_WEAK})"
    rf"(?P<domain>{_LABEL}(?:{_DOT}{_LABEL}){{1,4}})(?![\w-]|\.[\w-]|')",
    re.IGNORECASE,
)
_DOT_SPLIT = re.compile(rf"{_DOT_STRONG}|\.", re.IGNORECASE)
_STRONG_DOT_IN = re.compile(_DOT_STRONG, re.IGNORECASE)

# With a spelled " at " and real dots ("john at gmail.com"), only a known mail provider's
# domain makes an address: "details at lunacrafts.shop" is a link (link's business).
_MAIL_PROVIDERS = frozenset("""
gmail googlemail yahoo ymail hotmail outlook live msn icloud me mac aol gmx web t-online freenet mail
protonmail proton pm yandex zoho orange wanadoo free sfr neuf laposte bbox numericable club-internet
aliceadsl libero virgilio tiscali btinternet sky virginmedia talktalk ntlworld comcast verizon att
sbcglobal bellsouth cox charter earthlink qq 163 126 naver
""".split())
# Words that, before a spelled " at ", make ordinary prose, not an address ("I'm at work.It ...").
_PROSE_LOCALS = frozenset("""
i im me we us you he she it they them is am are was were be been arrive arrived arrives arriving look
looking meet met stay staying home work here there be ready available back left right sold
priced priced delivered shipped ship ships parcel package order item one two be check checked
looked stayed waited wait worked shopped bought ordered found saw seen listed posted selling
""".split())


_DETERMINER_BEFORE = re.compile(
    r"\b(?:the|a|an|our|my|your|their|his|her|its|this|that|these|those|full|more|all|le|la|les|un|une|des|"
    r"notre|nos|mon|ma|mes|votre|vos|leur|leurs|ce|cette|ces)\s{1,3}$",
    re.IGNORECASE,
)


# File name extensions that are no top-level domain: "logo@2x.png" is a retina image's
# name, not an address.  (zip, mov and a few others are real domains: not listed.)
_FILE_EXTENSIONS = frozenset("png jpg jpeg gif webp svg bmp tif tiff heic pdf doc docx xls xlsx txt csv "
                             "css js html htm json xml".split())


def _domain_ok(domain: str, strict: bool) -> bool:
    labels = domain.lower().split(".")
    if any(not label or label.startswith("-") or label.endswith("-") for label in labels):
        return False
    if domain.lower() == "localhost":
        return True
    tld = labels[-1]
    if not (tld.isalpha() or tld.startswith("xn--")) or tld in _FILE_EXTENSIONS:
        return False  # (find_emails first takes a file's extension off: "bob@gmail.com.png")
    if strict:
        _, registrable, suffix = split_host(domain)
        return bool(suffix) and bool(registrable)
    return True


def _is_own(address: str, ctx: FilterContext) -> bool:
    address = address.lower()
    if address in ctx.own_aliases:
        return True
    domain = address.rpartition("@")[2]
    relay = ctx.relay_domain.lower()
    return bool(relay) and (domain == relay or domain.endswith("." + relay))


# Anchors (see content.windowed_finditer): every LITERAL_EMAIL match holds an '@' with its
# local part at most 66 characters before it and its domain starting within 3 after it.
_AT_SIGN = re.compile("@")
# Every OBFUSCATED_EMAIL match holds its at-group's word or sign (searched in the lower-cased
# text), followed by the start of a domain with at least one dot; the match reaches at most
# 6 + 303 characters before the anchor and 6 + 383 after it.
_AT_ANCHORS = (
    re.compile(r"at(?<=[\s\[\(\{<]at)(?=[\s\]\)\}>])"),
    re.compile(r"arobase(?<=[\s\[\(\{<]arobase)(?=[\s\]\)\}>])"),
    re.compile(r"@(?:(?<=[\s\[\(\{<]@)|(?=[\s\]\)\}>]))"),
    re.compile(r"%40"),
    re.compile(rf"@(?=[\w-]{{1,63}}(?:{_DOT_STRONG}))"),
)
_AT_TAIL = re.compile(rf"(?:at|arobase|@|%40)(?:\s{{0,2}}[\]\)\}}>])?\s{{0,3}}[\w-]{{1,63}}+(?:{_DOT})[\w-]")


def _obfuscated_windows(folded: str) -> list[tuple[int, int]]:
    low = casefree(folded)
    if low is None:
        return [(0, len(folded))]
    tail = _AT_TAIL.match
    anchors = sorted(m.span() for regex in _AT_ANCHORS for m in regex.finditer(low) if tail(low, m.start()))
    return windows(folded, anchors, 320, 400)


@on_visible_text
@per_message_cache(8)
def find_emails(text: str) -> tuple[tuple[int, int, str], ...]:
    """(start, end, normalised address) of every address in `text`, own ones included."""
    folded = fold(text)
    found: list[tuple[int, int, str]] = []
    taken = Spans(len(folded))
    if "@" in folded:
        at_signs = [m.span() for m in _AT_SIGN.finditer(folded)]
        for m in windowed_finditer(LITERAL_EMAIL, folded, windows(folded, at_signs, 66, 3)):
            local, domain, end = m.group(1).strip(".'"), m.group(3), m.end()
            head, _, extension = domain.rpartition(".")
            if extension.lower() in _FILE_EXTENSIONS and "." in head:  # a file's name: "bob@gmail.com.png"
                domain, end = head, end - len(extension) - 1
            if not local or not _domain_ok(domain, strict=False):
                continue
            start = m.start(1) + (len(m.group(1)) - len(m.group(1).lstrip(".'")))
            found.append((start, end, f"{local}@{domain}".lower()))
            taken.claim(m.start(), m.end())
    # (the anchors of the windows are whole "at", "arobase" or "@" signs between whitespace or
    # brackets, followed by a dotted domain: tabs and line breaks count as spaces)
    wins = _obfuscated_windows(folded)
    if not wins:
        return tuple(found)
    for m in windowed_finditer(OBFUSCATED_EMAIL, folded, wins):
        if taken.overlaps(m.start(), m.end()):
            continue
        weak = m.group("at").strip().lower() in ("at", "arobase")
        local_raw = m.group("local")
        if weak and (len(local_raw) < 2 or local_raw.lower() in _PROSE_LOCALS):
            continue
        local = ".".join(p.strip() for p in _DOT_SPLIT.split(local_raw))
        domain_parts = _DOT_SPLIT.split(m.group("domain"))
        domain = ".".join(p.strip() for p in domain_parts)
        if not _domain_ok(domain, strict=True):
            continue
        if weak:
            spelled_dot = bool(_STRONG_DOT_IN.search(m.group("domain")))
            raw_tld = domain_parts[-1].strip()
            if _DETERMINER_BEFORE.search(text, max(0, m.start() - 12), m.start()):
                continue  # "the manual at manuals dot example dot com" is a web address in prose
            if not spelled_dot and not _STRONG_DOT_IN.search(local_raw):
                if split_host(domain)[1] not in _MAIL_PROVIDERS or raw_tld[:1].isupper() and raw_tld[1:].islower():
                    continue  # "details at lunacrafts.shop" is a link; "at work.It was" is prose
        found.append((m.start(), m.end(), f"{local}@{domain}".lower()))
    return tuple(found)


@dataclass
class EmailAddress:
    settings: FilterSettings
    name: str = "email_address"
    directions: frozenset[str] = FROM_SELLER

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        out = Findings("email_address", SENTENCE)
        for location, text in text_sources(view):
            for start, end, address in find_emails(text):
                if not _is_own(address, ctx):
                    out.add(text[start:end], location)
        for location, scan in html_scans(view):
            for value, _url, scheme in scan.targets():
                if scheme != "mailto":
                    continue
                # the recipients, cc= and bcc= included
                for _s, _e, address in find_emails(unquote(value.strip()[7:]).replace(",", " ")):
                    if not _is_own(address, ctx):
                        out.add(value.strip(), location)
        return out.items

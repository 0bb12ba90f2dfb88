"""`link`: a link or URL to a domain not on the allowlist.

What counts as a link:
- URLs with a scheme (`http://`, `https://`, `ftp://`, the defanged `hxxp://`),
- `www.` host names,
- bare domains whose last label is a real public suffix (tldextract, with its
  bundled Public Suffix List snapshot; never fetched), or a reserved test TLD
  (.example, .test, .invalid, .localhost),
- obfuscated domains: `example[.]com`, `example(dot)com`, `example dot com`,
  `exemple point fr`, `example . com` (tabs and line breaks count as spaces,
  invisible characters as nothing, full-width letters and dots as ASCII),
- in HTML, navigation targets in markup: `<a href>`, `<area href>`, `<base href>`,
  `<form action>`, `formaction`, `<meta http-equiv=refresh>`, plus the visible text.
  Resources the client *loads* (img src, CSS url(), background=, stylesheets)
  are web beacons and belong to `tracking_pixel`, which reports them under its
  own, more useful, code.

Not links: file names (`invoice.pdf`, `photo.jpg`; a handful of real TLDs that
are mostly file extensions, like .zip or .md, count only with www., a scheme or a
path), abbreviations (`e.g.`, `i.e.`, `St.`), numbers and versions, sentence
ends without a space (`done.Thanks`, `depot.Best regards`: a capitalised "TLD"
after a lower-case letter), everyday words glued by a missing space before a
word-like TLD (`done.it`, `ref.no`), and the domains of email addresses (those
are `email_address`'s).  Allowed: settings.link_allow_domains and their
subdomains, and the relay's own domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from relay.filters.addresses import find_emails
from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import (
    Findings, Spans, casefree, clean_url, domain_allowed, fold, html_scans, on_visible_text, per_message_cache,
    split_host, text_sources, token_windows, url_scheme, windowed_finditer, windows,
)
from relay.filters.settings import FilterSettings

SENTENCE = ("Links to outside websites are not allowed; remove the link (and any spelled-out web address) "
            "or ask the marketplace to allow the domain.")

_URL_CHARS = r"[^\s<>\"'`{}|\\^\[\]]"
URL_RE = re.compile(
    rf"(?<![\w@.-])(?:(?:https?|hxxps?|h\*\*ps?|ftp)://|www\d{{0,3}}\.){_URL_CHARS}{{1,2048}}",
    re.IGNORECASE,
)
BARE_DOMAIN_RE = re.compile(
    rf"(?<![\w@.\-/:])((?:[\w-]{{1,63}}\.){{1,8}}[\w-]{{2,63}})(?![\w@-]|\.[\w-])(/{_URL_CHARS}{{0,2048}})?"
)
_OBF_DOT = r"\s{0,2}[\[\(\{<]\s{0,2}(?:\.|dot|point|punkt)\s{0,2}[\]\)\}>]\s{0,2}"
OBFUSCATED_RE = re.compile(
    rf"(?<![\w-])([\w-]{{1,63}})(?:{_OBF_DOT}[\w-]{{1,63}}){{0,3}}{_OBF_DOT}([a-z]{{2,24}})(?![\w-])",
    re.IGNORECASE,
)
# Spelled or spaced dots only with the common TLDs: "at the point fr..." is not a domain.
# (no everyday words: "a red dot in the corner" is no domain)
_COMMON_TLDS = ("com|net|org|fr|de|uk|co|io|info|biz|shop|store|eu|ch|ca|nl|online|site|xyz|app|"
                "dev|ly|gl|gle|tv|ru|cn|au|jp|pl|pt|dk|fi|ie|lu|mx|br")
# "point" is an everyday French word ("point de retrait"): only with TLDs that are not French words.
_POINT_TLDS = "com|net|org|fr|eu|be|ch|io|info|biz|shop|store|co|uk|online|site|xyz|app|ly|gle|ca|lu"
SPELLED_RE = re.compile(
    rf"(?<![\w-])([\w-]{{1,63}})(?:\s{{1,3}}(?:dot|point)\s{{1,3}}[\w-]{{1,63}}){{0,2}}"
    rf"(?:\s{{1,3}}dot\s{{1,3}}({_COMMON_TLDS})|\s{{1,3}}point\s{{1,3}}({_POINT_TLDS}))(?![\w'-])",
    re.IGNORECASE,
)
SPACED_DOT_RE = re.compile(rf"(?<![\w-])([\w-]{{2,63}}) \. ?({_COMMON_TLDS})(?![\w'-])")
_OBF_SPLIT = re.compile(rf"{_OBF_DOT}|\s{{1,3}}(?:dot|point)\s{{1,3}}|\s?\.\s?", re.IGNORECASE)
_TRAILING = ".,;:!?'\"»)]}>*"

# Real TLDs that in a message are nearly always a file extension or an everyday word.
_FILE_TLDS = frozenset({"zip", "mov", "ai", "ps", "sh", "md", "py", "rs", "so", "cc", "mp", "pm", "am"})
_WORD_TLDS = frozenset({
    "in", "to", "it", "at", "be", "me", "no", "us", "is", "as", "so", "am", "pm", "id", "ad", "pa", "st", "mr",
    "sr", "inc", "ltd", "kg", "cm", "lb", "ca", "es", "pt", "fi", "se", "de", "co", "ie", "eg", "tv", "fm",
    "ms", "fun", "day", "now", "new", "one", "top", "live", "love", "best", "store", "shop", "photo", "pics",
    "gift", "gifts", "deals", "sale", "buy", "click", "link", "page", "today", "email", "tel", "phone", "call",
    "app", "dev", "name", "world", "life", "team", "work", "box", "art", "style", "fit", "run", "win", "men",
    "care", "fyi", "ok", "tips", "tech", "zone", "plus", "pro", "red", "blue", "pink", "black", "green",
    "gold", "fr", "net", "com", "info", "ch", "do", "go", "on", "or", "an", "by", "we", "my", "he", "la",
    "le", "un", "eu", "ou", "et", "mon", "ma", "nu", "re", "si", "tu", "vu", "ci", "ne",
})
# Everyday words (English, French) and abbreviations that end a sentence before a missing space.
_PROSE_WORDS = frozenset("""
done thanks thank ok okay yes no sure fine great good perfect ready sent shipped received arrived
delivered paid noted it this that here there now today tomorrow please regards bye cheers later soon
check look sign log go do see get got set put let back up out in on off over all also too well so
ref art fig vol nr num approx env etc cf vs tel qty min max incl excl dept est misc
merci oui non bien voila fait envoye recu livre parti pret ici la ca cela aussi donc alors puis
the a an le la les un une du des de ce au aux en et ou sur
""".split())


def _trim(url: str) -> str:
    while url and url[-1] in _TRAILING:
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url


def _host_of(url: str) -> str:
    """Host of a URL with or without scheme; '' if none can be read."""
    url = clean_url(url)
    return _host_of_clean(url, url_scheme(url))


_NETLOC_END = re.compile(r"[/?#]")


def _host_of_clean(url: str, scheme: str) -> str:
    """_host_of() of a URL already through clean_url(), whose url_scheme() is `scheme`."""
    if scheme in ("hxxp", "hxxps", "h**p", "h**ps"):
        url = "http" + url[url.index(":"):]
    if not scheme:
        url = "//" + url
    url = url.replace("\\", "/")
    # urlsplit() reads the host from what precedes the end of the network location (the
    # first '/', '?' or '#' after the "//" that opens it): the rest of the URL cannot change
    # it, so links to one site cost one urlsplit().
    start = url.find("//")
    if start < 0:
        return ""  # no network location
    end = _NETLOC_END.search(url, start + 2)
    head = url[:end.start()] if end else url
    return _host_of_head(head) if len(head) <= 512 else _host_of_head.__wrapped__(head)


@lru_cache(maxsize=4096)
def _host_of_head(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def _bare_is_domain(host: str, raw: str, path: str) -> bool:
    labels = host.split(".")
    if any(not lab or lab[0] == "-" or lab[-1] == "-" for lab in labels):
        return False
    sub, registrable, suffix = split_host(host)
    if not suffix or not registrable or not any(c.isalpha() for c in registrable):
        return False
    if registrable.isdigit():
        return False
    raw_labels = raw.split(".")
    raw_suffix_first = raw_labels[len(raw_labels) - len(suffix.split("."))]
    raw_before = raw_labels[len(raw_labels) - len(suffix.split(".")) - 1]
    # "depot.Best regards", "done.Thanks": a capital after a lower-case letter starts a sentence.
    if (raw_suffix_first[:1].isupper() and raw_suffix_first[1:].islower()
            and raw_before[-1:].islower()):
        return False
    if path:
        return True
    first_tld = suffix.split(".")[-1]
    if not sub:
        if first_tld in _FILE_TLDS:
            return False
        if first_tld in _WORD_TLDS and registrable in _PROSE_WORDS:
            return False
        if len(registrable) == 1 and first_tld in _WORD_TLDS:
            return False
    return True


# Anchors: every match of the regex above it holds one, so the regex runs only in windows
# around them (content.windowed_finditer), which finds exactly what a whole-text scan finds.
_URL_ANCHOR = re.compile(r"[:wW](?:(?<=:)//|(?<=[wW])[wW][wW])")  # URL_RE: a scheme's "://" or "www"
_DOT_ANCHOR = re.compile(r"\.[\w-]")  # BARE_DOMAIN_RE: a dot before a label
_OBF_ANCHOR = re.compile(r"[\[\(\{<]\s{0,2}(?:\.|dot|point|punkt)\s{0,2}[\]\)\}>]", re.IGNORECASE)
_OBF_REACH = 340  # OBFUSCATED_RE is at most 63 + 3 * (15 + 63) + 15 + 24 = 336 characters long
# BARE_DOMAIN_RE starts at most 8 * 64 characters before its last dot (and URL_RE before its
# "://" or "www"): a token window need not reach further back.
_TOKEN_REACH = 600
# SPELLED_RE ends with " dot com" / " point fr": searched in the lower-cased text.
_SPELLED_ANCHOR = re.compile(rf"dot(?<=\sdot)\s{{1,3}}(?:{_COMMON_TLDS})(?![\w'-])"
                             rf"|point(?<=\spoint)\s{{1,3}}(?:{_POINT_TLDS})(?![\w'-])")
_SPELLED_REACH = 230  # before the anchor: 63 + 2 * (3 + 5 + 3 + 63) + 3 = 214
_SPACED_ANCHOR = re.compile(rf" \. ?(?:{_COMMON_TLDS})(?![\w'-])")  # SPACED_DOT_RE, case-sensitive like it
_SPACED_REACH = 70  # before the anchor: 63


def _spans(regex: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [m.span() for m in regex.finditer(text)]


def _obf_anchors(folded: str) -> list[tuple[int, int]]:
    """_OBF_ANCHOR's spans, tried only at the brackets (rare in prose)."""
    spans = []
    for bracket in "[({<":
        i = folded.find(bracket)
        while i >= 0:
            m = _OBF_ANCHOR.match(folded, i)
            if m:
                spans.append(m.span())
            i = folded.find(bracket, i + 1)
    return sorted(spans)


@on_visible_text
@per_message_cache(8)
def find_links(text: str) -> tuple[tuple[int, int, str], ...]:
    """(start, end, host) of every link-like thing in `text` (allowlist not applied).
    Email addresses are skipped: their domain is not a link."""
    folded = fold(text)
    found: list[tuple[int, int, str]] = []
    taken = Spans(len(folded))
    lowered = folded.lower()
    if "://" in folded or "www" in lowered:
        url_windows = token_windows(folded, _spans(_URL_ANCHOR, folded), _TOKEN_REACH)
        for m in windowed_finditer(URL_RE, folded, url_windows):
            url = _trim(m.group(0))
            host = _host_of(url) if url else ""
            if not url or url.lower().startswith("www") and not host:
                continue
            found.append((m.start(), m.start() + len(url), host))
            taken.claim(m.start(), m.start() + len(url))
    if "." not in folded and "dot" not in lowered and "point" not in lowered and "punkt" not in lowered:
        return tuple(found)
    for start, end, _ in find_emails(text):
        taken.claim(start, end)
    if "." in folded:
        wins = token_windows(folded, _spans(_DOT_ANCHOR, folded), _TOKEN_REACH)
        for m in windowed_finditer(BARE_DOMAIN_RE, folded, wins):
            if taken.overlaps(m.start(), m.end()):
                continue
            raw, path = m.group(1), m.group(2) or ""
            host = raw.lower()
            if _bare_is_domain(host, raw, path):
                end = m.start() + len(_trim(m.group(0)))
                found.append((m.start(), end, host))
                taken.claim(m.start(), end)
    # (these conditions stand in for the test "dot, point, punkt, a bracket or ' .' anywhere",
    # which each implies: OBFUSCATED_RE needs a bracket, SPELLED_RE "dot" or "point",
    # SPACED_DOT_RE " .")
    obfuscated = "[" in folded or "(" in folded or "{" in folded or "<" in folded
    spelled = "dot" in lowered or "point" in lowered
    spaced = " ." in folded
    if obfuscated or spelled or spaced:
        low = casefree(folded)
        for regex, wins in (
                (OBFUSCATED_RE, windows(folded, _obf_anchors(folded), _OBF_REACH, _OBF_REACH)
                 if obfuscated else ()),
                (SPELLED_RE, (windows(folded, _spans(_SPELLED_ANCHOR, low), _SPELLED_REACH, 0)
                              if low is not None else [(0, len(folded))]) if spelled else ()),
                (SPACED_DOT_RE, windows(folded, _spans(_SPACED_ANCHOR, folded), _SPACED_REACH, 0)
                 if spaced else ())):
            for m in windowed_finditer(regex, folded, wins):
                if taken.overlaps(m.start(), m.end()):
                    continue
                label = m.group(1).lower()
                if regex is not OBFUSCATED_RE and label in _PROSE_WORDS:
                    continue
                host = ".".join(p.strip().lower() for p in _OBF_SPLIT.split(m.group(0)) if p.strip())
                _, registrable, suffix = split_host(host)
                if not suffix or not registrable or not any(c.isalpha() for c in registrable):
                    continue  # (like a bare domain: "meet at 5 dot com" is no web address)
                found.append((m.start(), m.end(), host))
                taken.claim(m.start(), m.end())
    return tuple(found)


@dataclass
class Link:
    settings: FilterSettings
    name: str = "link"
    directions: frozenset[str] = FROM_SELLER

    def _allowed(self, host: str, ctx: FilterContext) -> bool:
        return bool(host) and domain_allowed(host, self.settings.link_allow_domains, ctx.relay_domain)

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        out = Findings("link", SENTENCE)
        allowed: dict[str, bool] = {}  # host -> allowed, for this message
        for location, text in text_sources(view):
            for start, end, host in find_links(text):
                if not self._allowed(host, ctx):
                    out.add(text[start:end], location)
        for location, scan in html_scans(view):
            for value, url, scheme in scan.targets():
                if scheme in ("http", "https", "ftp", "ftps", "//", "hxxp", "hxxps") or (
                        not scheme and url.lower().startswith("www.")):
                    host = _host_of_clean(url, scheme)
                    ok = allowed.get(host)
                    if ok is None:
                        ok = allowed[host] = self._allowed(host, ctx)
                    if not ok:
                        out.add(value.strip(), location)
        return out.items

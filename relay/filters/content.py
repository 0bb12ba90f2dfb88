"""Shared machinery of the content filters (link, email_address, phone_number,
promotion, tracking_pixel): where text lives in a message, how HTML is read,
how text is normalised for matching.

- `text_sources(view)` yields (location, text) for the subject, the name of
  every attachment, every text/plain part and text attachment, and every
  text/html part or attachment converted to its text; where CSS or the
  `hidden` attribute hides some of it, also the text as displayed without
  it ("415<span hidden>7</span>-555-2671" shows a phone number).
- `scan_html(markup)` parses markup once (stdlib html.parser, cached) into the
  visible text, the navigation URLs (href, form action, ...) and the resources a
  mail client would load (img src, CSS url(), background=, <link rel=stylesheet>...),
  in time linear in the markup's length whatever the markup (`_parse_markup`).
- `fold(text)` maps accented letters, typographic apostrophes and odd spaces to
  plain ASCII one character for one character, so regexes can be written in
  ASCII while match offsets still point into the original text (fragments are
  quoted exactly as the seller wrote them).

Every regex here and in the filter modules is compiled once, at import, and is
written with bounded quantifiers and disjoint alternatives so that matching stays
linear in the text length (tests/test_filters_robustness.py runs 1 MB inputs).

Speed (the chain runs on every message, in the event loop): the expensive regexes
are not run over whole texts.  `windowed_finditer` runs one only in small windows
around cheap anchors (an '@', a '.' before a letter, ...) that every match must
contain, which finds exactly the matches a whole-text `finditer` finds; markup is
read by a single-pass tokenizer (`_fast_scan`) that hands html.parser any markup
it is not sure to read the same way; per-text results are cached for the few
filters that ask for the same text (`per_message_cache`, `clear_caches`).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from html import unescape
from html.parser import HTMLParser
from typing import Iterator

import tldextract

from relay.aliases import RESERVED_TLDS  # (RFC 2606/6761) used by operators and test suites as real domains
from relay.filters.base import INVISIBLE_CHARACTERS, Finding, MessageView

# ---------------------------------------------------------------- folding


def _build_fold_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in range(0xC0, 0x250):
        ch = chr(cp)
        decomposed = unicodedata.normalize("NFKD", ch)
        base = decomposed[:1]
        if base.isascii() and base.isalpha() and all(unicodedata.combining(c) for c in decomposed[1:]):
            if base != ch:
                table[cp] = base
    for ch in "\u2018\u2019\u201a\u201b\u02bc\u2032\u00b4`":
        table[ord(ch)] = "'"
    for ch in "\u201c\u201d\u201e\u201f\u2033":
        table[ord(ch)] = '"'
    for ch in "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000":
        table[ord(ch)] = " "
    for ch in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d":
        table[ord(ch)] = "-"
    for cp in range(0xFF01, 0xFF5F):  # full-width ASCII: ＠ ． ＋ ０-９ ａ-ｚ ...
        table[cp] = chr(cp - 0xFEE0)
    for ch in "\u3002\ufe52\u2024":  # ideographic full stop, small full stop, one dot leader
        table[ord(ch)] = "."
    table[ord("\ufe6b")] = "@"  # small commercial at
    return table


_FOLD_TABLE = _build_fold_table()


_FOLD_CHARS = {chr(cp): repl for cp, repl in _FOLD_TABLE.items()}
_FOLD_RE = re.compile("[" + "".join(re.escape(ch) for ch in sorted(_FOLD_CHARS)) + "]")

# Caches that only need to live while the chain judges one message (each filter asks for
# the same folded texts, the same parsed HTML, the same detections); they are small so
# as not to pin large texts.  clear_caches() empties them all (the benchmark does, so that
# each run pays what a new message pays).
_CACHES: list = []


def per_message_cache(maxsize: int = 8):
    def decorate(fn):
        cached = lru_cache(maxsize=maxsize)(fn)
        _CACHES.append(cached)
        return cached
    return decorate


def clear_caches() -> None:
    for cached in _CACHES:
        cached.cache_clear()


def _fold_char(m: re.Match[str]) -> str:
    return _FOLD_CHARS[m.group()]


@per_message_cache(8)
def fold(text: str) -> str:
    """Same length as `text`: offsets into the result are offsets into `text`."""
    if text.isascii():
        return text
    # A substitution costs per replaced character; str.translate with a dict costs
    # ~50 ns per character of the text.
    return _FOLD_RE.sub(_fold_char, text)


@per_message_cache(8)
def casefree(folded: str) -> str | None:
    """`folded` lower-cased so that a pattern of lower-case ASCII compiled *without*
    re.IGNORECASE matches where it matches `folded` *with* it (and the regex engine can
    then skip ahead to its first letter); None if lower-casing would move offsets.
    Only U+0130 (folded away by fold()), U+0131 and U+017F (folded) match an ASCII letter
    under IGNORECASE without lower-casing to it."""
    low = folded.lower()
    if len(low) != len(folded):
        return None
    return low.replace("\u0131", "i") if "\u0131" in low else low


# Bytes that are not [a-z0-9_] (after lower-casing; non-ASCII characters arrive as '?')
# become spaces: what remains are whole words as \b and \w see them, or parts of them.
_NON_WORD = bytes(c if (0x61 <= c <= 0x7a or 0x30 <= c <= 0x39 or c == 0x5f) else 0x20 for c in range(256))


@per_message_cache(8)
def word_bytes(folded: str) -> bytes:
    """The case-free text as bytes, one per character, every byte that is not [a-z0-9_] (every
    non-ASCII character among them) made a space: what remains are the words as \\b and \\w
    see them, or parts of them, at their offsets in the text."""
    low = casefree(folded)
    if low is None:
        low = folded.lower()
    return low.encode("ascii", "replace").translate(_NON_WORD)


# Words the filters look for, registered at import: stems (a word starting with one) and
# whole words.  words_present() finds them all in one regex pass over word_bytes().
_STEMS: set[bytes] = set()
_WHOLE: set[bytes] = set()
_index: list = []  # [regex, hit -> the stems it starts with] once built


def register_words(stems=(), whole=()) -> None:
    _STEMS.update(stems)
    _WHOLE.update(whole)
    _index.clear()


def _trie(words: list[str]) -> str:
    """A regex matching the longest of `words` that starts where it is tried."""
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def branch(node: dict) -> str:
        keys = sorted(k for k in node if k)
        if not keys:
            return ""
        body = "|".join(re.escape(k) + branch(node[k]) for k in keys)
        if "" in node:
            return f"(?:{body})?"
        return body if len(keys) == 1 else f"(?:{body})"

    return branch(root)


@per_message_cache(8)
def words_present(folded: str) -> frozenset[tuple[str, bytes]]:
    """("w", stem) for each registered stem some word of the text starts with, and ("e", word)
    for each registered whole word of the text.  At each word the regex matches the longest
    entry the word starts with; the stems that start that entry come with it."""
    if not _index:
        entries = sorted(_STEMS | _WHOLE)
        regex = re.compile((" (" + _trie([e.decode() for e in entries]) + ")(?=( ))?").encode())
        _index[:] = [regex, {e: frozenset(("w", s) for s in _STEMS if e.startswith(s)) for e in entries}]
    regex, stems = _index
    found: set[tuple[str, bytes]] = set()
    for hit, space in set(regex.findall(b" " + word_bytes(folded) + b" ")):
        found |= stems[hit]
        if space and hit in _WHOLE:
            found.add(("e", hit))
    return frozenset(found)


# ---------------------------------------------------------------- invisible characters

_INVISIBLE = re.compile(f"[{INVISIBLE_CHARACTERS}]")


def on_visible_text(finder):
    """Decorate finder(text, *args) -> ((start, end, ...), ...) to run on the text without its
    invisible characters: the spans it returns are mapped back to the text, so that a fragment
    is what the seller wrote, invisible characters included (the rewriter redacts fragments by
    finding them in the text)."""
    def wrapper(text: str, *args):
        if text.isascii() or not _INVISIBLE.search(text):
            return finder(text, *args)
        removed = [m.start() for m in _INVISIBLE.finditer(text)]
        # the k-th removed character would have been at removed[k] - k in the visible text
        at_visible = [pos - k for k, pos in enumerate(removed)]

        def original(i: int, end: bool = False) -> int:
            # characters removed at or before visible offset i (strictly before, for an end)
            return i + bisect_right(at_visible, i - 1 if end else i)

        return tuple((original(hit[0]), original(hit[1], end=True), *hit[2:])
                     for hit in finder(_INVISIBLE.sub("", text), *args))

    wrapper.__wrapped__ = finder
    wrapper.__doc__ = finder.__doc__
    return wrapper


# ---------------------------------------------------------------- windowed matching

_SPACE = re.compile(r"\s")


def windows(text: str, anchors, before: int, after: int) -> list[tuple[int, int]]:
    """Merged windows [start - before, end + after] around (start, end) anchors given in
    increasing order; each window ends on a whitespace character (or the end of the text)."""
    out: list[tuple[int, int]] = []
    n = len(text)
    for a, b in anchors:
        s = a - before if a > before else 0
        e = b + after
        if out and e <= out[-1][1]:
            continue
        if e >= n:
            e = n
        else:
            m = _SPACE.search(text, e)
            e = m.start() if m else n
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def token_windows(text: str, anchors, reach: int = 1100) -> list[tuple[int, int]]:
    """Merged windows holding the whitespace-delimited token of each (start, end) anchor,
    anchors given in increasing order, for a regex whose matches have no whitespace and
    start at most `reach` characters before their anchor.  A window may hold more than the
    token (it starts after the nearest space, line break, tab or carriage return, at most
    `reach` back; other spaces are rare): a window only has to hold every match, and end on
    whitespace."""
    out: list[tuple[int, int]] = []
    spaces = [c for c in " \n\t\r" if c in text]
    for a, b in anchors:
        if out and a < out[-1][1]:
            if b > out[-1][1]:  # (an anchor spanning whitespace)
                out[-1] = (out[-1][0], _space_at_or_after(text, b, spaces))
            continue
        lo = max(out[-1][1] if out else 0, a - reach)
        s = max([text.rfind(c, lo, a) for c in spaces], default=-1) + 1
        out.append((max(s, lo), _space_at_or_after(text, b, spaces)))
    return out


def _space_at_or_after(text: str, i: int, spaces: list[str]) -> int:
    end = len(text)
    for c in spaces:
        e = text.find(c, i, end)
        if e >= 0:
            end = e
    return end


def windowed_finditer(regex: re.Pattern[str], text: str, wins):
    r"""regex.finditer(text) restricted to windows.  It finds exactly the whole-text
    matches when every match lies inside a window and the regex reads the end of the
    string as it reads a whitespace character (no `$`; trailing look-aheads such as
    (?![\w-]) succeed on both): look-behinds still see the text before a window."""
    for s, e in wins:
        yield from regex.finditer(text, s, e)


_NOT_NEWLINE = re.compile(r"[^\n]")


def mask(text: str, spans: list[tuple[int, int]]) -> str:
    """Blank out spans (same length; line breaks stay), so later patterns do not see them twice."""
    if not spans:
        return text
    pieces: list[str] = []
    at = 0
    for start, end in sorted(spans):
        start, end = max(start, at), min(end, len(text))
        if end <= start:
            continue
        pieces.append(text[at:start])
        blank = text[start:end]
        pieces.append(_NOT_NEWLINE.sub(" ", blank) if "\n" in blank else " " * (end - start))
        at = end
    pieces.append(text[at:])
    return "".join(pieces)


class Spans:
    """Which characters of a text are already claimed; overlap tests cost the span's length,
    not the number of spans claimed so far."""

    def __init__(self, length: int) -> None:
        self._taken = bytearray(length)

    def overlaps(self, start: int, end: int) -> bool:
        return 1 in self._taken[start:end]

    def claim(self, start: int, end: int) -> None:
        self._taken[start:end] = b"\x01" * (min(end, len(self._taken)) - start)


def shorten(fragment: str, limit: int = 2048) -> str:
    fragment = fragment.strip()
    return fragment if len(fragment) <= limit else fragment[: limit - 3] + "..."


# ---------------------------------------------------------------- HTML

_BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset", "figcaption",
    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul", "center",
})
_HIDDEN_TAGS = frozenset({"script", "style", "title", "template", "noscript", "head"})
# Attributes whose value a mail client fetches when it renders the message.
_RESOURCE_ATTRS = frozenset({"src", "lowsrc", "dynsrc", "poster", "background", "data", "srcset", "imagesrcset"})
_NAV_LINK_RELS = frozenset({"stylesheet", "icon", "preload", "prefetch", "dns-prefetch", "preconnect",
                            "prerender", "modulepreload", "apple-touch-icon", "shortcut"})
_CSS_URL = re.compile(
    r"""url\(\s{0,20}(?:"([^"\n]{0,4096})"|'([^'\n]{0,4096})'|([^)\s'"]{0,4096}))"""
    r"""|@import\s{1,20}(?:"([^"\n]{0,4096})"|'([^'\n]{0,4096})')""",
    re.IGNORECASE,
)
_SIZE_ONE = re.compile(r"^\s{0,5}[01](?:\.0{1,5})?\s{0,5}(?:px)?\s{0,5}$", re.IGNORECASE)
_STYLE_TINY = re.compile(r"(?:^|[;\s])(?:max-)?(?:width|height)\s{0,5}:\s{0,5}[01](?:\.0{1,5})?(?:px)?\s{0,5}(?:;|$|!)",
                         re.IGNORECASE)
_STYLE_HIDDEN = re.compile(r"display\s{0,5}:\s{0,5}none|visibility\s{0,5}:\s{0,5}hidden", re.IGNORECASE)
# Styles under which an element's text is not shown to the reader (what a
# mail client honours): its text is in HtmlScan.text like any other, and left
# out of HtmlScan.shown_text, where what is shown on either side of it meets.
_STYLE_VEILED = re.compile(
    _STYLE_HIDDEN.pattern + r"|mso-hide\s{0,5}:\s{0,5}all"
    r"|(?:^|[;\s])(?:font-size|opacity)\s{0,5}:\s{0,5}0*\.?0+(?:px|pt|em|rem|%)?\s{0,5}(?:;|$|!)", re.IGNORECASE)
# Elements that never have content, so never an end tag to end a veil.
_VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
                        "source", "track", "wbr"})
# Where a filter found something in HtmlScan.shown_text: the location gets this
# ending, and the finding cannot be redacted (relay.filters.chain), since the
# fragment is not written anywhere in the markup.
AS_DISPLAYED = " (as displayed)"
# The location of what a filter found in an attachment's file name (shown to the
# reader like text); the rewriter redacts text, not names, so it is not redacted.
NAME_OF = "name of "

_REFRESH_URL = re.compile(r"url\s{0,5}=\s{0,5}['\"]?([^'\"\s;]{1,4096})", re.IGNORECASE)


@dataclass
class HtmlScan:
    text: str = ""
    # The text without what CSS or the `hidden` attribute hides (_STYLE_VEILED),
    # or None when nothing is hidden: "555<span hidden>7</span>-123-4567" shows
    # a phone number that `text` does not hold.
    shown_text: str | None = None
    # (tag, attribute, value) of navigation targets: a/area href, form action, base href, meta refresh
    hrefs: list[tuple[str, str, str]] = field(default_factory=list)
    # (tag, attribute, value) of everything a client loads: img src, srcset, background, CSS url()
    resources: list[tuple[str, str, str]] = field(default_factory=list)
    # (href, img src) of images inside a link
    linked_images: list[tuple[str, str]] = field(default_factory=list)
    # src of images sized 0/1 px or hidden
    tiny_images: list[str] = field(default_factory=list)
    base_href: str = ""
    # False when part of the markup could only be read as text (see _parse_markup): its links
    # and addresses are in `text`, but the resources it may load are unknown.
    complete: bool = True
    _targets: list[tuple[str, str, str]] | None = field(default=None, repr=False, compare=False)

    def targets(self) -> list[tuple[str, str, str]]:
        """(value, clean_url(value), url_scheme(value)) of each of `hrefs`, in order, computed
        once for all the filters that look at them."""
        if self._targets is None:
            self._targets = [(value, url, _scheme_of_clean(url))
                             for _tag, _attr, value in self.hrefs for url in (clean_url(value),)]
        return self._targets


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scan = HtmlScan()
        self._text: list[str] = []
        self._hidden = 0
        self._in_style = 0
        self._link_stack: list[str] = []
        # The element that hides its content (one at a time: what it holds is hidden
        # anyway), how many of its name are open, and where in _text it began.
        self.veil_tag: str | None = None
        self._veil_depth = 0
        self._veil_from = 0
        self._veiled: list[tuple[int, int]] = []  # ranges of _text hidden from the reader

    # -- helpers
    def _resource(self, tag: str, attr: str, value: str) -> None:
        if value and value.strip():
            self.scan.resources.append((tag, attr, value))

    def _css(self, tag: str, attr: str, css: str) -> None:
        for m in _CSS_URL.finditer(css):
            value = next((g for g in m.groups() if g), "")
            self._resource(tag, attr, value)

    # -- parser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, {k.lower(): (v or "") for k, v in attrs} if attrs else None)

    def _start(self, tag: str, a: dict[str, str] | None) -> None:
        """A start tag, its attributes lower-cased with None made "" (None: no attributes)."""
        if tag == self.veil_tag:
            self._veil_depth += 1
        elif a and self.veil_tag is None and tag not in _VOID_TAGS and (
                "hidden" in a or _STYLE_VEILED.search(a.get("style", ""))):
            self.veil_tag, self._veil_depth, self._veil_from = tag, 1, len(self._text)
        if tag in _HIDDEN_TAGS and tag != "head":
            self._hidden += 1
        if tag == "style":
            self._in_style += 1
        if tag in _BLOCK_TAGS:
            self._text.append("\n")
        if not a:  # most tags: only the bookkeeping below applies
            if tag == "a":
                self._link_stack.append("")
            elif tag == "img" and self._link_stack and self._link_stack[-1]:
                self.scan.linked_images.append((self._link_stack[-1], ""))
            return
        scan = self.scan
        if not _RESOURCE_ATTRS.isdisjoint(a):
            for key in _RESOURCE_ATTRS:
                value = a.get(key)
                if not value:
                    continue
                if key == "data" and tag != "object":
                    continue
                if key in ("srcset", "imagesrcset"):
                    for candidate in value.split(","):
                        self._resource(tag, key, candidate.strip().split(" ")[0])
                else:
                    self._resource(tag, key, value)
        if tag in ("image", "use", "feimage"):  # SVG
            for key in ("href", "xlink:href"):
                if a.get(key):
                    self._resource(tag, key, a[key])
        style = a.get("style", "")
        if style:
            self._css(tag, "style", style)
        href = a.get("href")
        if tag == "link":
            if href:
                rels = set(a.get("rel", "").lower().split())
                if rels & _NAV_LINK_RELS or not rels:
                    self._resource(tag, "href", href)
                else:
                    scan.hrefs.append((tag, "href", href))
        elif tag == "a" or tag == "area":
            if href:
                scan.hrefs.append((tag, "href", href))
        elif tag == "base":
            if href:
                scan.hrefs.append((tag, "href", href))
                scan.base_href = href
        elif tag == "form":
            if a.get("action"):
                scan.hrefs.append((tag, "action", a["action"]))
        if a.get("formaction"):
            scan.hrefs.append((tag, "formaction", a["formaction"]))
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            m = _REFRESH_URL.search(a.get("content", ""))
            if m:
                scan.hrefs.append((tag, "content", m.group(1)))
        if tag == "a":
            self._link_stack.append(href or "")
        elif tag == "img":
            src = a.get("src", "")
            if self._link_stack and self._link_stack[-1]:
                scan.linked_images.append((self._link_stack[-1], src))
            if (_SIZE_ONE.match(a.get("width", "x")) or _SIZE_ONE.match(a.get("height", "x"))
                    or _STYLE_TINY.search(style) or _STYLE_HIDDEN.search(style)):
                scan.tiny_images.append(src)
            alt = a.get("alt", "")
            if alt and not self._hidden:
                self._text.append(f" {alt} ")

    def handle_endtag(self, tag: str) -> None:
        if tag == self.veil_tag:
            self._veil_depth -= 1
            if not self._veil_depth:
                self._veiled.append((self._veil_from, len(self._text)))
                self.veil_tag = None
        if tag in _HIDDEN_TAGS and tag != "head" and self._hidden:
            self._hidden -= 1
        if tag == "style" and self._in_style:
            self._in_style -= 1
        if tag == "a" and self._link_stack:
            self._link_stack.pop()
        if tag in _BLOCK_TAGS:
            self._text.append("\n")

    def finish(self) -> HtmlScan:
        """The scan, its texts joined."""
        scan = self.scan
        scan.text = "".join(self._text)
        if self.veil_tag is not None:  # never ended: hidden to the end
            self._veiled.append((self._veil_from, len(self._text)))
        if self._veiled:
            shown, at = [], 0
            for begin, end in self._veiled:
                shown += self._text[at:begin]
                at = end
            shown += self._text[at:]
            scan.shown_text = "".join(shown)
        return scan

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css("style", "css", data)
            return
        if not self._hidden:
            self._text.append(data)


# ---- the fast path: one regex pass over well-formed markup
#
# _fast_scan feeds the _Scanner callbacks the events html.parser would feed them, for the
# markup it accepts: start tags whose attributes are separated by ASCII spaces and quoted
# or plainly unquoted, end tags, comments without "--" inside, <!doctype> and <?...?>, and
# text in which a '<' is not followed by a letter, '/', '!' or '?'.  Everything else
# (Outlook's <![if ...]>, </ x>, attributes glued together, script or style content
# holding "</", raw-text elements that later Pythons parse differently, ...) makes it
# return None, and html.parser reads the whole markup instead.
_W = r"[ \t\n\r\f]"
_TAG_NAME = r"[a-zA-Z][-a-zA-Z0-9:_.]*"
_ATTR_NAME = r"[a-zA-Z_:][-a-zA-Z0-9_:.]*"
_ATTR_VALUE = r"""(?:"[^"]*+"|'[^']*+'|(?!["'=])[^\s>]++)"""
_FAST_STEP = re.compile(
    r"([^<]*+)(?:<(?:"
    rf"({_TAG_NAME})((?:{_W}+{_ATTR_NAME}(?:{_W}*={_W}*{_ATTR_VALUE})?)*+){_W}*(/?)>"  # start tag
    rf"|/({_TAG_NAME}){_W}*>"  # end tag
    r"|!--(?!-?>)(?:[^-]|-(?!-))*+-->"  # comment
    r"|![dD][oO][cC][tT][yY][pP][eE][^>]{0,4096}>|\?[^>]{0,4096}>)"  # <!doctype ...>, <?...>
    r"|(<)|\Z)"  # a '<' that starts no token, or the end
)
_FAST_ATTR = re.compile(rf"""{_W}+({_ATTR_NAME})(?:{_W}*={_W}*(?:"([^"]*)"|'([^']*)'|((?!["'=])[^\s>]+)))?""")
_TOKEN_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ/!?")
# html.parser's CDATA elements: their content is raw text up to the end tag.
_CDATA_TAGS = frozenset({"script", "style"})
# Elements that newer html.parser versions read as raw or escapable raw text: accepted only
# when that makes no difference (no '<' inside; no '&' unless the text is escapable).
_RAW_TAGS = frozenset({"title", "textarea", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"})
_ESCAPABLE_RAW_TAGS = frozenset({"title", "textarea"})


# Tags whose start or end does more than add a line break; the others are handled inline.
_START_SPECIAL = _HIDDEN_TAGS | _CDATA_TAGS | _RAW_TAGS | {"a", "img"}
_END_SPECIAL = (_HIDDEN_TAGS - {"head"}) | {"style", "a"}


def _fast_scan(markup: str) -> HtmlScan | None:
    sc = _Scanner()
    start, endtag, data = sc._start, sc.handle_endtag, sc.handle_data
    text_append = sc._text.append
    step = _FAST_STEP.match
    block, start_special, end_special = _BLOCK_TAGS, _START_SPECIAL, _END_SPECIAL
    n = len(markup)
    pos = 0
    while True:
        m = step(markup, pos)
        text, name, attrs, slash, end_name, lt = m.groups()
        if text:
            if "&" in text:
                text = unescape(text)
            if sc._in_style or sc._hidden:
                data(text)
            else:
                text_append(text)
        pos = m.end()
        if end_name is not None:
            tag = end_name.lower()
            if tag in end_special or tag == sc.veil_tag:
                endtag(tag)
            elif tag in block:
                text_append("\n")
        elif name is not None:
            tag = name.lower()
            if not attrs and tag not in start_special and tag != sc.veil_tag:
                if tag in block:
                    text_append("\n\n" if slash else "\n")
                if pos >= n:
                    break
                continue
            # (an attribute without a value, like one with an empty value, reads as "")
            a = {k.lower(): (unescape(v) if "&" in v else v)
                 for k, dq, sq, bare in _FAST_ATTR.findall(attrs) for v in (dq or sq or bare,)} if attrs else None
            if tag in _CDATA_TAGS or tag in _RAW_TAGS:
                if slash or tag == "plaintext":
                    return None
                close = f"</{tag}>"
                # style may hold "<!--" (mail clients' habit); script's escaped states differ
                # between parsers, so there no '<' at all.
                j = markup.find("</" if tag == "style" else "<", pos)
                if j < 0 or markup[j:j + len(close)].lower() != close:
                    return None
                content = markup[pos:j]
                if tag in _RAW_TAGS and "&" in content:
                    if tag not in _ESCAPABLE_RAW_TAGS:
                        return None
                    content = unescape(content)
                start(tag, a)
                if content:
                    data(content)
                endtag(tag)
                pos = j + len(close)
                continue
            start(tag, a)
            if slash:
                endtag(tag)
        elif lt is not None:
            if markup[pos:pos + 1] in _TOKEN_START:
                return None
            data("<")
        if pos >= n:
            break
    return sc.finish()


# ---- the slow path: html.parser, in linear time
#
# html.parser (CPython 3.11.7, and every version without the fix for CVE-2025-6069) reads a
# construct it cannot complete (an unclosed "<!--", "<![CDATA[", "</", "<?", a start tag that
# runs to the end) only at close(): it searches for the construct's end to the end of the
# markup, reads the construct as text up to the next '>' (or '<'), and tries again at the next
# '<'.  A few hundred kilobytes of "<a " or "</" take minutes.  feed() alone is linear: it
# reads every complete construct and stops at the first incomplete one.  So _parse_markup
# feeds, does what close() does with the one incomplete construct, and feeds the rest again;
# each round costs at most the length of what is left, and the rounds stop when they have
# cost as much as the markup's length (plus _PARSE_SLACK): a few stray "<!--" are read
# whole, thousands of unclosed constructs are not.  What is left then is read as text (its
# links, addresses and phone numbers are still found) and the scan is marked incomplete,
# since the resources it may load are unknown: tracking_pixel rejects such a part.
_PARSE_SLACK = 1 << 20
# html.parser 3.11 raises on "<![" without one of these keywords (later versions read it as a
# bogus comment, like browsers); written "&lt;![", it reads as the text it is.
_BAD_MARKED_SECTION = re.compile(
    r"<(?=!\[(?!(?i:temp|cdata|ignore|include|rcdata|if|else|endif)(?![-_.a-zA-Z0-9]))(?!\Z))")


def _parse_markup(markup: str) -> HtmlScan:
    """What html.parser's feed() and close() read, in time linear in the markup's length.

    Two differences, both towards seeing more: an unclosed <style> is read to the end (as
    browsers apply it; html.parser drops it), and "<![" that html.parser 3.11 cannot parse is
    text."""
    sc = _Scanner()
    if "<![" in markup:
        markup = _BAD_MARKED_SECTION.sub("&lt;", markup)
    budget = len(markup) + _PARSE_SLACK
    sc.feed(markup)
    while sc.rawdata:
        rest, sc.rawdata = sc.rawdata, ""
        if sc.cdata_elem:  # an unclosed <script> or <style>
            sc.handle_data(rest)
            break
        if not rest.startswith("<"):  # text that ends in an incomplete character reference
            sc.handle_data(unescape(rest))
            break
        budget -= len(rest)
        if budget < 0:
            sc._text.append(unescape(rest))
            sc.scan.complete = False
            break
        # close(): the incomplete construct is text up to the next '>', else up to the next '<'
        end = rest.find(">", 1) + 1 or rest.find("<", 1)
        if end <= 0:
            end = 1
        sc.handle_data(unescape(rest[:end]))
        sc.feed(rest[end:])
    return sc.finish()


@per_message_cache(8)  # (a message's HTML parts and HTML attachments, read by four filters)
def scan_html(markup: str) -> HtmlScan:
    """Parse once; every content filter reuses the result."""
    try:
        fast = _fast_scan(markup)
    except Exception:  # never let markup crash the chain
        fast = None
    if fast is not None:
        return fast
    try:
        return _parse_markup(markup)
    except Exception:  # html.parser is lenient, but never let markup crash the chain
        # Nothing of the structure is known: all of the markup is text, and nothing passes
        # for checked.
        return HtmlScan(text=unescape(markup), complete=False)


# ---------------------------------------------------------------- URLs

_SCHEME = re.compile(r"^([a-z][a-z0-9+.\-]{0,30}):", re.IGNORECASE)
_URL_JUNK = re.compile(r"[\x00-\x20\x7f]")
LOCAL_SCHEMES = frozenset({"cid", "data", "about", "mid", "#"})


def clean_url(value: str) -> str:
    """What a browser makes of an attribute value: no whitespace or control characters."""
    return _URL_JUNK.sub("", value)


def _scheme_of_clean(url: str) -> str:
    if url.startswith(("//", "\\\\", "/\\", "\\/")):
        return "//"
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else ""


def url_scheme(value: str) -> str:
    """'http', 'mailto', ... ; '//' for protocol-relative; '' for relative."""
    return _scheme_of_clean(clean_url(value))


def is_remote(value: str, base_href: str = "") -> bool:
    """Would a mail client fetch this over the network?"""
    url = clean_url(value)
    if not url or url.startswith("#"):
        return False
    scheme = _scheme_of_clean(url)
    if scheme in LOCAL_SCHEMES:
        return False
    if scheme:
        return True
    return bool(base_href) and is_remote(base_href)


# ---------------------------------------------------------------- domains


def domain_allowed(host: str, allowed: tuple[str, ...] | list[str], relay_domain: str) -> bool:
    host = host.lower().rstrip(".")
    if not host:
        return False
    for domain in (*allowed, relay_domain):
        domain = domain.lower().strip().lstrip("*").strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


# ---------------------------------------------------------------- sources


def _texts(view: MessageView) -> Iterator[tuple[str, str, str]]:
    """(location, content type, text) of the text parts, then of the text attachments."""
    for part in view.parts:
        yield part.location, part.content_type, part.text
    for att in view.attachments:
        if att.text is not None:
            yield att.location, att.content_type, att.text


def text_sources(view: MessageView) -> Iterator[tuple[str, str]]:
    """(location, text) of everything a reader sees as text: the subject, the text parts,
    the text attachments (a .txt file, an HTML page as the text it shows) and the names of
    the attachments."""
    if view.subject:
        yield "subject", view.subject
    for att in view.attachments:
        if att.filename:
            yield NAME_OF + att.location, att.filename
    for location, ctype, text in _texts(view):
        if ctype != "text/html":
            yield location, text
            continue
        scan = scan_html(text)
        yield location, scan.text
        if scan.shown_text is not None:
            yield location + AS_DISPLAYED, scan.shown_text


def redactable(location: str) -> bool:
    """Can a finding at `location` (of text_sources) be redacted where it was written?"""
    return not location.endswith(AS_DISPLAYED) and not location.startswith(NAME_OF)


def html_scans(view: MessageView) -> Iterator[tuple[str, HtmlScan]]:
    for location, ctype, text in _texts(view):
        if ctype == "text/html":
            yield location, scan_html(text)


MAX_FINDINGS = 200


class Findings:
    """Collects findings, one per (location, fragment).

    Past MAX_FINDINGS distinct fragments, one last finding with an empty fragment says so:
    the chain cannot redact an empty fragment, so such a message is rejected even where
    the rule's action is `redact`, rather than relayed with fragments left in."""

    def __init__(self, code: str, sentence: str) -> None:
        self.code = code
        self.sentence = sentence
        self._seen: set[tuple[str, str]] = set()
        self.items: list[Finding] = []
        self.full = False

    def add(self, fragment: str, location: str, sentence: str | None = None) -> None:
        if self.full:
            return
        fragment = shorten(fragment)
        key = (location, fragment)
        if key in self._seen:
            return
        if len(self.items) >= MAX_FINDINGS:
            self.full = True
            self.items.append(Finding(self.code, "", location, f"{self.sentence} (More than {MAX_FINDINGS} found.)"))
            return
        self._seen.add(key)
        self.items.append(Finding(self.code, fragment, location, sentence or self.sentence))


# ---------------------------------------------------------------- public suffixes

# The bundled Public Suffix List snapshot only: never fetch, never write a cache.
_TLD_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


@lru_cache(maxsize=4096)
def split_host(host: str) -> tuple[str, str, str]:
    """(subdomain, registrable label, public suffix) of a host name; suffix '' if unknown.
    Reserved test TLDs count as suffixes."""
    host = host.lower().strip(".")
    labels = host.split(".")
    if len(labels) >= 2 and labels[-1] in RESERVED_TLDS:
        return ".".join(labels[:-2]), labels[-2], labels[-1]
    ext = _TLD_EXTRACT(host)
    return ext.subdomain, ext.domain, ext.suffix

"""`promotion`: marketing content and review manipulation, in English and French.

Policy (as marketplaces like Amazon state it): a seller may ask for a review or
for feedback *neutrally* ("please leave feedback about your experience",
"n'hésitez pas à laisser un avis") and that passes.  Flagged:

- review incentives: anything offered for a review (free gift, refund, discount,
  gift card, "en échange de votre avis", "laissez un avis et recevez...");
- positive-only asks: 5-star requests, "positive/great review", reviews asked
  only of happy buyers ("if you're satisfied, leave...", "si vous êtes satisfait..."),
  and diverting criticism ("contact us before leaving a review",
  "please don't leave negative feedback", "avant de laisser un avis négatif");
- marketing: coupon / promo / discount codes, "% off your next order", sales and
  special offers, newsletters and mailing lists, "follow us", "check out our other
  products", "découvrez nos autres créations";
- settings.promotion_phrases, added by the operator (case- and accent-insensitive).

Compensation for a problem with *this* order is not marketing ("we refunded the
shipping fee", "une remise de 5 € pour le retard"), and "review" the verb is not a
review ("please review the attached proof").  Phrase lists and regexes only: the
text is accent-folded (fold()) so patterns are written in ASCII; every gap is a
bounded run of non-sentence-ending characters, so matching stays linear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import Findings, Spans, fold, text_sources
from relay.filters.settings import FilterSettings

REVIEW_SENTENCE = ("Review manipulation is not allowed: you may ask for honest feedback, but not offer anything "
                   "for a review, ask only for positive reviews or ask buyers to contact you instead of reviewing.")
MARKETING_SENTENCE = ("Marketing is not allowed in order messages: remove discount codes, offers, newsletter or "
                      "social media invitations and promotion of other products.")

_GAP = r"[^.!?;\n]{0,60}?"
_SHORT = r"[^.!?;\n]{0,30}?"
_W2 = r"(?:[\w'-]{1,30}\s{1,3}){0,2}"
_W3 = r"(?:[\w'-]{1,30}\s{1,3}){0,3}"

# "note" is a rating only in French, and only with a determiner ("une note", not "a delivery note").
_REVIEW = (r"(?:reviews?|feedback|ratings?|stars?|avis|evaluations?|commentaires?|(?:une|votre|bonne|mauvaise|"
           r"excellente|belle|meilleure) notes?|etoiles?|"
           r"testimonials?|temoignages?)")
_STARS = r"(?:(?:5|five|cinq)[\s-]{0,2}(?:stars?|etoiles?)|(?:5|five)[\s-]star)"
_INCENTIVE = (r"(?:free|gift|refund\w*|reimburs\w*|money back|cash ?back|discount\w*|coupons?|vouchers?|"
              r"rewards?|bonus|compensat\w*|gift ?cards?|\d{1,3}\s?%|[$€£]\s?\d{1,4}|\d{1,4}\s?(?:[$€£]|eur|euros?)|"
              r"cadeaux?|offert\w*|gratuit\w*|rembours\w*|bons? d'achat|bons? de \d|reduction|remise|"
              r"cartes? cadeaux?|recompens\w*)")
_ASK = (r"(?:leav\w*|send\w*|screenshot\w*|captur\w*|envoy\w*|writ\w*|post\w*|giv\w*|shar\w*|publish\w*|submit\w*|"
        r"rat(?:e|ing)|updat\w*|chang\w*|"
        r"laiss\w*|publi\w*|ecri\w*|donn\w*|mett\w*|redig\w*|depos\w*|poster|modifi\w*)")
_POSITIVE = r"(?:positive|good|great|nice|glowing|excellent|favou?rable|top|amazing|perfect|5[\s-]?star)"
_POSITIVE_FR = r"(?:positi\w*|favorable|excellent\w*|elogieu\w*|bon(?:ne)?|super|parfait\w*|5 etoiles)"
_HAPPY = (r"(?:happy|satisfied|pleased|delighted|love|like|enjoy\w*|satisfait\w*|content\w*|ravie?s?|heureu\w*|"
          r"plait|plu)")

# Each pattern runs only if one of its gate words occurs in the lower-cased text: a cheap
# substring test that keeps long messages without those words from paying for every regex.
_GR = ("review", "feedback", "rating", "star", "avis", "evaluation", "comment", "note", "etoile", "testimonial",
       "temoignage")
_STAR_GATE = ("star", "etoile")

REVIEW_PATTERNS: list[tuple[tuple[str, ...], str]] = [
    # 5-star asks: "leave us 5 stars", "a 5-star review", "un avis 5 étoiles" (not "a 5-star hotel")
    (_STAR_GATE,
     rf"\b{_ASK}\s{_W3}{_STARS}"),
    (_STAR_GATE,
     rf"\b(?:us|nous)\s{_W2}{_STARS}"),
    (_STAR_GATE,
     rf"\b(?:please|pls|svp|merci de)\s{_W3}{_STARS}|{_STARS}[\s,!]{{0,3}}(?:please|pls|svp|s'il vous plait|merci)\b"),
    (_STAR_GATE,
     rf"{_STARS}\s{{0,2}}(?:reviews?|feedback|ratings?|avis|evaluations?|notes?|commentaires?)\b"),
    (_STAR_GATE,
     rf"\b(?:reviews?|feedback|ratings?|avis|evaluations?|notes?|commentaires?)\s{_W2}{_STARS}"),
    # incentive, then a condition, then the review: "free gift if you leave a review"
    (_GR,
     rf"\b{_INCENTIVE}\b{_GAP}\b(?:if|once|after|when|as soon as|in exchange for|in return for|for|si|une fois|"
     rf"apres|des que|en echange d\w*|contre|pour)\b{_GAP}\b{_REVIEW}\b"),
    # the review, then something to get: "leave a review and receive a $10 gift card"
    (_GR,
     rf"\b{_ASK}\s{_W3}{_REVIEW}\b{_GAP}\b(?:and|then|to|et|puis|pour)\s{_W3}(?:get|receive|earn|claim|"
     rf"we'?ll\s\w+|we will\s\w+|recevez|recevoir|recevrez|obtenez|obtenir|gagnez|profitez|nous vous\s\w+|"
     rf"on vous\s\w+|vous\s(?:recevrez|sera|aurez))\b{_GAP}\b{_INCENTIVE}"),
    # "if you leave a review, we will refund 10%"
    (_GR,
     rf"\b(?:if|once|when|after|as soon as|si|une fois que|des que|apres)\s(?:you\s|vous\s)?(?:have\s|'ve\s|avez\s)?"
     rf"{_ASK}\s{_W3}{_REVIEW}\b{_GAP}\b{_INCENTIVE}"),
    # "in exchange for your review", "en échange de votre avis"
    (("exchange", "return", "echange", "contrepartie", "remerciement"),
     rf"\b(?:in exchange for|in return for|en echange d\w*|en contrepartie d\w*|en remerciement d\w*){_SHORT}\b"
     rf"{_REVIEW}\b"),
    # "once your review is posted" + incentive before it in the sentence
    (_GR,
     rf"\b{_INCENTIVE}\b{_GAP}\b(?:your|votre)\s(?:review|feedback|rating|avis|evaluation|note)\s(?:is|has been|"
     rf"gets|est|sera|a ete)\s"),
    # positive-only: "leave a positive review", "give us a great rating"
    (_GR,
     rf"\b{_ASK}\s{_W3}{_POSITIVE}\s(?:[\w-]{{1,20}}\s)?(?:reviews?|feedback|ratings?|comments?|testimonials?)\b"),
    (_GR,
     rf"\b{_ASK}\s{_W3}(?:avis|commentaires?|evaluations?|notes?)\s{_POSITIVE_FR}\b"),
    (_GR,
     rf"\b{_ASK}\s{_W3}(?:un|une|des)\s{_POSITIVE_FR}\s(?:avis|commentaires?|evaluations?|notes?)\b"),
    # only from happy buyers: "if you're happy ... leave a review", "only leave a review if..."
    (_GR,
     rf"\b(?:if|when|once|si)\s(?:you|vous|tu)\s?(?:'re|'re|are|etes|es)?\s{_W2}{_HAPPY}\b{_GAP}\b{_REVIEW}\b"),
    (_GR,
     rf"\b(?:if|si)\s(?:the |this |le |la |ce )?(?:product|item|order|produit|article|commande|it)\s?(?:vous\s)?"
     rf"{_W2}{_HAPPY}\b{_GAP}\b{_REVIEW}\b"),
    (_GR,
     rf"\b{_HAPPY}\b{_SHORT}\?\s{{0,3}}(?:please\s|merci de\s|n'hesitez pas a\s)?{_ASK}\s{_W3}{_REVIEW}\b"),
    (("only",),
     rf"\bonly\s{_ASK}\s{_W2}(?:reviews?|feedback|ratings?)\b"),
    (_GR,
     rf"\b{_REVIEW}\s(?:only\s)?if\s(?:you(?:'re| are)|you were)\s{_W2}{_HAPPY}\b"),
    # diverting criticism
    (_GR,
     r"\b(?:negative|bad|poor|low|critical|1[\s-]star|one[\s-]star|neutral)\s(?:reviews?|feedback|ratings?|"
     r"comments?)\b"),
    (("avis", "comment", "evaluation", "note"),
     r"\b(?:avis|commentaires?|evaluations?|notes?)\s(?:negati\w*|defavorables?|mauvaise?s?)\b"),
    (("avis", "comment", "evaluation", "note"),
     r"\b(?:mauvaise?s?|basses?)\s(?:avis|notes?|evaluations?|commentaires?)\b"),
    (("before",),
     rf"\b(?:contact|message|write to|email|e-mail|reach|talk to|call)\s{_W2}(?:first\s)?before\s(?:you\s)?"
     rf"(?:leav|writ|post|giv|rat|review)\w*"),
    (("avant de",),
     rf"\b(?:contactez|ecrivez|appelez)[\w-]{{0,10}}\s{_W2}avant\sde\s(?:laisser|publier|donner|mettre|noter)"),
    (("avant de",),
     rf"\bavant\sde\s(?:laisser|publier|donner|mettre)\s{_W2}(?:avis|commentaire|note|evaluation)\b{_GAP}"
     rf"\b(?:contact|ecri|appel)\w*"),
    (_GR,
     rf"\b(?:remove|delete|change|update|revise|edit|retract|supprimer|retirer|modifier|changer)\s{_W3}"
     rf"(?:your|the|votre|cet|cette|son)\s(?:review|feedback|rating|avis|evaluation|commentaire|note)\b{_GAP}"
     rf"\b{_INCENTIVE}"),
    (_GR,
     rf"\b{_INCENTIVE}\b{_GAP}\b(?:remove|delete|change|update|revise|edit|retract|supprim|retir|modifi)\w*\s{_W3}"
     rf"(?:your|the|votre|cet|cette)\s(?:review|feedback|rating|avis|evaluation|commentaire|note)\b"),
]

MARKETING_PATTERNS: list[tuple[tuple[str, ...], str]] = [
    # codes and coupons
    (("code",),
     r"\b(?:promo(?:tional)?|discount|coupon|voucher|reduction|remise|gift|referral|affiliate)\s?codes?\b"),
    (("code",),
     r"\bcodes?\s(?:promo|de reduction|de remise|avantage|privilege|cadeau|de parrainage)\b"),
    (("coupon", "voucher", "discount", "reduction", "promo"),
     r"\b(?:here(?:'s| is)|enclosed|attached|get|receive|offer you|send you|ci-joint|voici)\s(?:\w+\s){0,2}"
     r"(?:coupons?|vouchers?|discount codes?|bons? de reduction|promo codes?)\b"),
    (("code", "coupon"),
     r"\b(?:use|enter|apply|redeem|with|utilisez|avec|saisissez|entrez|appliquez)\s(?:the\s|our\s|my\s|le\s|"
     r"notre\s)?(?:code|coupon)\s(?-i:[A-Z][A-Z0-9-]{3,19})\b"),
    # discounts on future orders, sales
    (("next", "future", "prochain", "futur"),
     rf"(?:%|\boff\b|\bdiscount\b|\breduction\b|\bremise\b|\bfree shipping\b|\bfree delivery\b|\bvouchers?\b|"
     rf"\bcredit\b|livraison (?:offerte|gratuite)|\bbons? d'achat\b){_GAP}\b(?:on|off|for|toward|towards|sur|pour|de)\s"
     rf"(?:your|the|vos|votre|ta|tes|la|les)\s(?:next|future|prochaine?s?|futures?)\s(?:orders?|purchases?|commandes?|achats?)\b"),
    (("%",),
     r"\b\d{1,2}\s?%\s?off\s(?:when|on orders|in our|at our|with|if you)\b"),
    (("friend", "parrain"),
     r"\b(?:refer|invite)\sa\sfriend\b|\bparrain(?:ez|age)\b"),
    (("win", "giveaway", "sweepstake", "concours", "gagner", "tirage"),
     r"\b(?:chance to win|giveaway|sweepstakes?|jeu[- ]concours|tentez de gagner|tirage au sort)\b"),
    (("tag us", "mention us", "identifiez"),
     r"\b(?:tag|mention)\sus\b|\bidentifiez[- ]nous\b"),
    (("favo",),
     r"\b(?:add|ajoutez)\s(?:our|notre)\s(?:shop|store|boutique)\s(?:to|a)\s(?:your|vos)\s(?:favou?rites|favoris)\b"),
    (("nos ",),
     r"\b(?:rater|manquer)\s(?:\w+\s){0,2}(?:de\s)?nos\s(?:nouveautes|offres|promotions|soldes|ventes)\b"),
    (("miss",),
     r"\b(?:don't|do not|never)\smiss\s(?:\w+\s){0,2}(?:sales?|deals?|offers?|discounts?|new arrivals|drops?)\b"),
    (("%",),
     r"\b\d{1,2}\s?%\s?off\s(?:everything|all|sitewide|site-wide|storewide|store-wide|any|the whole|our|your next)\b"),
    (("%",),
     r"\beverything\s(?:is\s)?(?:now\s)?\d{1,2}\s?%\s?off\b"),
    (("%",),
     r"\bup to\s\d{1,2}\s?%\s?off\b"),
    (("%",),
     r"(?<![\w\d.,])-\s?\d{1,2}\s?%(?=\s|$|[!.,;:)])"),
    (("jusqu",),
     r"\bjusqu'a\s-?\d{1,2}\s?%"),
    (("%",),
     r"\b\d{1,2}\s?%\s(?:de\s)?(?:reduction|remise|de rabais)\s(?:sur\s)?(?:tout|toute|tous|l'ensemble|votre "
     r"prochaine|vos prochains)"),
    (("friday", "cyber", "sale", "clearance", "offer", "deal", "bogo", "buy one", "solde", "vente", "offre", "plan",
      "casse", "destockage"),
     r"\b(?:black friday|cyber monday|flash sale|summer sale|spring sale|winter sale|autumn sale|fall sale|"
     r"holiday sale|clearance sale|limited[- ]time (?:offer|deal)|special offers?|exclusive (?:offers?|"
     r"deals?|discounts?)|buy one,? get one|bogo|soldes|vente flash|vente privee|offre speciale|offres speciales|"
     r"offre exclusive|offre limitee|bons? plans?|prix casses|destockage)\b"),
    (("sale", "promo"),
     r"\b(?:sale|promotion|promo)\s(?:is\s)?(?:now\s|currently\s)?(?:on|running|live|ends)\b"),
    (("free",),
     r"\bfree\s(?:shipping|delivery)\son\s(?:all|every|orders?|everything|your next)\b"),
    # newsletters, mailing lists, social media
    (("newsletter",),
     r"\bnewsletters?\b"),
    (("mailing",),
     r"\bmailing\slists?\b"),
    (("subscribe",),
     r"\bsubscribe\s(?:now|today|to\sour|to\smy)\b"),
    (("sign",),
     r"\b(?:sign|signing)\sup\s(?:to|for)\s(?:our|the)\s(?:newsletter|mailing|list|club|emails?)\b"),
    (("abonnez",),
     r"\babonnez[- ]vous\b"),
    (("inscrivez",),
     r"\binscrivez[- ]vous\s(?:a|sur)\s(?:notre|nos)\b"),
    (("diffusion",),
     r"\bliste de diffusion\b"),
    (("follow",),
     r"\bfollow\sus\b"),
    (("suivez",),
     r"\bsuivez[- ]nous\b"),
    (("like",),
     r"\blike\sour\s(?:facebook\s|instagram\s)?page\b|\blike\sus\son\s(?:facebook|instagram|tiktok)\b"),
    (("us on",),
     r"\b(?:find|join)\sus\son\s(?:facebook|instagram|tiktok|twitter|x|pinterest|youtube|linkedin)\b"),
    (("nous",),
     r"\b(?:retrouvez|rejoignez)[- ]nous\s(?:sur|on)\s(?:facebook|instagram|tiktok|twitter|pinterest|youtube)\b"),
    # promotion of the shop and other products
    (("other", "new", "latest", "full", "more"),
     r"\b(?:check\sout|visit|browse|discover|have\sa\slook\sat|take\sa\slook\sat|explore|shop)\s(?:\w+\s){0,2}"
     r"(?:other|new|latest|full|more)\s(?:\w+\s)?(?:products?|items?|collections?|designs?|creations?|range|"
     r"catalogu?e|arrivals|styles)\b"),
    (("visit", "check", "browse"),
     r"\b(?:visit|check\sout|browse)\s(?:our|my)\s(?:online\s)?(?:store|shop|website|site|boutique|catalogu?e|"
     r"collection)\b"),
    (("decouvr", "visitez", "retrouvez", "explorez", "parcourez", "jetez"),
     r"\b(?:decouvrez|visitez|retrouvez|explorez|parcourez|jetez un (?:oeil|coup d'oeil)\s(?:a|sur))\s"
     r"(?:\w+\s){0,2}(?:autres|nouvelles?|nouveaux|dernieres?|derniers|toute|tous|notre|nos)\s(?:\w+\s)?"
     r"(?:produits?|articles?|creations?|collections?|boutique|gamme|modeles?|nouveautes|offres|catalogue)\b"),
    (("decouvr",),
     r"\b(?:decouvrir|decouvrez)\s(?:nos|notre)\s(?:nouveautes|offres|promotions|collections?)\b"),
    (("profitez",),
     r"\bprofitez\s(?:de|des|du)\s(?:nos\s)?(?:-?\d|offres?|promotions?|remises?|reductions?|soldes)"),
    (("profiter",),
     r"\bpour\sprofiter\sde\snos\s(?:offres|promotions|remises|reductions)\b"),
    (("vip", "loyalty", "rewards"),
     r"\b(?:vip|loyalty|rewards)\s(?:club|program(?:me)?|card|points)\b"),
    (("fidelite",),
     r"\b(?:programme|carte|club)\sde\sfidelite\b"),
]



def _compile(pattern: str) -> tuple[re.Pattern[str], bool]:
    """A leading \\b defeats the regex engine's first-character scan (five times slower on
    long texts), so it is taken off and checked on each match instead."""
    if pattern.startswith(r"\b"):
        return re.compile(pattern[2:], re.IGNORECASE), True
    return re.compile(pattern, re.IGNORECASE), False


_REVIEW_RE = [(gates, *_compile(p)) for gates, p in REVIEW_PATTERNS]
_MARKETING_RE = [(gates, *_compile(p)) for gates, p in MARKETING_PATTERNS]
MAX_FINDINGS = 20  # per text; enough to reject, or to redact a message that is all marketing


def _phrase_regex(phrase: str) -> re.Pattern[str] | None:
    words = fold(phrase).split()
    if not words:
        return None
    body = r"\s{1,5}".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


CHUNK = 400  # characters: lines are grouped into chunks about this long
_HARD_CUT, _OVERLAP = 4000, 300


def _chunks(text: str):
    """(offset, chunk): whole lines grouped up to about CHUNK characters; a line longer than
    _HARD_CUT is cut with an overlap, so a passage is never lost at a cut."""
    n, start = len(text), 0
    while start < n:
        end = start
        while end < n and end - start < CHUNK:
            nl = text.find("\n", end, start + _HARD_CUT)
            end = n if nl == -1 and start + _HARD_CUT >= n else (start + _HARD_CUT if nl == -1 else nl + 1)
        yield start, text[start:end]
        if end >= n:
            break
        start = end if text[end - 1] == "\n" else end - _OVERLAP


def find_promotions(text: str, extra: list[re.Pattern[str]] | tuple = ()) -> list[tuple[int, int, str]]:
    """(start, end, sentence) of promotional passages (at most MAX_FINDINGS).

    Each chunk of lines runs only the patterns whose gate words it contains: ordinary
    prose opens few gates, so most patterns never scan most of the text."""
    folded = fold(text)
    found: list[tuple[int, int, str]] = []
    taken = Spans(len(folded))
    groups = ((_REVIEW_RE, REVIEW_SENTENCE), (_MARKETING_RE, MARKETING_SENTENCE),
              ([((), r, False) for r in extra], MARKETING_SENTENCE))
    for offset, chunk in _chunks(folded):
        lowered = chunk.lower()
        present: dict[str, bool] = {}
        for regexes, sentence in groups:
            for gates, regex, word_start in regexes:
                if gates:
                    for gate in gates:
                        hit = present.get(gate)
                        if hit is None:
                            hit = present[gate] = gate in lowered
                        if hit:
                            break
                    else:
                        continue
                pos = 0
                while (m := regex.search(chunk, pos)) is not None:
                    start, end = m.span()
                    if word_start and start > 0 and (chunk[start - 1].isalnum() or chunk[start - 1] == "_"):
                        pos = start + 1  # not at a word start: look again from the next character
                        continue
                    pos = max(end, start + 1)
                    if end > start and not taken.overlaps(offset + start, offset + end):
                        taken.claim(offset + start, offset + end)
                        found.append((offset + start, offset + end, sentence))
                        if len(found) >= MAX_FINDINGS:
                            return found
    return found


@dataclass
class Promotion:
    settings: FilterSettings
    name: str = "promotion"
    directions: frozenset[str] = FROM_SELLER
    _extra: list[re.Pattern[str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._extra = [r for r in (_phrase_regex(p) for p in self.settings.promotion_phrases) if r]

    def check(self, view: MessageView, ctx: FilterContext) -> list[Finding]:
        out = Findings("promotion", MARKETING_SENTENCE)
        for location, text in text_sources(view):
            for start, end, sentence in find_promotions(text, self._extra):
                out.add(text[start:end], location, sentence)
        return out.items

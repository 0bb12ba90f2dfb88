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
from functools import lru_cache
from typing import NamedTuple

from relay.filters.base import FROM_SELLER, FilterContext, Finding, MessageView
from relay.filters.content import (
    Findings, Spans, casefree, fold, register_words, text_sources, word_bytes, words_present,
)
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
# Five stars, also as a score ("5/5") or drawn ("5\u2605", five \u2605).
_STARS = (r"(?:(?:5|five|cinq)[\s-]{0,2}(?:stars?|etoiles?)|(?:5|five)[\s-]star|(?<![\d.,/])5\s?/\s?5(?![\d.,/])"
          r"|5\s?\u2605|\u2605{5})")
_INCENTIVE = (r"(?:free|gift|refund\w*|reimburs\w*|money back|cash ?back|discount\w*|coupons?|vouchers?|"
              r"rewards?|bonus|compensat\w*|gift ?cards?|\d{1,3}\s?%|[$€£]\s?\d{1,4}|\d{1,4}\s?(?:[$€£]|eur|euros?)|"
              r"cadeaux?|offert\w*|gratuit\w*|rembours\w*|bons? d'achat|bons? de \d|reduction|remise|"
              r"cartes? cadeaux?|recompens\w*)")
# Where an incentive starts: a word start, or its currency sign ("$10" has no \b before it).
_INC_START = r"(?:\b|(?=[$\u20ac\u00a3]))"
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
_STAR_GATE = ("star", "etoile", "/", "\u2605")

REVIEW_PATTERNS: list[tuple[tuple[str, ...], str, str]] = [
    # 5-star asks: "leave us 5 stars", "a 5-star review", "un avis 5 étoiles" (not "a 5-star hotel")
    (_STAR_GATE,
     "ASK & STARS",
     rf"\b{_ASK}\s{_W3}{_STARS}"),
    (_STAR_GATE,
     "e:us,nous & STARS",
     rf"\b(?:us|nous)\s{_W2}{_STARS}"),
    (_STAR_GATE,
     "s:please,pls,svp,merci,s'il & STARS",
     rf"\b(?:please|pls|svp|merci de)\s{_W3}{_STARS}|{_STARS}[\s,!]{{0,3}}(?:please|pls|svp|s'il vous plait|merci)\b"),
    (_STAR_GATE,
     "STARS & s:review,feedback,rating,avis,evaluation,note,commentaire",
     rf"{_STARS}\s{{0,2}}(?:reviews?|feedback|ratings?|avis|evaluations?|notes?|commentaires?)\b"),
    (_STAR_GATE,
     "w:review,feedback,rating,avis,evaluation,note,comment & STARS",
     rf"\b(?:reviews?|feedback|ratings?|avis|evaluations?|notes?|commentaires?)\s{_W2}{_STARS}"),
    # incentive, then a condition, then the review: "free gift if you leave a review"
    (_GR,
     "INC & REV",
     rf"\b{_INCENTIVE}\b{_GAP}\b(?:if|once|after|when|as soon as|in exchange for|in return for|for|si|une fois|"
     rf"apres|des que|en echange d\w*|contre|pour)\b{_GAP}\b{_REVIEW}\b"),
    # the review, then something to get: "leave a review and receive a $10 gift card"
    (_GR,
     "ASK & REV & INC",
     rf"\b{_ASK}\s{_W3}{_REVIEW}\b{_GAP}\b(?:and|then|to|et|puis|pour)\s{_W3}(?:get|receive|earn|claim|"
     rf"we'?ll\s\w+|we will\s\w+|recevez|recevoir|recevrez|obtenez|obtenir|gagnez|profitez|nous vous\s\w+|"
     rf"on vous\s\w+|vous\s(?:recevrez|sera|aurez))\b{_GAP}{_INC_START}{_INCENTIVE}"),
    # "if you leave a review, we will refund 10%"
    (_GR,
     "ASK & REV & INC",
     rf"\b(?:if|once|when|after|as soon as|si|une fois que|des que|apres)\s(?:you\s|vous\s)?(?:have\s|'ve\s|avez\s)?"
     rf"{_ASK}\s{_W3}{_REVIEW}\b{_GAP}\b{_INCENTIVE}"),
    # five stars for something: "5 stars and we refund you", "5 stars = full refund" (not "a 5-star
    # hotel offers free parking": the stars are joined to the incentive)
    (_STAR_GATE,
     "STARS & INC",
     rf"{_STARS}[\s!,]{{0,3}}(?:=|->|\u2192|:|&|\+|\band\b|\bfor\b|\bthen\b|\bet\b|\bcontre\b|\bpour\b)"
     rf"{_SHORT}{_INC_START}{_INCENTIVE}"),
    # a positive review, then what "we'll" give: "a positive review ..., and we'll refund your shipping"
    (("positive",),
     "e:positive & w:review,feedback,rating & w:we,you & INC",
     rf"\bpositive\s(?:reviews?|feedback|ratings?)\b{_GAP}\b(?:we'?ll|we will|you'?ll (?:get|receive))\s{_W2}"
     rf"{_INC_START}{_INCENTIVE}"),
    # "in exchange for your review", "en échange de votre avis"
    (("exchange", "return", "echange", "contrepartie", "remerciement"),
     "w:exchange,return,echange,contrepartie,remerciement & REV",
     rf"\b(?:in exchange for|in return for|en echange d\w*|en contrepartie d\w*|en remerciement d\w*){_SHORT}\b"
     rf"{_REVIEW}\b"),
    # "once your review is posted" + incentive before it in the sentence
    (_GR,
     "INC & r:yourreview",
     rf"\b{_INCENTIVE}\b{_GAP}\b(?:your|votre)\s(?:review|feedback|rating|avis|evaluation|note)\s(?:is|has been|"
     rf"gets|est|sera|a ete)\s"),
    # positive-only: "leave a positive review", "give us a great rating"
    (_GR,
     "ASK & w:review,feedback,rating,comment,testimonial",
     rf"\b{_ASK}\s{_W3}{_POSITIVE}\s(?:[\w-]{{1,20}}\s)?(?:reviews?|feedback|ratings?|comments?|testimonials?)\b"),
    (_GR,
     "ASK & w:avis,comment,evaluation,note & POSFR",
     rf"\b{_ASK}\s{_W3}(?:avis|commentaires?|evaluations?|notes?)\s{_POSITIVE_FR}\b"),
    (_GR,
     "ASK & w:avis,comment,evaluation,note & POSFR",
     rf"\b{_ASK}\s{_W3}(?:un|une|des)\s{_POSITIVE_FR}\s(?:avis|commentaires?|evaluations?|notes?)\b"),
    # only from happy buyers: "if you're happy ... leave a review", "only leave a review if..."
    (_GR,
     "HAPPY & REV",
     rf"\b(?:if|when|once|si)\s(?:you|vous|tu)\s?(?:'re|'re|are|etes|es)?\s{_W2}{_HAPPY}\b{_GAP}\b{_REVIEW}\b"),
    (_GR,
     "e:if,si & s:happy,satisfied,pleased,delighted,love,like,enjoy,satisfait,content,ravi,heureu,plait,plu & REV",
     rf"\b(?:if|si)\s(?:the |this |le |la |ce )?(?:product|item|order|produit|article|commande|it)\s?(?:vous\s)?"
     rf"{_W2}{_HAPPY}\b{_GAP}\b{_REVIEW}\b"),
    (_GR,
     "s:? & HAPPY & ASK & REV",
     rf"\b{_HAPPY}\b{_SHORT}\?\s{{0,3}}(?:please\s|merci de\s|n'hesitez pas a\s)?{_ASK}\s{_W3}{_REVIEW}\b"),
    (("only",),
     "e:only & ASK & w:review,feedback,rating",
     rf"\bonly\s{_ASK}\s{_W2}(?:reviews?|feedback|ratings?)\b"),
    (_GR,
     "REV & e:if & e:you & HAPPY",
     rf"\b{_REVIEW}\s(?:only\s)?if\s(?:you(?:'re| are)|you were)\s{_W2}{_HAPPY}\b"),
    # diverting criticism
    (_GR,
     "e:negative,bad,poor,low,critical,neutral,r:onestar & w:review,feedback,rating,comment",
     r"\b(?:negative|bad|poor|low|critical|1[\s-]star|one[\s-]star|neutral)\s(?:reviews?|feedback|ratings?|"
     r"comments?)\b"),
    (("avis", "comment", "evaluation", "note"),
     "w:avis,comment,evaluation,note & w:negati,defavorable,mauvais",
     r"\b(?:avis|commentaires?|evaluations?|notes?)\s(?:negati\w*|defavorables?|mauvaise?s?)\b"),
    (("avis", "comment", "evaluation", "note"),
     "w:mauvais,basse & w:avis,note,evaluation,comment",
     r"\b(?:mauvaise?s?|basses?)\s(?:avis|notes?|evaluations?|commentaires?)\b"),
    (("before",),
     "w:contact,message,write,email,mail,reach,talk,call & r:beforereview",
     rf"\b(?:contact|message|write to|email|e-mail|reach|talk to|call)\s{_W2}(?:first\s)?before\s(?:you\s)?"
     rf"(?:leav|writ|post|giv|rat|review)\w*"),
    (("avant de",),
     "e:avant & w:contactez,ecrivez,appelez & w:laisser,publier,donner,mettre,noter",
     rf"\b(?:contactez|ecrivez|appelez)[\w-]{{0,10}}\s{_W2}avant\sde\s(?:laisser|publier|donner|mettre|noter)"),
    (("avant de",),
     "e:avant & w:laisser,publier,donner,mettre & w:avis,comment,note,evaluation & w:contact,ecri,appel",
     rf"\bavant\sde\s(?:laisser|publier|donner|mettre)\s{_W2}(?:avis|commentaire|note|evaluation)\b{_GAP}"
     rf"\b(?:contact|ecri|appel)\w*"),
    (_GR,
     "w:remove,delete,change,update,revise,edit,retract,supprimer,retirer,modifier & r:thereview & INC",
     rf"\b(?:remove|delete|change|update|revise|edit|retract|supprimer|retirer|modifier|changer)\s{_W3}"
     rf"(?:your|the|votre|cet|cette|son)\s(?:review|feedback|rating|avis|evaluation|commentaire|note)\b{_GAP}"
     rf"\b{_INCENTIVE}"),
    (_GR,
     "INC & w:remove,delete,change,update,revise,edit,retract,supprim,retir,modifi & r:thereview",
     rf"\b{_INCENTIVE}\b{_GAP}\b(?:remove|delete|change|update|revise|edit|retract|supprim|retir|modifi)\w*\s{_W3}"
     rf"(?:your|the|votre|cet|cette)\s(?:review|feedback|rating|avis|evaluation|commentaire|note)\b"),
]

MARKETING_PATTERNS: list[tuple[tuple[str, ...], str, str]] = [
    # codes and coupons
    (("code",),
     "s:code & w:promo,discount,coupon,voucher,reduction,remise,gift,referral,affiliate",
     r"\b(?:promo(?:tional)?|discount|coupon|voucher|reduction|remise|gift|referral|affiliate)\s?codes?\b"),
    (("code",),
     "w:code & w:promo,reduction,remise,avantage,privilege,cadeau,parrainage",
     r"\bcodes?\s(?:promo|de reduction|de remise|avantage|privilege|cadeau|de parrainage)\b"),
    (("coupon", "voucher", "discount", "reduction", "promo"),
     "w:coupon,voucher,discount,bon,promo & w:here,enclosed,attached,get,receive,offer,send,joint,voici",
     r"\b(?:here(?:'s| is)|enclosed|attached|get|receive|offer you|send you|ci-joint|voici)\s(?:\w+\s){0,2}"
     r"(?:coupons?|vouchers?|discount codes?|bons? de reduction|promo codes?)\b"),
    (("code", "coupon"),
     "w:code,coupon & w:use,enter,apply,redeem,with,utilisez,avec,saisissez,entrez,appliquez",
     r"\b(?:use|enter|apply|redeem|with|utilisez|avec|saisissez|entrez|appliquez)\s(?:the\s|our\s|my\s|le\s|"
     r"notre\s)?(?:code|coupon)\s(?-i:[A-Z][A-Z0-9-]{3,19})\b"),
    # discounts on future orders, sales
    (("next", "future", "prochain", "futur"),
     "r:nextorder & s:%,livraison,w:off,discount,reduction,remise,free,voucher,credit,bon",
     rf"(?:%|\boff\b|\bdiscount\b|\breduction\b|\bremise\b|\bfree shipping\b|\bfree delivery\b|\bvouchers?\b|"
     rf"\bcredit\b|livraison (?:offerte|gratuite)|\bbons? d'achat\b){_GAP}\b(?:on|off|for|toward|towards|sur|pour|de)\s"
     rf"(?:your|the|vos|votre|ta|tes|la|les)\s(?:next|future|prochaine?s?|futures?)\s(?:orders?|purchases?|commandes?|achats?)\b"),
    (("%",),
     "s:% & s:off",
     r"\b\d{1,2}\s?%\s?off\s(?:when|on orders|in our|at our|with|if you)\b"),
    (("friend", "parrain"),
     "w:friend,parrain",
     r"\b(?:refer|invite)\sa\sfriend\b|\bparrain(?:ez|age)\b"),
    (("win", "giveaway", "sweepstake", "concours", "gagner", "tirage"),
     "w:giveaway,sweepstake,jeu,tentez,tirage,s:chance to win",
     r"\b(?:chance to win|giveaway|sweepstakes?|jeu[- ]concours|tentez de gagner|tirage au sort)\b"),
    (("tag us", "mention us", "identifiez"),
     "w:tag,mention,identifiez",
     r"\b(?:tag|mention)\sus\b|\bidentifiez[- ]nous\b"),
    (("favo",),
     "w:favo & w:add,ajoutez",
     r"\b(?:add|ajoutez)\s(?:our|notre)\s(?:shop|store|boutique)\s(?:to|a)\s(?:your|vos)\s(?:favou?rites|favoris)\b"),
    (("nos ",),
     "w:rater,manquer & w:nouveautes,offres,promotions,soldes,ventes",
     r"\b(?:rater|manquer)\s(?:\w+\s){0,2}(?:de\s)?nos\s(?:nouveautes|offres|promotions|soldes|ventes)\b"),
    (("miss",),
     "e:miss & w:sale,deal,offer,discount,new,drop",
     r"\b(?:don't|do not|never)\smiss\s(?:\w+\s){0,2}(?:sales?|deals?|offers?|discounts?|new arrivals|drops?)\b"),
    (("%",),
     "s:% & s:off",
     r"\b\d{1,2}\s?%\s?off\s(?:everything|all|sitewide|site-wide|storewide|store-wide|any|the whole|our|your next)\b"),
    (("%",),
     "s:% & w:everything",
     r"\beverything\s(?:is\s)?(?:now\s)?\d{1,2}\s?%\s?off\b"),
    (("save",),
     "w:save & s:%",
     r"\bsave\s(?:up to\s)?\d{1,2}\s?%"),
    (("%",),
     "s:% & e:up",
     r"\bup to\s\d{1,2}\s?%\s?off\b"),
    (("%",),
     "s:% & s:-",
     r"(?<![\w\d.,])-\s?\d{1,2}\s?%(?=\s|$|[!.,;:)])"),
    (("jusqu",),
     "s:% & w:jusqu",
     r"\bjusqu'a\s-?\d{1,2}\s?%"),
    (("%",),
     "s:% & w:reduction,remise,rabais",
     r"\b\d{1,2}\s?%\s(?:de\s)?(?:reduction|remise|de rabais)\s(?:sur\s)?(?:tout|toute|tous|l'ensemble|votre "
     r"prochaine|vos prochains)"),
    (("friday", "cyber", "sale", "clearance", "offer", "deal", "bogo", "buy one", "solde", "vente", "offre", "plan",
      "casse", "destockage"),
     "w:black,cyber,flash,summer,spring,winter,autumn,fall,holiday,clearance,limited,special,exclusive,buy,bogo,"
     "soldes,vente,offre,bon,prix,destockage",
     r"\b(?:black friday|cyber monday|flash sale|summer sale|spring sale|winter sale|autumn sale|fall sale|"
     r"holiday sale|clearance sale|limited[- ]time (?:offer|deal)|special offers?|exclusive (?:offers?|"
     r"deals?|discounts?)|buy one,? get one|bogo|soldes|vente flash|vente privee|offre speciale|offres speciales|"
     r"offre exclusive|offre limitee|bons? plans?|prix casses|destockage)\b"),
    (("sale", "promo"),
     "w:sale,promo",
     r"\b(?:sale|promotion|promo)\s(?:is\s)?(?:now\s|currently\s)?(?:on|running|live|ends)\b"),
    (("free",),
     "w:free & w:shipping,delivery",
     r"\bfree\s(?:shipping|delivery)\son\s(?:all|every|orders?|everything|your next)\b"),
    # newsletters, mailing lists, social media
    (("newsletter",),
     "w:newsletter",
     r"\bnewsletters?\b"),
    (("mailing",),
     "w:mailing",
     r"\bmailing\slists?\b"),
    (("subscribe",),
     "w:subscribe",
     r"\bsubscribe\s(?:now|today|to\sour|to\smy)\b"),
    (("sign",),
     "w:sign & e:up",
     r"\b(?:sign|signing)\sup\s(?:to|for)\s(?:our|the)\s(?:newsletter|mailing|list|club|emails?)\b"),
    (("abonnez",),
     "w:abonnez",
     r"\babonnez[- ]vous\b"),
    (("inscrivez",),
     "w:inscrivez",
     r"\binscrivez[- ]vous\s(?:a|sur)\s(?:notre|nos)\b"),
    (("diffusion",),
     "w:liste & w:diffusion",
     r"\bliste de diffusion\b"),
    (("follow",),
     "w:follow & e:us",
     r"\bfollow\sus\b"),
    (("suivez",),
     "w:suivez",
     r"\bsuivez[- ]nous\b"),
    (("like",),
     "w:like",
     r"\blike\sour\s(?:facebook\s|instagram\s)?page\b|\blike\sus\son\s(?:facebook|instagram|tiktok)\b"),
    (("us on",),
     "w:find,join & e:us",
     r"\b(?:find|join)\sus\son\s(?:facebook|instagram|tiktok|twitter|x|pinterest|youtube|linkedin)\b"),
    (("nous",),
     "w:retrouvez,rejoignez",
     r"\b(?:retrouvez|rejoignez)[- ]nous\s(?:sur|on)\s(?:facebook|instagram|tiktok|twitter|pinterest|youtube)\b"),
    # promotion of the shop and other products
    (("other", "new", "latest", "full", "more"),
     "w:check,visit,browse,discover,look,explore,shop & w:other,new,latest,full,more & w:product,item,"
     "collection,design,creation,range,catalog,arrival,style",
     r"\b(?:check\sout|visit|browse|discover|have\sa\slook\sat|take\sa\slook\sat|explore|shop)\s(?:\w+\s){0,2}"
     r"(?:other|new|latest|full|more)\s(?:\w+\s)?(?:products?|items?|collections?|designs?|creations?|range|"
     r"catalogu?e|arrivals|styles)\b"),
    (("visit", "check", "browse"),
     "w:visit,check,browse & w:store,shop,website,site,boutique,catalog,collection",
     r"\b(?:visit|check\sout|browse)\s(?:our|my)\s(?:online\s)?(?:store|shop|website|site|boutique|catalogu?e|"
     r"collection)\b"),
    (("decouvr", "visitez", "retrouvez", "explorez", "parcourez", "jetez"),
     "w:decouvrez,visitez,retrouvez,explorez,parcourez,jetez & w:produit,article,creation,collection,boutique,gamme,"
     "modele,nouveaute,offre,catalogue",
     r"\b(?:decouvrez|visitez|retrouvez|explorez|parcourez|jetez un (?:oeil|coup d'oeil)\s(?:a|sur))\s"
     r"(?:\w+\s){0,2}(?:autres|nouvelles?|nouveaux|dernieres?|derniers|toute|tous|notre|nos)\s(?:\w+\s)?"
     r"(?:produits?|articles?|creations?|collections?|boutique|gamme|modeles?|nouveautes|offres|catalogue)\b"),
    (("decouvr",),
     "w:decouvr",
     r"\b(?:decouvrir|decouvrez)\s(?:nos|notre)\s(?:nouveautes|offres|promotions|collections?)\b"),
    (("profitez",),
     "w:profitez",
     r"\bprofitez\s(?:de|des|du)\s(?:nos\s)?(?:-?\d|offres?|promotions?|remises?|reductions?|soldes)"),
    (("profiter",),
     "w:profiter",
     r"\bpour\sprofiter\sde\snos\s(?:offres|promotions|remises|reductions)\b"),
    (("vip", "loyalty", "rewards"),
     "w:vip,loyalty,rewards & w:club,program,card,points",
     r"\b(?:vip|loyalty|rewards)\s(?:club|program(?:me)?|card|points)\b"),
    (("fidelite",),
     "w:fidelite & w:programme,carte,club",
     r"\b(?:programme|carte|club)\sde\sfidelite\b"),
]



# ---------------------------------------------------------------- matching, fast
#
# Each pattern runs only where its gates allow, and on the case-free text (content.casefree):
# compiled without re.IGNORECASE, a pattern that starts with words lets the regex engine skip
# to their first letters, which is many times faster (see _fast_form).  Two gates, both
# necessary for a match:
#
# - the substring gate above (any of those strings in the lower-cased chunk), as before;
# - the word gate, cheaper and much sharper: clauses joined by "&", all of which must hold;
#   a clause holds when one of its atoms does.  w:stem - a word starts with stem (where the
#   pattern has it after \b, a space or a non-word character); e:word - that whole word;
#   s:text - the text anywhere (letters and digits only: inside a word, "t:" below);
#   r:name - a regex of _GATE_REGEXES; ASK, REV, INC, HAPPY, POSFR, STARS - the sets below.
#   The whole text is tested first (content.words_present finds its words in one pass), then
#   each chunk, for the few patterns left, on the atoms the text holds.
#   tests/test_filters_fastpaths.py generates matches of every pattern and checks that the
#   fast path finds what the patterns as written find.

_WORD_SETS = {
    "ASK": "w:leav,send,screenshot,captur,envoy,writ,post,giv,shar,publi,submit,rate,rati,updat,chang,laiss,ecri,"
           "donn,mett,redig,depos,modifi",
    # _REVIEW: its "note" follows a determiner ("une note", not "a delivery note")
    "REV": "w:review,feedback,rating,star,avis,evaluation,comment,etoile,testimonial,temoignage,r:notes",
    "INC": "w:free,gift,refund,reimburs,money,cash,discount,coupon,voucher,reward,bonus,compensat,cadeau,offert,"
           "gratuit,rembours,bon,reduction,remise,carte,recompens,s:%,$,\u20ac,\u00a3,eur",
    "HAPPY": "w:happy,satisfied,pleased,delighted,love,like,enjoy,satisfait,content,ravi,heureu,plait,plu",
    "POSFR": "w:positi,favorable,excellent,elogieu,bon,super,parfait,t:etoile",
    "STARS": "r:stars",
}


class _Near:
    """A regex atom searched only next to occurrences of its words: each match of `regex`
    holds one of `words`, and starts at most `before` characters before it and ends at most
    `after` characters after it.  With starts_word, the word starts a word in each match:
    a text none of whose words start with one of `words` holds no match."""

    def __init__(self, regex: str, words: tuple[str, ...], before: int, after: int = 0,
                 starts_word: bool = False) -> None:
        self.regex, self.words, self.before, self.after = re.compile(regex), words, before, after
        self.stems = frozenset(("w", word.encode()) for word in words) if starts_word else frozenset()

    def search(self, low: str) -> bool:
        for word in self.words:
            i = low.find(word)
            while i >= 0:
                if self.regex.search(low, max(0, i - self.before), i + len(word) + self.after):
                    return True
                i = low.find(word, i + 1)
        return False


_REVIEW_NOUNS = ("review", "feedback", "rating", "avis", "evaluation", "commentaire", "note")
_GATE_REGEXES = {
    "stars": _Near(r"(?:5|five|cinq)[\s-]{0,2}(?:star|etoile)|5\s?/\s?5|5\s?\u2605|\u2605{5}",
                   ("star", "etoile", "/", "\u2605"), 6, 5),  # ("5star": not a word start)
    "onestar": _Near(r"(?:1|one)[\s-]star", ("star",), 4, starts_word=True),
    "notes": _Near(r"(?:une|votre|bonne|mauvaise|excellente|belle|meilleure) note", ("note",), 11, starts_word=True),
    "yourreview": _Near(r"(?:your|votre)\s(?:review|feedback|rating|avis|evaluation|note)", _REVIEW_NOUNS, 6,
                        starts_word=True),
    "thereview": _Near(r"(?:your|the|votre|cet|cette|son)\s(?:review|feedback|rating|avis|evaluation|commentaire|note)",
                       _REVIEW_NOUNS, 6, starts_word=True),
    "beforereview": _Near(r"before\s(?:you\s)?(?:leav|writ|post|giv|rat|review)", ("before",), 0, 11, starts_word=True),
    "nextorder": _Near(r"(?:your|the|vos|votre|ta|tes|la|les)\s(?:next|future|prochaine?s?|futures?)\s"
                       r"(?:orders?|purchases?|commandes?|achats?)", ("next", "futur", "prochain"), 6, 22,
                       starts_word=True),
}


def _parse_word_gate(spec: str) -> tuple[tuple[tuple[str, object], ...], ...]:
    """'w:a,b & e:c,s:d' -> ((("w", b"a"), ("w", b"b")), (("e", b"c"), ("s", "d")))."""
    clauses = []
    for clause in spec.split(" & "):
        if clause in _WORD_SETS:
            clauses.extend(_parse_word_gate(_WORD_SETS[clause]))
            continue
        atoms, kind = [], ""
        for item in clause.split(","):
            if len(item) > 2 and item[1] == ":" and item[0] in "wesr":
                kind, item = item[0], item[2:]
            assert kind, spec
            if kind == "s" and item.isascii() and item.isalnum():
                atoms.append(("t", item.encode()))  # letters and digits: inside some word
            else:
                atoms.append((kind, item.encode() if kind in "we" else _GATE_REGEXES[item] if kind == "r" else item))
        clauses.append(tuple(atoms))
    return tuple(clauses)


def _compile(pattern: str, case_free: bool) -> tuple[re.Pattern[str], bool]:
    """A leading \\b defeats the regex engine's first-character scan (five times slower on
    long texts), so it is taken off and checked on each match instead."""
    word_start = pattern.startswith(r"\b")
    if word_start:
        pattern = pattern[2:]
    return re.compile(pattern, 0 if case_free else re.IGNORECASE), word_start


# The fast form of a pattern: "(?:free|gift|...)rest" becomes "f(?<!\w.)(?:ree)|g(?<!\w.)(?:ift)|...
# rest", alternatives grouped by their first character: the regex engine then skips to the
# characters that can start a match and, right after the first one, drops those that do not
# start a word (the check find_promotions makes of a pattern that began with \b).  Patterns
# this cannot rewrite keep their plain form.

def _skip_class(s: str, i: int) -> int:
    j = i + 1
    if s[j:j + 1] == "^":
        j += 1
    if s[j:j + 1] == "]":
        j += 1
    while s[j] != "]":
        j += 2 if s[j] == "\\" else 1
    return j + 1


def _tokens(s: str, i: int = 0):
    """(index, character) of the regex source s from i, with escapes and
    character classes skipped whole: what is left is the structure."""
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i = _skip_class(s, i)
        else:
            yield i, c
            i += 1


def _split_top(s: str) -> list[str]:
    """s split at its top-level '|'."""
    parts, depth, start = [], 0, 0
    for i, c in _tokens(s):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _group_end(s: str, i: int) -> int:
    """Index after the ')' closing the group opened at s[i]."""
    depth = 0
    for i, c in _tokens(s, i):
        depth += (c == "(") - (c == ")")
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced group in {s!r}")


_QUANTIFIER = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def _first_atom(alt: str) -> tuple[str, str] | None:
    """(one-character atom, rest) with alt == atom + rest as regexes; None if alt does not
    start with a literal, \\d or a character class matched exactly once or more."""
    check = ""
    if alt.startswith(r"\b"):
        alt, check = alt[2:], r"(?<!\w.)"
    if not alt or alt[0] in "()|*+?{.^$":
        return None
    if alt[0] == "\\":
        if alt[1:2] != "d":
            return None
        atom, j = r"\d", 2
    elif alt[0] == "[":
        j = _skip_class(alt, 0)
        atom = alt[:j]
        if atom.startswith("[^"):
            return None
    else:
        atom, j = alt[0], 1
    rest = alt[j:]
    if rest[:1] in ("*", "?"):
        return None
    if rest[:1] == "+":
        if rest[1:2] in ("?", "+"):
            return None
        rest = atom + "*" + rest[1:]
    elif rest[:1] == "{":
        m = _QUANTIFIER.match(rest)
        if not m or int(m.group(1)) == 0 or rest[m.end():m.end() + 1] in ("?", "+"):
            return None
        low, high = int(m.group(1)), m.group(2)
        more = f"{{{low - 1}}}" if high is None else f"{{{low - 1},{'' if high == '' else int(high) - 1}}}"
        rest = atom + more + rest[m.end():]
    return atom, check + rest


def _atom_chars(atom: str) -> frozenset[str]:
    universe = [chr(c) for c in range(0x300)] + ["\u20ac", "\u00a3", "\u00a5", "\u0660", "\uff10"]
    rx = re.compile(atom)
    return frozenset(c for c in universe if rx.fullmatch(c))


def _fast_form(pattern: str, word_start: bool) -> str | None:
    if len(_split_top(pattern)) != 1:
        return None
    if pattern.startswith("(?:"):
        end = _group_end(pattern, 0)
        alts, tail = _split_top(pattern[3:end - 1]), pattern[end:]
        if tail[:1] in ("?", "*", "+", "{"):
            return None
    else:
        alts, tail = [pattern], ""
    check = r"(?<!\w.)" if word_start else ""
    if len(alts) == 1 and re.match(r"[a-z]{2,}", alts[0]):  # one literal word: keep it whole
        word = re.match(r"[a-z]+", alts[0]).group()
        if alts[0][len(word):len(word) + 1] in ("?", "*", "+", "{"):
            word = word[:-1]
        rest = alts[0][len(word):]
        return f"{word}(?<!\\w.{{{len(word)}}}){rest}{tail}" if word_start else None
    groups: dict[str, list[str]] = {}
    for alt in alts:
        first = _first_atom(alt)
        if first is None:
            return None
        groups.setdefault(first[0], []).append(first[1])
    sets = [_atom_chars(atom) for atom in groups]
    if sum(map(len, sets)) != len(frozenset().union(*sets)):
        return None  # two first atoms share a character: grouping could reorder alternatives
    if all(len(atom) == 1 for atom in groups):
        body = "|".join(f"{re.escape(atom)}{check}(?:{'|'.join(rests)})" for atom, rests in groups.items())
        return f"(?:{body}){tail}"
    chars = "".join(atom[1:-1] if atom.startswith("[") else atom if atom == r"\d" else re.escape(atom)
                    for atom in groups)
    body = "|".join(f"(?<={re.escape(atom) if len(atom) == 1 else atom})(?:{'|'.join(rests)})"
                    for atom, rests in groups.items())
    return f"[{chars}]{check}(?:{body}){tail}"


class _Pattern(NamedTuple):
    gates: tuple[str, ...]  # substring gate
    regex: re.Pattern[str]  # what runs: the fast form, or the plain one
    word_start: bool  # a match must start a word (checked by find_promotions)
    case_free: bool  # regex runs on the case-free text
    sentence: str
    text_gate: tuple  # the word gate, as _text_gate() returns it
    plain: re.Pattern[str]  # the pattern as written (case-insensitive, leading \b taken off)
    plain_word_start: bool


def _prepare(patterns, sentence) -> list[_Pattern]:
    out = []
    for gates, words, pattern in patterns:
        # A pattern that also tests case (a coupon code in capitals) reads the text as written.
        case_free = "(?-i:" not in pattern
        regex, word_start = _compile(pattern, case_free)
        plain, plain_word_start = _compile(pattern, False)
        fast = _fast_form(regex.pattern, word_start) if case_free else None
        if fast is not None:
            regex, word_start = re.compile(fast), False  # the fast form checks the word start itself
        out.append(_Pattern(gates, regex, word_start, case_free, sentence, _text_gate(_parse_word_gate(words)),
                            plain, plain_word_start))
    return out


MAX_FINDINGS = 20  # per text; enough to reject, or to redact a message that is all marketing


def _phrase_regex(phrase: str) -> re.Pattern[str] | None:
    words = fold(phrase).split()
    if not words:
        return None
    body = r"\s{1,5}".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


@lru_cache(maxsize=32)
def _extra_patterns(extra: tuple[re.Pattern[str], ...]) -> list[_Pattern]:
    """Operator phrases: no substring gate; a word gate on the first word when it is ASCII."""
    out = []
    head, tail = "(?<!\\w)", "(?!\\w)"
    for regex in extra:
        gate: tuple = ()
        if regex.pattern.startswith(head) and regex.pattern.endswith(tail):  # _phrase_regex()'s form
            first = regex.pattern[len(head):-len(tail)].split("\\s{1,5}")[0]
            first = re.sub(r"\\(.)", r"\1", first).lower()  # undo re.escape()
            if first and first.isascii():
                gate = ((("s", first),),)
        out.append(_Pattern((), regex, False, False, MARKETING_SENTENCE, _text_gate(gate), regex, False))
    return out


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


# Word gates, as the whole-text test reads them: each distinct clause gets an id; a word
# atom (w: or e:) found in the text satisfies every clause that has it.
_CLAUSES: list[tuple] = []
_CLAUSE_PARTS: list[tuple[frozenset, tuple]] = []  # clause id -> (its word atoms, its other atoms)
_CLAUSE_IDS: dict[tuple, int] = {}
_ATOM_CLAUSES: dict[tuple, set[int]] = {}


def _text_gate(clauses) -> tuple[frozenset[int], tuple[int, ...]]:
    """(ids of the pattern's clauses of words alone, ids of its other clauses, cheapest first)."""
    words_only, others = [], []
    for clause in clauses:
        cid = _CLAUSE_IDS.get(clause)
        if cid is None:
            cid = _CLAUSE_IDS[clause] = len(_CLAUSES)
            _CLAUSES.append(clause)
            _CLAUSE_PARTS.append((frozenset(atom for atom in clause if atom[0] in "we"),
                                  tuple(atom for atom in clause if atom[0] not in "we")))
            for atom in clause:
                if atom[0] in "we":
                    _ATOM_CLAUSES.setdefault(atom, set()).add(cid)
        if all(kind in "we" for kind, _ in clause):
            words_only.append(cid)
        else:
            others.append((sum(kind not in "we" for kind, _ in clause), cid))
    return frozenset(words_only), tuple(cid for _, cid in sorted(others))


class _TextGates:
    """Tests the word gates against the whole text; keeps, of each clause passed, the atoms
    that may hold in a chunk: the word atoms the text holds, and the other atoms (tested on
    the text only when no word atom of the clause holds)."""

    def __init__(self, low: str, folded: str, padded: bytes) -> None:
        self.low, self.padded = low, padded
        self.present = present = words_present(folded)
        self.satisfied: set[int] = set().union(*[_ATOM_CLAUSES[atom] for atom in present if atom in _ATOM_CLAUSES])
        self.kept: dict[int, tuple] = {}

    def _keep(self, cid: int) -> tuple:
        word_atoms, others = _CLAUSE_PARTS[cid]
        if cid in self.satisfied:
            kept = tuple(word_atoms.intersection(self.present)) + others
        else:
            kept = tuple(atom for atom in others if (
                atom[1] in self.padded if atom[0] == "t" else atom[1] in self.low if atom[0] == "s"
                else not atom[1].stems.isdisjoint(self.present) and atom[1].search(self.low)
                if atom[1].stems else atom[1].search(self.low)))
        self.kept[cid] = kept
        return kept

    def reduce(self, gate) -> tuple | None:
        """The gate's clauses cut down to the atoms that may hold in a chunk; None if one of
        them holds nowhere."""
        words_only, others = gate
        if not words_only <= self.satisfied:
            return None
        kept = self.kept
        out = [kept.get(cid) or self._keep(cid) for cid in words_only]
        for cid in others:
            clause = kept.get(cid)
            if clause is None:
                clause = self._keep(cid)
            if not clause:
                return None
            out.append(clause)
        return tuple(out)


def _chunk_passes(reduced, low: str, padded: bytes, memo: dict) -> bool:
    for clause in reduced:
        for atom in clause:
            hit = memo.get(atom)
            if hit is None:
                kind, value = atom
                if kind == "w":
                    hit = b" " + value in padded
                elif kind == "e":
                    hit = b" " + value + b" " in padded
                elif kind == "t":
                    hit = value in padded
                elif kind == "s":
                    hit = value in low
                else:
                    hit = value.search(low)
                memo[atom] = hit
            if hit:
                break
        else:
            return False
    return True


_PATTERNS = _prepare(REVIEW_PATTERNS, REVIEW_SENTENCE) + _prepare(MARKETING_PATTERNS, MARKETING_SENTENCE)


register_words(stems=[value for kind, value in _ATOM_CLAUSES if kind == "w"]
               + [value for near in _GATE_REGEXES.values() for _kind, value in near.stems],
               whole=[value for kind, value in _ATOM_CLAUSES if kind == "e"])


def find_promotions(text: str, extra: list[re.Pattern[str]] | tuple = ()) -> list[tuple[int, int, str]]:
    """(start, end, sentence) of promotional passages (at most MAX_FINDINGS).

    Each chunk of lines runs only the patterns whose gates it passes: ordinary prose opens
    few gates, so most patterns never scan most of the text."""
    folded = fold(text)
    found: list[tuple[int, int, str]] = []
    taken = Spans(len(folded))
    patterns = _PATTERNS + _extra_patterns(tuple(extra))
    case_free = casefree(folded)
    words_all = b""
    if case_free is None:  # (never for folded text; kept for safety) no word gates, no case-free text
        live = [(p.gates, (), p.plain, p.plain_word_start, False, p.sentence) for p in patterns]
        case_free = folded
    else:
        words_all = word_bytes(folded)
        whole = _TextGates(case_free, folded, b" " + words_all + b" ")
        satisfied = whole.satisfied
        live = []
        for p in [p for p in patterns if p.text_gate[0] <= satisfied]:
            reduced = whole.reduce(p.text_gate)
            if reduced is not None:
                live.append((p.gates, reduced, p.regex, p.word_start, p.case_free, p.sentence))
        if not live:
            return found
    for offset, chunk in _chunks(folded):
        end_offset = offset + len(chunk)
        whole_text = end_offset - offset == len(folded)  # one chunk: the word gates are passed
        low = case_free if whole_text else case_free[offset:end_offset]
        padded = b" " + words_all[offset:end_offset] + b" "
        lowered = ""  # the substring gates' text (case_free also folds U+0131), when needed
        memo: dict = {}
        present: dict[str, bool] = {}
        for gates, reduced, regex, word_start, on_case_free, sentence in live:
            if reduced and not whole_text and not _chunk_passes(reduced, low, padded, memo):
                continue
            if gates:
                if not lowered:
                    lowered = chunk.lower()
                for gate in gates:
                    hit = present.get(gate)
                    if hit is None:
                        hit = present[gate] = gate in lowered
                    if hit:
                        break
                else:
                    continue
            subject = low if on_case_free else chunk
            pos = 0
            while (m := regex.search(subject, pos)) is not None:
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

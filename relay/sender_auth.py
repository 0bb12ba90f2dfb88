"""Sender authentication: is a party's mail really from its own domain?

THREATS #35 ("spoofed party").  The envelope sender and the header From are
already checked against the order's registered address (relay.pipeline), but
anybody can write those two strings.  This module adds the proof DMARC uses
(RFC 7489 section 3.1 and 4.2): the message passes either SPF (RFC 7208) for
the envelope sender's domain, or DKIM (RFC 6376) for a signing domain, and that
authenticated domain is *aligned* with the domain of the header From.

What it does not do: look up the From domain's own `_dmarc` record.  The
relay requires an aligned pass from every registered party, whatever the
party publishes (`p=none` included), so the domain's policy and its
`adkim`/`aspf` tags are not consulted; the alignment mode is the operator's.

The check is opt-in (`[sender_auth] mode`, "off" by default): it needs real
DNS, while the contract's address checks need none and test suites use
reserved domains that have no records.

Protocol code is the libraries': pyspf (module `spf`) evaluates SPF and
dkimpy verifies DKIM.  Both do their lookups through one dnspython Resolver
built from the configuration, so operators and tests can name the resolver.
Lookups block, so `SenderAuth.check` runs them in a worker thread under one
deadline for the whole message.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf
import tldextract

from relay.aliases import RESERVED_TLDS
from relay.config import SenderAuthSection, parse_nameserver

# Signatures whose d= is aligned with From and that are verified, at most: a
# message can carry any number of DKIM-Signature fields, and each costs a
# lookup and an RSA operation (RFC 6376 section 8.4 warns of exactly this).
MAX_SIGNATURES = 5

# Verdicts of one message.
PASS, FAIL, TEMPERROR = "pass", "fail", "temperror"


class DnsTemporaryError(Exception):
    """A lookup timed out or the resolver answered SERVFAIL (or was unusable).

    Deliberately not a dkim.DKIMException: dkimpy turns its own DNS errors
    into a plain verification failure (a 550 for a DNS hiccup), while this one
    travels up to the caller, which answers 451."""


# ------------------------------------------------------------- results

@dataclass(frozen=True)
class ClientInfo:
    """What the SMTP session knows about the client, kept apart from the message."""

    ip: str
    helo: str
    # Authenticated on the submission port: the seller's password vouches for
    # the sender, and its own mail client sends from any network, so SPF would
    # fail for no fault of its own.
    authenticated: bool = False

    @classmethod
    def from_session(cls, session: Any, authenticated: bool = False) -> "ClientInfo":
        """From an aiosmtpd Session: `peer` is (host, port, ...), `host_name` the HELO/EHLO argument."""
        peer = getattr(session, "peer", None)
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        return cls(ip=ip, helo=str(getattr(session, "host_name", "") or ""), authenticated=authenticated)


@dataclass(frozen=True)
class SpfResult:
    result: str  # RFC 7208 section 2.6: pass fail softfail neutral none permerror temperror
    domain: str  # the domain checked: of MAIL FROM, or the HELO name for the null sender
    identity: str  # "mailfrom" or "helo" (RFC 8601 ptype smtp.mailfrom / smtp.helo)
    comment: str = ""


@dataclass(frozen=True)
class DkimResult:
    result: str  # RFC 8601 section 2.7.1: pass fail policy neutral permerror temperror
    domain: str  # d=
    selector: str  # s=
    comment: str = ""


@dataclass(frozen=True)
class AuthResult:
    """The outcome for one message, in the terms of RFC 8601 (Authentication-Results)."""

    from_domain: str
    alignment: str  # "relaxed" or "strict"
    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    verdict: str  # pass, fail or temperror
    aligned_by: str = ""  # "spf" or "dkim" when the verdict is pass
    problem: str = ""  # why no check could finish at all (time limit, no resolver)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def dkim_summary(self) -> str:
        """One word for logs: the best DKIM result ("none" without signatures)."""
        for word in (PASS, TEMPERROR, FAIL, "permerror", "policy", "neutral"):
            if any(d.result == word for d in self.dkim):
                return word
        return "none"

    def summary(self) -> str:
        """An Authentication-Results-style line (RFC 8601) for the audit record.

        It names domains, never addresses, and is never added to the relayed
        message: the rewriter keeps headers by allowlist and the other party
        must not learn the writer's domain."""
        parts = [f"spf={self.spf.result} smtp.{self.spf.identity}={self.spf.domain or '-'}"]
        if not self.dkim:
            parts.append("dkim=none")
        for d in self.dkim:
            comment = f" ({d.comment})" if d.comment else ""
            parts.append(f"dkim={d.result}{comment} header.d={d.domain} header.s={d.selector}")
        dmarc = {PASS: "pass", FAIL: "fail", TEMPERROR: "temperror"}[self.verdict]
        by = f" by {self.aligned_by}" if self.aligned_by else ""
        parts.append(f"dmarc={dmarc} ({self.alignment} alignment{by}) header.from={self.from_domain or '-'}")
        return "; ".join(parts)

    def rejection_reply(self) -> str:
        """550 5.7.1 [sender_not_authorized]: the contract's code for this refusal,
        and the enhanced code RFC 7489 section 7.3 recommends for a DMARC
        rejection.  RFC 7372's finer codes (5.7.23 SPF failed, 5.7.20-22 no
        valid DKIM signature, 5.7.26 several checks failed) each describe one
        check, while the refusal here is that *neither* gave an aligned pass."""
        return ("550 5.7.1 [sender_not_authorized] The message could not be authenticated as mail from "
                f"the domain in From (SPF {self.spf.result}, DKIM {self.dkim_summary}, {self.alignment} "
                "alignment); send it through your own domain's mail servers.")

    def temporary_reply(self) -> str:
        """451, so the sender's server retries (RFC 7208 section 8.6: a
        temperror "may" be retried; RFC 6376 section 6.1.2 likewise).

        The enhanced code names the check that could not finish: 4.7.24 is
        RFC 7372's "SPF validation error", listed for 451; a DKIM key that
        could not be fetched (or the overall time limit) has no code of its
        own in RFC 7372, so it is RFC 3463's 4.4.3 "directory server
        failure", the DNS being that directory.  4.7.5 ("cryptographic
        failure") would wrongly suggest the signature was bad."""
        if self.spf.result == TEMPERROR and not self.problem and not any(d.result == TEMPERROR for d in self.dkim):
            return ("451 4.7.24 SPF validation error: a DNS lookup for the sender's domain failed for now; "
                    "please try again later.")
        return ("451 4.4.3 DNS lookups to authenticate the sender (SPF, DKIM) failed for now; "
                "please try again later.")


# --------------------------------------------------------- alignment

# The bundled Public Suffix List snapshot only (never fetched, no cache
# written), *with* its private section: otherwise every `*.github.io` or
# `*.blogspot.com` site would share one organizational domain and align with
# every other.
_TLD_EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True,
                                     include_psl_private_domains=True)


def canonical_domain(domain: str) -> str:
    """Lowercase A-label form without a trailing dot, so U-labels and
    different cases of one domain compare equal."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def organizational_domain(domain: str) -> str:
    """RFC 7489 section 3.2: the public suffix plus one label.

    A name whose suffix the list does not know falls back to its last two
    labels (the PSL's default rule `*`)."""
    domain = canonical_domain(domain)
    labels = domain.split(".")
    if len(labels) >= 2 and labels[-1] in RESERVED_TLDS:
        return ".".join(labels[-2:])
    ext = _TLD_EXTRACT(domain)
    if ext.suffix and ext.domain:
        return f"{ext.domain}.{ext.suffix}"
    return ".".join(labels[-2:])


def aligned(authenticated: str, from_domain: str, mode: str = "relaxed") -> bool:
    """RFC 7489 section 3.1: strict alignment needs the same domain; relaxed,
    the same organizational domain (mail.shop.example aligns with shop.example)."""
    if not authenticated or not from_domain:
        return False
    a, f = canonical_domain(authenticated), canonical_domain(from_domain)
    if mode == "strict":
        return a == f
    return organizational_domain(a) == organizational_domain(f)


# ---------------------------------------------------------------- DNS

def make_resolver(settings: SenderAuthSection) -> dns.resolver.Resolver:
    """The resolver both libraries use: the configured name servers, else the
    system's (/etc/resolv.conf).  EDNS0 with a 1232-octet payload, since a
    2048-bit DKIM key does not fit the 512 octets of plain UDP."""
    if settings.nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        servers = []
        for entry in settings.nameservers:
            host, port = parse_nameserver("sender_auth.nameservers", entry)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    else:
        resolver = dns.resolver.Resolver()
    resolver.use_edns(0, 0, 1232)
    return resolver


class Lookups:
    """DNS lookups for one message, all within one deadline.

    Each lookup gets the time that is left (dnspython's `lifetime`), so the
    worker thread ends by the deadline too, however many lookups SPF's
    includes and the signatures ask for."""

    def __init__(self, resolver: dns.resolver.Resolver, deadline: float):
        self.resolver = resolver
        self.deadline = deadline

    def resolve(self, name: str, qtype: str) -> dns.resolver.Answer | None:
        """The answer, or None for NXDOMAIN / no data of that type (RFC 7208
        section 5: both mean "no records", not an error)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DnsTemporaryError("time limit for DNS lookups reached")
        try:
            return self.resolver.resolve(name, qtype, lifetime=left, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return None
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.BadEscape):
            return None  # not a name that can exist
        except dns.exception.Timeout as exc:
            raise DnsTemporaryError(f"timeout: {exc}") from None
        except dns.resolver.NoNameservers as exc:  # SERVFAIL, REFUSED ... from every server
            raise DnsTemporaryError(f"no name server answered: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{type(exc).__name__}: {exc}") from None

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc`: the key record at selector._domainkey.domain."""
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        answer = self.resolve(text, "TXT")
        if answer is None:
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    def spf_lookup(self, name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list:
        """pyspf's `DNSLookup`: ((name, qtype), value) pairs, in the shapes of
        pyspf's own dnspython lookup; temporary failures as spf.TempError,
        which pyspf turns into the SPF result "temperror"."""
        try:
            answer = self.resolve(name, qtype)
        except DnsTemporaryError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        if answer is None:
            return []
        out: list = []
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out


# pyspf looks names up through its module-level `DNSLookup`, the seam its own
# test suite replaces; it takes no resolver argument.  It is replaced once by
# a dispatcher that uses the Lookups of the check running in this context
# (a ContextVar, so concurrent checks in different threads never mix), and
# falls back to pyspf's own function for any other caller.
_CURRENT_LOOKUPS: contextvars.ContextVar[Lookups | None] = contextvars.ContextVar("relay_spf_lookups",
                                                                                    default=None)
_PYSPF_LOOKUP = spf.DNSLookup


def _spf_dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list:
    lookups = _CURRENT_LOOKUPS.get()
    if lookups is None:
        return _PYSPF_LOOKUP(name, qtype, strict, timeout)
    return lookups.spf_lookup(name, qtype, strict, timeout)


spf.DNSLookup = _spf_dispatch


# --------------------------------------------------------------- SPF

def check_spf(ip: str, helo: str, mail_from: str, lookups: Lookups) -> SpfResult:
    """SPF for the MAIL FROM domain, or for the HELO name when the reverse
    path is null (RFC 7208 section 2.4; RFC 7489 section 3.1.2 then aligns
    the HELO identity)."""
    mail_from = mail_from.strip().strip("<>")
    if mail_from:
        identity, domain = "mailfrom", canonical_domain(mail_from.rpartition("@")[2])
    else:
        identity, domain = "helo", canonical_domain(helo)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("none", domain, identity, "no client IP address")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if not domain:
        return SpfResult("none", domain, identity, "no domain to check")
    token = _CURRENT_LOOKUPS.set(lookups)
    try:
        query = spf.query(i=str(address), s=mail_from, h=helo or domain,
                          timeout=max(0.1, lookups.deadline - time.monotonic()))
        result, _code, explanation = query.check()
    except Exception as exc:  # a library bug must not become a 451 retried for days
        return SpfResult("permerror", domain, identity, f"{type(exc).__name__}")
    finally:
        _CURRENT_LOOKUPS.reset(token)
    return SpfResult(result, domain, identity, explanation if result in ("permerror", "temperror") else "")


# -------------------------------------------------------------- DKIM

def dkim_signatures(content: bytes) -> tuple[Any, list[tuple[int, str, str, dict]]]:
    """The parsed message and its DKIM-Signature fields as
    (index, d= domain, s= selector, tags); unparseable fields get d= ''."""
    message = dkim.DKIM(content, minkey=1024)
    out = []
    index = 0
    for name, value in message.headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags = dkim.util.parse_tag_value(value)
            domain = canonical_domain(tags.get(b"d", b"").decode("ascii"))
            selector = tags.get(b"s", b"").decode("ascii").strip()
        except (dkim.util.InvalidTagValueList, UnicodeDecodeError):
            tags, domain, selector = {}, "", ""
        out.append((index, domain, selector, tags))
        index += 1
    return message, out


def check_dkim(content: bytes, from_domain: str, alignment: str, lookups: Lookups) -> tuple[DkimResult, ...]:
    """Verify the signatures that could make the message pass: those whose
    d= is aligned with From, at most MAX_SIGNATURES, stopping at the first
    pass.  Others are reported as `neutral` and not verified (no lookup, no
    RSA work for a signature that cannot help).

    A signature with `l=` covers only the first l octets of the body, so
    anything appended after it is unsigned (RFC 6376 section 8.2): it counts
    as `policy`, never as a pass."""
    try:
        message, signatures = dkim_signatures(content)
    except Exception as exc:
        return (DkimResult("permerror", "", "", f"unparseable message: {type(exc).__name__}"),)
    results: list[DkimResult] = []
    verified = 0
    passed = False
    for index, domain, selector, tags in signatures:
        if not domain:
            results.append(DkimResult("permerror", "-", selector or "-", "unparseable signature"))
            continue
        if passed or not aligned(domain, from_domain, alignment):
            results.append(DkimResult("neutral", domain, selector, "not checked: not aligned with From"
                                      if not passed else "not checked: already passed"))
            continue
        if b"l" in tags:
            results.append(DkimResult("policy", domain, selector, "l= signs only part of the body"))
            continue
        if verified >= MAX_SIGNATURES:
            results.append(DkimResult("neutral", domain, selector, "not checked: too many signatures"))
            continue
        verified += 1
        results.append(_verify_one(message, index, domain, selector, lookups))
        passed = results[-1].result == PASS
    return tuple(results)


def _verify_one(message: Any, index: int, domain: str, selector: str, lookups: Lookups) -> DkimResult:
    try:
        ok = message.verify(idx=index, dnsfunc=lookups.dkim_txt)
    except DnsTemporaryError as exc:
        return DkimResult(TEMPERROR, domain, selector, str(exc)[:80])
    except dkim.MessageFormatError as exc:
        return DkimResult("permerror", domain, selector, str(exc)[:80])
    except dkim.DKIMException as exc:  # body hash mismatch, expired, From not signed ...
        return DkimResult(FAIL, domain, selector, str(exc)[:80])
    except Exception as exc:  # a library bug must not become a 451 retried for days
        return DkimResult("permerror", domain, selector, type(exc).__name__)
    return DkimResult(PASS if ok else FAIL, domain, selector, "" if ok else "signature or key did not verify")


# ----------------------------------------------------------- together

def evaluate(client: ClientInfo, mail_from: str, from_domain: str, content: bytes, alignment: str,
             lookups: Lookups) -> AuthResult:
    """SPF and DKIM, then the DMARC-style verdict (RFC 7489 section 4.2):
    pass when either gives a pass for a domain aligned with From; temperror
    when there is no such pass but an aligned check could not finish (a later
    try might pass); fail otherwise."""
    from_domain = canonical_domain(from_domain)
    spf_result = check_spf(client.ip, client.helo, mail_from, lookups)
    dkim_results = check_dkim(content, from_domain, alignment, lookups)
    spf_aligned = aligned(spf_result.domain, from_domain, alignment)
    dkim_aligned = [d for d in dkim_results if d.domain and aligned(d.domain, from_domain, alignment)]
    if spf_aligned and spf_result.result == PASS:
        verdict, by = PASS, "spf"
    elif any(d.result == PASS for d in dkim_aligned):
        verdict, by = PASS, "dkim"
    elif (spf_aligned and spf_result.result == TEMPERROR) or any(d.result == TEMPERROR for d in dkim_aligned):
        verdict, by = TEMPERROR, ""
    else:
        verdict, by = FAIL, ""
    return AuthResult(from_domain, alignment, spf_result, dkim_results, verdict, by)


class SenderAuth:
    """The check as the pipeline uses it, built from `[sender_auth]`."""

    def __init__(self, settings: SenderAuthSection):
        self.settings = settings
        self._resolver: dns.resolver.Resolver | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.mode != "off"

    def resolver(self) -> dns.resolver.Resolver:
        """Built on first use, so mode "off" never reads /etc/resolv.conf."""
        if self._resolver is None:
            self._resolver = make_resolver(self.settings)
        return self._resolver

    async def check(self, client: ClientInfo, mail_from: str, from_domain: str, content: bytes) -> AuthResult:
        """Evaluate in a worker thread (the lookups block) within
        `timeout` seconds; past it, a temperror."""
        timeout = self.settings.timeout
        deadline = time.monotonic() + timeout
        try:
            resolver = self.resolver()
        except dns.exception.DNSException:  # e.g. no /etc/resolv.conf: the operator must fix it; retry
            return _timed_out(from_domain, self.settings.alignment, mail_from, client, "no resolver configured")
        lookups = Lookups(resolver, deadline)
        try:
            # A little beyond the deadline: the lookups stop themselves at it,
            # so this only catches CPU-bound work that overran.
            return await asyncio.wait_for(
                asyncio.to_thread(evaluate, client, mail_from, from_domain, content, self.settings.alignment,
                                  lookups), timeout + 1.0)
        except asyncio.TimeoutError:
            return _timed_out(from_domain, self.settings.alignment, mail_from, client, "time limit reached")


def _timed_out(from_domain: str, alignment: str, mail_from: str, client: ClientInfo, why: str) -> AuthResult:
    domain = mail_from.strip("<>").rpartition("@")[2] or client.helo
    return AuthResult(canonical_domain(from_domain), alignment,
                      SpfResult(TEMPERROR, canonical_domain(domain), "mailfrom" if mail_from.strip("<>") else "helo",
                                why),
                      (), TEMPERROR, problem=why)

"""One exchange, from recipient lookup to the durable commit.

This is the relay's logic apart from the SMTP protocol: `relay.server` calls
it from aiosmtpd's hooks, and `relay filter test` calls it with `dry_run` so
an operator sees exactly what the daemon would decide.  Every public method
returns an SMTP reply string; the SMTP layer only passes it on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.errors import (CloseBoundaryNotFoundDefect, InvalidMultipartContentTransferEncodingDefect,
                          MultipartInvariantViolationDefect, StartBoundaryNotFoundDefect,
                          UndecodableBytesDefect)

from relay import tokens
from relay.aliascache import AliasCache
from relay.aliases import AddressError, normalize_address, split_address
from relay.chunks import Chunks
from relay.config import Settings
from relay.filters.base import (BUYER_TO_SELLER, SELLER_TO_BUYER, FilterContext, Finding, MessageView,
                                is_critical, text_fingerprint)
from relay.filters.chain import Chain, ChainResult, rejection_reply
from relay.filters.policy import commit_guard
from relay.logs import get_logger
from relay.parsing import parse_message
from relay.rewrite import (ADDRESS_HEADER_LIMIT, LOOP_HEADER, NESTED_ADDRESS_HEADERS, Parties, RewriteError,
                           RewriteResult, Threading, clean_header_text, header_text, message_ids_in, new_message_id,
                           rewrite_message, transfer_encoding)
from relay.sender_auth import AuthResult, ClientInfo, SenderAuth
from relay.smtpdata import crlf_only
from relay.store import (AuditRecord, Order, OrderChanged, QueueEntry, Seller, StaleParties, StorageError, Store,
                         utc_now_iso)


# Replies that must not differ between "unknown", "expired" and "malformed"
# aliases, so a harvester learns nothing (THREATS #33).
UNKNOWN_ALIAS = "550 5.1.1 No such recipient here"
FOREIGN_DOMAIN = "550 5.7.1 Relaying denied: this server accepts mail only for its own aliases"
NOT_AUTHORIZED = ("550 5.7.1 [sender_not_authorized] This sender may not write to this address; "
                  "write from the address registered for this order.")
# Messages larger than this are parsed, judged and rewritten in a worker
# thread: on the event loop, a few MiB of hostile text would hold up every
# other session for seconds.
OFF_LOOP_SIZE = 256 * 1024
STORAGE_TROUBLE = "451 4.3.0 Temporary storage trouble, please try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, please try again later"
BOUNCE_PREFIX = "bounces-"
STALE_ATTEMPTS = 3  # judgements of one message on facts that changed before its commit, before a 451
ACCEPTED = "250 2.0.0 OK: message {audit_id} queued"
AUTO_REPLY_LOOP = ("550 5.7.1 [auto_reply] Only one automatic reply per conversation is relayed each day "
                   "(RFC 3834); this one was not delivered.")


def storage_reply(exc: StorageError) -> str:
    return STORAGE_FULL if exc.full else STORAGE_TROUBLE


@dataclass
class Recipient:
    kind: str  # "alias" | "postmaster" | "bounce"
    address: str  # as the sender wrote it, lowercased
    order: Order | None = None
    role: str | None = None  # the alias belongs to the "buyer" or the "seller"
    seller: Seller | None = None
    bounce_entry: QueueEntry | None = None
    parties_version: int | None = None  # of the alias lookup (relay.aliascache); the commit checks it
    # An authenticated seller's other addresses, for this transaction only
    # (server.RelayHandler._as_authenticated_seller): kept when the alias is read again.
    extra_senders: tuple[str, ...] = ()

    @property
    def direction(self) -> str:
        return SELLER_TO_BUYER if self.role == "buyer" else BUYER_TO_SELLER

    def seller_addresses(self) -> tuple[str, ...]:
        assert self.seller is not None
        return self.seller.emails + self.extra_senders

    def authorized_senders(self) -> tuple[str, ...]:
        assert self.order is not None and self.seller is not None
        if self.role == "buyer":  # the seller writes to the buyer alias
            return self.seller_addresses()
        return (self.order.buyer_address,)


@dataclass
class Outcome:
    reply: str
    verdict: str  # accepted | rejected | deferred
    audit_id: int | None = None
    findings: list[Finding] = field(default_factory=list)
    critical: bool = False
    outbound: bytes | Chunks | None = None  # Chunks for a large message (relay.chunks)
    direction: str = "unknown"

    @property
    def code(self) -> int:
        return int(self.reply[:3])


class MessageRefused(Exception):
    """A check failed before the filters: `reply` says why, `reason` for the audit
    (with the `fragment` and `location` of its finding, when there is more to say)."""

    def __init__(self, reply: str, reason: str | None = None, fragment: str = "", location: str = "message"):
        super().__init__(reply)
        self.reply = reply
        self.reason = reason
        self.fragment = fragment
        self.location = location


class SenderAuthDeferred(Exception):
    """Sender authentication could not finish (DNS trouble): answer 451, store nothing."""

    def __init__(self, result: AuthResult):
        super().__init__(result.temporary_reply())
        self.reply = result.temporary_reply()
        self.result = result


class Pipeline:
    def __init__(self, settings: Settings, store: Store, on_queued=None, claim_owner: str | None = None):
        self.settings = settings
        self.store = store
        self.aliases = AliasCache(store)
        self.chain = Chain(settings.filters)
        self.sender_auth = SenderAuth(settings.sender_auth)
        # Told of every queue entry committed: (entry, bytes) for a relayed
        # message, so delivery can start from memory; () for notices.
        self.on_queued = on_queued or (lambda *queued: None)
        # The deliverer that takes relayed messages from on_queued: their
        # queue entries are committed already claimed by it (relay.delivery).
        self.claim_owner = claim_owner
        self.log = get_logger()

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self.chain = Chain(settings.filters)
        self.sender_auth = SenderAuth(settings.sender_auth)

    # -------------------------------------------------------------- RCPT

    async def resolve_recipient(self, address: str) -> tuple[Recipient | None, str]:
        """Classify an envelope recipient; returns (recipient, reply)."""
        domain_cfg = self.settings.relay.domain
        local, domain = split_address(address.strip())
        domain = _canonical_domain(domain)
        local_l = local.lower()
        if domain == "" and local_l == "postmaster":
            return Recipient("postmaster", "postmaster"), "250 2.1.5 OK"
        if domain not in (domain_cfg, self.settings.relay.hostname):
            return None, FOREIGN_DOMAIN
        if local_l == "postmaster":
            return Recipient("postmaster", f"postmaster@{domain}"), "250 2.1.5 OK"
        if domain != domain_cfg:
            return None, UNKNOWN_ALIAS
        if local_l.startswith(BOUNCE_PREFIX):
            entry = await self.store.bounce_token_entry(local_l[len(BOUNCE_PREFIX):])
            if entry is None:
                return None, UNKNOWN_ALIAS
            return Recipient("bounce", f"{local_l}@{domain}", bounce_entry=entry), "250 2.1.5 OK"
        found = await self.aliases.find(local_l)
        if found is None:
            return None, UNKNOWN_ALIAS
        return Recipient("alias", f"{local_l}@{domain}", found.order, found.role, found.seller,
                         parties_version=found.parties_version), "250 2.1.5 OK"

    async def _read_again(self, recipient: Recipient) -> Recipient | None:
        """The alias as the store has it now (None if it is gone)."""
        found = await self.aliases.find(recipient.address.partition("@")[0], fresh=True)
        if found is None:
            return None
        return dataclasses.replace(recipient, order=found.order, role=found.role, seller=found.seller,
                                   parties_version=found.parties_version)

    def sender_is_authorized(self, recipient: Recipient, mail_from: str) -> bool:
        try:
            sender = normalize_address(mail_from)
        except AddressError:
            return False
        return sender in recipient.authorized_senders()

    async def authorized_at_rcpt(self, recipient: Recipient, mail_from: str) -> tuple[Recipient, bool]:
        """May the envelope sender write to this alias?  A refusal is only
        decided on the parties as the store has them now, never on a
        remembered lookup (relay.aliascache)."""
        if self.sender_is_authorized(recipient, mail_from):
            return recipient, True
        current = await self._read_again(recipient)
        if current is None:
            return recipient, False
        return current, self.sender_is_authorized(current, mail_from)

    async def refuse_at_rcpt(self, recipient: Recipient, mail_from: str) -> str:
        """Audit a refusal of a known alias (the contract: it is an exchange)."""
        return await self._record_refusal(recipient, mail_from, "sender_not_authorized", "envelope", "rcpt",
                                          NOT_AUTHORIZED)

    async def refuse_data(self, recipient: Recipient, mail_from: str, reason: str, reply: str) -> str:
        """Audit a DATA block to a known alias that the SMTP layer refused
        unread (relay.server DATA_REFUSALS)."""
        return await self._record_refusal(recipient, mail_from, reason, "message", "data", reply)

    async def _record_refusal(self, recipient: Recipient, mail_from: str, reason: str, location: str, stage: str,
                              reply: str) -> str:
        """An exchange refused before its content was judged, recorded
        without octets: `reply`, or a 451 if the record could not be written
        (the sender tries again, and is refused again)."""
        record = AuditRecord(
            received_at=utc_now_iso(), order_id=recipient.order.id if recipient.order else None,
            direction=recipient.direction, sender=mail_from, recipient=recipient.address,
            verdict="rejected", reasons=[reason], findings=[{"code": reason, "fragment": "", "location": location}])
        try:
            audit_id = await self.store.record_rejection(record)
        except StorageError as exc:
            return storage_reply(exc)
        self.log.info("message.rejected", audit_id=audit_id, order=record.order_id, stage=stage,
                      reasons=record.reasons, alias=recipient.address)
        return reply

    # -------------------------------------------------------------- DATA

    async def process(self, mail_from: str, recipient: Recipient, content: bytes,
                      dry_run: bool = False, client: ClientInfo | None = None) -> Outcome:
        """`client` is the SMTP client's address and HELO name, for sender
        authentication; without it (`relay filter test`) that check is skipped."""
        if recipient.kind == "postmaster":
            return await self._to_postmaster(mail_from, content)
        if recipient.kind == "bounce":
            return await self._bounce_received(mail_from, recipient, content)
        started = time.perf_counter()
        try:
            outcome = await self._exchange_on_current_parties(mail_from, recipient, content, dry_run, client)
        except StorageError as exc:
            self.log.warning("message.deferred_by_storage", order=recipient.order.id, full=exc.full)
            return Outcome(storage_reply(exc), "deferred")
        except SenderAuthDeferred as exc:
            # Not audited: nothing was decided, and the sender's server retries.
            self.log.warning("message.deferred_by_dns", order=recipient.order.id, direction=recipient.direction,
                             reply=exc.reply[:10])
            return Outcome(exc.reply, "deferred", findings=[
                Finding("sender_auth_temperror", "", "authentication", exc.reply[10:])], direction=recipient.direction)
        outcome.direction = recipient.direction
        self.log.info("message.accepted" if outcome.verdict == "accepted" else "message.rejected",
                      audit_id=outcome.audit_id, order=recipient.order.id, direction=recipient.direction,
                      reasons=[f.code for f in outcome.findings], critical=outcome.critical,
                      seconds=round(time.perf_counter() - started, 4), dry_run=dry_run)
        return outcome

    async def _exchange_on_current_parties(self, mail_from: str, recipient: Recipient, content: bytes,
                                           dry_run: bool, client: ClientInfo | None) -> Outcome:
        """The exchange, judged again on a fresh read of the alias should its
        commit find that the sellers or orders changed after the lookup it
        was judged on (relay.aliascache), or judged again on the order's
        fresh history should the seller's messages committed meanwhile have
        changed a limit's answer (OrderChanged: relay.filters.policy
        CommitGuard).  After STALE_ATTEMPTS such changes in a row, a 451: the
        sender's server tries again later."""
        for _ in range(STALE_ATTEMPTS):
            try:
                return await self._exchange(mail_from, recipient, content, dry_run, client)
            except OrderChanged:
                continue
            except StaleParties:
                current = await self._read_again(recipient)
                if current is None:
                    return Outcome(UNKNOWN_ALIAS, "rejected", direction=recipient.direction)
                recipient = current
        raise StorageError("the sellers or orders kept changing while the message was judged")

    async def _exchange(self, mail_from: str, recipient: Recipient, content: bytes, dry_run: bool,
                        client: ClientInfo | None = None) -> Outcome:
        order, seller = recipient.order, recipient.seller
        assert order is not None and seller is not None
        direction = recipient.direction
        subject = ""
        try:
            check_raw(content, self.settings)
            message = await _parse(content)
            subject = _safe_subject(message)
            check_structure(message, self.settings)
            if not self.sender_is_authorized(recipient, mail_from) or \
                    not _header_from_authorized(message, recipient.authorized_senders()):
                raise MessageRefused(NOT_AUTHORIZED, "sender_not_authorized")
            auth = await self._authenticate(recipient, client, mail_from, message, content, dry_run)
            auto = is_auto_submitted(message)
            if auto and await self.store.recent_auto_reply(order.id, direction, _hours_ago(24)):
                raise MessageRefused(AUTO_REPLY_LOOP, "auto_reply")
        except MessageRefused as refusal:
            return await self._reject(recipient, mail_from, content, subject, refusal.reply,
                                      [Finding(refusal.reason or "malformed", refusal.fragment, refusal.location,
                                               refusal.reply[10:])],
                                      critical=is_critical(subject), dry_run=dry_run)

        critical = is_critical(subject)
        parties = self._parties(recipient)
        relay_id = new_message_id(self.settings.relay.hostname)
        threading = await self._threading(order, direction, message, relay_id)
        try:
            result = await self._safe_rewrite(message, parties, threading, (), len(content), order.id)
        except RewriteError as exc:
            code = re.search(r"\[(\w+)\]", exc.reply)
            return await self._reject(recipient, mail_from, content, subject, exc.reply,
                                      [Finding(code.group(1) if code else "malformed", "", "message", exc.reply[10:])],
                                      critical, dry_run)
        view = MessageView(subject=result.subject, parts=tuple(result.parts), attachments=tuple(result.attachments))
        ctx = await self._context(recipient, critical)
        verdict = await _sized(len(content), self.chain.run, view, ctx)
        if auto:
            # Recorded so the next automatic answer in this order is refused (RFC 3834 ping-pong).
            verdict = ChainResult(verdict.findings + (Finding("auto_reply", "", "header", "automatic reply"),),
                                  verdict.rejection, verdict.redactions)
        if auth is not None and not auth.passed:
            # Mode "record": delivered, and recorded like a filter's "flag".
            verdict = ChainResult(verdict.findings + (Finding("sender_not_authorized", auth.summary(), "authentication",
                                                              "not authenticated (recorded only)"),),
                                  verdict.rejection, verdict.redactions)
        if verdict.rejection is not None:
            return await self._reject(recipient, mail_from, content, subject, rejection_reply(verdict.rejection),
                                      list(verdict.findings), critical, dry_run)
        if verdict.redactions:
            result = await self._safe_rewrite(message, parties, threading, verdict.redactions, len(content), order.id)
        if dry_run:
            return Outcome("250 2.0.0 OK (dry run: nothing stored or sent)", "accepted", None,
                           list(verdict.findings), critical, result.data)
        return await self._accept(recipient, mail_from, content, subject, message, result, verdict, ctx,
                                  critical, relay_id, auth)

    async def _authenticate(self, recipient: Recipient, client: ClientInfo | None, mail_from: str,
                            message: EmailMessage, content: bytes, dry_run: bool) -> AuthResult | None:
        """THREATS #35: is the mail really from the registered party's domain
        (relay.sender_auth)?  Both directions: sellers and buyers are both
        registered counterparties.  Skipped when the mode is "off", without
        an SMTP client (a dry run), and for a seller authenticated on the
        submission port (its password is the proof).

        In mode "enforce" a failure raises MessageRefused (550 5.7.1
        [sender_not_authorized], audited like every such refusal) and a DNS
        failure SenderAuthDeferred (451); in mode "record" the result is only
        returned, for the audit."""
        mode = self.settings.sender_auth.mode
        if mode == "off" or client is None or client.authenticated or dry_run:
            return None
        started = time.perf_counter()
        result = await self.sender_auth.check(client, mail_from, _header_from_domain(message), content)
        # Results only: the summary names the parties' domains, which belong in
        # the audit record, not in INFO logs (a personal domain is an identity).
        self.log.info("sender_auth.checked", order=recipient.order.id, direction=recipient.direction, mode=mode,
                      verdict=result.verdict, aligned_by=result.aligned_by or None, spf=result.spf.result,
                      dkim=result.dkim_summary, seconds=round(time.perf_counter() - started, 4))
        if mode == "enforce":
            if result.verdict == "temperror":
                raise SenderAuthDeferred(result)
            if result.verdict == "fail":
                raise MessageRefused(result.rejection_reply(), "sender_not_authorized", result.summary(),
                                     "authentication")
        return result

    async def _safe_rewrite(self, message: EmailMessage, parties: Parties, threading: Threading,
                            redactions: tuple[tuple[str, str], ...], size: int, order_id: str) -> RewriteResult:
        """Rewrite; an exception from the stdlib's parser on hostile content
        becomes a permanent refusal, never a 451 retried for days."""
        try:
            return await _rewrite(message, parties, threading, redactions, size)
        except RewriteError:
            raise
        except Exception as exc:
            self.log.error("message.error", order=order_id, stage="rewrite", error=type(exc).__name__)
            raise RewriteError("554 5.6.0 The message could not be parsed; send it again from your mail "
                               "client.") from None

    async def _accept(self, recipient: Recipient, mail_from: str, content: bytes, subject: str,
                      message: EmailMessage, result: RewriteResult, verdict: ChainResult, ctx: FilterContext,
                      critical: bool, relay_id: str, auth: AuthResult | None = None) -> Outcome:
        order = recipient.order
        assert order is not None
        direction = recipient.direction
        unsolicited = direction == SELLER_TO_BUYER and not ctx.buyer_has_written
        findings = [_finding_dict(f) for f in verdict.findings]
        if auth is not None and auth.passed:
            # The Authentication-Results summary of a pass is kept with the
            # findings (a note, not a reason); a failure is already a finding.
            findings.append({"code": "sender_auth", "fragment": auth.summary()[:200], "location": "authentication"})
        # (a large buyer message's words were read on the event loop: 0.6-1 s for 9 MB of HTML)
        fingerprint = await _sized(len(content), text_fingerprint,
                                   MessageView(subject, tuple(result.parts), tuple(result.attachments)))
        record = AuditRecord(
            received_at=utc_now_iso(), order_id=order.id, direction=direction, sender=mail_from,
            recipient=recipient.address, verdict="accepted", reasons=verdict.reasons,
            findings=findings, critical=critical, unsolicited=unsolicited,
            to_opted_out=ctx.buyer_opted_out, subject=subject, fingerprint=fingerprint,
            inbound=content, outbound=result.data)
        original_ids = message_ids_in(message.get("Message-ID"))
        token = tokens.ordered_token_hex(12)
        rcpt_to = self._parties(recipient).recipient_addresses[0]
        audit_id, entry = await self.store.accept_message(
            record, relay_id, original_ids[0] if original_ids else None,
            mail_from=f"{BOUNCE_PREFIX}{token}@{self.settings.relay.domain}", rcpt_to=rcpt_to,
            bounce_token=token, notify=_normalized_or_none(mail_from), notify_alias=recipient.address,
            claim_owner=self.claim_owner, parties_version=recipient.parties_version,
            guard=commit_guard(self.chain.settings, self.chain.names, ctx))
        self.on_queued(entry, result.data)
        return Outcome(ACCEPTED.format(audit_id=audit_id), "accepted", audit_id, list(verdict.findings),
                       critical, result.data)

    async def _reject(self, recipient: Recipient, mail_from: str, content: bytes, subject: str, reply: str,
                      findings: list[Finding], critical: bool, dry_run: bool) -> Outcome:
        if dry_run:
            return Outcome(reply, "rejected", None, findings, critical)
        reasons: list[str] = []
        for f in findings:
            if f.code not in reasons:
                reasons.append(f.code)
        record = AuditRecord(
            received_at=utc_now_iso(), order_id=recipient.order.id if recipient.order else None,
            direction=recipient.direction, sender=mail_from, recipient=recipient.address, verdict="rejected",
            reasons=reasons, findings=[_finding_dict(f) for f in findings], critical=critical, subject=subject,
            inbound=content)
        audit_id = await self.store.record_rejection(record, parties_version=recipient.parties_version)
        return Outcome(reply, "rejected", audit_id, findings, critical)

    def _parties(self, recipient: Recipient) -> Parties:
        order, seller = recipient.order, recipient.seller
        assert order is not None and seller is not None
        domain = self.settings.relay.domain
        buyer_alias = f"{order.buyer_alias}@{domain}"
        seller_alias = f"{order.seller_alias}@{domain}"
        if recipient.role == "buyer":  # seller writes to the buyer
            return Parties(recipient.seller_addresses(), seller_alias, seller.name, (order.buyer_address,), buyer_alias,
                           self.settings.relay.hostname)
        # CONTRACT: "<buyer name or Buyer>"; a name of blanks is no name.
        buyer_name = clean_header_text(order.buyer_name or "").strip() or "Buyer"
        return Parties((order.buyer_address,), buyer_alias, buyer_name, seller.emails,
                       seller_alias, self.settings.relay.hostname)

    async def _threading(self, order: Order, direction: str, message: EmailMessage,
                         relay_id: str) -> Threading:
        """Translate In-Reply-To / References so both sides' clients thread.

        A relay id the recipient received is translated back to the
        recipient's own original id; the writer's own original ids become the
        relay ids the other side knows; anything else is dropped (it would
        name the writer's domain, or another order's conversation)."""
        hostname_suffix = "@" + self.settings.relay.hostname + ">"

        async def translate(ids: list[str]) -> list[str]:
            out: list[str] = []
            for mid in ids:
                if mid.lower().endswith(hostname_suffix):
                    row = await self.store.lookup_relay_id(mid)
                    if row is None or row["order_id"] != order.id:
                        continue
                    if row["direction"] != direction and row["original_id"]:
                        mapped = row["original_id"]
                    else:
                        mapped = mid
                else:
                    row = await self.store.lookup_original_id(order.id, mid)
                    if row is None or row["direction"] != direction:
                        continue
                    mapped = row["relay_id"]
                if mapped not in out:
                    out.append(mapped)
            return out

        in_reply_to = await translate(message_ids_in(header_text(message, "In-Reply-To")))
        references = await translate(message_ids_in(header_text(message, "References")))
        if in_reply_to and not references:
            references = list(in_reply_to)
        return Threading(relay_id, tuple(in_reply_to[:1]), tuple(references[-20:]))

    async def _context(self, recipient: Recipient, critical: bool) -> FilterContext:
        order, seller = recipient.order, recipient.seller
        assert order is not None and seller is not None
        domain = self.settings.relay.domain
        aliases = frozenset({f"{order.buyer_alias}@{domain}", f"{order.seller_alias}@{domain}"})
        if recipient.direction != SELLER_TO_BUYER:
            return FilterContext(direction=recipient.direction, order_id=order.id, seller_id=seller.id,
                                 relay_domain=domain, own_aliases=aliases, critical=critical)
        history = await self.store.order_history(order.id, order.buyer_address)
        opted_out = history["buyer_opted_out"]
        window = self.settings.filters.critical_window_days
        since = (datetime.now(timezone.utc) - timedelta(days=window)).isoformat(timespec="milliseconds")
        since = since.replace("+00:00", "Z")
        critical_sent = await self.store.critical_sent_since(seller.id, since) \
            if critical and opted_out else 0
        return FilterContext(
            direction=SELLER_TO_BUYER, order_id=order.id, seller_id=seller.id, relay_domain=domain,
            own_aliases=aliases, critical=critical, buyer_opted_out=opted_out,
            buyer_has_written=history["buyer_has_written"],
            unsolicited_sent=history["unsolicited_sent"], critical_sent_window=critical_sent,
            critical_since=since,
            previous_fingerprints=history["previous_fingerprints"])

    # ---------------------------------------------- postmaster and bounces

    async def _to_postmaster(self, mail_from: str, content: bytes) -> Outcome:
        """RFC 5321 section 4.5.1: postmaster must be accepted; it reaches the
        operator, never a party, so it is queued as received (no rewriting)."""
        if b"\0" in content:
            return Outcome("550 5.6.0 The message contains NUL bytes, which SMTP does not allow.", "rejected")
        from relay.rewrite import normalize_line_endings
        try:
            await self.store.enqueue_notice("",
                                            self.settings.relay.postmaster, normalize_line_endings(content),
                                            kind="postmaster")
        except StorageError as exc:
            return Outcome(storage_reply(exc), "deferred")
        self.on_queued()
        self.log.info("postmaster.received", size=len(content))
        return Outcome("250 2.0.0 OK: queued for the postmaster", "accepted")

    async def _bounce_received(self, mail_from: str, recipient: Recipient, content: bytes) -> Outcome:
        """A bounce or auto-reply to one of our per-message envelope senders.

        Never forwarded raw (it names the far side's real address and MTAs,
        THREATS #38): it is recorded in the audit record.  Only a report
        that the message failed, from the null sender, fails its queue entry
        (the audit's `delivery` then says so) and tells the writer,
        neutrally, once: a vacation reply or a "delayed" report tells
        nobody, and a second report of the same failure neither."""
        entry = recipient.bounce_entry
        assert entry is not None
        order_id = None
        if entry.audit_id is not None:
            row = await self.store.audit_get(entry.audit_id)
            order_id = row["order_id"] if row else None
        record = AuditRecord(
            received_at=utc_now_iso(), order_id=order_id, direction="unknown", sender=mail_from,
            recipient=recipient.address, verdict="accepted", reasons=[], findings=[],
            subject=None, inbound=content)
        from relay.delivery import failure_notice, reports_failure
        failed = mail_from in ("", "<>") and reports_failure(content)
        notified = False
        try:
            audit_id = await self.store.record_rejection(record)
            if failed and entry.notify and entry.notify_alias:
                notice = failure_notice(self.settings, entry.notify, entry.notify_alias)
                notified = await self.store.mark_bounced(entry.id, "bounced: the recipient's mail system "
                                                         "reported a failure", ("", entry.notify, notice))
                if notified:
                    self.on_queued()
        except StorageError as exc:
            return Outcome(storage_reply(exc), "deferred")
        self.log.info("bounce.received", audit_id=audit_id, order=order_id, null_sender=mail_from in ("", "<>"),
                      failure_report=failed, notified=notified)
        return Outcome(f"250 2.0.0 OK: recorded as {audit_id}", "accepted", audit_id)


# ------------------------------------------------------------ raw checks

def check_raw(content: bytes, settings: Settings) -> None:
    """Checks on the bytes before parsing (THREATS #1-5, #49)."""
    if b"\0" in content:
        raise MessageRefused("550 5.6.0 The message contains NUL bytes, which SMTP does not allow.", "malformed")
    if _smuggling_terminator(content):
        raise MessageRefused("550 5.6.0 The message contains a bare CR or LF line ending around a lone dot "
                             "(an SMTP smuggling pattern).", "malformed")
    header_end = _header_block_end(content)
    header = content[:header_end]
    if len(header) > settings.limits.header_total:
        raise MessageRefused(f"552 5.3.4 The message header exceeds {settings.limits.header_total} octets.",
                             "malformed")
    field_size = 0
    for line in header.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            field_size += len(line)
        else:
            field_size = len(line)
        if field_size > settings.limits.header_field:
            raise MessageRefused(f"552 5.3.4 A header field exceeds {settings.limits.header_field} octets.",
                                 "malformed")


_FAKE_TERMINATORS = re.compile(rb"(?:^|\r\n|\r|\n)\.(?:\r(?!\n)|(?<!\r)\n)|(?:\r(?!\n)|(?<!\r)\n)\.\r\n")


def _smuggling_terminator(content: bytes) -> bool:
    """A lone dot with a non-CRLF line ending on either side: `\\n.\\r\\n`,
    `\\r.\\r`, `\\r\\n.\\n` and the rest of smtpsmug's list."""
    if b"." not in content:
        return False
    if b"\r\n" in content and crlf_only(content):
        return False  # only CRLF: aiosmtpd already split on the real terminator
    return _FAKE_TERMINATORS.search(content) is not None


def _oversized_headers(parts: list[EmailMessage], settings: Settings) -> list[frozenset[str]]:
    """THREATS #49 at every MIME level, before any header is parsed, in one
    pass over each part's fields: the cap of one field (check_raw holds it
    for the top, on the bytes) for the headers of every part and forwarded
    message, where a 40 KB From took 17 s of the event loop to parse; then
    the top's From, which the relay parses several times, no longer than an
    address header may be (relay.rewrite ADDRESS_HEADER_LIMIT).  For each
    part, the (lowercase) names of its address headers too long for the
    stdlib's parser: the rewriter reads and writes them as text."""
    limit = settings.limits.header_field
    unparsable = []
    for part in parts:
        too_long: set[str] = set()
        for name, value in part.raw_items():
            if len(name) + 2 + len(value) > limit:
                raise MessageRefused(f"552 5.3.4 A header field exceeds {limit} octets.", "malformed")
            if len(value) > ADDRESS_HEADER_LIMIT and name.lower() in _ADDRESS_HEADERS:
                too_long.add(name.lower())
        unparsable.append(frozenset(too_long))
    if "from" in unparsable[0]:
        raise MessageRefused(f"554 5.6.0 The From header is longer than {ADDRESS_HEADER_LIMIT} octets; "
                             "a sender's address and name fit in one line.", "malformed")
    return unparsable


def _header_block_end(content: bytes) -> int:
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = content.find(sep)
        if pos != -1:
            return pos
    return len(content)


async def _sized(size: int, work, *args):
    """`work(*args)` for a message of `size` octets: in a worker thread above
    OFF_LOOP_SIZE, so that it does not hold up the other sessions."""
    if size > OFF_LOOP_SIZE:
        return await asyncio.get_running_loop().run_in_executor(None, work, *args)
    return work(*args)


async def _parse(content: bytes) -> EmailMessage:
    return await _sized(len(content), parse_message, content)


async def _rewrite(message: EmailMessage, parties: Parties, threading: Threading,
                   redactions: tuple[tuple[str, str], ...], size: int) -> RewriteResult:
    return await _sized(size, rewrite_message, message, parties, threading, redactions)


def check_structure(message: EmailMessage, settings: Settings) -> None:
    """Refuse what cannot be rewritten faithfully (THREATS #47, #50-52)."""
    if message.get(LOOP_HEADER, "").strip().lower() == settings.relay.hostname:
        raise MessageRefused("554 5.4.6 Mail loop detected: this message already passed through the relay.",
                             "loop")
    depth = _depth(message, 0, settings.limits.mime_depth)
    if depth > settings.limits.mime_depth:
        raise MessageRefused(f"554 5.6.0 The message nests MIME parts deeper than {settings.limits.mime_depth} "
                             "levels.", "malformed")
    parts = list(message.walk())  # (walked once for the three passes below)
    unparsable = _oversized_headers(parts, settings)
    # Parse, once, every header the relay reads or copies (at every MIME
    # level): the stdlib's header parser can raise on hostile input (found by
    # fuzz/fuzz_rewrite.py), and a message that always raised would be
    # retried forever after a 451.  Headers that are dropped are not parsed,
    # nor is a forwarded message's address header too long to be (relay.rewrite
    # ADDRESS_HEADER_LIMIT: the rewriter scrubs it as text).
    for part, too_long in zip(parts, unparsable):
        for name in part.keys():
            lowered = name.lower()
            if lowered not in _READ_HEADERS or lowered in too_long:
                continue
            try:
                text = "".join(str(v) for v in part.get_all(name, []))
            except Exception:
                raise MessageRefused(f"554 5.6.0 The {name[:40]} header cannot be parsed; send the message again "
                                     "from your mail client.",
                                     "malformed") from None
            if "\r" in text or "\n" in text:
                # CVE-2024-6923: an encoded line break must never become a header.
                raise MessageRefused(f"554 5.6.0 The {name[:40]} header decodes to a line break.", "malformed")
    names = [k.lower() for k in message.keys()]
    for name in ("From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID"):
        if names.count(name.lower()) > 1:
            raise MessageRefused(f"554 5.6.0 The message has more than one {name} header (RFC 5322 section 3.6).",
                                 "malformed")
    for part in parts:
        if part.get_content_maintype() == "message" and transfer_encoding(part) in ("base64", "quoted-printable"):
            # RFC 2046 section 5.2.1: 7bit, 8bit or binary only.  The parser
            # reads such a body as a message of no headers and encoded text,
            # which neither the rewriter nor the filters could read.
            raise MessageRefused("554 5.6.0 A forwarded message (message/*) is encoded as a whole, which RFC 2046 "
                                 "does not allow; forward it again from your mail client.", "malformed")
        for defect in part.defects:
            if type(defect) in _STRUCTURAL_DEFECTS:
                raise MessageRefused("554 5.6.0 The message's MIME structure is broken: "
                                     f"{_STRUCTURAL_DEFECTS[type(defect)]}; send it again from your mail client.",
                                     "malformed")


# Headers whose values the relay reads or copies.  To, Cc, Sender and
# Reply-To are dropped unread (only counted); a forwarded message's own
# From/To/Cc are rebuilt defensively in relay.rewrite.
_ADDRESS_HEADERS = frozenset(h.lower() for h in NESTED_ADDRESS_HEADERS)
_READ_HEADERS = frozenset(h.lower() for h in (
    "From", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "Auto-Submitted", "Importance", "Precedence", "X-Autoreply", "X-Autorespond", "X-Relay-Loop",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID", "Content-Description",
    "Content-Language"))

# RFC 2046 framing errors: a client and the relay could split such a message
# differently (THREATS #51), so it is refused rather than repaired.  Each is
# named in the reply as the writer can understand it, never by the stdlib's
# class name (THREATS #20).
_STRUCTURAL_DEFECTS = {
    CloseBoundaryNotFoundDefect: "a multipart part never reaches its closing boundary",
    StartBoundaryNotFoundDefect: "a multipart part's boundary never appears",
    MultipartInvariantViolationDefect: "a part declared multipart has no boundary or no parts",
    InvalidMultipartContentTransferEncodingDefect: "a multipart part has a transfer encoding other than 7bit, "
                                                   "8bit or binary",
}


def _depth(part: EmailMessage, level: int, limit: int) -> int:
    if level > limit or not part.is_multipart():
        return level
    payload = part.get_payload()
    if not isinstance(payload, list):
        return level
    return max((_depth(p, level + 1, limit) for p in payload), default=level)


def _header_from_authorized(message: EmailMessage, allowed: tuple[str, ...]) -> bool:
    """Header From must be one mailbox, parsed without defects (CVE-2023-27043),
    that belongs to the authorised party.  Raw 8-bit bytes in the display
    name (clients that ignore SMTPUTF8) are tolerated: the name is replaced."""
    try:
        header = message["From"]
        if header is None:
            return False
        if any(not isinstance(d, UndecodableBytesDefect) for d in header.defects):
            return False
        addresses = header.addresses
        if len(addresses) != 1 or not addresses[0].addr_spec:
            return False
        if not addresses[0].addr_spec.isascii():
            return False
        return normalize_address(addresses[0].addr_spec) in allowed
    except (AddressError, Exception):
        return False


def _header_from_domain(message: EmailMessage) -> str:
    """The domain of the single From address (already checked by
    _header_from_authorized, so parsing cannot fail here)."""
    try:
        return message["From"].addresses[0].addr_spec.rpartition("@")[2]
    except Exception:
        return ""


def _safe_subject(message: EmailMessage) -> str:
    try:
        return clean_header_text(header_text(message, "Subject"))[:900]
    except Exception:
        return ""


def is_auto_submitted(message: EmailMessage) -> bool:
    """RFC 3834 auto-replies and the common vendor markers of vacation and
    list mail."""
    auto = header_text(message, "Auto-Submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    precedence = header_text(message, "Precedence").strip().lower()
    if precedence in ("auto_reply", "bulk", "junk", "list"):
        return True
    if header_text(message, "X-Autoreply") or header_text(message, "X-Autorespond"):
        return True
    return message.get_content_type() == "multipart/report"


def _hours_ago(hours: float) -> str:
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    return since.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _finding_dict(f: Finding) -> dict[str, str]:
    return {"code": f.code, "fragment": f.fragment[:200], "location": f.location}


def _normalized_or_none(address: str) -> str | None:
    try:
        return normalize_address(address)
    except AddressError:
        return None


def _canonical_domain(domain: str) -> str:
    """Lowercase, IDNA to ASCII; a trailing dot is not stripped (it is an error)."""
    domain = domain.lower()
    if domain.startswith("[") or not domain:
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain

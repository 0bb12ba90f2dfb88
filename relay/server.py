"""The SMTP face of the relay: a thin aiosmtpd handler plus the daemon's life cycle.

Each hook translates SMTP into a call on relay.pipeline and passes the reply
back.  aiosmtpd's defaults that leak or mislead are overridden here: the
banner names no software, unexpected exceptions answer `451 4.3.0` with no
detail (never `500 Error: (Class) text`), and aiosmtpd's bare replies for size
and line limits get the enhanced status codes RFC 3463 asks for.
"""

from __future__ import annotations

import asyncio
import signal
import time
from email._header_value_parser import get_addr_spec
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config import ConfigError, Settings, load_settings, parse_hostport
from relay.delivery import Delivery
from relay.logs import get_logger
from relay.pipeline import Pipeline, Recipient
from relay.store import StorageError, Store

BANNER_IDENT = "ESMTP ready"
INTERNAL_ERROR = "451 4.3.0 Internal error, please try again later"
LOCAL_PART_LIMIT = 64  # RFC 5321 section 4.5.3.1.1
PATH_LIMIT = 256  # RFC 5321 section 4.5.3.1.3

# aiosmtpd's fixed replies, given enhanced status codes (RFC 3463).
_REPLY_TRANSLATIONS = {
    "552 Error: Too much mail data": "552 5.3.4 Message too big for this system",
    "552 Error: message size exceeds fixed maximum message size": "552 5.3.4 Message too big for this system",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.6)",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "553 5.1.3 Error: malformed address": "553 5.1.3 Malformed address",
}


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with our replies and session accounting."""

    def __init__(self, handler: "RelayHandler", **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.relay_handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay_handler.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.relay_handler.sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REPLY_TRANSLATIONS.get(status, status)
            if status.startswith("500 Error: (") or status.startswith("500 Error: Cannot describe"):
                status = INTERNAL_ERROR
        await super().push(status)


class RelayHandler:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.log = get_logger()
        self.sessions: set[RelaySMTP] = set()
        self.transactions = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        # "<>" is the null reverse-path (RFC 5321 section 4.5.5), kept as is
        # because aiosmtpd treats an empty mail_from as "no MAIL yet".
        if address and address != "<>" and _address_defect(address):
            return "553 5.1.7 The sender address is malformed"
        # DSN parameters (NOTIFY, ORCPT, RET, ENVID) are accepted and never
        # forwarded: far-side reports would name real addresses (THREATS #32).
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.relay_recipient = None  # type: ignore[attr-defined]
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        defect = _address_defect(address)
        if defect:
            return f"501 5.1.3 Bad recipient address syntax: {defect}"
        recipient, reply = await self.pipeline.resolve_recipient(address)
        if recipient is None:
            self.log.info("rcpt.refused", reply=reply[:9])
            return reply
        current: Recipient | None = getattr(envelope, "relay_recipient", None)
        if current is not None:
            if current.address == recipient.address:
                return "250 2.1.5 OK (duplicate recipient ignored)"
            # One exchange per transaction: each alias has its own checks and reply.
            return "452 4.5.3 Too many recipients; send to each alias in its own transaction"
        if recipient.kind == "alias" and not self.pipeline.sender_is_authorized(recipient, envelope.mail_from or ""):
            return await self.pipeline.refuse_at_rcpt(recipient, envelope.mail_from or "")
        envelope.relay_recipient = recipient  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient: Recipient | None = getattr(envelope, "relay_recipient", None)
        if recipient is None:
            return "503 5.5.1 Need RCPT command"
        self.transactions += 1
        self.idle.clear()
        try:
            outcome = await self.pipeline.process(envelope.mail_from or "", recipient, envelope.original_content)
            return outcome.reply
        finally:
            self.transactions -= 1
            if self.transactions == 0:
                self.idle.set()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, StorageError):
            return "452 4.3.1 Insufficient system storage" if error.full else \
                "451 4.3.0 Temporary storage trouble, please try again later"
        self.log.error("message.error", error=type(error).__name__)
        return INTERNAL_ERROR


def _address_defect(address: str) -> str | None:
    """Parse an envelope address once more with the stdlib's strict parser
    and refuse anything with defects (THREATS #25, #27, #28, #30)."""
    if any(ch in address for ch in "\r\n\0\t ") or len(address) > PATH_LIMIT:
        return "the address holds control characters or is too long"
    if "@" not in address:
        return None if address.lower() == "postmaster" else "the address has no domain"
    try:
        token, rest = get_addr_spec(address)
    except (HeaderParseError, IndexError):
        return "the address cannot be parsed"
    if rest or token.all_defects:
        return "the address cannot be parsed"
    local, _, domain = address.rpartition("@")
    if len(local) > LOCAL_PART_LIMIT:
        return "the local part is longer than 64 octets"
    if domain.endswith(".") or not domain:
        return "the domain is not valid"
    return None


class RelayDaemon:
    """Store, pipeline, delivery and listener, started and stopped together."""

    def __init__(self, settings: Settings, config_path: str | None = None):
        self.settings = settings
        self.config_path = config_path
        self.log = get_logger()
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.delivery: Delivery | None = None
        self.handler: RelayHandler | None = None
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.store = await Store.open(self.settings.store.path)
        self.delivery = Delivery(self.settings, self.store)
        self.pipeline = Pipeline(self.settings, self.store, on_queued=self.delivery.wake)
        self.handler = RelayHandler(self.pipeline)
        host, port = parse_hostport("listen.mx", self.settings.listen.mx)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, host=host, port=port, reuse_address=True)
        await self.delivery.start()
        self.log.info("relay.started", listen=f"{host}:{self.port}", store=self.settings.store.path,
                      delivery=self.settings.delivery.mode, config=self.settings.source)

    def _protocol(self) -> RelaySMTP:
        s = self.settings
        return RelaySMTP(self.handler, hostname=s.relay.hostname, ident=BANNER_IDENT,
                         data_size_limit=s.limits.message_size, enable_SMTPUTF8=False, decode_data=False,
                         timeout=s.limits.command_timeout)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def reload(self) -> bool:
        """Re-read the configuration; a broken one is refused and the old stays."""
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            self.log.error("relay.reload_failed", error=str(exc))
            return False
        if new.listen != self.settings.listen or new.store != self.settings.store:
            self.log.warning("relay.reload_failed", error="listen and store changes need a restart; kept the rest")
        self.settings = new
        assert self.pipeline is not None and self.delivery is not None
        self.pipeline.reconfigure(new)
        self.delivery.reconfigure(new)
        self.log.info("relay.reloaded", config=new.source)
        return True

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop accepting, let transactions in flight finish (bounded), close."""
        self.log.info("relay.stopping")
        if self.server is not None:
            self.server.close()
        if self.handler is not None:
            try:
                await asyncio.wait_for(self.handler.idle.wait(), timeout=drain_seconds)
            except asyncio.TimeoutError:
                pass
            for session in list(self.handler.sessions):
                if session.transport is not None:
                    session.transport.close()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.store is not None:
            await self.store.close()
        self.log.info("relay.stopped")


async def serve(settings: Settings, config_path: str | None = None) -> int:
    daemon = RelayDaemon(settings, config_path)
    try:
        await daemon.start()
    except StorageError as exc:
        daemon.log.error("relay.stopped", error=f"cannot open the store: {exc}")
        return 1
    except OSError as exc:
        daemon.log.error("relay.stopped", error=f"cannot listen on {settings.listen.mx}: {exc.strerror or exc}")
        if daemon.store:
            await daemon.store.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    await stop.wait()
    await daemon.stop()
    return 0

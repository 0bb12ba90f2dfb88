"""The SMTP face of the relay: a thin aiosmtpd handler plus the daemon's life cycle.

Each hook translates SMTP into a call on relay.pipeline and passes the reply
back.  aiosmtpd's defaults that leak or mislead are overridden here: the
banner names no software, unexpected exceptions answer `451 4.3.0` with no
detail (never `500 Error: (Class) text`), and aiosmtpd's bare replies for size
and line limits get the enhanced status codes RFC 3463 asks for.

Two listeners share one handler:

* the MX (`listen.mx`): mail to aliases from anywhere; STARTTLS offered, never
  required (RFC 3207 section 4), AUTH never offered;
* submission (`listen.submission`, optional): sellers authenticate (STARTTLS
  first, then AUTH PLAIN or LOGIN with seller id and password) and may then
  write to the buyer aliases of their own orders from any address.

The session guards of THREATS section B live in `RelaySMTP`: connection caps
at accept time, a session time cap, an error budget, a transaction cap, a
NOOP/RSET/VRFY budget, the directory-harvest tarpit and the AUTH limits.  Every
`421` the relay sends closes the connection (RFC 5321 section 3.8).

Life cycle (systemd `Type=notify`, relay.notify): READY=1 once the store is
open and every listener is bound; WATCHDOG=1 from the event loop; SIGHUP sends
RELOADING=1, re-reads the configuration (a broken one is refused, the old one
stays) and READY=1 again; SIGTERM sends STOPPING=1, stops accepting, lets
DATA transactions in progress finish (bounded by `limits.drain_timeout`) and
exits 0.  A client either got its `250` (the message is stored and is
delivered after the next start) or did not (nothing of it is stored).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import gc
import inspect
import logging
import os
import re
import signal
import socket
import time
from base64 import b64decode
from collections.abc import Iterator, Mapping
from email._header_value_parser import get_addr_spec
from email.errors import HeaderParseError
from email.parser import BytesHeaderParser
from typing import Any, Callable, NamedTuple

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException, syntax
from prometheus_client import Counter

from relay import notify
from relay.affinity import allowed_cpus
from relay.aliases import AddressError, normalize_address, split_address
from relay.chunks import Chunks
from relay.config import ConfigError, Settings, check_files, load_settings, parse_hostport, settings_to_json
from relay.delivery import Delivery
from relay.limits import ConnectionLimiter, RateLimiter, ip_key, tarpit_delay
from relay.logs import get_logger
from relay.metrics import Metrics, start_http
from relay.parsing import PARSE_POLICY
from relay.passwords import verify_password
from relay.pipeline import Outcome, Pipeline, Recipient
from relay.rewrite import parsable_address_header
from relay.sender_auth import ClientInfo
from relay.sharing import BACKLOG, ListenError, Shared, bind
from relay.smtpdata import DataState, read_data
from relay.store import QueueEntry, StorageError, Store
from relay.tasks import cancel_and_wait
from relay.tls import server_context
from relay.workers import Workers, acceptor_command

BANNER_IDENT = "ESMTP ready"
INTERNAL_ERROR = "451 4.3.0 Internal error, please try again later"
LOCAL_PART_LIMIT = 64  # RFC 5321 section 4.5.3.1.1
PATH_LIMIT = 256  # RFC 5321 section 4.5.3.1.3

# Session guards (THREATS section B).  Every 421 closes the connection.
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
SESSION_TOO_LONG = "421 4.4.2 Session time limit exceeded, closing connection"
COMMAND_TIMEOUT = "421 4.4.2 Timeout waiting for a command, closing connection"
DATA_TOO_SLOW = "421 4.4.2 Message data arriving too slowly, closing connection"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_TRANSACTIONS = "421 4.7.0 Too many transactions in one session, closing connection"
HARVEST = "421 4.7.0 Too many unknown recipients, try again later"
TLS_ACTIVE = "503 5.5.1 TLS is already active"

# AUTH (RFC 4954), on the submission listener only (THREATS #18).
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_TOO_MANY = "421 4.7.0 Too many failed authentication attempts, closing connection"
AUTH_RATE_LIMITED = "454 4.7.0 Too many failed authentication attempts from your address, try again later"
AUTH_TEMPORARY = "454 4.7.0 Temporary authentication failure, please try again later"
AUTH_NOT_HERE = "502 5.5.1 AUTH is not available on this port"
SUBMISSION_NEEDS_SENDER = "501 5.1.7 The submission port needs a sender address"
SUBMISSION_OWN_ORDERS_ONLY = ("550 5.7.1 The submission port accepts mail only to the buyer aliases "
                              "of your own orders")

# aiosmtpd's other commands (EHLO, HELO, MAIL, RCPT, DATA, QUIT, STARTTLS, AUTH)
# are bounded by other guards; this only stops a runaway client.
OTHER_COMMAND_LIMIT = 1000
PRUNE_INTERVAL = 60.0  # seconds between rate-limiter clean-ups
METRICS_REPORT_INTERVAL = 1.0  # seconds between an acceptor's counter reports to the primary
METRICS_DATAGRAM_MAX = 1 << 16  # bytes; a report with every label in use is a few KB
PIPELINE_GRACE = 10.0  # after the drain: a message being committed is not cut off

# aiosmtpd's fixed replies, given enhanced status codes (RFC 3463).
_REPLY_TRANSLATIONS = {
    "552 Error: Too much mail data": "552 5.3.4 Message too big for this system",
    "552 Error: message size exceeds fixed maximum message size": "552 5.3.4 Message too big for this system",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.6)",
    "553 5.1.3 Error: malformed address": "553 5.1.3 Malformed address",
    # THREATS #57: SMTPUTF8 is not offered, so a client may neither ask for it
    # (RFC 5321 section 4.1.1.11: 555 for a parameter not implemented) nor
    # send non-ASCII in a command (RFC 6531 section 3.5).
    "501 Error: SMTPUTF8 disabled": "555 5.5.4 SMTPUTF8 is not offered by this server",
    "500 Error: strict ASCII mode": "500 5.6.7 Non-ASCII characters in a command need SMTPUTF8, "
                                    "which this server does not offer",
}
_SIZE_REPLIES = {"552 Error: Too much mail data", "552 Error: message size exceeds fixed maximum message size"}
# RFC 2034: EHLO offers ENHANCEDSTATUSCODES, so every 2xx, 4xx and 5xx reply
# but the greeting and the HELO/EHLO answer carries one.  Ours are written
# with theirs; aiosmtpd's ("250 OK", "503 Error: need MAIL command", "221
# Bye" ...) get the class's usual code (RFC 3463, as Postfix answers).
_HAS_ENHANCED_CODE = re.compile(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3}(?: |$)")  # (on one-line replies)
_USUAL_ENHANCED_CODE = {
    "214": "2.0.0", "220": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "252": "2.0.0",
    "421": "4.3.0", "450": "4.0.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0",
    "535": "5.7.8", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}
_CALL_LIMIT_REPLY = re.compile(r"421 4\.7\.0 \w+ sent too many times")
_REASON_IN_REPLY = re.compile(r"\[(\w+)\]")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")  # a reply line is printable US-ASCII (RFC 5321 section 4.2)


class _Reply(NamedTuple):
    """A reply as it goes out, and what sending it means for the session."""
    octets: bytes
    error: bool  # a 5xx: counts toward limits.error_limit
    closes: bool  # a 421: the connection closes after it
    size_refusal: bool  # aiosmtpd refused a message for its size
    call_limit: bool  # aiosmtpd's answer to a command sent too many times


@functools.lru_cache(maxsize=512)
def _reply(status: str, hostname: str = "") -> _Reply:
    """`status` as the client gets it: aiosmtpd's wording replaced where it
    is not ours (_REPLY_TRANSLATIONS), an enhanced status code where it has
    none (the greeting and the answer to HELO, which name `hostname`, go as
    they are), every line printable US-ASCII, CRLF at the end.  Worked out
    once per distinct reply: nearly every reply is one of a few constant
    strings, and push sends seven a message."""
    original = status
    status = _REPLY_TRANSLATIONS.get(status, status)
    if status.startswith("500 Error: (") or status.startswith("500 Error: Cannot describe"):
        status = INTERNAL_ERROR
    elif status.startswith('500 Error: command "'):
        # aiosmtpd echoes the unknown verb, control characters included
        # (a vertical tab splits the reply line for some clients).
        status = "500 5.5.1 Command not recognized"
    if status[3:4] == " " and not _HAS_ENHANCED_CODE.match(status) and status[:3] in _USUAL_ENHANCED_CODE \
            and status != f"250 {hostname}" and not status.startswith(f"220 {hostname} "):
        status = f"{status[:4]}{_USUAL_ENHANCED_CODE[status[:3]]} {status[4:]}"
    if status.startswith("250-"):  # the EHLO reply, written at once (handle_EHLO)
        status = "\r\n".join(_UNPRINTABLE.sub("?", line) for line in status.split("\r\n"))
    else:  # one line, whatever text went into it
        status = _UNPRINTABLE.sub("?", status)
    return _Reply((status + "\r\n").encode("ascii"), status.startswith("5"), status.startswith("421"),
                  original in _SIZE_REPLIES, _CALL_LIMIT_REPLY.match(status) is not None)


class StartError(Exception):
    """The daemon cannot start (a listener cannot bind); the message says which.
    `configuration`: because of what the configuration says (exit 2)."""

    def __init__(self, message: str, configuration: bool = False):
        super().__init__(message)
        self.configuration = configuration


# An envelope path in its plainest form, `<dot-atom@hostname>`: what nearly
# every client sends.  The stdlib's header parser that aiosmtpd (and the
# defect check below) use for any path costs more than the rest of a MAIL
# command; for this form its answer is known, so the parser is kept for the
# others (quoted strings, comments, source routes, literals, odd characters).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
_PLAIN_PATH = re.compile(rf"<({_PLAIN_ADDRESS.pattern})>")


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, parameters) for a plain `<local@domain> PARAMS` argument,
    exactly as aiosmtpd's parser would give them; None for anything else."""
    match = _PLAIN_PATH.match(arg)
    if match is None:
        return None
    rest = arg[match.end():]
    if rest:
        params = rest.lstrip(" ")
        if params == rest or params[:1].isspace() or params.startswith("("):
            return None
        rest = params
    return match.group(1), rest


_LEVEL_OF_METHOD = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                    "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_if_enabled(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd logs every command line twice (DEBUG and INFO) through
    sanitized_log, which masks AUTH secrets in its arguments before the
    logger looks at its level: a regular expression and a list, 1.4 us a
    line, ten lines a message, all dropped (relay.logs sets aiosmtpd's
    logger to WARNING).  The level is looked at first here; a line that is
    kept is masked and written as before."""
    logger = getattr(func, "__self__", None)
    level = _LEVEL_OF_METHOD.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log_if_enabled  # (looked up by name at each call)


@functools.cache
def _dispatch_names(cls: type) -> list[str]:
    """The attributes aiosmtpd dispatches to (`smtp_*`, `auth_*`, `handle_*`).

    aiosmtpd's SMTP.__init__ builds its command, AUTH and hook tables on
    every connection from dir() and inspect.getmembers, which reads every
    attribute: about 0.2 ms per connection, per message under one-connection-
    per-message load.  The names are fixed per class, so our classes answer
    dir() with just these, computed once.
    """
    return sorted(n for n in dir(cls) if n.startswith(("smtp_", "auth_", "handle_")))


class _BoundOnLookup(Mapping):
    """One connection's view of its listener's table of command methods or
    AUTH mechanisms (aiosmtpd's `_smtp_methods`, `_auth_methods`): the
    model's entries, bound to the connection as they are looked up.

    Binding the whole table on every connection (15 commands, and a
    namedtuple copy per built-in mechanism) cost more than the commands a
    one-message session then sends; aiosmtpd reads the tables only with
    get, `in`, [] and the iteration of HELP and EHLO."""

    __slots__ = ("_owner", "_model", "_bind")

    def __init__(self, owner: "RelaySMTP", model: Mapping[str, Any], bind: Callable[[Any, "RelaySMTP"], Any]):
        self._owner, self._model, self._bind = owner, model, bind

    def __getitem__(self, name: str) -> Any:
        return self._bind(self._model[name], self._owner)

    def get(self, name: str, default: Any = None) -> Any:  # (Mapping's would raise and catch a KeyError)
        entry = self._model.get(name)
        return default if entry is None else self._bind(entry, self._owner)

    def __contains__(self, name: object) -> bool:
        return name in self._model

    def __iter__(self) -> Iterator[str]:
        return iter(self._model)

    def __len__(self) -> int:
        return len(self._model)


def _bind_method(method: Any, owner: "RelaySMTP") -> Any:
    return method.__func__.__get__(owner)


def _bind_mechanism(impl: Any, owner: "RelaySMTP") -> Any:
    return impl._replace(method=impl.method.__func__.__get__(owner)) if impl.is_builtin else impl


# C0 controls but the tab, and DEL: no command argument holds one (RFC 5321
# section 4.1.2); a bare CR is the one that matters (THREATS #4).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_IN_COMMAND = "501 5.5.2 Syntax error: the command holds a control character (a bare CR, a NUL)"


def _refusing_control_characters(command: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """aiosmtpd's `command`, which answers 501 for an argument with a
    control character in it.  aiosmtpd ends a command line at its LF and
    strips the CRs before it; one elsewhere stayed in the argument, and the
    address or host name was taken with the CR dropped: a probe's
    `MAIL FROM:<a@b.example\\r>` got 250 and its message was relayed."""

    @functools.wraps(command)  # (with aiosmtpd's __smtp_syntax__ for HELP)
    def refusing(self: "RelaySMTP", arg: str) -> Any:
        # A plain function that returns what aiosmtpd awaits: no coroutine of
        # its own on every command.
        if arg and _CONTROL_CHARACTER.search(arg):
            return self.push(CONTROL_IN_COMMAND)
        return command(self, arg)

    return refusing


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with our replies and the session guards.

    Per-connection state lives here rather than in aiosmtpd's `Session`,
    which STARTTLS replaces (RFC 3207 section 4.2), so that no budget is reset
    by upgrading the connection.
    """

    def __init__(self, handler: "RelayHandler", daemon: "RelayDaemon | None" = None, listener: str = "mx",
                 **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.relay_handler = handler
        self.daemon = daemon
        self.listener = listener
        self._new_connection_state()

    def like_this(self) -> "RelaySMTP":
        """A protocol for a new connection, made as this one was made.

        aiosmtpd's SMTP.__init__ builds its tables of command methods, AUTH
        mechanisms and hooks on every connection with inspect.getmembers and
        inspect.signature, and formats a log line of the mechanisms: 58 µs of
        the event loop's time per connection, about 4 % of a message's CPU
        under one-connection-per-message load.  The tables depend only on
        the class, the handler and the settings, so RelayDaemon builds one
        protocol that way per listener and setting, never connects it, and
        copies it for each connection.  Every copy gets its own stream state
        (asyncio.StreamReaderProtocol.__init__, as SMTP.__init__ calls it),
        its command and built-in AUTH methods bound to itself (as they are
        looked up: _BoundOnLookup), and fresh per-connection state.
        Everything else in the instance is set once by SMTP.__init__ and
        only replaced, never changed in place, during a session
        (tests/test_protocol_copies.py checks both)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        asyncio.StreamReaderProtocol.__init__(
            clone, asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=clone._cb_client_connected, loop=self.loop)
        clone._smtp_methods = _BoundOnLookup(clone, self._smtp_methods, _bind_method)
        clone._auth_methods = _BoundOnLookup(clone, self._auth_methods, _bind_mechanism)
        clone._new_connection_state()
        return clone

    def _new_connection_state(self) -> None:
        self.peer_ip = ""
        self.refused = False  # closed at accept time (connection caps)
        self.admitted = False  # holds a ConnectionLimiter slot
        self.in_data = False  # between the DATA command and its final reply
        self.handler_busy = False  # the pipeline is working on this session's message
        self.expire_pending = False  # the session cap fell during DATA: close after the reply
        self.errors = 0
        self.transactions = 0
        self.auth_failures = 0
        self.seller_id: str | None = None  # set by a successful AUTH (submission)
        self.transaction_started: float | None = None
        self.data_started = 0.0  # loop time of the DATA command
        self.data_seen = 0.0  # loop time of the last bytes received in DATA
        self.data_bytes = 0  # bytes received since the DATA command
        self._session_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._command_deadline = 0.0  # loop time by which the client must say something (_reset_timeout)
        self._timer_due: float | None = None  # when the command timer, if one is set, comes due

    @property
    def submission(self) -> bool:
        return self.listener == "submission"

    def __dir__(self) -> list[str]:
        return _dispatch_names(type(self))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = plain_path(arg)
        if plain is not None and len(plain[0].rpartition("@")[0]) <= (self.local_part_limit or LOCAL_PART_LIMIT):
            return plain
        return super()._getaddr(arg)

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the STARTTLS upgrade of this same connection
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        d = self.daemon
        if d is not None:
            if d.stopping:
                self._refuse(transport, SHUTTING_DOWN, "shutting_down")
                return
            if not d.connections.try_acquire(self.peer_ip):
                self._refuse(transport, TOO_MANY_CONNECTIONS, "too_many_connections")
                return
            self.admitted = True
            d.metrics.session_opened()
            self._session_timer = asyncio.get_running_loop().call_later(
                d.settings.limits.session_timeout, self._session_expired)
        self.relay_handler.sessions.add(self)
        super().connection_made(transport)

    def _refuse(self, transport: asyncio.BaseTransport, reply: str, reason: str) -> None:
        """RFC 5321 section 3.1: a server may answer the greeting with 421 and close."""
        self.refused = True
        transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
        transport.close()
        if self.daemon is not None:
            self.daemon.session_dropped(reason, self.listener)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return  # aiosmtpd never saw this connection
        if not self._lost:  # aiosmtpd itself calls this twice after a failed TLS handshake
            self._lost = True
            if self._session_timer is not None:
                self._session_timer.cancel()
            self.relay_handler.sessions.discard(self)
            if self.admitted and self.daemon is not None:
                self.daemon.connections.release(self.peer_ip)
                self.daemon.metrics.session_closed()
                self.daemon.data_changed()
            first = True
        else:
            first = False
            if self._handler_coroutine is None:
                return  # over and released (_break_cycles): aiosmtpd's own part would find nothing
        super().connection_lost(error)
        if first and self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._break_cycles)

    def eof_received(self) -> bool | None:
        if self._handler_coroutine is None:  # the session is over (_break_cycles)
            return False
        return super().eof_received()

    def _break_cycles(self, _task: asyncio.Task) -> None:
        """Once the session's task is over, drop the references that make a
        closed session a reference cycle: aiosmtpd's tables of bound methods,
        its task (whose CancelledError's traceback holds this object) and
        the stream pair.  Reference counting then frees the session at once; left as
        cycles, every session survived into the oldest GC generation, and the
        full collections that cleaned them up took 100-250 ms each under load,
        the tail of the latency distribution (measured: bench/gc_probe.py)."""
        self._smtp_methods = {}
        self._handle_hooks = {}
        self._auth_methods = {}
        self._handler_coroutine = None
        self._session_timer = None  # (cancelled timers hold no callback: aiosmtpd's stays for its asserts)
        # The stream pair points back at this protocol.
        self._reader = self._writer = None
        self._stream_writer = None
        self._transport = None
        self._client_connected_cb = None

    def drop(self, reply: str, reason: str) -> None:
        """Say `reply` (a 421) and close, whatever the session is doing."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
        transport.close()
        if self.daemon is not None:
            self.daemon.session_dropped(reason, self.listener)

    def note_drop(self, reason: str) -> None:
        """A hook is about to return a 421 (which `push` follows with a close)."""
        if self.daemon is not None:
            self.daemon.session_dropped(reason, self.listener)

    def _session_expired(self) -> None:
        self._session_timer = None
        if self.in_data:
            self.expire_pending = True  # never cut a transaction off between its data and its reply
        else:
            self.drop(SESSION_TOO_LONG, "session_time")

    def data_received(self, data: bytes) -> None:
        if self.in_data:
            self.data_bytes += len(data)
            self.data_seen = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The client has `duration` (the command timeout by default) from now.

        aiosmtpd cancels its timer and makes a new one on every command (2.4 us
        with uvloop, six times a message).  Here the deadline is a number, and
        the timer, once made, is only made again when it comes due before the
        deadline that holds by then, or when a deadline earlier than its own is
        set (the DATA pace, relay's _check_data_pace).  `_timeout_handle`
        stays aiosmtpd's: connection_lost cancels whatever timer it holds."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._command_deadline = deadline
        if self._timer_due is None or deadline < self._timer_due:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._timer_due = deadline
            self._timeout_handle = self.loop.call_at(deadline, self._command_timer_due)

    def _command_timer_due(self) -> None:
        self._timer_due = None
        remaining = self._command_deadline - self.loop.time()
        if remaining > 0:  # a command came since the timer was set
            self._reset_timeout(remaining)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently after `timeout` seconds without a command;
        # RFC 5321 section 4.5.3.2 lets us say 421 first.  The pipeline
        # committing a message is not a silent client: wait for it.
        if self.handler_busy:
            self._reset_timeout()
            return
        if self.in_data:
            self._check_data_pace()
            return
        self.drop(COMMAND_TIMEOUT, "command_timeout")

    def _data_deadline(self) -> float:
        """When a client in DATA has been too slow (THREATS #16).

        aiosmtpd's timer is reset by commands only, so without this a
        message larger than a link can carry in `command_timeout` would be cut
        off, while a slow-loris client dribbling a byte a minute would be let
        be for the whole time.  Postfix's rule instead: silent for
        `command_timeout` is too slow, and so is falling below
        `min_data_rate` bytes a second on average once `command_timeout` of
        grace has passed.
        """
        limits = self.daemon.settings.limits if self.daemon is not None else None
        timeout = limits.command_timeout if limits is not None else self._timeout_duration
        deadline = max(self.data_started, self.data_seen) + timeout
        rate = limits.min_data_rate if limits is not None else 0
        if rate > 0:
            deadline = min(deadline, self.data_started + timeout + self.data_bytes / rate)
        return deadline

    def _check_data_pace(self) -> None:
        remaining = self._data_deadline() - self.loop.time()
        if remaining > 0.001:
            self._reset_timeout(remaining)
        else:
            self.drop(DATA_TOO_SLOW, "data_rate")

    # --------------------------------------------------------------- replies

    async def push(self, status: Any) -> None:
        if not isinstance(status, str):
            await super().push(status)
            return
        reply = _reply(status, self.hostname)
        close, over_budget = reply.closes, False
        d = self.daemon
        if d is not None:
            if reply.size_refusal:
                d.metrics.message_rejected("message_too_large")
            if reply.call_limit:
                d.session_dropped("command_limit", self.listener)
            if reply.error:
                self.errors += 1
                over_budget = self.errors >= d.settings.limits.error_limit
        # (aiosmtpd's push, without its debug line: the octets, then the wait while the buffer is full)
        self._writer.write(reply.octets)
        await self._writer.drain()
        if over_budget and not close:
            # THREATS #15: after N errors, 421 and close (Postfix's hard limit is 20).
            await super().push(TOO_MANY_ERRORS)
            self.note_drop("error_limit")
            close = True
        if close and self.transport is not None:
            self.transport.close()

    # -------------------------------------------------------------- commands

    smtp_HELO = _refusing_control_characters(SMTP.smtp_HELO)
    smtp_EHLO = _refusing_control_characters(SMTP.smtp_EHLO)
    smtp_MAIL = _refusing_control_characters(SMTP.smtp_MAIL)
    smtp_RCPT = _refusing_control_characters(SMTP.smtp_RCPT)
    smtp_VRFY = _refusing_control_characters(SMTP.smtp_VRFY)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        self.data_started = self.data_seen = self.loop.time()
        self.data_bytes = 0
        try:
            await self._data(arg)
        finally:
            self.in_data = False
            d = self.daemon
            if d is not None:
                d.data_changed()
                if d.stopping:
                    self.drop(SHUTTING_DOWN, "shutdown")
                elif self.expire_pending:
                    self.drop(SESSION_TOO_LONG, "session_time")

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA, with the block read in chunks (relay.smtpdata)
        instead of a line at a time; replies and states are aiosmtpd's."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        state, content = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        if state is DataState.ABANDONED:
            return  # the client went away before the end of its data
        if state is not DataState.NOMINAL:
            reply, reason = DATA_REFUSALS[state]
            if isinstance(self.event_handler, RelayHandler):
                reply = await self.event_handler.data_refused(self.envelope, reason, reply)
            self._set_post_data_state()
            await self.push(reply)
            return
        assert content is not None
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        # RFC 3207 section 4.2: once TLS is up, STARTTLS is not offered again.
        if self._tls_protocol is not None:
            await self.push(TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.submission or self.daemon is None:
            await self.push(AUTH_NOT_HERE)  # never AUTH on the MX (THREATS #18)
            return
        ready_for_auth = (self._tls_protocol is not None and self.session is not None
                          and self.session.extended_smtp and not self.session.authenticated and arg)
        if ready_for_auth and self.daemon.auth_limiter.blocked(ip_key(self.peer_ip)):
            self.daemon.metrics.message_rejected("rate_limited")
            self.auth_failures += 1
            await self.push(AUTH_RATE_LIMITED)
        else:
            await super().smtp_AUTH(arg)
        if self.auth_failures >= self.daemon.settings.limits.auth_failures and \
                self.session is not None and not self.session.authenticated:
            self.note_drop("auth_failures")
            await self.push(AUTH_TOO_MANY)

    # aiosmtpd calls a synchronous authenticator; ours needs the store and
    # scrypt (off the event loop), so the two mechanisms are re-implemented
    # here, with aiosmtpd's parsing, around an asynchronous check.

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return self._auth_malformed()
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except Exception:
                await self.push("501 5.5.2 Can't decode base64")
                return self._auth_malformed()
        try:
            _authz, login, password = blob.split(b"\x00")  # RFC 4616
        except ValueError:
            await self.push("501 5.5.2 Can't split auth value")
            return self._auth_malformed()
        return await self._check_credentials(login, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return self._auth_malformed()
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except Exception:
                await self.push("501 5.5.2 Can't decode base64")
                return self._auth_malformed()
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return self._auth_malformed()
        return await self._check_credentials(login, password)

    def _auth_malformed(self) -> AuthResult:
        """An aborted or garbled exchange (already answered 501) counts as a failure."""
        self._auth_failed()
        return AuthResult(success=False, handled=True)

    def _auth_failed(self) -> None:
        self.auth_failures += 1
        if self.daemon is not None:
            self.daemon.auth_limiter.hit(ip_key(self.peer_ip))
            self.daemon.metrics.message_rejected("auth_failed")
            self.daemon.log.info("session.refused", reason="auth_failed", listener=self.listener)

    async def _check_credentials(self, login: bytes, password: bytes) -> AuthResult:
        d = self.daemon
        assert d is not None and d.store is not None
        try:
            seller_id: str | None = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            seller_id, secret = None, ""
        try:
            stored = await d.store.seller_password(seller_id) if seller_id else None
        except StorageError:
            await self.push(AUTH_TEMPORARY)
            return AuthResult(success=False, handled=True)
        # The same scrypt work for unknown sellers, sellers without a password
        # and wrong passwords: one reply, one timing (relay.passwords).
        ok = await asyncio.to_thread(verify_password, secret, stored)
        if not ok:
            self._auth_failed()
            return AuthResult(success=False, handled=False, message=AUTH_INVALID)
        self.seller_id = seller_id
        d.log.info("session.authenticated", seller=seller_id, listener=self.listener)
        return AuthResult(success=True, auth_data=seller_id)


# aiosmtpd's replies to a DATA block it will not take (translated by
# _reply), and the reason the audit records when the block was for an alias.
DATA_REFUSALS = {
    DataState.TOO_LONG: ("500 Line too long (see RFC5321 4.5.3.1.6)", "malformed"),
    DataState.TOO_MUCH: ("552 Error: Too much mail data", "message_too_large"),
}


class RelayHandler:
    def __dir__(self) -> list[str]:
        return _dispatch_names(type(self))

    def __init__(self, pipeline: Pipeline, daemon: "RelayDaemon | None" = None):
        self.pipeline = pipeline
        self.daemon = daemon
        self.log = get_logger()
        self.sessions: set[RelaySMTP] = set()
        self.transactions = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has this hook
        if getattr(server, "listener", "mx") != "submission":
            # aiosmtpd offers AUTH on any TLS session; the MX never authenticates anyone.
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        # aiosmtpd takes pipelined commands as they come (RFC 2920) and
        # every reply carries an enhanced status code (RFC 2034, _reply).
        responses[-1:-1] = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        # One write for the whole multi-line reply: aiosmtpd pushes each list
        # item on its own, a send() per line.
        return ["\r\n".join(responses)]

    # aiosmtpd runs inspect.signature() on this hook for every connection
    # (to tell its two EHLO hook forms apart); a precomputed __signature__
    # spares that walk (see _dispatch_names).
    handle_EHLO.__signature__ = inspect.signature(handle_EHLO)  # type: ignore[attr-defined]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        guarded = isinstance(server, RelaySMTP) and server.daemon is not None
        if guarded:
            server.transactions += 1
            if server.transactions > server.daemon.settings.limits.transactions:  # THREATS #19
                server.note_drop("transaction_limit")
                return TOO_MANY_TRANSACTIONS
        # aiosmtpd hands the null reverse-path (bounces, RFC 5321 section
        # 4.5.5) over as "<>"; it stays that way so a nested MAIL is still seen.
        null_sender = address in ("", "<>")
        if not null_sender and _address_defect(address):
            self._count_refusal("bad_address")
            return "553 5.1.7 The sender address is malformed"
        if null_sender and getattr(server, "listener", "mx") == "submission":
            return SUBMISSION_NEEDS_SENDER
        # DSN parameters (NOTIFY, ORCPT, RET, ENVID) are accepted and never
        # forwarded: far-side reports would name real addresses (THREATS #32).
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.relay_recipient = None  # type: ignore[attr-defined]
        if guarded:
            server.transaction_started = time.perf_counter()
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        defect = _address_defect(address)
        if defect:
            self._count_refusal("bad_address")
            return f"501 5.1.3 Bad recipient address syntax: {defect}"
        submission = getattr(server, "listener", "mx") == "submission"
        recipient, reply = await self.pipeline.resolve_recipient(address)
        if recipient is None:
            self.log.info("rcpt.refused", reply=reply[:9])
            if reply.startswith("550 5.1.1") and not submission and isinstance(server, RelaySMTP):
                reply = await self._tarpit(server, reply)
            self._count_refusal(_reason_for_reply(reply))
            return reply
        current: Recipient | None = getattr(envelope, "relay_recipient", None)
        if current is not None:
            if current.address == recipient.address:
                return "250 2.1.5 OK (duplicate recipient ignored)"
            # One exchange per transaction: each alias has its own checks and reply.
            self._count_refusal("too_many_recipients")
            return "452 4.5.3 Too many recipients; send to each alias in its own transaction"
        if submission:
            seller_id = getattr(server, "seller_id", None)
            if recipient.kind != "alias":
                self._count_refusal("sender_not_authorized")
                return SUBMISSION_OWN_ORDERS_ONLY
            if recipient.role != "buyer" or seller_id is None or recipient.order.seller_id != seller_id:
                # Another seller's order, or a seller alias: audited like any refusal of a known alias.
                reply = await self.pipeline.refuse_at_rcpt(recipient, envelope.mail_from or "")
                self._count_refusal(_reason_for_reply(reply))
                return reply
        elif recipient.kind == "alias":
            recipient, authorized = await self.pipeline.authorized_at_rcpt(recipient, envelope.mail_from or "")
            if not authorized:
                reply = await self.pipeline.refuse_at_rcpt(recipient, envelope.mail_from or "")
                self._count_refusal(_reason_for_reply(reply))
                return reply
        envelope.relay_recipient = recipient  # type: ignore[attr-defined]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def _tarpit(self, server: RelaySMTP, reply: str) -> str:
        """Directory harvest (THREATS #33): count unknown recipients per
        client, answer later and later, then 421 and close."""
        d = server.daemon
        if d is None:
            return reply
        key = ip_key(server.peer_ip)
        if not d.harvest.hit(key):
            server.note_drop("harvest")
            return HARVEST
        lim = d.settings.limits
        delay = tarpit_delay(d.harvest.count(key), free=lim.tarpit_free, step=lim.tarpit_step,
                             max_delay=lim.tarpit_max)
        if delay > 0:
            await asyncio.sleep(delay)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient: Recipient | None = getattr(envelope, "relay_recipient", None)
        if recipient is None:
            return "503 5.5.1 Need RCPT command"
        self.transactions += 1
        self.idle.clear()
        guarded = isinstance(server, RelaySMTP)
        if guarded:
            server.handler_busy = True
        try:
            content = envelope.original_content
            if recipient.kind == "alias" and getattr(server, "listener", "mx") == "submission":
                recipient = self._as_authenticated_seller(recipient, envelope.mail_from or "", content)
            client = ClientInfo.from_session(session, authenticated=getattr(server, "listener", "mx") == "submission")
            outcome = await self.pipeline.process(envelope.mail_from or "", recipient, content, client=client)
            self._count_outcome(outcome)
            return outcome.reply
        finally:
            self.transactions -= 1
            if self.transactions == 0:
                self.idle.set()
            if guarded:
                server.handler_busy = False
                if server.transaction_started is not None and self.daemon is not None:
                    self.daemon.metrics.observe_transaction(time.perf_counter() - server.transaction_started)
                server.transaction_started = None

    async def data_refused(self, envelope: Envelope, reason: str, reply: str) -> str:
        """A DATA block refused before it was read whole (too large, a line
        too long): for an alias, still an exchange, so audited (CONTRACT:
        every message to a known alias is), without its octets, which were
        never kept.  The reply to send: `reply`, or a 451 if the audit
        could not be written."""
        recipient: Recipient | None = getattr(envelope, "relay_recipient", None)
        if recipient is None or recipient.kind != "alias":
            return reply
        return await self.pipeline.refuse_data(recipient, envelope.mail_from or "", reason, reply)

    def _as_authenticated_seller(self, recipient: Recipient, mail_from: str, content: bytes) -> Recipient:
        """An authenticated seller writes from any address.

        The pipeline checks the envelope sender and the header From against
        the seller's registered addresses.  For this one transaction the
        addresses the seller actually used are added to that list, so the
        pipeline's checks pass, the audit keeps the real envelope sender, and
        the rewriter scrubs those addresses from the message as the seller's
        own (they are replaced by the seller alias, never shown to the buyer).
        The order's buyer and the relay's own domain are never added: such a
        message is still refused as `sender_not_authorized`.
        """
        order = recipient.order
        assert recipient.seller is not None and order is not None
        own_domains = {self.pipeline.settings.relay.domain, self.pipeline.settings.relay.hostname}
        extra: list[str] = []
        for candidate in (mail_from, _header_from_address(content, self.pipeline.settings.limits.header_total)):
            if not candidate:
                continue
            try:
                address = normalize_address(candidate)
            except AddressError:
                continue
            if address in recipient.seller_addresses() or address in extra or address == order.buyer_address \
                    or split_address(address)[1] in own_domains:
                continue
            extra.append(address)
        if not extra:
            return recipient
        return dataclasses.replace(recipient, extra_senders=recipient.extra_senders + tuple(extra))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, StorageError):
            self._count_refusal("storage_trouble")
            return "452 4.3.1 Insufficient system storage" if error.full else \
                "451 4.3.0 Temporary storage trouble, please try again later"
        if isinstance(error, TLSSetupException):
            self.log.info("session.refused", reason="tls_handshake_failed")
            return INTERNAL_ERROR  # aiosmtpd closes the connection without sending it
        self.log.error("message.error", error=type(error).__name__)
        self._count_refusal("internal_error")
        return INTERNAL_ERROR

    # --------------------------------------------------------------- metrics

    def _count_refusal(self, reason: str) -> None:
        if self.daemon is not None:
            self.daemon.metrics.message_rejected(reason)

    def _count_outcome(self, outcome: Outcome) -> None:
        if self.daemon is None:
            return
        if outcome.verdict == "accepted":
            self.daemon.metrics.message_accepted()
        elif outcome.verdict == "rejected":
            found = _REASON_IN_REPLY.search(outcome.reply)
            reason = found.group(1) if found else (outcome.findings[0].code if outcome.findings else "other")
            self.daemon.metrics.message_rejected(reason)
        else:  # deferred: the store could not take it (451 / 452), or DNS failed sender authentication
            self.daemon.metrics.message_rejected(outcome.findings[0].code if outcome.findings else "storage_trouble")


def _reason_for_reply(reply: str) -> str:
    """The reason label of a refusal at RCPT, from the reply the pipeline chose."""
    found = _REASON_IN_REPLY.search(reply)
    if found:
        return found.group(1)
    if reply.startswith("550 5.1.1"):
        return "unknown_recipient"
    if reply.startswith("550 5.7.1"):
        return "foreign_domain"
    if reply.startswith("421"):
        return "harvest"
    if reply.startswith(("451", "452 4.3")):
        return "storage_trouble"
    return "other"


def _header_from_address(content: bytes, limit: int) -> str | None:
    """The one address of the header From, if it parses cleanly; else None
    (the pipeline then refuses the message itself)."""
    end = -1
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = content.find(sep, 0, limit + 4)
        if pos != -1 and (end == -1 or pos < end):
            end = pos
    head = content[:end] if end != -1 else content[:limit]
    try:
        headers = BytesHeaderParser(policy=PARSE_POLICY).parsebytes(head + b"\r\n\r\n")
        if not parsable_address_header(headers, "From"):  # (THREATS #49; the pipeline refuses it)
            return None
        header = headers.get("From")
        if header is None or header.defects or len(header.addresses) != 1:
            return None
        return header.addresses[0].addr_spec or None
    except Exception:
        return None


def _address_defect(address: str) -> str | None:
    """Parse an envelope address once more with the stdlib's strict parser
    and refuse anything with defects (THREATS #25, #27, #28, #30)."""
    if any(ch in address for ch in "\r\n\0\t ") or len(address) > PATH_LIMIT:
        return "the address holds control characters or is too long"
    if "@" not in address:
        return None if address.lower() == "postmaster" else "the address has no domain"
    if _PLAIN_ADDRESS.fullmatch(address):
        token, rest = None, ""
    else:
        try:
            token, rest = get_addr_spec(address)
        except (HeaderParseError, IndexError):
            return "the address cannot be parsed"
    if rest or (token is not None and token.all_defects):
        return "the address cannot be parsed"
    local, _, domain = address.rpartition("@")
    if len(local) > LOCAL_PART_LIMIT:
        return "the local part is longer than 64 octets"
    if domain.endswith(".") or not domain:
        return "the domain is not valid"
    return None


class _DeliveryStore:
    """The store as the delivery worker sees it: each outcome is counted on
    its way to the store (relay.delivery stays unaware of metrics)."""

    def __init__(self, store: Store, on_outcome: Callable[[str], None]):
        self._store = store
        self._on_outcome = on_outcome

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def mark_delivered_many(self, entry_ids: list[int]) -> None:
        await self._store.mark_delivered_many(entry_ids)
        for _ in entry_ids:
            self._on_outcome("delivered")

    async def mark_deferred(self, entry_id: int, error: str, next_attempt: float) -> None:
        await self._store.mark_deferred(entry_id, error, next_attempt)
        self._on_outcome("deferred")

    async def mark_failed(self, entry_id: int, error: str, notice: Any) -> None:
        await self._store.mark_failed(entry_id, error, notice)
        self._on_outcome("failed")


def _server_tls(settings: Settings):
    """The STARTTLS context, or None when [tls] is empty; ConfigError names the key."""
    if not settings.tls.cert:
        return None
    check_files(settings)
    return server_context(settings.tls.cert, settings.tls.key)


class RelayDaemon:
    """Store, pipeline, delivery and listeners, started and stopped together."""

    def __init__(self, settings: Settings, config_path: str | None = None, role: str = "primary",
                 shared: Shared | None = None):
        self.settings = settings
        self.config_path = config_path
        # listen.workers > 1: the listening sockets and the metrics feed, made
        # before the fork (relay.sharing); else each listener is bound here.
        self.shared = shared or Shared()
        self._more_servers: list[asyncio.AbstractServer] = []  # a host name's further addresses
        # Every process takes mail and delivers what it took (relay.delivery
        # claims keep two from sending one entry); only the "primary" serves
        # metrics.  The others (listen.workers > 1) are "acceptor"s.
        self.role = role
        self.log = get_logger()
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.delivery: Delivery | None = None
        self.handler: RelayHandler | None = None
        self.server: asyncio.AbstractServer | None = None  # the MX listener
        self.submission_server: asyncio.AbstractServer | None = None
        self.metrics_server: asyncio.AbstractServer | None = None
        self.tls_context = None
        self.metrics = Metrics()
        self.sessions_dropped = Counter(
            "relay_sessions_dropped", "Connections the relay refused or closed, by reason.",
            ["reason"], registry=self.metrics.registry)
        lim = settings.limits
        self.connections = ConnectionLimiter(lim.max_connections, lim.max_connections_per_ip)
        self.harvest = RateLimiter(lim.harvest_limit, lim.harvest_window)
        self.auth_limiter = RateLimiter(lim.auth_ip_failures, lim.auth_window)
        self.ready = False
        self.stopping = False
        self.reload_pending = False
        self._tasks: list[asyncio.Task] = []
        self._data_event = asyncio.Event()
        # Per listener: (settings, STARTTLS context, handler) and a protocol made
        # from them that is never connected but copied for each connection.
        self._protocol_models: dict[str, tuple[tuple[Any, ...], RelaySMTP]] = {}

    # ------------------------------------------------------------- start-up

    async def start(self) -> None:
        s = self.settings
        self.tls_context = _server_tls(s)
        self.store = await Store.open(s.store.path, s.store.busy_timeout)
        self.store.on_commit, self.store.on_commit_wait = self.metrics.store_committed, self.metrics.observe_commit_wait
        self.delivery = Delivery(s, _DeliveryStore(self.store, self._delivery_outcome))  # type: ignore[arg-type]
        self.pipeline = Pipeline(s, self.store, on_queued=self._queued, claim_owner=self.delivery.owner)
        self.handler = RelayHandler(self.pipeline, self)
        self.server = await self._listen("listen.mx", s.listen.mx, lambda: self._protocol("mx"))
        if s.listen.submission:
            self.submission_server = await self._listen("listen.submission", s.listen.submission,
                                                        lambda: self._protocol("submission"))
        if s.metrics.listen and self.role == "primary":
            host, port = parse_hostport("metrics.listen", s.metrics.listen)
            try:
                self.metrics_server = await start_http(self.metrics, host, port, ready=lambda: self.ready,
                                                       refresh=self._refresh_queue_stats)
            except OSError as exc:
                raise StartError(f"cannot listen on metrics.listen {s.metrics.listen}: {exc.strerror or exc}",
                                 isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL) from None
        await self.delivery.start()
        self._tasks = [asyncio.create_task(notify.run_watchdog()), asyncio.create_task(self._housekeeping())]
        self._join_metrics_feed()
        self.ready = True
        self.log.info("relay.started", role=self.role, pid=os.getpid(), cpus=allowed_cpus(),
                      listen=_address_of(self.server),
                      store=s.store.path, delivery=s.delivery.mode, config=s.source,
                      starttls=self.tls_context is not None,
                      submission=_address_of(self.submission_server), metrics=_address_of(self.metrics_server))
        notify.ready()

    async def _listen(self, key: str, value: str, factory: Callable[[], RelaySMTP]) -> asyncio.AbstractServer:
        """Serve on the sockets bound before the fork (listen.workers > 1),
        else on sockets bound now, the same way (relay.sharing.bind)."""
        try:
            sockets = self.shared.listeners.get(key) or bind(key, value)
        except ListenError as exc:
            raise StartError(str(exc), exc.configuration) from None
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(factory, sock=sock, backlog=BACKLOG) for sock in sockets]
        self._more_servers += servers[1:]
        return servers[0]

    def _protocol(self, listener: str) -> RelaySMTP:
        """A new connection's protocol: a copy of the listener's model
        (RelaySMTP.like_this), made again once the settings, the STARTTLS
        context or the handler it was made from are replaced (a reload
        replaces them; Settings is frozen, so nothing changes in place)."""
        made_from = (self.settings, self.tls_context, self.handler)
        model = self._protocol_models.get(listener)
        if model is None or any(old is not new for old, new in zip(model[0], made_from)):
            model = self._protocol_models[listener] = (made_from, self._protocol_model(listener))
        return model[1].like_this()

    def _protocol_model(self, listener: str) -> RelaySMTP:
        """A protocol made by aiosmtpd's SMTP.__init__ from the current settings."""
        s = self.settings
        lim = s.limits
        submission = listener == "submission"
        # THREATS #16: a budget for the commands that do nothing but keep a
        # session alive.  RSET may also follow each transaction.
        calls = {"NOOP": lim.command_limit, "VRFY": lim.command_limit, "EXPN": lim.command_limit,
                 "HELP": lim.command_limit, "RSET": lim.command_limit + lim.transactions,
                 "*": OTHER_COMMAND_LIMIT}
        return RelaySMTP(self.handler, self, listener, hostname=s.relay.hostname, ident=BANNER_IDENT,
                         data_size_limit=lim.message_size, enable_SMTPUTF8=False, decode_data=False,
                         timeout=lim.command_timeout, tls_context=self.tls_context,
                         require_starttls=submission and self.tls_context is not None,
                         auth_required=submission, auth_require_tls=True, command_call_limit=calls,
                         loop=asyncio.get_running_loop())  # else aiosmtpd looks it up under catch_warnings

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------- runtime

    def session_dropped(self, reason: str, listener: str) -> None:
        self.sessions_dropped.labels(reason=reason).inc()
        self.log.info("session.refused", reason=reason, listener=listener)

    def data_changed(self) -> None:
        self._data_event.set()

    def _queued(self, entry: QueueEntry | None = None, data: bytes | Chunks | None = None) -> None:
        assert self.delivery is not None
        if entry is not None and data is not None:
            self.delivery.submit(entry, data)
        else:
            self.delivery.wake()

    def _delivery_outcome(self, outcome: str) -> None:
        self.metrics.delivery(outcome)

    async def _refresh_queue_stats(self) -> None:
        if self.store is None:
            return
        try:
            depth, oldest = await self.store.queue_stats(time.time())
        except StorageError:
            return
        self.metrics.set_queue(depth, oldest)

    async def _housekeeping(self) -> None:
        """Rate-limiter clean-up.  (The queue gauges are read when /metrics
        is scraped: refreshing them after every message cost a store query
        each, about 3 % of the event loop under load.)"""
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            self.harvest.prune()
            self.auth_limiter.prune()

    # -------------------------------------------------------------- SIGHUP

    def sighup(self) -> None:
        if self.stopping:
            return
        if not self.ready:  # still starting: reload once started
            self.reload_pending = True
            return
        self.reload_pending = False
        notify.reloading()
        self.reload()
        notify.ready()

    def reload(self) -> bool:
        """Re-read the configuration; a broken one is refused and the old stays.

        Filters, limits, TLS certificate and delivery settings change for the
        next connection, transaction and delivery; sessions in progress are not
        dropped.  Listener, store and metrics addresses need a restart.
        """
        old = self.settings
        try:
            new = load_settings(self.config_path)
            check_files(new)
            if old.listen.submission and not new.tls.cert:
                raise ConfigError("tls.cert: the running submission listener needs it; restart to turn "
                                  "submission off")
            tls_context = _server_tls(new)
        except ConfigError as exc:
            self.log.error("relay.reload_failed", error=str(exc))
            return False
        if new.listen != old.listen or new.store != old.store or new.metrics != old.metrics:
            self.log.warning("relay.reload_failed",
                             error="listen, store and metrics changes need a restart; kept the rest")
            new = dataclasses.replace(new, listen=old.listen, store=old.store, metrics=old.metrics)
        self.settings = new
        self.tls_context = tls_context
        assert self.pipeline is not None and self.delivery is not None
        self.pipeline.reconfigure(new)
        self.delivery.reconfigure(new)
        d_old, d_new = old.delivery, new.delivery
        if (d_old.smarthost, d_old.tls, d_old.cafile, d_old.timeout) != \
                (d_new.smarthost, d_new.tls, d_new.cafile, d_new.timeout):
            # Pooled connections still point at the old next hop: let them
            # reconnect.  A send cut off here is retried, never lost.
            for slot in range(len(self.delivery._clients)):
                self.delivery._drop(slot)
        self._apply_limits(new)
        self.log.info("relay.reloaded", config=new.source, starttls=tls_context is not None)
        return True

    def _apply_limits(self, settings: Settings) -> None:
        lim = settings.limits
        self.connections.max_total = lim.max_connections
        self.connections.max_per_ip = lim.max_connections_per_ip
        if (self.harvest.limit, self.harvest.window) != (lim.harvest_limit, lim.harvest_window):
            self.harvest = RateLimiter(lim.harvest_limit, lim.harvest_window)
        if (self.auth_limiter.limit, self.auth_limiter.window) != (lim.auth_ip_failures, lim.auth_window):
            self.auth_limiter = RateLimiter(lim.auth_ip_failures, lim.auth_window)

    # ------------------------------------------------------------- shutdown

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Stop accepting, let transactions in flight finish (bounded), close."""
        drain = self.settings.limits.drain_timeout if drain_seconds is None else drain_seconds
        self.ready = False
        self.stopping = True
        for server in (self.server, self.submission_server, *self._more_servers):
            if server is not None:
                server.close()
        sessions = self.handler.sessions if self.handler is not None else set()
        # Sessions between transactions hold nothing of value: tell them now.
        for session in list(sessions):
            if not session.in_data:
                session.drop(SHUTTING_DOWN, "shutdown")
        self.log.info("relay.stopping", in_data=sum(1 for s in sessions if s.in_data), drain_seconds=drain)
        if self.handler is not None:
            # Sessions in DATA get their reply (and then 421) in smtp_DATA.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain
            while any(s.in_data for s in sessions):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._data_event.clear()
                try:
                    await asyncio.wait_for(self._data_event.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    break
            # Past the bound: a client still sending its data never got a 250
            # and nothing of it is stored.  A message the pipeline is committing
            # is not cut off; its client gets the reply.
            for session in list(sessions):
                if not session.handler_busy:
                    session.drop(SHUTTING_DOWN, "shutdown")
            try:
                await asyncio.wait_for(self.handler.idle.wait(), timeout=PIPELINE_GRACE)
            except asyncio.TimeoutError:
                pass
            for session in list(sessions):
                session.drop(SHUTTING_DOWN, "shutdown")
        if self.delivery is not None:
            await self.delivery.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await cancel_and_wait(self._tasks)
        if self.role == "acceptor":
            self._send_metrics()  # the last counts, should the primary outlive this process
        if self.store is not None:
            await self.store.close()
        self.log.info("relay.stopped")

    def _join_metrics_feed(self) -> None:
        """The primary reads the other processes' counters; they send theirs
        every METRICS_REPORT_INTERVAL (relay.sharing, Metrics.snapshot)."""
        if self.role == "primary" and self.shared.metrics_in is not None:
            asyncio.get_running_loop().add_reader(self.shared.metrics_in.fileno(), self._read_metrics_feed)
        elif self.role == "acceptor" and self.shared.metrics_out is not None:
            self._tasks.append(asyncio.create_task(self._report_metrics()))

    def _read_metrics_feed(self) -> None:
        assert self.shared.metrics_in is not None
        while True:
            try:
                datagram = self.shared.metrics_in.recv(METRICS_DATAGRAM_MAX)
            except OSError:  # BlockingIOError: nothing more to read
                return
            self.metrics.absorb(datagram)

    async def _report_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_REPORT_INTERVAL)
            self._send_metrics()

    def _send_metrics(self) -> None:
        if self.shared.metrics_out is None:
            return
        try:
            self.shared.metrics_out.send(self.metrics.snapshot())
        except OSError:
            pass  # the primary is busy or gone: the next report carries the totals

    async def worker_exited(self, pid: int) -> None:
        """An acceptor process died: its last counters stay in the totals,
        and what it had taken to deliver goes back to the queue, for this
        process's scan to pick up now."""
        if self.shared.metrics_in is not None:
            self._read_metrics_feed()  # what it sent before it died is in the buffer
        self.metrics.retire(pid)
        if self.store is None or self.stopping:
            return
        try:
            released = await self.store.release_claims_of_process(pid)
        except StorageError as exc:
            self.log.warning("delivery.error", error="could not release a dead worker's claims", detail=str(exc)[:200])
            return
        if released and self.delivery is not None:
            self.log.info("delivery.claims_released", pid=pid, entries=released)
            self.delivery.wake()

    async def abort(self) -> None:
        """Undo a start-up that failed half-way."""
        for server in (self.server, self.submission_server, self.metrics_server, *self._more_servers):
            if server is not None:
                server.close()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.store is not None:
            await self.store.close()


def _address_of(server: asyncio.AbstractServer | None) -> str | None:
    if server is None or not server.sockets:
        return None
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: Settings, config_path: str | None = None, role: str = "primary",
                workers: list[int] | None = None, shared: Shared | None = None, cpus: list[int] | None = None) -> int:
    """Run one daemon process until SIGTERM.  With listen.workers > 1 the
    primary also watches its acceptor processes (relay.workers): it replaces
    one that dies and forwards SIGTERM and SIGHUP to them.  `shared` is what
    all of them share (relay.sharing); `cpus`, the CPU of each process
    (listen.cpu_affinity, relay.affinity), the primary's first."""
    shared = shared or Shared()
    daemon = RelayDaemon(settings, config_path, role, shared)
    acceptors = Workers(acceptor_command(config_path, shared), daemon.log, daemon.worker_exited, cpus or [],
                        running_settings=lambda: settings_to_json(daemon.settings))
    # Handlers first: a SIGHUP or SIGTERM that arrives while starting (or the
    # instant after "relay.started") must not kill the process by default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: (daemon.sighup(), acceptors.signal(signal.SIGHUP)))
    try:
        await daemon.start()
    except ConfigError as exc:
        daemon.log.error("relay.stopped", error=str(exc))
        await daemon.abort()
        return 2
    except StorageError as exc:
        daemon.log.error("relay.stopped", error=f"cannot open the store: {exc}")
        await daemon.abort()
        return 1
    except StartError as exc:
        daemon.log.error("relay.stopped", error=str(exc))
        await daemon.abort()
        return 2 if exc.configuration else 1
    freeze_startup_heap()
    acceptors.watch(workers or [])
    if daemon.reload_pending:
        daemon.sighup()
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    notify.stopping()
    acceptors.terminate()
    await daemon.stop()
    await acceptors.reap(daemon.settings.limits.drain_timeout + PIPELINE_GRACE + 5)
    return 0


# Young-generation threshold: CPython's 700 ran a collection every few
# hundred allocations, several per message, and each one promoted the
# objects of messages still in progress towards the old generations.
GC_YOUNG_THRESHOLD = 5000


def freeze_startup_heap() -> None:
    """Take what start-up built (modules, compiled patterns, tables: about
    50,000 objects) out of the garbage collector's view, and collect the
    young generation less often.  Every full collection walks all tracked
    objects; start-up's live as long as the process, so walking them is pure
    cost, paid as pauses in the middle of SMTP replies.  Collect first, so no
    start-up garbage is frozen.  Measured with bench/gc_probe.py (50 sessions
    of 2 KB messages): GC time per 4,000 messages from about 1.7 s to 0.1 s,
    the longest pause from 300 ms to 15 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)

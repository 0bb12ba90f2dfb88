"""Prometheus metrics and a tiny HTTP endpoint for them (``/metrics``, ``/healthz``).

Each :class:`Metrics` owns its own ``CollectorRegistry`` rather than the process-wide
default one, so tests (and several relays in one process) never collide.

Labels carry only closed sets of values (reason codes, delivery outcomes): never an
address, order id or peer IP, which would both leak and explode cardinality.
Metric names are documented in ``docs/metrics.md``.

The HTTP server is deliberately minimal: HTTP/1.0, one request per connection, GET or
HEAD only, bounded in time and size, served on the daemon's own event loop (no thread).
Bind it to loopback or a management network; it has no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.samples import Sample

__all__ = ["COMMIT_WAIT_BUCKETS", "DELIVERY_OUTCOMES", "TRANSACTION_BUCKETS", "Metrics", "start_http"]

# What generate_latest() writes. Spelled out because prometheus_client 0.22+ moved
# CONTENT_TYPE_LATEST to version=1.0.0 (UTF-8 names), which older scrapers mis-handle;
# our names are plain ASCII, so the classic 0.0.4 format is exact.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DELIVERY_OUTCOMES = ("delivered", "deferred", "failed")

# SMTP transactions (MAIL FROM to the final reply) from 1 ms to 5 s; slower ones land in +Inf.
TRANSACTION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

# An exchange's wait for its durable commit, from half a millisecond (an idle
# relay on a fast disk) to 5 s: the write turn, the batch before it, the
# fsync, the writer thread's turn at the CPU.
COMMIT_WAIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)

# A reason label must look like a reason code; anything else is counted as "other" so a
# bug can never put free text (or an address) into a label.
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")


class Metrics:
    """The relay's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._others: dict[int, dict] = {}  # pid -> its latest snapshot, keyed by _sample_key
        self._retired: set[int] = set()
        self.messages_accepted = Counter(
            "relay_messages_accepted",
            "Messages accepted (durably stored, 250 sent).",
            registry=self.registry,
        )
        self.messages_rejected = Counter(
            "relay_messages_rejected",
            "Messages or recipients refused, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "relay_deliveries",
            "Delivery attempts, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in DELIVERY_OUTCOMES:
            self.deliveries.labels(outcome=outcome)  # export zeros from the start
        self.queue_depth = Gauge(
            "relay_queue_depth",
            "Messages waiting in the outbound queue.",
            registry=self.registry,
        )
        self.queue_oldest_age = Gauge(
            "relay_queue_oldest_age_seconds",
            "Age of the oldest message in the outbound queue (0 when empty).",
            registry=self.registry,
        )
        self.sessions_open = Gauge(
            "relay_sessions_open",
            "SMTP sessions currently open.",
            registry=self.registry,
        )
        self.transaction_seconds = Histogram(
            "relay_transaction_seconds",
            "Duration of SMTP transactions, MAIL FROM to the final reply.",
            buckets=TRANSACTION_BUCKETS,
            registry=self.registry,
        )
        self.store_commits = Counter(
            "relay_store_commits",
            "Commits to the store (each one fsync of its write-ahead log), however many messages each holds.",
            registry=self.registry,
        )
        self.store_commit_wait_seconds = Histogram(
            "relay_store_commit_wait_seconds",
            "Time an exchange's audit row (an accepted message or a refusal), which its SMTP reply waits on, "
            "took from being handed to the store to being known durable.",
            buckets=COMMIT_WAIT_BUCKETS,
            registry=self.registry,
        )

    # Helpers the server calls; the metric objects above stay public for anything else.

    def message_accepted(self) -> None:
        self.messages_accepted.inc()

    def message_rejected(self, reason: str) -> None:
        """Count one refusal under its deciding reason code (e.g. ``link``, ``unknown_recipient``)."""
        self.messages_rejected.labels(reason=reason if _REASON.fullmatch(reason) else "other").inc()

    def delivery(self, outcome: str) -> None:
        if outcome not in DELIVERY_OUTCOMES:
            raise ValueError(f"unknown delivery outcome {outcome!r}")
        self.deliveries.labels(outcome=outcome).inc()

    def set_queue(self, depth: int, oldest_age_seconds: float) -> None:
        self.queue_depth.set(depth)
        self.queue_oldest_age.set(max(0.0, oldest_age_seconds) if depth else 0.0)

    def session_opened(self) -> None:
        self.sessions_open.inc()

    def session_closed(self) -> None:
        self.sessions_open.dec()

    def observe_transaction(self, seconds: float) -> None:
        self.transaction_seconds.observe(seconds)

    def store_committed(self) -> None:
        self.store_commits.inc()

    def observe_commit_wait(self, seconds: float) -> None:
        self.store_commit_wait_seconds.observe(seconds)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Time a block as one transaction (exceptions are timed too)."""
        start = perf_counter()
        try:
            yield
        finally:
            self.transaction_seconds.observe(perf_counter() - start)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry, plus what the
        other worker processes reported (see `absorb`)."""
        if not self._others:
            return generate_latest(self.registry)
        return generate_latest(_Summed(self.registry, self._others_total()))

    # With listen.workers > 1, the processes other than the primary send their
    # counters (relay.sharing) and the primary adds them to its own.

    def snapshot(self) -> bytes:
        """This process's counters, histogram and summed gauges as one
        datagram: [[sample name, labels, value], ...], zeros left out."""
        samples = [[sample.name, sample.labels, sample.value]
                   for family in self.registry.collect() if _summed(family)
                   for sample in family.samples
                   if sample.value and not sample.name.endswith("_created")]
        return json.dumps({"pid": os.getpid(), "samples": samples}, separators=(",", ":")).encode()

    def absorb(self, datagram: bytes) -> None:
        """Keep the latest snapshot of another process (ignoring garbage)."""
        try:
            report = json.loads(datagram)
            pid = int(report["pid"])
            samples = {_sample_key(name, labels): float(value) for name, labels, value in report["samples"]}
        except (ValueError, TypeError, KeyError):
            return
        if pid not in self._retired:
            self._others[pid] = samples

    def retire(self, pid: int) -> None:
        """A worker process exited: its counters stay in the totals (they
        never go down), its open sessions do not."""
        samples = self._others.get(pid)
        if samples is not None:
            self._others[pid] = {k: v for k, v in samples.items() if k[0] not in LIVE_GAUGES}
        self._retired.add(pid)

    def _others_total(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        total: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for samples in self._others.values():
            for key, value in samples.items():
                total[key] = total.get(key, 0.0) + value
        return total


# Gauges that are per-process amounts the service total adds up; the queue
# gauges are read from the shared store and are not added.
LIVE_GAUGES = frozenset({"relay_sessions_open"})


def _summed(family) -> bool:
    return family.type in ("counter", "histogram") or family.name in LIVE_GAUGES


def _sample_key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


class _Summed:
    """A registry view: each sample of `registry` plus the other processes'
    value for it; label sets only the others have seen are added."""

    def __init__(self, registry: CollectorRegistry, others: dict) -> None:
        self.registry = registry
        self.others = others

    def collect(self):
        for family in self.registry.collect():
            if not _summed(family):
                yield family
                continue
            seen = set()
            samples = []
            for sample in family.samples:
                key = _sample_key(sample.name, sample.labels)
                seen.add(key)
                samples.append(sample._replace(value=sample.value + self.others.get(key, 0.0)))
            for (name, labels), value in sorted(self.others.items()):
                if (name, labels) not in seen and _belongs(name, family):
                    samples.append(Sample(name, dict(labels), value))
            family.samples = samples
            yield family


def _belongs(sample_name: str, family) -> bool:
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}[family.type]
    return any(sample_name == family.name + suffix for suffix in suffixes)


# --- HTTP -------------------------------------------------------------------------

MAX_HEADER_BYTES = 8192
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _RequestError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _read_request(reader: asyncio.StreamReader, max_header_bytes: int) -> tuple[str, str]:
    """Read the request line and skip the headers; return (method, path)."""
    try:
        line = await reader.readline()
    except ValueError:  # the line outgrew the reader's limit
        raise _RequestError(431) from None
    if not line.endswith(b"\n"):
        raise _RequestError(400)
    total = len(line)
    while True:
        try:
            header = await reader.readline()
        except ValueError:
            raise _RequestError(431) from None
        total += len(header)
        if total > max_header_bytes:
            raise _RequestError(431)
        if not header.endswith(b"\n"):
            raise _RequestError(400)  # connection closed mid-headers
        if header in (b"\r\n", b"\n"):
            break
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _RequestError(400)
    method, target, _version = parts
    path = target.split("?", 1)[0]
    return method, path


def _response(status: int, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    header = (
        f"HTTP/1.0 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")
    return header if head else header + body


_TEXT = "text/plain; charset=utf-8"


def _route(method: str, path: str, metrics: Metrics, ready: Callable[[], bool]) -> bytes:
    head = method == "HEAD"
    if path not in ("/metrics", "/healthz"):
        return _response(404, b"not found\n", _TEXT, head=head)
    if method not in ("GET", "HEAD"):
        return _response(405, b"method not allowed\n", _TEXT)
    if path == "/metrics":
        return _response(200, metrics.render(), CONTENT_TYPE, head=head)
    try:
        is_ready = bool(ready())
    except Exception:
        is_ready = False
    if is_ready:
        return _response(200, b"ok\n", _TEXT, head=head)
    return _response(503, b"not ready\n", _TEXT, head=head)


async def start_http(
    metrics: Metrics,
    host: str,
    port: int,
    ready: Callable[[], bool],
    *,
    read_timeout: float = READ_TIMEOUT,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_connections: int = MAX_CONNECTIONS,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` and ``GET /healthz`` on ``host:port`` (port 0: any free port).

    ``refresh``, if given, is awaited before each ``/metrics`` answer: gauges
    that cost a store query (the queue's) are read when someone looks, not
    after every message.

    ``/healthz`` answers 200 ``ok`` once ``ready()`` is true, 503 before (and if
    ``ready`` raises). The caller owns the returned server: ``server.close()`` and
    ``await server.wait_closed()`` on shutdown.
    """
    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            if open_connections > max_connections:
                return  # drop at once: scrapers retry, floods do not get a buffer each
            try:
                async with asyncio.timeout(read_timeout):
                    method, path = await _read_request(reader, max_header_bytes)
                if refresh is not None and path == "/metrics" and method in ("GET", "HEAD"):
                    await refresh()
                response = _route(method, path, metrics, ready)
            except _RequestError as error:
                response = _response(error.status, f"{_REASONS[error.status].lower()}\n".encode(), _TEXT)
            except TimeoutError:
                response = _response(408, b"request timeout\n", _TEXT)
            except Exception:
                response = _response(500, b"internal server error\n", _TEXT)
            writer.write(response)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the peer went away or stalled; nothing to tell it
        finally:
            open_connections -= 1
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.wait_closed()

    # limit bounds a single line (request line or header) held in the reader's buffer.
    return await asyncio.start_server(handle, host, port, limit=max_header_bytes)

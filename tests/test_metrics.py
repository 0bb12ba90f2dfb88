"""relay.metrics: the registry, and the HTTP endpoint scraped over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import Metrics, start_http


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


class Served:
    def __init__(self, metrics: Metrics, port: int, state: dict[str, object]) -> None:
        self.metrics = metrics
        self.port = port
        self.state = state

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.0"
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status), headers, body

    async def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return await self.request(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode())


async def serve(state: dict[str, object], **kwargs) -> tuple[Served, asyncio.AbstractServer]:
    metrics = Metrics()

    def ready() -> bool:
        value = state["ready"]
        if isinstance(value, Exception):
            raise value
        return bool(value)

    server = await start_http(metrics, "127.0.0.1", 0, ready, **kwargs)
    port = server.sockets[0].getsockname()[1]
    return Served(metrics, port, state), server


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s, server = await serve({"ready": False})
    try:
        yield s
    finally:
        server.close()
        await server.wait_closed()


# --- the registry ---------------------------------------------------------------


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.message_accepted()
    assert sample(a, "relay_messages_accepted_total") == 1
    assert sample(b, "relay_messages_accepted_total") == 0


def test_counters_and_labels() -> None:
    m = Metrics()
    m.message_accepted()
    m.message_accepted()
    m.message_rejected("link")
    m.message_rejected("link")
    m.message_rejected("unknown_recipient")
    m.delivery("delivered")
    m.delivery("deferred")
    m.delivery("deferred")
    assert sample(m, "relay_messages_accepted_total") == 2
    assert sample(m, "relay_messages_rejected_total", reason="link") == 2
    assert sample(m, "relay_messages_rejected_total", reason="unknown_recipient") == 1
    assert sample(m, "relay_deliveries_total", outcome="delivered") == 1
    assert sample(m, "relay_deliveries_total", outcome="deferred") == 2
    assert sample(m, "relay_deliveries_total", outcome="failed") == 0


@pytest.mark.parametrize("reason", ["alice@buyer.example", "Link", "", "x" * 65, "a b"])
def test_free_text_never_becomes_a_label(reason: str) -> None:
    m = Metrics()
    m.message_rejected(reason)
    assert sample(m, "relay_messages_rejected_total", reason="other") == 1
    families = text_string_to_metric_families(m.render().decode())
    labels = {s.labels["reason"] for f in families if f.name == "relay_messages_rejected" for s in f.samples}
    assert labels == {"other"}


def test_unknown_delivery_outcome_is_a_bug() -> None:
    with pytest.raises(ValueError):
        Metrics().delivery("bounced")


def test_gauges() -> None:
    m = Metrics()
    m.session_opened()
    m.session_opened()
    m.session_closed()
    m.set_queue(4, 123.5)
    assert sample(m, "relay_sessions_open") == 1
    assert sample(m, "relay_queue_depth") == 4
    assert sample(m, "relay_queue_oldest_age_seconds") == 123.5
    m.set_queue(0, 99.0)  # an empty queue has no oldest message
    assert sample(m, "relay_queue_oldest_age_seconds") == 0


def test_transaction_histogram_buckets() -> None:
    m = Metrics()
    m.observe_transaction(0.0005)
    m.observe_transaction(0.2)
    m.observe_transaction(7.0)
    with m.transaction():
        pass
    assert sample(m, "relay_transaction_seconds_count") == 4
    assert sample(m, "relay_transaction_seconds_bucket", le="0.001") == 2
    assert sample(m, "relay_transaction_seconds_bucket", le="0.25") == 3
    assert sample(m, "relay_transaction_seconds_bucket", le="5.0") == 3
    assert sample(m, "relay_transaction_seconds_bucket", le="+Inf") == 4


def test_commit_counter_and_commit_wait_buckets() -> None:
    m = Metrics()
    m.store_committed()
    m.store_committed()
    for seconds in (0.0002, 0.003, 0.03, 6.0):
        m.observe_commit_wait(seconds)
    assert sample(m, "relay_store_commits_total") == 2
    assert sample(m, "relay_store_commit_wait_seconds_count") == 4
    assert sample(m, "relay_store_commit_wait_seconds_bucket", le="0.0005") == 1
    assert sample(m, "relay_store_commit_wait_seconds_bucket", le="0.005") == 2
    assert sample(m, "relay_store_commit_wait_seconds_bucket", le="0.05") == 3
    assert sample(m, "relay_store_commit_wait_seconds_bucket", le="+Inf") == 4


# --- over HTTP ------------------------------------------------------------------

DOCUMENTED = {
    "relay_messages_accepted": "counter",
    "relay_messages_rejected": "counter",
    "relay_deliveries": "counter",
    "relay_queue_depth": "gauge",
    "relay_queue_oldest_age_seconds": "gauge",
    "relay_sessions_open": "gauge",
    "relay_transaction_seconds": "histogram",
    "relay_store_commits": "counter",
    "relay_store_commit_wait_seconds": "histogram",
}


async def test_metrics_scrape(served: Served) -> None:
    served.metrics.message_accepted()
    served.metrics.message_rejected("phone_number")
    served.metrics.set_queue(2, 30)
    status, headers, body = await served.get("/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {name: families[name].type for name in DOCUMENTED} == DOCUMENTED
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert values[("relay_messages_accepted_total", ())] == 1
    assert values[("relay_messages_rejected_total", (("reason", "phone_number"),))] == 1
    assert values[("relay_queue_depth", ())] == 2


def test_docs_name_every_metric() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    body = Metrics().render().decode()
    for family in text_string_to_metric_families(body):
        if family.name.endswith("_created"):
            continue
        exported = family.name + ("_total" if family.type == "counter" else "")
        assert exported in doc, exported


async def test_queue_gauges_are_read_when_scraped_not_after_every_message() -> None:
    """The daemon passes a refresh that queries the store; it runs once per
    /metrics answer, before it, and never for /healthz."""
    calls: list[int] = []
    holder: dict[str, Served] = {}

    async def refresh() -> None:
        calls.append(1)
        holder["s"].metrics.set_queue(len(calls) * 10, 5.0)

    s, server = await serve({"ready": True}, refresh=refresh)
    holder["s"] = s
    try:
        await s.get("/healthz")
        assert calls == []
        _, _, body = await s.get("/metrics")
        assert calls == [1] and "relay_queue_depth 10.0" in body.decode()
        _, _, body = await s.get("/metrics")
        assert "relay_queue_depth 20.0" in body.decode()
    finally:
        server.close()
        await server.wait_closed()


async def test_healthz_follows_ready(served: Served) -> None:
    status, _, body = await served.get("/healthz")
    assert (status, body) == (503, b"not ready\n")
    served.state["ready"] = True
    status, headers, body = await served.get("/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["connection"] == "close"
    served.state["ready"] = RuntimeError("store gone")
    status, _, _ = await served.get("/healthz")
    assert status == 503


async def test_query_string_is_ignored(served: Served) -> None:
    status, _, _ = await served.get("/metrics?name[]=relay_queue_depth")
    assert status == 200


async def test_head_has_no_body(served: Served) -> None:
    status, headers, body = await served.get("/metrics", method="HEAD")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET /nope HTTP/1.0\r\n\r\n", 404),
        (b"GET / HTTP/1.0\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.0\n\n", 200),  # bare LF is tolerated
        (b"GET /metrics HTTP/1.0\r\nHost: x\r\n", 400),  # closed before the blank line
    ],
)
async def test_bad_requests(served: Served, raw: bytes, expected: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(raw)
        await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert data.startswith(f"HTTP/1.0 {expected} ".encode()), data[:80]


async def test_oversized_headers_are_refused(served: Served) -> None:
    many = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(200))
    status, _, _ = await served.request(b"GET /metrics HTTP/1.0\r\n" + many + b"\r\n")
    assert status == 431


async def test_overlong_line_is_refused(served: Served) -> None:
    status, _, _ = await served.request(b"GET /" + b"a" * 20000 + b" HTTP/1.0\r\n\r\n")
    assert status == 431


async def test_stalled_client_times_out() -> None:
    s, server = await serve({"ready": True}, read_timeout=0.05)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"GET /metrics HTTP/1.0\r\n")  # and never the blank line
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
        assert data.startswith(b"HTTP/1.0 408 ")
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_cap() -> None:
    s, server = await serve({"ready": True}, max_connections=1, read_timeout=5)
    try:
        # The first connection holds the only slot by sending nothing ...
        first_reader, first_writer = await asyncio.open_connection("127.0.0.1", s.port)
        first_writer.write(b"GET /healthz HTTP/1.0\r\n")
        await first_writer.drain()
        # ... so the second is closed without an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        # Finishing the first request still works, and frees the slot.
        first_writer.write(b"\r\n")
        assert (await asyncio.wait_for(first_reader.read(), 5)).startswith(b"HTTP/1.0 200 ")
        first_writer.close()
        await first_writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


# --- several worker processes ----------------------------------------------------


def _worker_metrics() -> Metrics:
    m = Metrics()
    m.message_accepted()
    m.message_accepted()
    m.message_rejected("link")
    m.delivery("delivered")
    m.session_opened()
    m.observe_transaction(0.02)
    return m


def rendered(metrics: Metrics, name: str, **labels: str) -> float | None:
    """A sample as /metrics shows it (other processes' reports included)."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def _as_other(m: Metrics, pid: int) -> bytes:
    report = json.loads(m.snapshot())
    report["pid"] = pid  # tests run in one process; the primary keys reports by pid
    return json.dumps(report).encode()


def test_the_primary_counts_what_the_other_processes_report() -> None:
    primary = _worker_metrics()
    other = _worker_metrics()
    other.message_rejected("phone_number")  # a label the primary has not seen
    primary.set_queue(3, 10.0)
    other.set_queue(99, 99.0)  # per-process view of the shared store: not added
    primary.absorb(_as_other(other, 4242))
    assert rendered(primary, "relay_messages_accepted_total") == 4
    assert rendered(primary, "relay_messages_rejected_total", reason="link") == 2
    assert rendered(primary, "relay_messages_rejected_total", reason="phone_number") == 1
    assert rendered(primary, "relay_deliveries_total", outcome="delivered") == 2
    assert rendered(primary, "relay_sessions_open") == 2
    assert rendered(primary, "relay_transaction_seconds_count") == 2
    assert rendered(primary, "relay_transaction_seconds_bucket", le="0.025") == 2
    assert rendered(primary, "relay_queue_depth") == 3
    # a newer report replaces the older one, it is not added again
    other.message_accepted()
    primary.absorb(_as_other(other, 4242))
    assert rendered(primary, "relay_messages_accepted_total") == 5
    families = {f.name for f in text_string_to_metric_families(primary.render().decode())}
    assert "relay_messages_rejected" in families


def test_a_dead_process_keeps_its_counts_but_not_its_open_sessions() -> None:
    primary = _worker_metrics()
    primary.absorb(_as_other(_worker_metrics(), 7))
    primary.retire(7)
    assert rendered(primary, "relay_messages_accepted_total") == 4  # counters never go down
    assert rendered(primary, "relay_sessions_open") == 1
    primary.absorb(_as_other(_worker_metrics(), 7))  # a late datagram changes nothing
    assert rendered(primary, "relay_sessions_open") == 1


@pytest.mark.parametrize("garbage", [b"", b"\xff", b"[]", b'{"pid": "x", "samples": []}', b'{"pid": 1}',
                                     b'{"pid": 1, "samples": [["a"]]}'])
def test_a_garbled_report_is_ignored(garbage: bytes) -> None:
    primary = _worker_metrics()
    primary.absorb(garbage)
    assert rendered(primary, "relay_messages_accepted_total") == 2


def test_a_report_fits_one_datagram_with_every_label_in_use() -> None:
    m = Metrics()
    for reason in [f"reason_{i}" for i in range(60)]:
        m.message_rejected(reason)
    for seconds in (0.0005, 0.003, 0.02, 0.3, 7.0):
        m.observe_transaction(seconds)
    assert len(m.snapshot()) < 16_000  # far under relay.server.METRICS_DATAGRAM_MAX

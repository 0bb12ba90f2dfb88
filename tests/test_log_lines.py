"""Every log line is one JSON object, in ASCII, whatever its values hold
(relay.logs renders with orjson and leaves what it cannot write as json.dumps
would to json.dumps)."""

import io
import json
import sys

import pytest

from relay.logs import configure_logging, get_logger


def _configure_into(stream: io.StringIO, level: str) -> None:
    # (pytest puts its own capture back on sys.stderr between a fixture and its test)
    real, sys.stderr = sys.stderr, stream
    try:
        configure_logging(level)
    finally:
        sys.stderr = real


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    _configure_into(stream, "info")
    yield stream
    configure_logging("info")  # back on the real stderr


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_line_holds_the_event_its_level_time_and_values(log_lines):
    get_logger(worker=1).info("delivery.sent", queue_id=7, audit_id=3, kind="relay", ratio=0.5, ok=True, gone=None)
    (line,) = _lines(log_lines)
    record = json.loads(line)
    assert record["event"] == "delivery.sent" and record["level"] == "info"
    assert record["timestamp"].endswith("Z")
    assert {k: record[k] for k in ("worker", "queue_id", "audit_id", "kind", "ratio", "ok", "gone")} == \
        {"worker": 1, "queue_id": 7, "audit_id": 3, "kind": "relay", "ratio": 0.5, "ok": True, "gone": None}


@pytest.mark.parametrize("detail", ["caf\u00e9 \u2603", "undecodable \udcff octet", "line\nbreak \"quoted\""])
def test_values_orjson_would_write_otherwise_come_out_as_json_dumps_writes_them(log_lines, detail):
    get_logger().warning("delivery.error", error="x", detail=detail)
    (line,) = _lines(log_lines)
    assert line.isascii()
    assert json.loads(line)["detail"] == detail
    assert json.dumps(detail) in line  # the escapes json.dumps makes


def test_a_value_json_cannot_hold_is_written_as_its_repr(log_lines):
    class Odd:
        def __repr__(self):
            return "<odd>"

    get_logger().warning("delivery.error", error=Odd(), big=2 ** 70)
    (line,) = _lines(log_lines)
    record = json.loads(line)
    assert record["error"] == "<odd>" and record["big"] == 2 ** 70


def test_levels_below_the_configured_one_write_nothing(log_lines):
    _configure_into(log_lines, "warning")
    get_logger().info("message.accepted", audit_id=1)
    get_logger().warning("message.error", audit_id=2)
    assert [json.loads(line)["event"] for line in _lines(log_lines)] == ["message.error"]

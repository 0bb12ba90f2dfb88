"""relay.notify against a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

from relay import notify

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")


@pytest.fixture
def path_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    # A short directory of our own: AF_UNIX paths are limited to 107 bytes, which a
    # deep pytest tmp_path can exceed.
    directory = tempfile.mkdtemp(prefix="relay-notify-")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": path}
    finally:
        sock.close()
        shutil.rmtree(directory)


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    name = f"relay-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": "@" + name}
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> tuple[socket.socket, dict[str, str]]:
    return request.getfixturevalue(f"{request.param}_socket")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (notify.ready, "READY=1"),
        (notify.stopping, "STOPPING=1"),
        (notify.watchdog, "WATCHDOG=1"),
    ],
)
def test_simple_states_arrive(receiver, call, expected) -> None:
    sock, env = receiver
    assert call(env=env) is True
    assert sock.recv(4096).decode() == expected


def test_notify_sends_arbitrary_state(receiver) -> None:
    sock, env = receiver
    assert notify.notify("EXTEND_TIMEOUT_USEC=5000000", env=env) is True
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=5000000"


def test_reloading_carries_monotonic_timestamp(receiver) -> None:
    sock, env = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading(env=env) is True
    message = sock.recv(4096).decode()
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match, message
    assert int(match.group(1)) >= before


def test_status_is_one_line(receiver) -> None:
    sock, env = receiver
    assert notify.status("draining\n3 sessions", env=env) is True
    assert sock.recv(4096) == b"STATUS=draining 3 sessions"


def test_os_environ_is_the_default(path_socket, monkeypatch: pytest.MonkeyPatch) -> None:
    sock, env = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify.ready() is True
    assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "relative/path.sock"])
def test_no_socket_is_a_no_op(value) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert notify.ready(env=env) is False
    assert notify.watchdog(env=env) is False


def test_vanished_socket_does_not_raise() -> None:
    directory = tempfile.mkdtemp(prefix="relay-notify-")
    try:
        env = {"NOTIFY_SOCKET": os.path.join(directory, "gone.sock")}
        assert notify.ready(env=env) is False
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, expected) -> None:
    assert notify.watchdog_interval(env=env) == expected


async def test_run_watchdog_pings_until_cancelled(abstract_socket) -> None:
    sock, env = abstract_socket
    env = {**env, "WATCHDOG_USEC": "20000"}  # 20 ms: a ping every 10 ms
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(notify.run_watchdog(env=env))
    try:
        for _ in range(3):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            assert data == b"WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_watchdog_returns_without_watchdog() -> None:
    await asyncio.wait_for(notify.run_watchdog(env={"NOTIFY_SOCKET": "@x"}), 1)

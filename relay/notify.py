"""The systemd notification protocol (sd_notify(3)), without a dependency.

The service manager passes the address of a datagram socket in ``$NOTIFY_SOCKET``
(a file system path, or an abstract socket written with a leading ``@``); the daemon
sends newline-separated ``KEY=VALUE`` assignments to it. Outside systemd the variable
is unset and every call here is a no-op that returns False, so the daemon can call
these functions unconditionally.

Every function takes an optional ``env`` mapping (default ``os.environ``) so tests
inject the environment instead of patching the process's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

__all__ = [
    "leave_to_the_primary",
    "notify",
    "ready",
    "reloading",
    "run_watchdog",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte.
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # sd_notify(3) accepts only absolute paths and abstract names (and vsock, which
    # this daemon never runs under); anything else is ignored rather than guessed at.
    return None


def leave_to_the_primary(env: MutableMapping[str, str]) -> None:
    """Take the service manager's variables out of `env`: with several worker
    processes only the primary (systemd's main PID) notifies and pets the
    watchdog; the others' messages would be refused (NotifyAccess=main)."""
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager.

    Returns True if the datagram was sent, False if ``$NOTIFY_SOCKET`` is unset or
    unusable or the send failed. Never raises: a daemon must not die because its
    supervisor's socket went away.
    """
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError:
        return False
    return True


def ready(*, env: Mapping[str, str] | None = None) -> bool:
    """Start-up (or a reload) is complete: the listeners accept connections."""
    return notify("READY=1", env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """Shutdown has begun (send on SIGTERM, before draining)."""
    return notify("STOPPING=1", env=env)


def reloading(*, env: Mapping[str, str] | None = None) -> bool:
    """A reload has begun (send on SIGHUP); send ``ready()`` again when it is done.

    MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) tell this reload apart
    from an earlier one.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """A one-line status shown by ``systemctl status`` (no addresses in it)."""
    return notify("STATUS=" + text.replace("\n", " "), env=env)


def watchdog(*, env: Mapping[str, str] | None = None) -> bool:
    """Keep-alive ping; systemd restarts the service when pings stop for WatchdogSec."""
    return notify("WATCHDOG=1", env=env)


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds, or None when no watchdog applies to us.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; another
    process (a child that inherited the environment) must not ping.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000


async def run_watchdog(*, env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog at half its interval until cancelled; return at once if none.

    Run it as a task of the event loop: if the loop stalls, pings stop and systemd
    restarts the daemon, which is the point.
    """
    interval = watchdog_interval(env=env)
    if interval is None:
        return
    while True:
        watchdog(env=env)
        await asyncio.sleep(interval / 2)

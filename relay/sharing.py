"""What the worker processes of `listen.workers > 1` share, made before the fork.

**The listening sockets.**  They are bound once and every process accepts
from the same ones.  The process that is free first takes the next
connection, so the load follows the free CPU.  With one SO_REUSEPORT socket
per process instead, the kernel spreads connections by a hash of their
addresses: at 10 sessions one process often held more of them than the
other, and those sessions waited while the other process sat idle.

**A metrics feed.**  Only the primary serves /metrics; the others send it
their counters every second as one datagram each (relay.metrics), so the
endpoint counts the whole service, not one process's share.

A replacement worker (relay.workers) is a fresh interpreter; it inherits
the same descriptors, named on its command line (`--listen-fd
listen.mx=5`, `--metrics-fd 7`).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from relay.config import Settings, parse_hostport

# Connections the kernel holds for the processes to accept (nginx's default;
# asyncio's is 100).  The session limits apply once a connection is accepted.
BACKLOG = 511


class ListenError(Exception):
    """A listener cannot bind; the message names the key and the reason.
    `configuration`: the configured address is wrong for this host (no such
    name, no interface with that address), so `relay serve` exits 2 as for
    any bad configuration; a port already taken exits 1."""

    def __init__(self, message: str, configuration: bool = False):
        super().__init__(message)
        self.configuration = configuration


def bind(key: str, value: str) -> list[socket.socket]:
    """Bind `value` ("host:port") as asyncio's create_server would: every
    address the host name has, IPv6 ones v6-only, SO_REUSEADDR.  Every
    listener is bound here, shared by worker processes or not
    (relay.server)."""
    host, port = parse_hostport(key, value)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {key} {value}: {exc.strerror or exc}", configuration=True) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {key} {value}: {exc.strerror or exc}",
                          configuration=exc.errno == errno.EADDRNOTAVAIL) from None
    return sockets


@dataclass
class Shared:
    listeners: dict[str, list[socket.socket]] = field(default_factory=dict)
    metrics_in: socket.socket | None = None  # the primary reads the others' counters here
    metrics_out: socket.socket | None = None  # the others send theirs here

    @classmethod
    def create(cls, settings: Settings) -> "Shared":
        """Bind the listeners (ListenError if one cannot) and make the feed."""
        listeners = {key: bind(key, value) for key, value in
                     (("listen.mx", settings.listen.mx), ("listen.submission", settings.listen.submission))
                     if value}
        metrics_in, metrics_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock in (metrics_in, metrics_out):
            sock.setblocking(False)
        return cls(listeners, metrics_in, metrics_out)

    def fd_arguments(self) -> tuple[list[str], list[int]]:
        """The arguments and descriptors a replacement worker inherits."""
        args: list[str] = []
        fds: list[int] = []
        for key, sockets in self.listeners.items():
            for sock in sockets:
                args += ["--listen-fd", f"{key}={sock.fileno()}"]
                fds.append(sock.fileno())
        if self.metrics_out is not None:
            args += ["--metrics-fd", str(self.metrics_out.fileno())]
            fds.append(self.metrics_out.fileno())
        return args, fds

    @classmethod
    def inherit(cls, listen_fds: list[str], metrics_fd: int | None) -> "Shared":
        """What `--listen-fd key=fd` and `--metrics-fd fd` name."""
        listeners: dict[str, list[socket.socket]] = {}
        for spec in listen_fds:
            key, _, fd = spec.partition("=")
            listeners.setdefault(key, []).append(_adopt(int(fd)))
        return cls(listeners, None, _adopt(metrics_fd) if metrics_fd is not None else None)


def _adopt(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock

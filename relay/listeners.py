"""Listening sockets shared by the worker processes (`listen.workers > 1`).

The sockets are bound once, before the processes fork, and every process
accepts from the same ones.  The process that is free first takes the next
connection, so the load follows the free CPU.  With one SO_REUSEPORT socket
per process instead, the kernel spreads connections by a hash of their
addresses: at 10 sessions one process often held more of them than the
other, and those sessions waited while the other process sat idle.

A replacement worker (relay.workers) is a fresh interpreter; it inherits the
same sockets as open descriptors, named on its command line
(`--listen-fd listen.mx=5`).
"""

from __future__ import annotations

import socket

from relay.config import parse_hostport

# Connections the kernel holds for the processes to accept (nginx's default;
# asyncio's is 100).  The session limits apply once a connection is accepted.
BACKLOG = 511


class ListenError(Exception):
    """A listener cannot bind; the message names the key and the reason."""


def bind(key: str, value: str) -> list[socket.socket]:
    """Bind `value` ("host:port") as asyncio's create_server would: every
    address the host name has, IPv6 ones v6-only, SO_REUSEADDR."""
    host, port = parse_hostport(key, value)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {key} {value}: {exc.strerror or exc}") from None
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
        raise ListenError(f"cannot listen on {key} {value}: {exc.strerror or exc}") from None
    return sockets


def fd_arguments(listeners: dict[str, list[socket.socket]]) -> tuple[list[str], list[int]]:
    """The `--listen-fd` arguments and descriptors to pass to a replacement."""
    args: list[str] = []
    fds: list[int] = []
    for key, sockets in listeners.items():
        for sock in sockets:
            args += ["--listen-fd", f"{key}={sock.fileno()}"]
            fds.append(sock.fileno())
    return args, fds


def inherit(specs: list[str]) -> dict[str, list[socket.socket]]:
    """The sockets named by `--listen-fd key=fd` arguments."""
    listeners: dict[str, list[socket.socket]] = {}
    for spec in specs:
        key, _, fd = spec.partition("=")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        listeners.setdefault(key, []).append(sock)
    return listeners

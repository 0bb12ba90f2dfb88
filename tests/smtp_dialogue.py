"""A raw SMTP client for dialogues that smtplib would refuse to send."""

from __future__ import annotations

import re
import socket


class RawSMTP:
    def __init__(self, host: str, port: int, timeout: float = 15):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed: " + self.buffer.decode("latin-1"))
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> str:
        """One (possibly multi-line) reply, lines joined with newlines."""
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            lines.append(line)
            if not re.match(r"^\d{3}-", line):
                return "\n".join(lines)

    def cmd(self, line: str | bytes) -> str:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True once the server has closed the connection."""
        try:
            self.sock.settimeout(5)
            data = self.sock.recv(65536)
            self.buffer += data
            return data == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawSMTP":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

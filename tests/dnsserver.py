"""A tiny authoritative DNS server for tests: UDP on 127.0.0.1, in a thread.

It answers from a dict of records, so a test can publish SPF policies and
DKIM keys for reserved test domains, and it can be told to misbehave: answer
SERVFAIL, or not answer at all (a timeout), for every name or for some.
Built on dnspython's message parser; it knows no zones, no delegation and no
wildcards, which tests of the relay's sender checks do not need.
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def txt(value: str) -> str:
    """A TXT rdata in presentation form, split into strings of at most 255
    octets (RFC 1035 section 3.3.14; DKIM keys are longer)."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.servfail: set[str] = set()  # names answered with SERVFAIL ("*" = every name)
        self.silent: set[str] = set()  # names never answered ("*" = every name)
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        """Publish records; TXT values are given as plain text."""
        key = (name.lower().rstrip("."), rdtype.upper())
        rdatas = [txt(v) if rdtype.upper() == "TXT" else v for v in values]
        with self._lock:
            self.records.setdefault(key, []).extend(rdatas)

    def start(self) -> "DnsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            try:
                reply = self._answer(data)
            except Exception:
                continue  # a query the parser rejects gets no answer
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            if "*" in self.silent or name in self.silent:
                return None
            servfail = "*" in self.servfail or name in self.servfail
            values = list(self.records.get((name, rdtype), []))
            exists = any(n == name for n, _ in self.records)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif values:
            response.answer.append(dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN,
                                                            question.rdtype, values))
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        # else: NOERROR with no data (the name has other types)
        payload = query.payload if query.edns >= 0 else 512
        wire = response.to_wire(max_size=max(512, payload))
        return wire

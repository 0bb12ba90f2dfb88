"""Connection-level guards: concurrent-connection caps and per-key rate limits.

Pure bookkeeping, no I/O and no clock of its own (the clock is injected), so the
server decides what to answer and the tests need no sockets and no sleeping.

Typical use in the server:

* ``ConnectionLimiter.try_acquire(peer_ip)`` in ``connection_made``; on False answer
  ``421 4.7.0 Too many connections, try again later`` and close (RFC 5321 4.2.3);
  ``release(peer_ip)`` exactly once in ``connection_lost``.
* ``RateLimiter`` keyed by ``ip_key(peer_ip)`` (and the login name) for AUTH failures:
  refuse AUTH with ``454 4.7.0`` while ``blocked(key)``; ``hit(key)`` on each failure.
* ``RateLimiter`` for unknown-recipient counts (address harvesting): ``hit`` on each
  ``550 5.1.1`` and delay the reply by ``tarpit_delay(count(key))`` seconds; drop the
  session (``421``) once ``blocked``.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["ConnectionLimiter", "RateLimiter", "ip_key", "tarpit_delay"]


@functools.lru_cache(maxsize=4096)  # two calls per connection; the parse was 1 % of the CPU under load
def ip_key(ip: str) -> str:
    """The unit a per-client limit counts: the IPv4 address, or the IPv6 /64.

    One IPv6 subscriber usually holds a whole /64, so counting single IPv6 addresses
    would let one client open 2^64 "different" connections. IPv4-mapped IPv6 addresses
    (``::ffff:192.0.2.1``, what a dual-stack socket reports) count as the IPv4 address.
    Anything that is not an IP address (a Unix socket peer, say) is its own key.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionLimiter:
    """Caps concurrent connections, in total and per client (see ``ip_key``)."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        if max_total < 1 or max_per_ip < 1:
            raise ValueError("connection limits must be at least 1")
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self._total = 0
        self._per_key: dict[str, int] = {}

    def try_acquire(self, ip: str) -> bool:
        """Take a slot for a new connection from ``ip``; False when a cap is reached."""
        key = ip_key(ip)
        held = self._per_key.get(key, 0)
        if self._total >= self.max_total or held >= self.max_per_ip:
            return False
        self._per_key[key] = held + 1
        self._total += 1
        return True

    def release(self, ip: str) -> None:
        """Give back the slot of a connection from ``ip`` that ``try_acquire`` granted."""
        key = ip_key(ip)
        held = self._per_key.get(key, 0)
        if held == 0:
            # A release without an acquire is a bug in the caller; failing loudly beats
            # silently drifting into a limiter that lets everyone in.
            raise ValueError("release without a matching try_acquire")
        if held == 1:
            del self._per_key[key]
        else:
            self._per_key[key] = held - 1
        self._total -= 1

    @property
    def total(self) -> int:
        return self._total

    def count(self, ip: str) -> int:
        return self._per_key.get(ip_key(ip), 0)


class RateLimiter:
    """At most ``limit`` events per key in any sliding ``window`` of seconds.

    A sliding-window log: each key keeps the times of its last ``limit`` events, so a
    key is blocked exactly while ``limit`` events fall within the last ``window``
    seconds, with no burst at window boundaries. Memory is bounded: at most
    ``max_keys`` keys (least recently hit evicted first) of ``limit`` floats each.

    Events are recorded even while a key is blocked, so a client that keeps failing
    stays blocked until it has been quiet for a full window.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = now - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def hit(self, key: str) -> bool:
        """Record one event for ``key``; True if it was within the limit, False if over."""
        now = self._clock()
        events = self._live(key, now)
        allowed = events is None or len(events) < self.limit
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
            self._evict()
        else:
            self._events.move_to_end(key)
        events.append(now)
        return allowed

    def count(self, key: str) -> int:
        """Events of ``key`` within the window (saturates at ``limit``)."""
        events = self._live(key, self._clock())
        return 0 if events is None else len(events)

    def blocked(self, key: str) -> bool:
        """True while ``key`` has used up its limit: the next ``hit`` would be over."""
        return self.count(key) >= self.limit

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may act again (0 when it is not blocked)."""
        now = self._clock()
        events = self._live(key, now)
        if events is None or len(events) < self.limit:
            return 0.0
        return max(0.0, events[0] + self.window - now)

    def reset(self, key: str) -> None:
        """Forget ``key`` (e.g. its unknown-recipient count once it authenticates)."""
        self._events.pop(key, None)

    def prune(self) -> None:
        """Drop every key with no event in the window; call now and then to free memory."""
        now = self._clock()
        for key in list(self._events):
            self._live(key, now)

    def __len__(self) -> int:
        return len(self._events)

    def _evict(self) -> None:
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)


def tarpit_delay(count: int, *, free: int = 3, step: float = 1.0, max_delay: float = 30.0) -> float:
    """Seconds to wait before answering the ``count``-th bad recipient of a client.

    The first ``free`` mistakes cost nothing (people mistype), then the delay doubles
    from ``step``: 1, 2, 4, 8 ... up to ``max_delay``, which must stay well below the
    5-minute reply timeout clients use (RFC 5321 4.5.3.2) so an honest one never gives up.
    """
    if count <= free:
        return 0.0
    exponent = min(count - free - 1, 62)  # avoid float overflow on huge counts
    return min(max_delay, step * 2.0**exponent)

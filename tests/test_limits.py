"""relay.limits: connection caps, sliding-window rate limits and the harvest tarpit."""

from __future__ import annotations

import pytest

from relay.limits import ConnectionLimiter, RateLimiter, ip_key, tarpit_delay


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- ip_key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("2001:DB8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("/run/relay.sock", "/run/relay.sock"),
        ("", ""),
    ],
)
def test_ip_key(ip: str, key: str) -> None:
    assert ip_key(ip) == key


# --- ConnectionLimiter ----------------------------------------------------------


def test_per_ip_cap() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=2)
    assert limiter.try_acquire("192.0.2.1")
    assert limiter.try_acquire("192.0.2.1")
    assert not limiter.try_acquire("192.0.2.1")
    assert limiter.try_acquire("192.0.2.2")
    assert limiter.count("192.0.2.1") == 2
    assert limiter.total == 3
    limiter.release("192.0.2.1")
    assert limiter.try_acquire("192.0.2.1")


def test_total_cap() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_ip=3)
    assert all(limiter.try_acquire(f"192.0.2.{i}") for i in range(3))
    assert not limiter.try_acquire("192.0.2.99")
    limiter.release("192.0.2.0")
    assert limiter.try_acquire("192.0.2.99")


def test_refusal_takes_no_slot() -> None:
    limiter = ConnectionLimiter(max_total=1, max_per_ip=1)
    assert limiter.try_acquire("192.0.2.1")
    for _ in range(5):
        assert not limiter.try_acquire("192.0.2.1")
        assert not limiter.try_acquire("192.0.2.2")
    limiter.release("192.0.2.1")
    assert limiter.total == 0
    assert limiter.try_acquire("192.0.2.2")


def test_ipv6_neighbours_share_a_slot() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=1)
    assert limiter.try_acquire("2001:db8::1")
    assert not limiter.try_acquire("2001:db8::2")  # same /64
    assert limiter.try_acquire("2001:db8:0:1::1")  # next /64
    limiter.release("2001:db8::ffff")  # any address of the /64 releases it
    assert limiter.try_acquire("2001:db8::2")


def test_mapped_and_plain_ipv4_are_one_client() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_ip=1)
    assert limiter.try_acquire("::ffff:192.0.2.7")
    assert not limiter.try_acquire("192.0.2.7")


def test_unmatched_release_is_a_bug() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_ip=2)
    with pytest.raises(ValueError):
        limiter.release("192.0.2.1")
    assert limiter.try_acquire("192.0.2.1")
    limiter.release("192.0.2.1")
    with pytest.raises(ValueError):
        limiter.release("192.0.2.1")
    assert limiter.total == 0


@pytest.mark.parametrize(("total", "per_ip"), [(0, 1), (1, 0), (-1, 5)])
def test_connection_limits_must_be_positive(total: int, per_ip: int) -> None:
    with pytest.raises(ValueError):
        ConnectionLimiter(total, per_ip)


# --- RateLimiter ----------------------------------------------------------------


def test_allows_limit_then_blocks() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=3, window=60, clock=clock)
    assert [limiter.hit("k") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.blocked("k")
    assert not limiter.blocked("other")
    assert limiter.count("k") == 3  # saturates at the limit


def test_window_slides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=2, window=10, clock=clock)
    limiter.hit("k")  # t=0
    clock.advance(4)
    limiter.hit("k")  # t=4
    assert limiter.blocked("k")
    assert limiter.retry_after("k") == pytest.approx(6)
    clock.advance(6)  # t=10: the first event leaves the window
    assert not limiter.blocked("k")
    assert limiter.count("k") == 1
    assert limiter.retry_after("k") == 0
    assert limiter.hit("k")
    assert limiter.blocked("k")
    assert limiter.retry_after("k") == pytest.approx(4)  # until t=14, when the t=4 event leaves


def test_persistent_offender_stays_blocked() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=2, window=10, clock=clock)
    limiter.hit("k")
    limiter.hit("k")
    for _ in range(30):  # one failure a second: refused throughout, well past the window
        clock.advance(1)
        assert not limiter.hit("k")
        assert limiter.blocked("k")
    clock.advance(10)  # a full quiet window
    assert not limiter.blocked("k")
    assert limiter.hit("k")


def test_keys_are_independent_and_resettable() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=1, window=60, clock=clock)
    assert limiter.hit("a")
    assert limiter.hit("b")
    assert not limiter.hit("a")
    limiter.reset("a")
    assert limiter.hit("a")
    limiter.reset("never-seen")  # no error


def test_expired_keys_are_pruned() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=5, window=10, clock=clock)
    for key in "abc":
        limiter.hit(key)
    assert len(limiter) == 3
    clock.advance(5)
    limiter.hit("d")
    clock.advance(6)  # a, b, c expired; d not
    limiter.prune()
    assert len(limiter) == 1
    assert limiter.count("d") == 1


def test_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=2, window=60, clock=clock, max_keys=3)
    for key in ["a", "b", "c"]:
        limiter.hit(key)
    limiter.hit("a")  # a is now the most recent
    limiter.hit("d")  # evicts b, the least recently hit
    assert len(limiter) == 3
    assert limiter.count("b") == 0
    assert limiter.count("a") == 2


@pytest.mark.parametrize(("limit", "window", "max_keys"), [(0, 1, 1), (1, 0, 1), (1, -1, 1), (1, 1, 0)])
def test_rate_limits_must_be_positive(limit: int, window: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(limit, window, max_keys=max_keys)


def test_default_clock_is_monotonic() -> None:
    limiter = RateLimiter(limit=1, window=3600)
    assert limiter.hit("k")
    assert not limiter.hit("k")
    assert 0 < limiter.retry_after("k") <= 3600


# --- tarpit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "delay"),
    [(0, 0), (1, 0), (3, 0), (4, 1), (5, 2), (6, 4), (8, 16), (9, 30), (100, 30), (10**9, 30)],
)
def test_tarpit_delay(count: int, delay: float) -> None:
    assert tarpit_delay(count) == delay


def test_tarpit_delay_is_configurable() -> None:
    assert tarpit_delay(1, free=0, step=0.5, max_delay=10) == 0.5
    assert tarpit_delay(3, free=0, step=0.5, max_delay=10) == 2
    assert tarpit_delay(50, free=0, step=0.5, max_delay=10) == 10

"""Delivery claims (relay.store, relay.delivery): every worker process
delivers what it accepted, from memory, and scans the queue for the rest.
A queue entry is claimed by one deliverer at a time, so two processes never
send it twice; a claim runs out when its holder died, and a restarted
service drops them all so that nothing waits a lease."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
from aiosmtpd.controller import Controller

from relay.config import settings_from_dict
from relay.delivery import Delivery
from relay.store import CLAIM_LEASE, Store, release_all_claims

from test_durability_and_delivery import BUYER, queue, send_clean, setup_order, wait_until
from conftest import free_port
from test_store_writer import _hold_the_turn


async def _store_with_notices(tmp_path, n: int) -> tuple[Store, list[int]]:
    store = await Store.open(str(tmp_path / "relay.sqlite3"))
    ids = [await store.enqueue_notice("", f"n{i}@buyer.test", b"Subject: x\r\n\r\nx\r\n") for i in range(n)]
    return store, ids


async def test_two_deliverers_scanning_at_once_never_take_the_same_entry(tmp_path):
    store, ids = await _store_with_notices(tmp_path, 60)
    try:
        now = time.time()
        rounds = await asyncio.gather(*(store.queue_claim(owner, now, limit=7)
                                        for _ in range(6) for owner in ("a", "b")))
        taken = [e.id for entries in rounds for e in entries]
        assert len(taken) == len(set(taken)) == 60
        assert sorted(taken) == sorted(ids)
        assert await store.queue_claim("c", now) == []
    finally:
        await store.close()


async def test_a_claimed_entry_is_left_to_its_holder_until_the_lease_runs_out(tmp_path):
    store, (entry_id,) = await _store_with_notices(tmp_path, 1)
    try:
        now = time.time()
        assert [e.id for e in await store.queue_claim("a", now)] == [entry_id]
        assert await store.queue_claim("b", now + CLAIM_LEASE - 5) == []
        assert await store.queue_due(now + CLAIM_LEASE - 5) == []
        # "a" died without a word: the lease ends and "b" takes over.
        assert [e.id for e in await store.queue_claim("b", now + CLAIM_LEASE + 1)] == [entry_id]
    finally:
        await store.close()


async def test_only_the_holder_renews_or_releases_its_claim(tmp_path):
    store, (entry_id,) = await _store_with_notices(tmp_path, 1)
    try:
        claimed_at = time.time()
        await store.queue_claim("a", claimed_at)
        await store.release_claims("b", [entry_id])  # not b's to give back
        assert await store.queue_claim("b", time.time()) == []
        await asyncio.sleep(0.05)
        await store.renew_claims("a", [entry_id])
        # Renewed: still a's just after the first lease would have ended.
        assert await store.queue_claim("b", claimed_at + CLAIM_LEASE + 0.01) == []
        await store.release_claims("a", [entry_id])
        assert [e.id for e in await store.queue_claim("b", time.time())] == [entry_id]
    finally:
        await store.close()


async def test_a_deferral_ends_the_claim_so_the_retry_is_not_held_back(tmp_path):
    store, (entry_id,) = await _store_with_notices(tmp_path, 1)
    try:
        await store.queue_claim("a", time.time())
        retry_at = time.time() + 1
        await store.mark_deferred(entry_id, "451 later", retry_at)
        assert await store.queue_claim("b", retry_at - 0.5) == []  # not due yet
        (entry,) = await store.queue_claim("b", retry_at)  # due, and nobody's claim is in the way
        assert entry.id == entry_id and entry.state == "deferred" and entry.attempts == 1
    finally:
        await store.close()


async def test_a_service_start_drops_the_claims_of_processes_that_died(tmp_path):
    store, ids = await _store_with_notices(tmp_path, 3)
    await store.queue_claim("killed", time.time())
    await store.close()
    assert release_all_claims(store.path) == 3
    assert release_all_claims(store.path) == 0
    again = await Store.open(store.path)
    try:
        assert sorted(e.id for e in await again.queue_claim("new", time.time())) == sorted(ids)
    finally:
        await again.close()


def test_release_all_claims_leaves_a_missing_store_alone(tmp_path):
    assert release_all_claims(str(tmp_path / "none.sqlite3")) == 0
    assert not (tmp_path / "none.sqlite3").exists()


async def test_message_in_flight_when_killed_goes_out_as_soon_as_the_service_restarts(relay_factory, sink):
    """The killed process held the entry's claim (it was sending it to a
    smarthost that never answered); the restart must not wait out the lease."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never sends a banner
    held: list[socket.socket] = []
    try:
        relay = await relay_factory({"delivery": {"smarthost": f"127.0.0.1:{silent.getsockname()[1]}",
                                                  "timeout": 300.0}})
        aliases = setup_order(relay)
        send_clean(relay, aliases["buyer_alias"])
        await wait_until(lambda: _accepted(silent, held))  # the relay is connected and waiting
        (entry,) = queue(relay)
        assert entry["state"] == "queued"
        await relay.kill()
        relay.rewrite_config({"delivery": {"smarthost": f"127.0.0.1:{sink.port}"}})
        await relay.start()
        (delivered,) = await sink.wait_for_count(1, timeout=CLAIM_LEASE / 4)
        assert delivered.rcpt_tos == [BUYER]
    finally:
        for conn in held:
            conn.close()
        silent.close()


def _accepted(listener: socket.socket, held: list[socket.socket]) -> bool:
    """Accept the relay's connection and keep it open, silent."""
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    held.append(conn)
    return True


# ----------------------------------------- deliveries recorded together

@pytest.mark.parametrize("way", ["one_statement", "long_way"])
async def test_deliveries_are_recorded_together_and_their_claims_end(tmp_path, monkeypatch, way):
    if way == "long_way":  # (relay.store._commit_in_one_statement takes no more rows than this)
        monkeypatch.setattr("relay.store.ROWS_PER_STATEMENT", 4)
    monkeypatch.setattr("relay.store.DELIVERED_AT_ONCE", 2)  # the long way: three statements for five entries
    store, ids = await _store_with_notices(tmp_path, 5)
    try:
        await store.queue_claim("a", time.time())
        before = store.commits
        await store.mark_delivered_many(ids)
        assert store.commits == before + 1
        rows = await store._read(f"SELECT state, attempts, claimed_by, claimed_until FROM queue "
                                 f"WHERE id IN ({', '.join('?' * len(ids))})", ids)
        assert [tuple(row) for row in rows] == [("delivered", 1, None, 0)] * 5
    finally:
        await store.close()


async def test_what_was_handed_over_is_recorded_before_the_deliverer_stops(tmp_path, sink):
    """Deliveries are recorded by a task of their own, after the worker has
    moved on: a stop must wait for that record, or the entries would stay
    claimed until the lease ran out and another process would send them again."""
    settings = settings_from_dict({"store": {"path": str(tmp_path / "relay.sqlite3")},
                                   "delivery": {"smarthost": f"127.0.0.1:{sink.port}", "tls": "none"}})
    store, ids = await _store_with_notices(tmp_path, 3)
    delivery = Delivery(settings, store)
    try:
        entries = await store.queue_claim(delivery.owner, time.time())
        held = _hold_the_turn(store.path)  # the record cannot commit yet
        try:
            await delivery.start()
            for entry in entries:
                delivery.submit(entry, b"Subject: x\r\n\r\nx\r\n")
            await sink.wait_for_count(3, timeout=15)
            await wait_until(lambda: delivery._unrecorded == set(ids))  # each one's 250 seen, none recorded
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, os.close, held)  # the other process lets go while the deliverer stops
            await delivery.stop()
        finally:
            try:
                os.close(held)
            except OSError:
                pass  # already let go
        rows = await store._read(f"SELECT state, claimed_by FROM queue WHERE id IN ({', '.join('?' * len(ids))})",
                                 ids)
        assert [tuple(row) for row in rows] == [("delivered", None)] * 3
    finally:
        await store.close()


class _SlowToAnswer:
    """A next hop that takes `delay` seconds to answer a message's data."""

    def __init__(self, delay: float):
        self.delay = delay
        self.received = 0

    async def handle_DATA(self, server, session, envelope):
        self.received += 1
        await asyncio.sleep(self.delay)
        return "250 2.0.0 Ok"


async def test_a_stop_lets_a_send_under_way_finish_and_records_it(tmp_path):
    """A graceful stop (SIGTERM, a restart) must not cut off a message the
    next hop is answering: cut off, it went back to the queue and was sent
    again by the next start, a duplicate made by the restart alone."""
    next_hop = _SlowToAnswer(delay=0.5)
    controller = Controller(next_hop, hostname="127.0.0.1", port=free_port(), ready_timeout=10)
    controller.start()
    try:
        settings = settings_from_dict({
            "store": {"path": str(tmp_path / "relay.sqlite3")},
            "delivery": {"smarthost": f"127.0.0.1:{controller.server.sockets[0].getsockname()[1]}",
                         "tls": "none"}})
        store, (entry_id,) = await _store_with_notices(tmp_path, 1)
        delivery = Delivery(settings, store)
        try:
            (entry,) = await store.queue_claim(delivery.owner, time.time())
            await delivery.start()
            delivery.submit(entry, b"Subject: x\r\n\r\nx\r\n")
            await wait_until(lambda: next_hop.received == 1)  # the data is there, its answer on the way
            await delivery.stop()
            (row,) = await store._read("SELECT state, claimed_by FROM queue WHERE id = ?", (entry_id,))
            assert tuple(row) == ("delivered", None)
        finally:
            await store.close()
    finally:
        controller.stop()

"""listen.workers: several processes share the MX port (SO_REUSEPORT); each
delivers what it accepted, none sends a message twice; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time

import aiosmtplib
import pytest

from conftest import free_port
from relay.sharing import Shared, bind
from relay.workers import Workers
from service_support import hostport, make_tls_files, sample, scrape_until, seller_message, wait_for_event
from test_durability_and_delivery import BUYER, queue, setup_order, wait_until


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except FileNotFoundError:
        return []


async def test_two_workers_accept_and_deliver_everything(relay_factory, sink):
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    alias = relay.open_order("o1", "s1", "bob@buyer.test")["seller_alias"]
    children = await wait_until(lambda: child_pids(relay.proc.pid))
    assert len(children) == 1, relay.log_lines
    count = 60

    async def send(n: int) -> None:
        data = (f"From: bob@buyer.test\r\nTo: {alias}\r\nSubject: q{n}\r\n\r\nQuestion number {n}.\r\n")
        client = aiosmtplib.SMTP(hostname=relay.mx[0], port=relay.mx[1], timeout=30)
        await client.connect()
        await client.sendmail("bob@buyer.test", [alias], data)
        await client.quit()

    for batch in range(0, count, 10):
        await asyncio.gather(*(send(n) for n in range(batch, batch + 10)))
    delivered = await sink.wait_for_count(count, timeout=30)
    assert sorted(int(d.data.split(b"Subject: q")[1].split(b"\r\n")[0]) for d in delivered) == list(range(count))
    rows = relay.audit("o1")
    assert len(rows) == count and all(r["verdict"] == "accepted" for r in rows)
    assert await relay.stop(timeout=60) == 0
    assert len(sink.messages) == count  # nothing sent twice by the two deliverers
    assert not relay.events("relay.worker_exited")
    roles = sorted((e["role"], e["pid"]) for e in relay.events("relay.started"))
    assert roles == [("acceptor", children[0]), ("primary", relay.proc.pid)]
    assert {e["state"] for e in queue(relay)} == {"delivered"}
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@contextlib.contextmanager
def stopped(pid: int, relay):
    """Hold process `pid` stopped (SIGSTOP), caught outside a store write:
    a process stopped inside one would keep every other writer waiting, and
    the others would answer 451 (true of any stalled SQLite writer)."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        while open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "T":
            time.sleep(0.001)
        if _store_writable(relay):
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)  # let it finish that write
    else:
        raise AssertionError(f"process {pid} always held the store's write lock")
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _store_writable(relay) -> bool:
    db = sqlite3.connect(relay.workdir / "relay.sqlite3", timeout=0)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def _listening_inodes(pid: int, port: int) -> set[str]:
    """The socket inodes process `pid` listens on at `port`."""
    wanted = set()
    with open(f"/proc/{pid}/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:  # LISTEN
                wanted.add(fields[9])
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in wanted:
            held.add(target[8:-1])
    return held


async def test_a_stalled_worker_strands_no_new_connection(relay_factory, sink):
    """The processes accept from one shared socket (relay.listeners), so the
    one that is free takes the next connection.  With a socket per process
    (SO_REUSEPORT) the kernel would hand about half of them to a stalled
    process, where they would wait unanswered."""
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2}})
    relay.add_seller("s1", "Shop", ["sam@shop.example"])
    alias = relay.open_order("o1", "s1", "bob@buyer.test")["seller_alias"]
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    await wait_until(lambda: len(relay.events("relay.started")) == 2)
    shared = _listening_inodes(relay.proc.pid, relay.mx[1])
    assert len(shared) == 1 and _listening_inodes(acceptor, relay.mx[1]) == shared
    with stopped(acceptor, relay):
        for n in range(12):
            data = f"From: bob@buyer.test\r\nTo: {alias}\r\nSubject: q{n}\r\n\r\nQuestion {n}.\r\n"
            with smtplib.SMTP(*relay.mx, timeout=10) as client:
                client.sendmail("bob@buyer.test", [alias], data)
        await sink.wait_for_count(12, timeout=30)
    assert await relay.stop(timeout=60) == 0


async def test_metrics_count_every_worker_process_and_keep_a_dead_ones_counts(relay_factory, sink):
    """Only the primary serves /metrics; the other process reports its
    counters to it.  Each process is stopped in turn (SIGSTOP) so that the
    other one must take the messages."""
    metrics_port = free_port()
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2},
                                 "metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    alias = setup_order(relay)["seller_alias"]
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    await wait_until(lambda: len(relay.events("relay.started")) == 2)
    for stalled, count in ((relay.proc.pid, 3), (acceptor, 2)):
        with stopped(stalled, relay):
            _send_buyer_messages(relay, alias, count)
    await sink.wait_for_count(5, timeout=30)
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    def counted(text: str) -> bool:
        return sample(text, "relay_messages_accepted_total") == 5.0 and \
            sample(text, "relay_deliveries_total", 'outcome="delivered"') == 5.0
    text = await scrape_until(url, counted)
    assert sample(text, "relay_transaction_seconds_count") == 5.0
    assert sample(text, "relay_sessions_open") == 0.0

    os.kill(acceptor, signal.SIGKILL)
    await wait_for_event(relay, "relay.worker_exited", timeout=20)
    text = await scrape_until(url, counted)  # what the dead process counted stays counted
    assert await relay.stop(timeout=60) == 0


async def test_more_workers_need_a_fixed_port(tmp_path):
    import subprocess
    import sys
    config = tmp_path / "c.toml"
    config.write_text('[listen]\nmx = "127.0.0.1:0"\nworkers = 2\n')
    result = subprocess.run([sys.executable, "-m", "relay", "--config", str(config), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "listen.workers" in result.stderr


def _send_buyer_messages(relay, alias: str, count: int) -> None:
    for _ in range(count):
        n = next(_serial)
        data = f"From: {BUYER}\r\nTo: {alias}\r\nSubject: q{n}\r\n\r\nQuestion number {n}.\r\n"
        with smtplib.SMTP(*relay.mx, timeout=30) as client:
            client.sendmail(BUYER, [alias], data)


def _claims(relay) -> dict[int, str]:
    """Queue entry id -> the deliverer holding it ("<pid>.<random>")."""
    with sqlite3.connect(f"file:{relay.workdir / 'relay.sqlite3'}?mode=ro", uri=True) as db:
        return {i: owner or "" for i, owner in db.execute("SELECT id, claimed_by FROM queue")}


_serial = itertools.count()


def _send_through(relay, alias: str, pid: int, stalled: int) -> int:
    """Send one buyer message while process `stalled` is stopped, so that
    process `pid` accepts it; return its queue entry (claimed by `pid`)."""
    before = set(_claims(relay))
    with stopped(stalled, relay):
        _send_buyer_messages(relay, alias, 1)
    (entry,) = set(_claims(relay)) - before
    assert _claims(relay)[entry].startswith(f"{pid}."), _claims(relay)
    return entry


@pytest.fixture
async def two_workers_stalled(relay_factory):
    """A relay of two worker processes whose next hop accepts connections and
    never answers: its messages stay claimed by the process that took them."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        yield await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2},
                                   "delivery": {"smarthost": f"127.0.0.1:{silent.getsockname()[1]}",
                                                "timeout": 300.0}})
    finally:
        silent.close()


async def test_a_worker_that_dies_is_replaced_and_its_messages_are_taken_over_at_once(two_workers_stalled):
    """kill -9 of an acceptor: the primary says so, gives the dead process's
    delivery claims back (taken over now, not a 2-minute lease later), and
    starts a replacement that takes mail on the same port."""
    relay = two_workers_stalled
    aliases = setup_order(relay)
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    entry = _send_through(relay, aliases["seller_alias"], acceptor, stalled=relay.proc.pid)

    os.kill(acceptor, signal.SIGKILL)
    (exited,) = await wait_for_event(relay, "relay.worker_exited", timeout=20)
    assert exited["pid"] == acceptor
    (released,) = await wait_for_event(relay, "delivery.claims_released", timeout=20)
    assert released["pid"] == acceptor and released["entries"] >= 1
    await wait_until(lambda: _claims(relay)[entry].startswith(f"{relay.proc.pid}."), timeout=20)

    (started,) = await wait_for_event(relay, "relay.worker_started", timeout=20)
    replacement = started["pid"]
    assert child_pids(relay.proc.pid) == [replacement]
    await wait_until(lambda: len(relay.events("relay.started")) >= 3, timeout=30)
    _send_through(relay, aliases["seller_alias"], replacement, stalled=relay.proc.pid)
    assert await relay.stop(timeout=60) == 0
    assert not relay.events("relay.worker_start_failed")
    assert len(relay.events("relay.worker_started")) == 1  # nothing replaced on the way out


async def test_a_worker_that_keeps_dying_at_start_is_restarted_ever_more_slowly():
    """A replacement that dies at once (say, a broken configuration file) is
    started again after 1 s, then 2 s, 4 s...: the primary does not spin."""
    events: list[tuple[str, dict]] = []
    third_exit = asyncio.Event()

    class Log:
        def info(self, name, **fields):
            events.append((name, fields))
            if sum(1 for e in events if e[0] == "relay.worker_exited") >= 3:
                third_exit.set()

        error = info

    async def nothing(pid: int) -> None:
        return None

    first = subprocess.Popen([sys.executable, "-c", "pass"])
    pool = Workers(([sys.executable, "-c", "raise SystemExit(2)"], []), Log(), nothing)
    pool.watch([first.pid])
    await asyncio.wait_for(third_exit.wait(), timeout=30)
    pool.terminate()
    await pool.reap(10)
    pauses = [fields["restart_in_s"] for name, fields in events if name == "relay.worker_exited"]
    assert pauses[:3] == [1.0, 2.0, 4.0]
    assert pool.pids == []
    first.returncode = 0  # reaped by the pool, not by Popen


def test_a_replacement_inherits_the_very_sockets_named_on_its_command_line():
    shared = Shared(listeners={"listen.mx": bind("listen.mx", "127.0.0.1:0")})
    shared.metrics_in, shared.metrics_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    (listener,) = shared.listeners["listen.mx"]
    try:
        args, fds = shared.fd_arguments()
        assert args == ["--listen-fd", f"listen.mx={listener.fileno()}",
                        "--metrics-fd", str(shared.metrics_out.fileno())]
        assert fds == [listener.fileno(), shared.metrics_out.fileno()]
        inherited = Shared.inherit([args[1]], int(args[3]))
        (same,) = inherited.listeners["listen.mx"]
        assert same.getsockname() == listener.getsockname()
        inherited.metrics_out.send(b"counts")
        assert shared.metrics_in.recv(100) == b"counts"
        for sock in (same, inherited.metrics_out):
            sock.detach()  # the same descriptors: closed once, below
    finally:
        for sock in (listener, shared.metrics_in, shared.metrics_out):
            sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_cannot_start_on_a_port_in_use(tmp_path, workers):
    """Every listener is bound by relay.sharing.bind (before the fork with
    more workers): a port in use is one sentence and exit 1 either way."""
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(f'[listen]\nmx = "127.0.0.1:{port}"\nworkers = {workers}\n'
                          f'[store]\npath = "{tmp_path / "s.sqlite3"}"\n')
        result = subprocess.run([sys.executable, "-m", "relay", "--config", str(config), "serve"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert f"cannot listen on listen.mx 127.0.0.1:{port}: Address already in use" in result.stderr
    finally:
        busy.close()


async def test_a_replacement_worker_serves_the_submission_port_too(relay_factory, tmp_path):
    """The submission socket (STARTTLS, AUTH) is shared and inherited like
    the MX one: with the primary stopped, the replacement of a killed worker
    takes a seller's authenticated message."""
    tls = make_tls_files(tmp_path / "tls")
    relay = await relay_factory({"listen": {"mx": f"127.0.0.1:{free_port()}", "workers": 2,
                                            "submission": f"127.0.0.1:{free_port()}"},
                                 "tls": {"cert": str(tls.cert), "key": str(tls.key)}})
    relay.add_seller("s1", "Sam's Shop", ["sam@shop.example"])
    order = relay.open_order("o1", "s1", BUYER, "Bob")
    relay.cli("seller", "passwd", "s1", input=b"correct horse battery staple\n", check=True)
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    os.kill(acceptor, signal.SIGKILL)
    (started,) = await wait_for_event(relay, "relay.worker_started", timeout=20)
    await wait_until(lambda: len(relay.events("relay.started")) >= 3, timeout=30)
    submission = hostport(relay.events("relay.started")[-1]["submission"])
    with stopped(relay.proc.pid, relay):
        with smtplib.SMTP(*submission, timeout=30) as client:
            client.starttls(context=tls.client_context())
            client.login("s1", "correct horse battery staple")
            client.sendmail("sam@shop.example", [order["buyer_alias"]],
                            seller_message("sam@shop.example", order["buyer_alias"]))
        (row,) = relay.audit("o1")
        assert row["verdict"] == "accepted"
    (delivered,) = await relay.sink.wait_for_count(1, timeout=30)
    assert delivered.rcpt_tos == [BUYER]
    assert started["pid"] in child_pids(relay.proc.pid)
    assert await relay.stop(timeout=60) == 0


@pytest.mark.parametrize("edit", ["another store", "broken TOML"])
async def test_a_replacement_worker_runs_on_the_primarys_configuration(two_workers_stalled, tmp_path, edit):
    """The file may say something the running service does not: a store
    path that a SIGHUP refused to change ("needs a restart"), or broken TOML
    that a SIGHUP refused whole.  A replacement read the file: on another
    store it refused valid aliases 550 5.1.1 (13 of 20 in a black-box
    probe); on broken TOML it could not start at all.  It now starts on the
    primary's running configuration, and takes mail into the same store."""
    relay = two_workers_stalled
    store = relay.config["store"]["path"]
    aliases = setup_order(relay)
    (acceptor,) = await wait_until(lambda: child_pids(relay.proc.pid))
    if edit == "another store":
        relay.rewrite_config({"store": {"path": str(tmp_path / "elsewhere" / "relay.sqlite3")}})
    else:
        relay.config_path.write_text(relay.config_path.read_text() + "\n[limits\n")
    os.kill(relay.proc.pid, signal.SIGHUP)
    await wait_for_event(relay, "relay.reload_failed", count=2, timeout=20)  # the primary's, the acceptor's
    os.kill(acceptor, signal.SIGKILL)
    (started,) = await wait_for_event(relay, "relay.worker_started", timeout=20)
    await wait_until(lambda: [e for e in relay.events("relay.started") if e["pid"] == started["pid"]],
                     timeout=30)
    (replacement,) = [e for e in relay.events("relay.started") if e["pid"] == started["pid"]]
    assert replacement["store"] == store
    _send_through(relay, aliases["seller_alias"], started["pid"], stalled=relay.proc.pid)
    assert len(relay.events("relay.worker_exited")) == 1  # the killed one only

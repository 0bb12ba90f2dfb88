"""A full disk or a locked store: 451/452, never 250, and recovery once it clears.

The store lives on a small tmpfs mounted by the test (root only; skipped with
the reason otherwise)."""

from __future__ import annotations

import os
import sqlite3
import smtplib
import subprocess
from pathlib import Path

import pytest

from service_support import wait_for_event

SELLER = "sam@shop.example"
BUYER = "bob@buyer.test"


@pytest.fixture
def small_fs(tmp_path):
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mountpoint)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def send(relay, alias: str, n: int, sender: str = SELLER) -> tuple[int, bytes]:
    data = (f"From: {sender}\r\nTo: {alias}\r\nSubject: parcel {n}\r\n\r\n"
            f"Parcel number {n} leaves tomorrow morning.\r\n" + "padding line\r\n" * 300)
    with smtplib.SMTP(*relay.mx, timeout=30) as client:
        client.ehlo()
        client.mail(sender)
        code, reply = client.rcpt(alias)
        if code != 250:
            return code, reply
        return client.data(data)


async def test_full_disk_gives_452_then_recovers(relay_factory, sink, small_fs):
    """Once the disk is full, a commit may still fit in the space SQLite's
    log file already has (after a checkpoint it writes over the start of it
    again), and such a message is durably stored: 250 is right.  What the
    relay must never do is answer 250 and lose the message; when nothing
    fits any more it answers 451/452, and once space is back it takes mail
    again and delivers everything it accepted."""
    relay = await relay_factory({"store": {"path": str(small_fs / "relay.sqlite3")}})
    relay.add_seller("s1", "Shop", [SELLER])
    alias = relay.open_order("o1", "s1", BUYER)["seller_alias"]  # buyer mail: no over-messaging rule
    assert send(relay, alias, 1, BUYER)[0] == 250
    await sink.wait_for_count(1)
    filler = fill(small_fs)
    codes: list[tuple[int, bytes]] = []
    for n in range(2, 42):
        codes.append(send(relay, alias, n, BUYER))
        if codes[-1][0] != 250:
            break
    accepted = [f"parcel {n}".encode() for n, (code, _) in enumerate(codes, start=2) if code == 250]
    assert codes[-1][0] in (451, 452), codes
    assert all(code in (250, 451, 452) for code, _ in codes), codes
    assert codes[-1][1].startswith((b"4.3.1", b"4.3.0")), codes[-1]
    filler.unlink()
    code, _ = send(relay, alias, 99, BUYER)
    assert code == 250
    messages = await sink.wait_for_count(2 + len(accepted))
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in messages]
    assert sorted(subjects) == sorted([b"parcel 1", *accepted, b"parcel 99"]), subjects


def assert_451_while_locked(relay, alias: str) -> None:
    """A message sent while another process holds the store's write lock gets 451 4.3.0."""
    locker = sqlite3.connect(relay.config["store"]["path"], isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        code, reply = send(relay, alias, 1)
        assert code == 451 and reply.startswith(b"4.3.0"), (code, reply)
    finally:
        locker.execute("ROLLBACK")
        locker.close()


async def test_locked_store_gives_451_then_recovers(relay_factory, sink, tmp_path):
    relay = await relay_factory({"store": {"busy_timeout": 0.3}})
    relay.add_seller("s1", "Shop", [SELLER])
    alias = relay.open_order("o1", "s1", "bob@buyer.test")["buyer_alias"]
    assert_451_while_locked(relay, alias)
    code, _ = send(relay, alias, 2)
    assert code == 250
    (delivered,) = await sink.wait_for_count(1)
    assert b"parcel 2" in delivered.data
    assert [r["verdict"] for r in relay.audit()] == ["accepted"]


async def test_a_size_refusal_that_cannot_be_audited_is_a_451(relay_factory, tmp_path):
    """Every message to an alias is audited, the one refused for its size
    too; while its audit row cannot be written the sender hears 451 (and
    sends again), never a 552 that leaves no record."""
    relay = await relay_factory({"store": {"busy_timeout": 0.3}, "limits": {"message_size": 2000}})
    relay.add_seller("s1", "Shop", [SELLER])
    alias = relay.open_order("o1", "s1", "bob@buyer.test")["buyer_alias"]
    assert_451_while_locked(relay, alias)
    code, reply = send(relay, alias, 2)
    assert code == 552 and reply.startswith(b"5.3.4"), (code, reply)
    assert [(r["verdict"], r["reasons"]) for r in relay.audit()] == [("rejected", ["message_too_large"])]


@pytest.mark.parametrize("removed", [("relay.sqlite3", "relay.sqlite3-wal", "relay.sqlite3-shm"),
                                     ("relay.sqlite3-wal",)])
async def test_a_store_removed_under_the_relay_gets_451_never_250(relay_factory, sink, removed):
    """A 250 must mean the message is on disk for good.  With its files
    deleted the relay went on committing into the unlinked files and
    answering 250 (a black-box probe), and all of it was gone at the next
    start.  Now it sees that the file at the store's path is not the one it
    writes, answers 451 and logs why."""
    relay = await relay_factory()
    relay.add_seller("s1", "Shop", [SELLER])
    alias = relay.open_order("o1", "s1", BUYER)["buyer_alias"]
    assert send(relay, alias, 1)[0] == 250
    await sink.wait_for_count(1)
    for name in removed:
        (relay.workdir / name).unlink()
    code, reply = send(relay, alias, 2)
    assert code == 451 and reply.startswith(b"4.3.0"), (code, reply)
    (event,) = await wait_for_event(relay, "store.replaced")
    assert event["level"] == "error" and event["path"] == str(relay.workdir / "relay.sqlite3")

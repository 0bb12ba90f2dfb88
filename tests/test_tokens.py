"""Message tokens from a pool of the kernel's randomness (relay.tokens):
every byte is handed out once, to one caller, in one process."""

from __future__ import annotations

import os
import threading

from relay import tokens


def test_tokens_are_hex_of_the_asked_size_and_never_repeat_across_refills():
    drawn = [tokens.token_hex(16) for _ in range(3 * tokens.POOL_SIZE // 16 + 7)]
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in drawn)
    assert len(set(drawn)) == len(drawn)
    assert len(tokens.token_hex(tokens.POOL_SIZE + 5)) == 2 * (tokens.POOL_SIZE + 5)  # larger than the pool


def test_threads_drawing_at_once_get_different_bytes():
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        for _ in range(5000):
            out.append(tokens.token_hex(12))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [t for out in drawn for t in out]
    assert len(set(everything)) == len(everything) == 20000


def test_a_forked_child_does_not_hand_out_its_parents_next_bytes():
    tokens.token_hex(8)  # the pool is filled, and mostly unused
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next token, to the parent
        try:
            os.write(write_end, tokens.token_hex(8).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_token = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_token) == 16
    assert child_token != tokens.token_hex(8)


def test_tokens_the_store_indexes_begin_with_the_time_and_keep_their_random_part():
    """relay Message-IDs and bounce tokens: in time order (new index entries
    land on the same pages), with as many random bytes as asked for."""
    import time

    before = time.time_ns() // 1000
    drawn = [tokens.ordered_token_hex(12) for _ in range(2000)]
    after = time.time_ns() // 1000
    assert all(len(t) == 14 + 24 and int(t, 16) >= 0 for t in drawn)
    stamps = [int(t[:14], 16) for t in drawn]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after
    assert len({t[14:] for t in drawn}) == len(drawn)  # the random part alone tells them apart


def test_the_relay_message_id_is_time_ordered():
    from relay.rewrite import new_message_id

    first, second = new_message_id("mx.relay.example"), new_message_id("mx.relay.example")
    assert first.endswith("@mx.relay.example>") and len(first) == len("<@mx.relay.example>") + 14 + 32
    assert first[1:15] <= second[1:15]

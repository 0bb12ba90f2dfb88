"""Random tokens for each message (Message-IDs, bounce tokens, MIME
boundaries), drawn from a pool of the kernel's randomness; those the store
indexes begin with the time (ordered_token_hex).

`secrets.token_hex` asks the kernel (getrandom) for every token, and the
call lets go of the GIL: with the store's writer thread waiting for it, the
event loop then waits to take it back, two or three times a message.  Here
the kernel's bytes are fetched POOL_SIZE at a time and handed out in order,
each byte once: the tokens are as unpredictable as os.urandom's, from the
same source.  Each byte goes to one caller (a lock: the rewriter runs in a
worker thread for large messages), and a forked child never hands out its
parent's bytes (the pool is emptied in the child at fork).
"""

from __future__ import annotations

import os
import threading
import time

POOL_SIZE = 4096  # bytes fetched at once: about 250 messages' tokens

_pool = b""
_used = 0
_lock = threading.Lock()


def token_hex(nbytes: int) -> str:
    """`nbytes` random bytes as 2 * nbytes hex digits, as secrets.token_hex."""
    global _pool, _used
    with _lock:
        if _used + nbytes > len(_pool):
            _pool, _used = os.urandom(max(POOL_SIZE, nbytes)), 0
        start = _used
        _used += nbytes
        return _pool[start:_used].hex()


def ordered_token_hex(nbytes: int) -> str:
    """The time in microseconds (14 hex digits), then `nbytes` random bytes
    as hex: a token for a column the store indexes (a relay Message-ID, a
    bounce token).  A random key lands on a random page of its index, and
    every page a commit changes is written whole to the WAL: 6.1 pages a
    message with random keys, 4.0 with keys in time order (30,000 messages
    stored, batches of 10).  The random part alone is what makes the token
    unguessable; the prefix tells no more than the message's Date."""
    return f"{time.time_ns() // 1000:014x}{token_hex(nbytes)}"


def _forget_in_child() -> None:
    global _pool, _used, _lock
    _pool, _used, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)

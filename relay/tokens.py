"""Random tokens for each message (Message-IDs, bounce tokens, MIME
boundaries), drawn from a pool of the kernel's randomness.

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


def _forget_in_child() -> None:
    global _pool, _used, _lock
    _pool, _used, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)

"""Submission passwords, hashed with scrypt (RFC 7914) from the standard library.

Stored form, self-describing so the cost can be raised later without breaking old hashes:

    scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>

e.g. ``scrypt$32768$8$1$3q2+7w...$Jc9g...``. Base64 is standard, unpadded.

Hashing costs ~50-100 ms of CPU by design: call these from the event loop through
``asyncio.to_thread`` (hashlib releases the GIL), never directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import unicodedata

__all__ = ["hash_password", "needs_rehash", "verify_password"]

SCHEME = "scrypt"
# OWASP's scrypt floor is N=2^17, r=8, p=1 for web logins; an SMTP submission client
# re-authenticates on every connection, so we take N=2^15 (32 MiB, ~50 ms) as the default.
N = 2**15
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32

# Ceilings accepted when verifying, so a tampered or corrupt stored string cannot make
# one login attempt allocate gigabytes or spin for minutes.
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
MAX_PASSWORD_BYTES = 1024


def _encode(pw: str) -> bytes:
    # RFC 8265 (OpaqueString) compares passwords after NFC normalisation, so the same
    # password typed on two systems that compose accents differently still matches.
    return unicodedata.normalize("NFC", pw).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(pw: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL refuses by default above 32 MiB; scrypt needs 128 * r * n bytes (+ p's share).
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _valid_params(n: int, r: int, p: int) -> bool:
    return 2 <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P


def hash_password(pw: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """Hash ``pw`` with a fresh random salt; return the self-describing stored form."""
    if not pw:
        raise ValueError("the password is empty")
    data = _encode(pw)
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    if not _valid_params(n, r, p):
        raise ValueError("scrypt parameters out of range (n a power of two up to 2^20, r <= 32, p <= 16)")
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(data, salt, n, r, p, HASH_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        return None
    if not _valid_params(n, r, p) or not salt or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


def verify_password(pw: str, stored: str | None) -> bool:
    """True if ``pw`` matches ``stored``; False for a wrong password or an unusable stored string.

    Pass ``stored=None`` for an unknown user or one without a password: the same scrypt
    work is done and False returned, so response time does not tell which users exist.
    """
    if stored is None:
        _scrypt(_encode(pw)[:MAX_PASSWORD_BYTES] or b"-", b"\0" * SALT_BYTES, N, R, P, HASH_BYTES)
        return False
    parsed = _parse(stored)
    if parsed is None:
        return False
    data = _encode(pw)
    if not data or len(data) > MAX_PASSWORD_BYTES:
        return False
    n, r, p, salt, digest = parsed
    candidate = _scrypt(data, salt, n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)


def needs_rehash(stored: str, *, n: int = N, r: int = R, p: int = P) -> bool:
    """True if ``stored`` was made with other parameters than the current ones.

    Call after a successful ``verify_password`` and store ``hash_password(pw)`` again.
    """
    parsed = _parse(stored)
    return parsed is None or parsed[:3] != (n, r, p)

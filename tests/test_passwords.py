"""relay.passwords: scrypt hashes in a self-describing format."""

from __future__ import annotations

import base64

import pytest

from relay import passwords
from relay.passwords import hash_password, needs_rehash, verify_password

# Cheap parameters keep the suite fast; one test runs the real defaults.
FAST = {"n": 2**10, "r": 8, "p": 1}


def test_default_parameters_round_trip() -> None:
    stored = hash_password("correct horse battery staple")
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", passwords.N, passwords.R, passwords.P)
    assert len(base64.b64decode(salt + "==")) == passwords.SALT_BYTES
    assert len(base64.b64decode(digest + "==")) == passwords.HASH_BYTES
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("correct horse battery stapl", stored)
    assert not needs_rehash(stored)


@pytest.mark.parametrize("pw", ["s3cret", "ünïcødé pässwörd", "with $ dollar", " spaces ", "x" * 1024])
def test_round_trip(pw: str) -> None:
    stored = hash_password(pw, **FAST)
    assert verify_password(pw, stored)
    assert not verify_password(pw + "x", stored)
    assert not verify_password(pw.upper() if pw.upper() != pw else pw.lower(), stored)


def test_salt_is_random() -> None:
    a, b = hash_password("same", **FAST), hash_password("same", **FAST)
    assert a != b
    assert verify_password("same", a) and verify_password("same", b)


def test_unicode_is_normalised() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert verify_password(decomposed, hash_password(composed, **FAST))


def test_parameters_come_from_the_stored_string() -> None:
    stored = hash_password("pw", n=2**11, r=4, p=2)
    assert stored.startswith("scrypt$2048$4$2$")
    assert verify_password("pw", stored)
    assert needs_rehash(stored)
    assert not needs_rehash(stored, n=2**11, r=4, p=2)


@pytest.mark.parametrize("pw", ["", "x" * 1025])
def test_refuses_to_hash(pw: str) -> None:
    with pytest.raises(ValueError):
        hash_password(pw, **FAST)


@pytest.mark.parametrize("params", [{"n": 1000}, {"n": 2**21}, {"r": 0}, {"p": 17}])
def test_refuses_bad_parameters(params: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        hash_password("pw", **{**FAST, **params})


def _good() -> str:
    return hash_password("pw", **FAST)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pw",
        "plain$pw",
        "bcrypt$1024$8$1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$1024$8$1$c2FsdA",
        "scrypt$abc$8$1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$1000$8$1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",  # n too big: no 1 TiB alloc
        "scrypt$1024$8$1$!!!$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$1024$8$1$$aGFzaGhhc2hoYXNoaGFzaA",  # empty salt
        "scrypt$1024$8$1$c2FsdA$aGFzaA",  # hash too short
    ],
)
def test_unusable_stored_strings_never_match(stored: str) -> None:
    assert not verify_password("pw", stored)
    assert needs_rehash(stored)


def test_tampered_hash_does_not_match() -> None:
    stored = _good()
    head, digest = stored.rsplit("$", 1)
    raw = bytearray(base64.b64decode(digest + "=="))
    raw[0] ^= 1
    assert not verify_password("pw", head + "$" + base64.b64encode(bytes(raw)).decode().rstrip("="))


def test_empty_or_huge_candidates_never_match() -> None:
    stored = _good()
    assert not verify_password("", stored)
    assert not verify_password("x" * 5000, stored)


def test_unknown_user_is_false() -> None:
    assert verify_password("anything", None) is False
    assert verify_password("", None) is False

"""Alias minting and address normalisation.

Aliases are the only thing a party ever learns about the other side, so they
must be unguessable (OWASP asks >= 64 bits; we use 18 characters from a
31-letter alphabet, about 89 bits, from `secrets`) and unambiguous when read
aloud or copied by hand (no 0/o, 1/l/i look-alikes).  They are lowercase so a
case-insensitive match is an exact match.

Real addresses are parsed once, with one parser (email-validator), and stored
normalised: lowercase domain (IDNA to ASCII), local part lowercased too since
every check the contract asks for is case-insensitive.
"""

from __future__ import annotations

import functools
import math
import re
import secrets

import email_validator
from email_validator import EmailNotValidError, validate_email

ALIAS_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0 o 1 l i
ALIAS_LENGTH = 18
ALIAS_BITS = ALIAS_LENGTH * math.log2(len(ALIAS_ALPHABET))
ALIAS_PATTERN = re.compile(rf"[{ALIAS_ALPHABET}]{{{ALIAS_LENGTH}}}")

# Operators and test suites use the reserved test names (RFC 2606, RFC 6761);
# email-validator refuses them by default as "special use".
RESERVED_TLDS = frozenset({"test", "invalid", "localhost", "example"})
email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = [
    d for d in email_validator.SPECIAL_USE_DOMAIN_NAMES if d not in RESERVED_TLDS
]


class AddressError(ValueError):
    """An address that is not a valid mailbox; the message says why."""


def mint_alias() -> str:
    return "".join(secrets.choice(ALIAS_ALPHABET) for _ in range(ALIAS_LENGTH))


def looks_like_alias(local: str) -> bool:
    return ALIAS_PATTERN.fullmatch(local) is not None


@functools.lru_cache(maxsize=65536)
def normalize_address(address: str) -> str:
    """Validate a real mailbox address (no DNS) and return its normal form.

    Cached: the same few addresses are checked several times per message."""
    text = address.strip()
    if not text:
        raise AddressError("the address is empty")
    if any(ch in text for ch in "\r\n\0<>") or any(ch.isspace() for ch in text):
        raise AddressError(f"{text!r} is not an email address: it holds spaces or brackets")
    try:
        result = validate_email(text, check_deliverability=False, globally_deliverable=False,
                                allow_smtputf8=True, allow_quoted_local=False, allow_domain_literal=False)
    except EmailNotValidError as exc:
        raise AddressError(f"{text!r} is not a valid email address: {exc}") from None
    domain = result.ascii_domain or result.domain
    return f"{result.local_part.lower()}@{domain.lower()}"


def split_address(address: str) -> tuple[str, str]:
    """Split on the last @ (RFC 5321: the local part may hold a quoted @)."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address, ""
    return local, domain

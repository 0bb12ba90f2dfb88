"""The one email parser the relay uses, with a cache of parsed header fields.

The stdlib's `policy.default` parses a header field again on every access
(`msg["Content-Type"]`, `get_content_type()`, `get_param()`, ...), and the
relay reads the same fields many times per message: in the structure checks,
the filters and the rewriter.  That re-parsing was a fifth of the relay's CPU
under the benchmark's mixed load.  Parsed fields are immutable, and the parse
depends only on the name and the raw value, so short values are memoised
(most repeat across messages too: `text/plain; charset=utf-8`, `1.0`, `7bit`).
Long values are parsed each time, so the cache stays small (bounded count,
bounded value size).

Fields whose value is new in every message (Message-ID, Date, ...) go to a
second, small cache: it only has to serve the few reads of one message, and
kept in the big one they pushed the repeating values out and filled it with
parsed objects that the garbage collector re-examined on every full
collection (4096 entries were about 130,000 objects, and each full
collection under load took 100-250 ms: bench/gc_probe.py).
"""

from __future__ import annotations

import functools
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy

CACHED_VALUE_LENGTH = 256
CACHE_ENTRIES = 1024
UNIQUE_CACHE_ENTRIES = 256  # > the fields of all messages in progress at once

# Fields whose values rarely repeat from one message to the next.
UNIQUE_VALUED = frozenset(("message-id", "date", "references", "in-reply-to", "subject", "received",
                           "resent-message-id", "resent-date", "content-id", "dkim-signature",
                           "arc-seal", "arc-message-signature", "arc-authentication-results",
                           "authentication-results", "x-relay-loop"))


class CachingPolicy(EmailPolicy):
    """`policy.default`, with short header values parsed once per process."""

    def header_fetch_parse(self, name, value):  # type: ignore[override]
        if hasattr(value, "name") or len(value) > CACHED_VALUE_LENGTH:
            return super().header_fetch_parse(name, value)
        if name.lower() in UNIQUE_VALUED:
            return _parsed_unique(self, name, value)
        return _parsed(self, name, value)


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _parsed(policy: EmailPolicy, name: str, value: str):
    return EmailPolicy.header_fetch_parse(policy, name, value)


@functools.lru_cache(maxsize=UNIQUE_CACHE_ENTRIES)
def _parsed_unique(policy: EmailPolicy, name: str, value: str):
    return EmailPolicy.header_fetch_parse(policy, name, value)


PARSE_POLICY = CachingPolicy()


def parse_message(content: bytes) -> EmailMessage:
    return BytesParser(policy=PARSE_POLICY).parsebytes(content)  # type: ignore[return-value]

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
"""

from __future__ import annotations

import functools
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy

CACHED_VALUE_LENGTH = 256
CACHE_ENTRIES = 4096


class CachingPolicy(EmailPolicy):
    """`policy.default`, with short header values parsed once per process."""

    def header_fetch_parse(self, name, value):  # type: ignore[override]
        if hasattr(value, "name") or len(value) > CACHED_VALUE_LENGTH:
            return super().header_fetch_parse(name, value)
        return _parsed(self, name, value)


@functools.lru_cache(maxsize=CACHE_ENTRIES)
def _parsed(policy: EmailPolicy, name: str, value: str):
    return EmailPolicy.header_fetch_parse(policy, name, value)


PARSE_POLICY = CachingPolicy()


def parse_message(content: bytes) -> EmailMessage:
    return BytesParser(policy=PARSE_POLICY).parsebytes(content)  # type: ignore[return-value]

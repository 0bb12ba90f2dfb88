"""atheris harness for the parser checks and the rewriter.

Any exception other than the relay's own refusals (MessageRefused,
RewriteError) is a bug: the SMTP layer would answer 451 forever.

    python fuzz/fuzz_rewrite.py -max_total_time=60 /tmp/fuzz-work fuzz/seeds
"""

from __future__ import annotations

import sys
import atheris

# Third-party modules are imported first so that only our own code is
# instrumented (instrumenting phonenumbers and tldextract takes minutes).
import aiosqlite  # noqa: F401,E402
import email_validator  # noqa: F401,E402
import phonenumbers  # noqa: F401,E402
import structlog  # noqa: F401,E402
import tldextract  # noqa: F401,E402

with atheris.instrument_imports(include=["relay"]):
    from relay.chunks import joined
    from relay.config import Settings
    from relay.parsing import parse_message
    from relay.pipeline import MessageRefused, check_raw, check_structure
    from relay.rewrite import Parties, RewriteError, Threading, rewrite_message

SETTINGS = Settings()
PARTIES = Parties(("alice.real@sender.example",), "sellerxaliasxxxxxx@relay.example", "Shop",
                  ("bob.real@recipient.example",), "buyerxaliasxxxxxxx@relay.example", "mx.relay.example")
THREADING = Threading("<fuzz@mx.relay.example>")


def one_input(data: bytes) -> None:
    try:
        check_raw(data, SETTINGS)
        message = parse_message(data)  # the relay's own parse (relay.parsing)
        check_structure(message, SETTINGS)
        result = rewrite_message(message, PARTIES, THREADING)
    except (MessageRefused, RewriteError):
        return
    out = joined(result.data)  # (a large output stays in pieces: relay.chunks)
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b""), "stray CR/LF"
    assert all(len(line) <= 998 for line in out.split(b"\r\n")), "line over 998 octets"
    assert b"alice.real@sender.example" not in out.lower(), "sender address survived"


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

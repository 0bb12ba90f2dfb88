"""Structured logging: one JSON object per line on stderr, a fixed vocabulary.

Event names (the only ones the relay emits):
  relay.started relay.stopping relay.stopped relay.reloaded relay.reload_failed
  session.refused session.authenticated rcpt.refused
  message.accepted message.rejected message.deferred_by_storage message.deferred_by_dns message.error
  sender_auth.checked
  delivery.sent delivery.deferred delivery.failed delivery.error
  bounce.received postmaster.received
  store.checkpoint_failed
Real addresses are never logged at INFO (aliases and ids are); message bodies never.
"""

from __future__ import annotations

import logging
import sys

import structlog

EVENTS = frozenset("""
relay.started relay.stopping relay.stopped relay.reloaded relay.reload_failed
session.refused session.authenticated rcpt.refused message.accepted message.rejected message.deferred_by_storage
message.deferred_by_dns message.error sender_auth.checked
delivery.sent delivery.deferred delivery.failed delivery.error bounce.received postmaster.received
store.checkpoint_failed
""".split())

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info") -> None:
    # aiosmtpd's own logger records peer IPs and addresses at INFO: silence it.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("mail.log").addHandler(logging.NullHandler())
    logging.getLogger("mail.log").propagate = False
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write() per line (print() makes two: the text, then the newline),
        # so the lines of several worker processes sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound):
    return structlog.get_logger("relay").bind(**bound)

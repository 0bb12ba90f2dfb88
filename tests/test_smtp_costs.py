"""Work aiosmtpd did on every command that the relay does once or not at all,
with the behaviour it served kept: the command timer (made once a session,
not once a command) and its debug logging of each command line (masked for
AUTH secrets only when a line is written at all)."""

from __future__ import annotations

import logging

import aiosmtpd.smtp
import aiosmtplib
import pytest


async def _session_protocol(daemon, client: aiosmtplib.SMTP):
    await client.connect()
    (protocol,) = daemon.handler.sessions
    return protocol


async def test_commands_move_the_deadline_without_remaking_the_timer(daemon):
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
    protocol = await _session_protocol(daemon, client)
    timer = protocol._timeout_handle
    deadlines = [protocol._command_deadline]
    for command in (client.ehlo(), client.noop(), client.mail("bob@buyer.test"), client.rset()):
        await command
        deadlines.append(protocol._command_deadline)
    assert protocol._timeout_handle is timer and not timer.cancelled()
    assert deadlines == sorted(deadlines) and deadlines[-1] > deadlines[0]
    await client.quit()


async def test_an_earlier_deadline_remakes_the_timer_and_a_due_timer_waits_for_the_newest_deadline(daemon):
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
    protocol = await _session_protocol(daemon, client)
    first = protocol._timeout_handle
    protocol._reset_timeout(0.05)  # as the DATA pace does: sooner than the timer set
    assert first.cancelled() and protocol._timeout_handle is not first
    protocol._reset_timeout(30)  # a command: later than the timer, which stays
    early = protocol._timeout_handle
    protocol._command_timer_due()  # the 0.05 s timer comes due: the deadline is 30 s away now
    assert protocol._timeout_handle is not early and not protocol._timeout_handle.cancelled()
    assert protocol._timer_due == pytest.approx(protocol._command_deadline)
    assert (await client.noop()).code == 250  # the session was not closed
    await client.quit()


async def test_command_lines_are_not_masked_for_a_log_that_drops_them(daemon, monkeypatch):
    masked = []
    original = aiosmtpd.smtp.sanitize
    monkeypatch.setattr(aiosmtpd.smtp, "sanitize", lambda text: masked.append(text) or original(text))
    assert not logging.getLogger("mail.log").isEnabledFor(logging.INFO)  # relay.logs: WARNING
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
    await client.connect()
    await client.ehlo()
    await client.noop()
    await client.quit()
    assert masked == []


async def test_auth_secrets_stay_masked_when_aiosmtpd_logs_command_lines(daemon):
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("mail.log")
    keep, level = Keep(), log.level
    log.setLevel(logging.DEBUG)
    log.addHandler(keep)
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
        await client.connect()
        await client.ehlo()
        await client.execute_command(b"AUTH", b"PLAIN", b"AHNlbGxlcgBodW50ZXIy")  # "\0seller\0hunter2"
        await client.quit()
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    assert any("AUTH PLAIN ********" in line for line in lines), lines
    assert not any("AHNlbGxlcgBodW50ZXIy" in line for line in lines)

"""Each connection's protocol is a copy of one made per listener
(RelaySMTP.like_this), not built by aiosmtpd's SMTP.__init__ each time: the
copies must be as separate, and as fully made, as protocols built anew."""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses

import aiosmtplib
import pytest

from relay.server import RelayDaemon, RelaySMTP

# What a connection's protocol shares with every other, and why that is safe:
# read only (aiosmtpd copies the call limits into a fresh table per session;
# the hooks are the handler's), or the daemon-wide objects themselves.
SHARED_BY_DESIGN = {"_auth_callback", "_call_limit_base", "_handle_hooks", "_loop", "loop", "daemon",
                    "event_handler", "relay_handler"}
IMMUTABLE = (str, bytes, int, float, bool, type(None), tuple, frozenset)


def _built_anew(daemon: RelayDaemon, listener: str = "mx") -> RelaySMTP:
    return daemon._protocol_model(listener)


def _shared(a: RelaySMTP, b: RelaySMTP) -> set[str]:
    return {name for name, value in vars(a).items()
            if value is vars(b).get(name) and not isinstance(value, IMMUTABLE)}


async def test_a_copy_has_every_attribute_a_protocol_built_anew_has(daemon):
    copied = daemon._protocol("mx")
    fresh = _built_anew(daemon)
    assert set(vars(copied)) == set(vars(fresh))
    for name, value in vars(fresh).items():
        if isinstance(value, IMMUTABLE):
            assert vars(copied)[name] == value, name
    assert copied._smtp_methods.keys() == fresh._smtp_methods.keys()
    assert copied._auth_methods.keys() == fresh._auth_methods.keys()
    assert copied._handle_hooks == fresh._handle_hooks


async def test_two_connections_share_nothing_but_what_is_read_only(daemon):
    first, second = daemon._protocol("mx"), daemon._protocol("mx")
    assert _shared(first, second) == SHARED_BY_DESIGN
    model = daemon._protocol_models["mx"][1]
    assert _shared(first, model) == SHARED_BY_DESIGN
    # Commands and built-in AUTH mechanisms run on the connection's own protocol.
    assert all(method.__self__ is first for method in first._smtp_methods.values())
    assert all(impl.method.__self__ is first for impl in first._auth_methods.values() if impl.is_builtin)
    assert first._stream_reader is not second._stream_reader


async def test_sessions_leave_the_protocol_they_were_copied_from_as_it_was(daemon):
    daemon._protocol("mx")
    model = daemon._protocol_models["mx"][1]
    containers = (dict, list, set, collections.deque)
    before = {name: (copy.copy(value) if isinstance(value, containers) else value)
              for name, value in vars(model).items()}

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
        await client.connect()
        await client.ehlo()
        await client.noop()
        await client.mail("bob@buyer.test")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await client.rcpt(f"nobody@{daemon.settings.relay.domain}")
        await client.rset()
        await client.quit()

    await asyncio.gather(session(), session())
    assert daemon._protocol_models["mx"][1] is model
    after = vars(model)
    assert after.keys() == before.keys()
    for name, value in before.items():
        if isinstance(value, containers + IMMUTABLE):
            assert after[name] == value, name
        else:
            assert after[name] is value, name


async def test_a_changed_setting_is_in_the_next_connections_protocol(daemon):
    first = daemon._protocol("mx")
    s = daemon.settings
    daemon.settings = dataclasses.replace(s, relay=dataclasses.replace(s.relay, hostname="mx2.relay.example"))
    second = daemon._protocol("mx")
    assert (first.hostname, second.hostname) == (s.relay.hostname, "mx2.relay.example")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
    await client.connect()
    try:
        assert "mx2.relay.example" in (await client.ehlo()).message
    finally:
        await client.quit()


async def test_a_copy_answers_help_and_unknown_commands_as_a_protocol_built_anew(daemon):
    """aiosmtpd reads a connection's command table with get() (dispatch,
    HELP <verb>) and items() (HELP): a copy's table, bound as it is looked
    up, must give what a table of bound methods gives."""
    copied, fresh = daemon._protocol("mx"), _built_anew(daemon)
    assert dict(copied._smtp_methods).keys() == fresh._smtp_methods.keys()
    assert copied._smtp_methods.get("NOSUCH") is None and "NOSUCH" not in copied._smtp_methods
    for name, method in copied._smtp_methods.items():
        assert method.__func__ is fresh._smtp_methods[name].__func__ and method.__self__ is copied
    mechanisms = {name: impl for name, impl in copied._auth_methods.items()}
    assert mechanisms.keys() == fresh._auth_methods.keys() and len(copied._auth_methods) == len(mechanisms)
    for name, impl in mechanisms.items():
        assert name in copied._auth_methods and impl.is_builtin == fresh._auth_methods[name].is_builtin

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10)
    await client.connect()
    try:
        await client.ehlo()
        listed = await client.execute_command(b"HELP")
        assert listed.code == 250 and "MAIL" in listed.message.split() and "RCPT" in listed.message.split()
        syntax = await client.execute_command(b"HELP", b"MAIL")
        assert syntax.code == 250 and syntax.message.startswith("2.0.0 Syntax: MAIL FROM:")  # (RFC 2034)
        unknown = await client.execute_command(b"FROB")
        assert unknown.code == 500
    finally:
        await client.quit()

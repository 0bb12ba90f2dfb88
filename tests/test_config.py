"""Configuration: defaults in one place, errors that name the key, exit 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from relay.config import ConfigError, Settings, load_settings, settings_from_dict

ROOT = Path(__file__).resolve().parent.parent


def run_relay(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_example_config_documents_every_key_with_its_default():
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    defaults = Settings()
    for section, body in example.items():
        section_defaults = getattr(defaults, section)
        documented = set(body)
        known = {f.name for f in dataclasses.fields(section_defaults)}
        assert documented == known, f"[{section}] documents {documented ^ known} differently"
        for key, value in body.items():
            default = getattr(section_defaults, key)
            if isinstance(default, tuple):
                default = list(default)
            assert value == default, f"{section}.{key}: example says {value!r}, default is {default!r}"
    assert set(example) == {f.name for f in dataclasses.fields(Settings)} - {"source"}


def test_example_config_is_valid():
    settings = load_settings(str(ROOT / "config.example.toml"))
    assert settings.delivery.mode == "smtp"


def test_embedded_default_delivers_to_a_maildir(monkeypatch):
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    settings = load_settings(None)
    assert settings.delivery.mode == "maildir"
    assert settings.listen.mx == "127.0.0.1:2525"
    assert settings.store.path == "var/relay.sqlite3"


def test_relay_config_environment_variable_is_used(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[relay]\ndomain = "other.example"\n')
    monkeypatch.setenv("RELAY_CONFIG", str(cfg))
    assert load_settings(None).relay.domain == "other.example"


@pytest.mark.parametrize("raw, key", [
    ({"relay": {"domian": "x"}}, "relay.domian"),
    ({"relai": {}}, "relai"),
    ({"delivery": {"connections": "4"}}, "delivery.connections"),
    ({"delivery": {"mode": "carrier-pigeon"}}, "delivery.mode"),
    ({"limits": {"message_size": True}}, "limits.message_size"),
    ({"listen": {"mx": "localhost"}}, "listen.mx"),
    # Found by a black-box probe: each passed check-config, then `relay serve` failed to bind.
    ({"listen": {"mx": "999.1.1.1:12600"}}, "listen.mx"),
    ({"listen": {"mx": "exa mple:12600"}}, "listen.mx"),
    ({"listen": {"mx": "http://127.0.0.1:2525"}}, "listen.mx"),
    ({"listen": {"mx": "0.0.0.0:25:25"}}, "listen.mx"),
    ({"listen": {"mx": "[::1:2525"}}, "listen.mx"),
    ({"delivery": {"smarthost": "smtp..example:25"}}, "delivery.smarthost"),
    ({"filters": {"order": ["link", "no_such_filter"]}}, "no_such_filter"),
    ({"filters": {"actions": {"link": "explode"}}}, "filters.actions.link"),
    ({"filters": {"surprise": 1}}, "filters.surprise"),
    ({"relay": {"domain": "Relay.Example"}}, "relay.domain"),
])
def test_bad_configuration_names_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    assert key in str(info.value)


@pytest.mark.parametrize("value", ["127.0.0.1:2525", "localhost:25", "[::1]:2525", "mx.relay.example:0",
                                   "smtp-1.relay.example.:587", "0.0.0.0:25"])
def test_listen_addresses_that_are_fine(value):
    assert settings_from_dict({"listen": {"mx": value}, "delivery": {"smarthost": value}}).listen.mx == value


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.relay.domain = "x"  # type: ignore[misc]


def test_check_config_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[relay]\ndomain = "relay.example"\n')
    result = run_relay("--config", str(good), "check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[delivery]\nconnections = "many"\n')
    result = run_relay("--config", str(bad), "check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "delivery.connections" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[relay\n")
    result = run_relay("check-config", "--config", str(broken), cwd=tmp_path)
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = run_relay("--config", str(tmp_path / "missing.toml"), "check-config", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listen]\nmx = 25\n')
    result = run_relay("--config", str(bad), "serve", cwd=tmp_path)
    assert result.returncode == 2 and "listen.mx" in result.stderr


def test_serve_on_an_address_the_host_does_not_have_exits_2_and_one_in_use_exits_1(tmp_path):
    """A listen address no interface has (EADDRNOTAVAIL) is bad configuration:
    exit 2; a port another program holds is a failure of the moment: exit 1."""
    import socket

    bad = tmp_path / "bad.toml"
    bad.write_text(f'[store]\npath = "{tmp_path}/a.sqlite3"\n[listen]\nmx = "192.0.2.1:2525"\n')
    result = run_relay("--config", str(bad), "serve", cwd=tmp_path)
    assert result.returncode == 2 and "listen.mx" in result.stderr, result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = tmp_path / "busy.toml"
        port = taken.getsockname()[1]
        busy.write_text(f'[store]\npath = "{tmp_path}/b.sqlite3"\n[listen]\nmx = "127.0.0.1:{port}"\n')
        result = run_relay("--config", str(busy), "serve", cwd=tmp_path)
    assert result.returncode == 1 and "listen.mx" in result.stderr, result.stderr


def test_the_running_settings_survive_their_trip_to_a_replacement_worker(tmp_path):
    """relay.workers hands a replacement the primary's settings as JSON."""
    from relay.config import load_settings, settings_from_json, settings_to_json

    for settings in (Settings(), load_settings(str(Path(__file__).parent.parent / "config.example.toml"))):
        assert settings_from_json(settings_to_json(settings)) == settings

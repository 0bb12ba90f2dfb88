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
    ({"filters": {"order": ["link", "no_such_filter"]}}, "no_such_filter"),
    ({"filters": {"actions": {"link": "explode"}}}, "filters.actions.link"),
    ({"filters": {"surprise": 1}}, "filters.surprise"),
    ({"relay": {"domain": "Relay.Example"}}, "relay.domain"),
])
def test_bad_configuration_names_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    assert key in str(info.value)


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

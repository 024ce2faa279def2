"""Configuration: defaults, checks, errors that say what to do, the documented example."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dedgeai.agent.errors import ConfigError
from dedgeai.agent.node.config import (
    KEYS,
    AgentConfig,
    build_config,
    check_endpoint,
    load_config,
    parse_override,
    render_toml,
    tomllib,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_is_declared_once_and_matches_the_dataclass():
    names = [k.name for k in KEYS]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in dataclasses.fields(AgentConfig)} - {"source"}
    defaults = AgentConfig()
    for key in KEYS:
        value = getattr(defaults, key.name)
        assert (list(value) if isinstance(value, tuple) else value) == key.default, key.name


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    config = load_config()
    assert config.endpoint == "tcp://127.0.0.1:7700" and config.model == "tiny"
    assert config.max_queue == 256 and config.source == "defaults"


def test_file_and_overrides(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text('max_queue = 8\nemulated_steps_per_second = 3\nprofile_sizes = ["256x256"]\n')
    config = load_config(path, dict([parse_override("model=emulated")]))
    assert config.max_queue == 8 and config.emulated_steps_per_second == 3.0
    assert config.profile_sizes == ("256x256",) and config.model == "emulated"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_queu = 3\n", "unknown key(s) ['max_queu']"),
        ('max_queue = "3"\n', "`max_queue` must be int"),
        ("max_queue = 0\n", "`max_queue` must be in 1..1000000"),
        ("insecure = 1\n", "`insecure` must be bool"),
        ("max_queue = true\n", "`max_queue` must be int"),
        ('journal_sync = "sometimes"\n', "must be one of ['normal', 'full']"),
        ('profile_sizes = ["big"]\n', "profile_sizes"),
        ("metrics_port = 70000\n", "metrics_port"),
        ("probe_timeout_s = inf\n", "`probe_timeout_s` must be in 0..10"),
        ("probe_timeout_s = nan\n", "`probe_timeout_s` must be in 0..10"),
        ("warm_start_steps = 1000000000\n", "`warm_start_steps` must be in 1..100000"),
        ('lad_actor = "big"\n', "must be one of ['ladn', 'scorer']"),
        ("gossip_interval_s = inf\n", "`gossip_interval_s` must be a finite number > 0"),
        ("[agent]\nmax_queue = 3\n", "tables ['agent'] are not supported"),
        ("max_queue = \n", "not valid TOML"),
        ('curve = false\nendpoint = "tcp://0.0.0.0:7700"\n', "set `insecure = true`"),
        ('endpoint = "udp://127.0.0.1:1"\n', "must be tcp://HOST:PORT"),
        ('endpoint = "tcp://127.0.0.1:99999"\n', "PORT 1..65535"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, text, needle):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert needle in str(caught.value)


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")


def test_network_binding_needs_explicit_insecure():
    check_endpoint("tcp://127.0.0.1:*", False)
    check_endpoint("tcp://localhost:7700", False)
    check_endpoint("tcp://[::1]:7700", False)
    check_endpoint("ipc:///run/dedgeai/agent.sock", False)
    check_endpoint("tcp://0.0.0.0:7700", True)
    for endpoint in ("tcp://0.0.0.0:7700", "tcp://*:7700", "tcp://192.168.1.5:7700"):
        with pytest.raises(ConfigError, match="insecure"):
            check_endpoint(endpoint, False)


def test_rendered_config_parses_back_to_the_same_values():
    config = build_config({"max_queue": 9, "name": 'quote " here', "insecure": False})
    parsed = tomllib.loads(render_toml(config))
    assert build_config(parsed).as_dict() == config.as_dict()


def test_example_file_documents_every_key_with_its_default():
    example = ROOT / "systemd" / "agent.toml"
    values = tomllib.loads(example.read_text())
    service_only = {"state_dir"}  # the example leaves it empty (systemd's StateDirectory)
    assert set(values) == {k.name for k in KEYS}
    for key in KEYS:
        if key.name not in service_only:
            assert values[key.name] == key.default, key.name

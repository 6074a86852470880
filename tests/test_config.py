"""Configuration: defaults, the YAML file, command-line overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from barmaid.config import load_config
from barmaid.errors import ConfigError


def test_defaults_are_8_sim_pumps_served_on_all_interfaces_port_8765():
    config = load_config(None)
    assert (config.server.host, config.server.port, config.server.status_interval) == ("0.0.0.0", 8765, 1.0)
    assert config.driver.kind == "sim" and config.driver.active_low is False
    assert config.limits.max_cup_size == 1.0
    assert [pump.gpio for pump in config.pumps] == [5, 6, 13, 16, 19, 20, 21, 26]
    assert {pump.flow_ml_s for pump in config.pumps} == {20.0}
    primes = [pump.prime_ml for pump in config.pumps]
    assert primes == sorted(set(primes)), "prime volumes grow with the distance from the outlet"


def test_empty_file_gives_the_defaults(write_config):
    assert load_config(write_config("")) == load_config(None)


def test_file_keys_override_defaults_and_the_rest_stay_default(write_config):
    path = write_config(
        {
            "server": {"port": 9000, "status_interval": 0.5},
            "driver": {"active_low": True},
            "limits": {"max_cup_size": 0.5},
            "pumps": [{"gpio": 4, "flow_ml_s": 30.0, "prime_ml": 3.0}, {"gpio": 17}],
        }
    )
    config = load_config(path)
    assert (config.server.host, config.server.port, config.server.status_interval) == ("0.0.0.0", 9000, 0.5)
    assert (config.driver.kind, config.driver.active_low) == ("sim", True)
    assert config.limits.max_cup_size == 0.5
    assert [(p.gpio, p.flow_ml_s, p.prime_ml) for p in config.pumps] == [(4, 30.0, 3.0), (17, 20.0, 8.0)]


def test_overrides_win_over_the_file_and_none_overrides_nothing(write_config):
    path = write_config({"server": {"host": "10.0.0.7", "port": 9000}, "driver": {"kind": "sim"}})
    config = load_config(path, {"server": {"host": None, "port": 9100}, "driver": {"kind": "pigpio"}})
    assert (config.server.host, config.server.port) == ("10.0.0.7", 9100)
    assert config.driver.kind == "pigpio"


def test_overrides_apply_to_the_defaults_without_a_file():
    config = load_config(None, {"server": {"host": "127.0.0.1", "port": 9200}})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9200)
    assert len(config.pumps) == 8


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("server:\n  prot: 9000\n", ("unknown key 'server.prot'", "allowed: host, port")),
        ("speed: 3\n", ("unknown key 'speed'", "allowed: data_dir, server, driver, limits, pumps")),
        ("pumps:\n  - {gpio: 5, speed: 3}\n", ("unknown key 'pumps.0.speed'", "allowed: gpio, flow_ml_s, prime_ml")),
        ("server:\n  port: '8765'\n", ("server.port = '8765'", "valid integer")),
        ("server:\n  port: true\n", ("server.port = True", "valid integer")),
        ("driver:\n  active_low: 'no'\n", ("driver.active_low = 'no'", "valid boolean")),
        ("server:\n  port: 70000\n", ("server.port = 70000", "65535")),
        ("limits:\n  max_cup_size: -1\n", ("limits.max_cup_size = -1", "greater than 0")),
        ("pumps:\n  - {gpio: 5, flow_ml_s: 0}\n", ("pumps.0.flow_ml_s = 0", "greater than 0")),
        ("driver:\n  kind: gpio\n", ("driver.kind = 'gpio'", "'sim', 'pigpio' or 'rgpio'")),
        (
            "pumps:\n  - {gpio: 5}\n  - {gpio: 6}\n  - {gpio: 5}\n",
            ("pumps.2.gpio = 5", "already used by pump 0", "its own GPIO"),
        ),
        ("- server\n- pumps\n", ("top level must be a mapping", "got list")),
        ("just words\n", ("top level must be a mapping", "got str")),
        ("server: [1, 2\n", ("is not valid YAML",)),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "unknown-pump-key",
        "port-string",
        "port-bool",
        "active-low-string",
        "port-out-of-range",
        "cup-size-negative",
        "flow-zero",
        "unknown-driver",
        "duplicate-gpio",
        "top-level-list",
        "top-level-string",
        "invalid-yaml",
    ],
)
def test_bad_config_raises_config_error_naming_file_key_and_value(write_config, text, says):
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    for fragment in says:
        assert fragment in str(caught.value)


def test_missing_config_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nowhere.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_bad_pump_key_error_names_only_that_key(write_config):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config("pumps:\n  - {gpio: 5, speed: 3}\n"))
    assert "at least 1 item" not in str(caught.value)


def test_bad_section_in_file_is_an_error_even_when_a_flag_overrides_that_section(write_config):
    with pytest.raises(ConfigError, match="server = 5"):
        load_config(write_config("server: 5\n"), {"server": {"port": 9100}})

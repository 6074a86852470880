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
        ("pumps:\n  - {gpio: 5, speed: 3}\n", ("unknown key 'pumps.0.speed'", "allowed: gpio, name, flow_ml_s, prime_ml")),
        ("server:\n  port: '8765'\n", ('server.port = "8765"', "must be a whole number")),
        ("server:\n  port: true\n", ("server.port = true", "must be a whole number")),
        ("driver:\n  active_low: 'no'\n", ('driver.active_low = "no"', "must be true or false")),
        ("server:\n  port: 70000\n", ("server.port = 70000", "<= 65535")),
        ("limits:\n  max_cup_size: -1\n", ("limits.max_cup_size = -1", "must be a number >= 0.001")),
        ("pumps:\n  - {gpio: 5, flow_ml_s: 0}\n", ("pumps.0.flow_ml_s = 0", "must be a number >= 0.01")),
        ("driver:\n  kind: gpio\n", ('driver.kind = "gpio"', "'sim', 'pigpio' or 'rgpio'")),
        (
            "pumps:\n  - {gpio: 5}\n  - {gpio: 6}\n  - {gpio: 5}\n",
            ("pumps.2.gpio = 5", "already used by pump 0", "its own GPIO"),
        ),
        ("- server\n- pumps\n", ("top level must be a mapping", "got a list of 2 items")),
        ("just words\n", ("top level must be a mapping", 'got "just words"')),
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
    with pytest.raises(ConfigError, match=r"cannot read config file .*nowhere\.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_bad_pump_key_error_names_only_that_key(write_config):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config("pumps:\n  - {gpio: 5, speed: 3}\n"))
    assert "at least 1 item" not in str(caught.value)


def test_bad_section_in_file_is_an_error_even_when_a_flag_overrides_that_section(write_config):
    with pytest.raises(ConfigError, match="server = 5"):
        load_config(write_config("server: 5\n"), {"server": {"port": 9100}})


# ---- values that would spin or starve, and errors a person can read -------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("server:\n  status_interval: 1.0e-12\n", "server.status_interval = 1e-12: must be a number >= 0.05"),
        ("server:\n  status_interval: 0.01\n", "server.status_interval = 0.01: must be a number >= 0.05"),
        ("server:\n  status_interval: .nan\n", "server.status_interval = NaN: must be a finite number"),
        ("server:\n  max_message_bytes: 10\n", "server.max_message_bytes = 10: must be a number >= 1024"),
        ("server:\n  max_clients: 0\n", "server.max_clients = 0: must be a number >= 1"),
        ("limits:\n  max_cup_size: 1.0e-12\n", "limits.max_cup_size = 1e-12: must be a number >= 0.001"),
        ("limits:\n  max_pump_seconds: 1.0e-12\n", "limits.max_pump_seconds = 1e-12: must be a number >= 0.01"),
        ("limits:\n  max_pump_seconds: .inf\n", "limits.max_pump_seconds = Infinity: must be a finite number"),
        ("limits:\n  max_parallel_pumps: 0\n", "limits.max_parallel_pumps = 0: must be a number >= 1"),
        ("pumps:\n  - {gpio: 5, flow_ml_s: 1.0e-300}\n", "pumps.0.flow_ml_s = 1e-300: must be a number >= 0.01"),
        ("pumps:\n  - {gpio: 5, capacity_ml: 1.0e-9}\n", "pumps.0.capacity_ml = 1e-09: must be a number >= 1"),
        ("pumps:\n  - {gpio: 5, prime_ml: -1}\n", "pumps.0.prime_ml = -1: must be a number >= 0"),
    ],
    ids=lambda v: v.split(" =")[0] if " = " in v else "",
)
def test_values_that_would_spin_or_starve_are_refused(write_config, text, says):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("text", "says", "never"),
    [
        ("pumps: []\n", "pumps must list at least one pump", "tuple"),
        ("server: 5\n", "server = 5: must be a mapping with the keys host, port, status_interval", "ServerConfig"),
        ("pumps:\n  - {flow_ml_s: 3}\n", "pumps.0.gpio is missing", "flow_ml_s"),
        ("pumps:\n  - 5\n", "pumps.0 = 5: must be a mapping with the keys gpio, name", "PumpConfig"),
        ("data_dir: 5\n", "data_dir = 5: must be a folder name", "Path"),
        ("server:\n  allowed_origins: 5\n", "server.allowed_origins = 5: must be a list", "tuple"),
        ("server:\n  token: short\n", 'server.token = "short": must be text of at least 8 characters', "str"),
        ("pumps:\n  - {gpio: 5, name: ''}\n", 'pumps.0.name = "": must be text, not empty', "string"),
        ("server: [1, 2\n", "line 1, column 9", "<unicode string>"),
    ],
    ids=["no-pumps", "section-not-mapping", "gpio-missing", "pump-not-mapping", "data-dir-number", "origins-number",
         "token-short", "name-empty", "yaml-error"],
)
def test_config_errors_name_key_value_and_what_is_allowed_never_python_internals(write_config, text, says, never):
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert says in message and str(path) in message
    assert never not in message.replace(str(path), "")
    for internal in ("Input should be", "instance of", "should have at least", "<unicode string>", "{'"):
        assert internal not in message


def test_a_bad_command_line_value_is_labelled_command_line_not_defaults(write_config):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config({"server": {"port": 9000}}), {"server": {"port": 70000}})
    assert str(caught.value).startswith("command line: server.port = 70000") and "defaults" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"server": {"port": -1}})
    assert str(caught.value).startswith("command line: server.port = -1")


def test_port_0_and_ipv6_hosts_are_accepted():
    config = load_config(None, {"server": {"host": "::1", "port": 0}})
    assert (config.server.host, config.server.port) == ("::1", 0)


def test_a_pump_may_have_a_name_of_up_to_40_characters(write_config):
    config = load_config(write_config({"pumps": [{"gpio": 5, "name": "white rum"}, {"gpio": 6}]}))
    assert [p.name for p in config.pumps] == ["white rum", None]
    with pytest.raises(ConfigError, match=r"pumps\.0\.name = .*: must be text of at most 40 characters"):
        load_config(write_config({"pumps": [{"gpio": 5, "name": "x" * 41}]}))


@pytest.fixture
def main():
    """barmaid's `main`, run in this process; the logging set-up `serve` does is undone after."""
    import logging

    from barmaid.cli import main as barmaid_main

    root, library = logging.getLogger(), logging.getLogger("transitions")
    handlers, level, library_level = root.handlers[:], root.level, library.level
    yield barmaid_main
    root.handlers[:] = handlers
    root.setLevel(level)
    library.setLevel(library_level)


def test_serve_prints_a_config_error_from_a_flag_and_exits_2(main, capsys):
    assert main(["serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "command line: server.port = 70000: must be a number <= 65535" in err and "defaults" not in err


def test_a_bind_failure_other_than_a_taken_port_does_not_blame_another_barmaid():
    import errno

    from barmaid.cli import _cannot_listen

    taken = _cannot_listen("0.0.0.0", 8765, OSError(errno.EADDRINUSE, "Address already in use"))
    assert "another barmaid" in taken
    missing = _cannot_listen("::1", 8765, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))
    assert "[::1]:8765" in missing and "another barmaid" not in missing


def test_serve_refuses_a_status_interval_that_would_spin_and_exits_2(main, write_config, capsys):
    assert main(["serve", "--config", str(write_config("server:\n  status_interval: 1.0e-12\n"))]) == 2
    assert "server.status_interval = 1e-12: must be a number >= 0.05" in capsys.readouterr().err

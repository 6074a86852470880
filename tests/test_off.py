"""`barmaid off` against the fake pigpio daemon: a real `python -m barmaid off` process for each
level, the rest through `barmaid.cli.main` in this process (a process start costs a second)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pigpio
import pytest
from support import processes
from support.fake_pigpiod import FakePigpiod

from barmaid.cli import main
from barmaid.config import DEFAULT_GPIOS, DriverConfig
from barmaid.drivers.pigpio import PigpioDriver
from barmaid.errors import PumpsUnavailable

PUMP_0 = DEFAULT_GPIOS[0]


@pytest.fixture
def daemon():
    with FakePigpiod() as fake:
        yield fake


def off(config: Path, *args: str) -> subprocess.CompletedProcess:
    return processes.run("off", "--config", str(config), *args, timeout=30)


def pigpio_config(write_config, port: int, active_low: bool) -> Path:
    return write_config({"driver": {"kind": "pigpio", "host": "127.0.0.1", "port": port, "active_low": active_low}})


def play(daemon: FakePigpiod, seconds: float, on_level: int) -> None:
    """Another client leaves every pump on and a wave switching pump 0 off after `seconds`."""
    pi = pigpio.pi("127.0.0.1", daemon.port, show_errors=False)
    try:
        for gpio in DEFAULT_GPIOS:
            pi.write(gpio, on_level)
        off_bit = 1 << PUMP_0
        pulses = [pigpio.pulse(0, 0, round(seconds * 1e6)), pigpio.pulse(0, off_bit, 0)]
        if not on_level:
            pulses[1] = pigpio.pulse(off_bit, 0, 0)
        pi.wave_add_generic(pulses)
        pi.wave_send_once(pi.wave_create())
    finally:
        pi.stop()


@pytest.mark.parametrize("active_low", [False, True], ids=["active-high", "active-low"])
def test_off_stops_the_wave_and_writes_every_pump_off_for_the_configs_level(daemon, write_config, active_low):
    off_level = 1 if active_low else 0
    play(daemon, 20.0, on_level=1 - off_level)
    result = off(pigpio_config(write_config, daemon.port, active_low))
    assert result.returncode == 0, result.stderr
    assert not daemon.wave_busy()
    assert {g: (daemon.modes()[g], daemon.level(g)) for g in DEFAULT_GPIOS} == dict.fromkeys(DEFAULT_GPIOS, (pigpio.OUTPUT, off_level))
    (line,) = result.stdout.splitlines()
    assert "every pump off" in line and ("active-low" if active_low else "active-high") in line
    assert "stopped" in line and "had been on" in line


def test_off_after_pour_lets_the_playing_pour_end_by_itself(daemon, write_config, capsys):
    play(daemon, 0.3, on_level=1)
    sent = time.monotonic()
    daemon.clear_history()
    assert main(["off", "--after-pour", "--config", str(pigpio_config(write_config, daemon.port, False))]) == 0
    # pump 0 went off by the wave, at its end (not cut short); the rest by barmaid off, after it.
    (wave_end,) = [t for t, g, level in daemon.history(PUMP_0) if level == 0]
    assert wave_end - sent >= 0.25
    others = [t for t, g, level in daemon.history() if g != PUMP_0 and level == 0]
    assert len(others) == len(DEFAULT_GPIOS) - 1 and min(others) >= wave_end
    printed = capsys.readouterr().out
    assert "after waiting" in printed and "stopped" not in printed


def test_force_off_waits_no_longer_than_it_is_told(daemon):
    play(daemon, 20.0, on_level=1)
    line = PigpioDriver.force_off(DEFAULT_GPIOS, DriverConfig(host="127.0.0.1", port=daemon.port), 0.2)
    assert "stopped" in line and not daemon.wave_busy()
    assert all(daemon.level(g) == 0 for g in DEFAULT_GPIOS)


def test_off_without_a_daemon_exits_1_saying_where_it_looked_and_how_to_start_it(write_config, capsys):
    with FakePigpiod() as gone:
        port = gone.port
    assert main(["off", "--config", str(pigpio_config(write_config, port, True))]) == 1
    message = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in message and "systemctl enable --now pigpiod" in message
    with pytest.raises(PumpsUnavailable):
        PigpioDriver.force_off(DEFAULT_GPIOS, DriverConfig(host="127.0.0.1", port=port), 0)


def test_off_with_simulated_pumps_has_nothing_to_switch(write_config, capsys):
    assert main(["off", "--config", str(write_config({"driver": {"kind": "sim"}}))]) == 0
    assert capsys.readouterr().out == "barmaid off: driver.kind is sim: nothing to switch (no pump pins)\n"


def test_off_with_a_broken_config_exits_2(write_config):
    assert main(["off", "--config", str(write_config({"driver": {"kind": "pigpio", "port": 0}}))]) == 2

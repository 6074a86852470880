"""`barmaid off`: every pump off from outside a running barmaid (by hand, or systemd after a stop).

It reads the pins, the off level and the daemon's address from the same config as `serve`, so the
service files never repeat them. Each daemon-backed driver does the work in its `force_off`
classmethod (barmaid/drivers/daemon.py); this module only picks the driver.
"""

from __future__ import annotations

import importlib

from .config import Config

#: driver.kind -> (module, class) of the drivers whose pumps outlive barmaid.
FORCE_OFF = {
    "pigpio": ("barmaid.drivers.pigpio", "PigpioDriver"),
    "rgpio": ("barmaid.drivers.rgpio", "RgpioDriver"),
}


def switch_off(config: Config, wait_for_pour: bool) -> str:
    """Every pump off through the configured daemon; returns one line saying what was done.

    Args:
        config: the same config `barmaid serve` runs with.
        wait_for_pour: first let a pour still playing end by itself, for at most
            limits.max_pump_seconds (after a crash, so the drink is not cut short).

    Raises:
        PumpsUnavailable: the daemon cannot be reached or did not switch the pumps off.
    """
    kind = config.driver.kind
    if kind not in FORCE_OFF:
        return f"driver.kind is {kind}: nothing to switch (no pump pins)"
    module, name = FORCE_OFF[kind]
    driver = getattr(importlib.import_module(module), name)
    gpios = [pump.gpio for pump in config.pumps]
    return driver.force_off(gpios, config.driver, config.limits.max_pump_seconds if wait_for_pour else 0.0)

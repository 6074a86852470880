"""Pump drivers: the hardware behind one small interface (`base.Driver`), with a simulated twin."""

from __future__ import annotations

from ..config import Config
from .base import Driver, Plan
from .simulated import SimulatedDriver

__all__ = ["Driver", "Plan", "SimulatedDriver", "make_driver"]


def make_driver(config: Config) -> Driver:
    """The driver config.driver.kind names, with every pump off."""
    gpios = [pump.gpio for pump in config.pumps]
    if config.driver.kind == "pigpio":
        from .pigpio import PigpioDriver  # needs the pigpio package and, to pour, a daemon

        return PigpioDriver(gpios, config.limits.max_pump_seconds, config.driver)
    if config.driver.kind == "rgpio":
        from .rgpio import RgpioDriver  # needs the rgpio package and, to pour, rgpiod

        return RgpioDriver(gpios, config.limits.max_pump_seconds, config.driver)
    return SimulatedDriver.for_config(config)

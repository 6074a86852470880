"""One contract, every driver: the simulated pumps, pigpio and rgpio through their fake daemons.

Each driver is wrapped in a `Rig` that reads back what the pumps really did as a timeline of
`(t, pump, on)`: the simulated driver's own record, or the fake daemon's pin history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
from support.fake_pigpiod import FakePigpiod
from support.fake_rgpiod import FakeRgpiod
from support.timing import allowance
from support.waiting import eventually

from barmaid.config import DriverConfig
from barmaid.drivers.base import Driver, Span
from barmaid.drivers.pigpio import PigpioDriver
from barmaid.drivers.rgpio import RgpioDriver
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.errors import PourRejected

GPIOS = (5, 6, 13, 16, 19, 20, 21, 26)


@dataclass
class Rig:
    driver: Driver
    timeline: Callable[[], list[tuple[float, int, bool]]]
    is_on: Callable[[int], bool]
    wait_for: Callable[[Callable[[], bool], float], bool]
    #: How late the hardware ran behind its schedule (the fake daemon's player on a busy machine).
    slack: Callable[[], float] = lambda: 0.0

    def on_times(self) -> dict[int, list[float]]:
        """Seconds of each completed on-period, per pump."""
        started: dict[int, float] = {}
        out: dict[int, list[float]] = {}
        for t, pump, on in self.timeline():
            if on:
                started[pump] = t
            elif pump in started:
                out.setdefault(pump, []).append(t - started.pop(pump))
        return out

    def starts(self) -> list[float]:
        return [t for t, _, on in self.timeline() if on]


def sim_rig() -> tuple[Rig, Callable[[], None]]:
    driver = SimulatedDriver(GPIOS, max_pump_seconds=5)
    rig = Rig(driver, lambda: [tuple(s) for s in driver.timeline], driver.is_on, eventually)
    return rig, lambda: None


def daemon_rig(daemon, driver: Driver, active_low: bool) -> tuple[Rig, Callable[[], None]]:
    """A driver on a fake daemon, read back through the daemon's level history."""
    off = 1 if active_low else 0
    pump_of = {gpio: pump for pump, gpio in enumerate(GPIOS)}
    daemon.clear_history()

    def timeline():
        return [(t, pump_of[g], level != off) for t, g, level in daemon.history() if g in pump_of]

    rig = Rig(driver, timeline, lambda p: daemon.level(GPIOS[p]) != off, daemon.wait_for, daemon.max_lateness)
    return rig, daemon.stop


def pigpio_rig(active_low: bool) -> tuple[Rig, Callable[[], None]]:
    daemon = FakePigpiod().start()
    driver = PigpioDriver(GPIOS, 5, DriverConfig(host="127.0.0.1", port=daemon.port, active_low=active_low))
    return daemon_rig(daemon, driver, active_low)


def rgpio_rig(active_low: bool) -> tuple[Rig, Callable[[], None]]:
    daemon = FakeRgpiod().start()
    config = DriverConfig(kind="rgpio", host="127.0.0.1", port=daemon.port, active_low=active_low)
    return daemon_rig(daemon, RgpioDriver(GPIOS, 5, config), active_low)


RIGS = {
    "sim": sim_rig,
    "pigpio": lambda: pigpio_rig(False),
    "pigpio-active-low": lambda: pigpio_rig(True),
    "rgpio": lambda: rgpio_rig(False),
    "rgpio-active-low": lambda: rgpio_rig(True),
}


@pytest.fixture(params=list(RIGS))
def rig(request):
    rig, teardown = RIGS[request.param]()
    yield rig
    rig.driver.close()
    teardown()


def test_every_pump_is_off_once_the_driver_is_constructed(rig):
    assert not any(rig.is_on(p) for p in range(len(GPIOS)))
    assert rig.timeline() == []


def test_a_pour_starts_every_pump_at_one_instant_and_stops_each_on_time(rig):
    plan = {0: 0.05, 3: 0.10, 7: 0.15, 5: 0.10}
    rig.driver.pour(plan)
    assert rig.wait_for(lambda: len(rig.timeline()) == 2 * len(plan), 2)
    starts = rig.starts()
    assert max(starts) - min(starts) <= 0.001
    on_times = rig.on_times()
    for pump, seconds in plan.items():
        assert on_times[pump] == [pytest.approx(seconds, abs=allowance(rig.slack()))]


def test_a_staggered_pour_switches_each_pump_at_its_span(rig):
    plan = {0: Span(0.0, 0.10), 1: Span(0.0, 0.05), 2: Span(0.05, 0.15)}
    rig.driver.pour(plan)
    assert rig.wait_for(lambda: len(rig.timeline()) == 6, 2)
    events = rig.timeline()
    t0 = events[0][0]
    seen = {(pump, on): t - t0 for t, pump, on in events}
    for pump, span in plan.items():
        assert seen[pump, True] == pytest.approx(span.start, abs=allowance(rig.slack()))
        assert seen[pump, False] == pytest.approx(span.stop, abs=allowance(rig.slack()))
    # pump 1 hands over to pump 2 at one instant: never three pumps on at once
    assert seen[1, False] == pytest.approx(seen[2, True], abs=0.001)


def test_pours_follow_each_other(rig):
    for n, seconds in enumerate((0.05, 0.10), start=1):
        rig.driver.pour({1: seconds})
        assert rig.wait_for(lambda n=n: len(rig.timeline()) == 2 * n, 2)
        rig.driver.halt()
    slack = allowance(rig.slack())
    assert rig.on_times()[1] == [pytest.approx(0.05, abs=slack), pytest.approx(0.10, abs=slack)]


def test_halt_switches_every_pump_off_now(rig):
    rig.driver.pour({0: 2.0, 1: 3.0})
    assert rig.wait_for(lambda: rig.is_on(0) and rig.is_on(1), 1)
    rig.driver.halt()
    assert not rig.is_on(0) and not rig.is_on(1)
    assert all(t < 0.5 for t in rig.on_times()[0] + rig.on_times()[1])
    offs = [t for t, _, on in rig.timeline() if not on]
    assert max(offs) - min(offs) <= 0.0005, "pumps went off one after another, not at once"


def test_halt_and_close_are_idempotent_and_leave_pumps_off(rig):
    rig.driver.halt()
    rig.driver.pour({2: 2.0})
    rig.driver.close()
    rig.driver.close()
    assert not rig.is_on(2)


@pytest.mark.parametrize(
    "plan, words",
    [({0: 6.0}, "max_pump_seconds"), ({0: 0.0}, "max_pump_seconds"), ({8: 0.1}, "not configured"), ({}, "nothing")],
)
def test_a_plan_the_driver_cannot_pour_is_refused_before_anything_moves(rig, plan, words):
    with pytest.raises(PourRejected, match=words):
        rig.driver.pour(plan)
    assert rig.timeline() == []

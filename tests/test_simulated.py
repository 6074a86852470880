"""The simulated driver keeps time as a pump daemon does: a switch happens when it is due, however
late the thread that records it wakes up (on a busy machine, hundreds of milliseconds)."""

from __future__ import annotations

from typing import Callable

from barmaid.clock import FakeClock, Timer
from barmaid.drivers.base import Span
from barmaid.drivers.simulated import SimulatedDriver

GPIOS = (5, 6)


class LateClock(FakeClock):
    """A fake clock whose calls run `late` seconds after they fall due: a starved thread."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    def call_at(self, at: float, call: Callable[[], None], name: str = "barmaid-clock") -> Timer:
        return super().call_at(at + self.late, call, name)


def test_a_pump_is_off_at_its_due_time_though_the_driver_thread_wakes_late():
    clock = LateClock(late=0.8)
    driver = SimulatedDriver(GPIOS, clock=clock)
    t0 = driver.pour({0: Span(0.0, 0.05), 1: Span(0.0, 1.0)})
    clock.advance(0.5)  # pump 0 was due off at 0.05; its wake-up comes at 0.85
    assert not driver.is_on(0) and driver.is_on(1)
    assert driver.playing()
    clock.advance(1.0)  # 1.5: pump 1 was due off at 1.0; its wake-up comes at 1.8
    assert not driver.is_on(1) and not driver.playing()
    assert [(round(s.t - t0, 6), s.pump, s.on) for s in driver.timeline] == [
        (0.0, 0, True),
        (0.0, 1, True),
        (0.05, 0, False),
        (1.0, 1, False),
    ]


def test_a_halt_switches_off_now_and_what_was_due_before_it_at_its_own_time():
    clock = LateClock(late=0.8)
    driver = SimulatedDriver(GPIOS, clock=clock)
    t0 = driver.pour({0: Span(0.0, 0.05), 1: Span(0.0, 1.0)})
    clock.advance(0.3)
    driver.halt()
    assert [(round(s.t - t0, 6), s.pump, s.on) for s in driver.timeline][2:] == [(0.05, 0, False), (0.3, 1, False)]
    clock.advance(2.0)  # the late wake-ups find nothing left to do
    assert len(driver.timeline) == 4

"""Simulated pumps: the default backend, so a GUI can be built anywhere without a Raspberry Pi.

It times pours by its clock (barmaid.clock: real, or fake in tests) as a pump daemon would: a
switch happens at the time it is due, however late the thread that records it wakes up, and every
question (is_on, playing, the timeline) first makes the switches due by then. So its timeline of
every switch `(time, pump, on)`, that tests assert on, is as exact on a busy machine as a
daemon's DMA-timed waveform. Given each pump's truth (`pumps[i].sim` in the
config: flow, start-up time, noise), it also counts what each pump really poured, so a
calibration can be run against a pump whose behaviour the controller does not know.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from typing import NamedTuple, Optional

from ..calibration import Law
from ..clock import Clock, RealClock, Timer
from ..config import Config
from .base import Driver, Plan, switches

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class Switch(NamedTuple):
    t: float
    pump: int
    on: bool


class Truth(NamedTuple):
    """How one simulated pump really pours: its law, and the spread of each run's volume."""

    law: Law
    noise_ml: float = 0.0


class SimulatedDriver(Driver):
    """Pumps that exist only as a timeline, and, given their truths, as what they poured."""

    def __init__(
        self,
        gpios: Sequence[int],
        max_pump_seconds: float = 120.0,
        clock: Optional[Clock] = None,
        truths: Optional[Sequence[Truth]] = None,
    ) -> None:
        """
        Args:
            truths: per pump, how it really pours; None: nothing is poured, only switched.
        """
        super().__init__(gpios, max_pump_seconds)
        if truths is not None and len(truths) != len(self.gpios):
            raise ValueError(f"{len(truths)} truths for {len(self.gpios)} simulated pumps: give one per pump")
        self._clock = clock or RealClock()
        self._cond = threading.RLock()
        self._timer: Optional[Timer] = None  # the next switch due
        self._on: dict[int, float] = {}  # pump -> when it went on
        self._due: list[tuple[float, int, bool]] = []  # (deadline, pump, on), soonest last
        self._closed = False
        self._timeline: list[Switch] = []
        self._truths = tuple(truths) if truths is not None else None
        self._poured = [0.0] * len(self.gpios)
        self._noise = [random.Random(pump) for pump in range(len(self.gpios))]  # seeded: runs repeat

    @classmethod
    def for_config(cls, config: Config, clock: Optional[Clock] = None) -> SimulatedDriver:
        """The configured pumps, each pouring by its `sim` truth (default: its flow, no start-up time)."""
        truths = [Truth(Law(p.sim.flow_ml_s or p.flow_ml_s, p.sim.dead_s), p.sim.noise_ml) for p in config.pumps]
        return cls([p.gpio for p in config.pumps], config.limits.max_pump_seconds, clock, truths)

    def poured_ml(self) -> Optional[list[float]]:
        """Per pump, the millilitres it really poured since the start; None without truths."""
        with self._cond:
            self._run_due(self._clock.now())
            return None if self._truths is None else [round(ml, 6) for ml in self._poured]

    @property
    def timeline(self) -> list[Switch]:
        """Every switch so far, in order."""
        with self._cond:
            self._run_due(self._clock.now())
            return list(self._timeline)

    def is_on(self, pump: int) -> bool:
        with self._cond:
            self._run_due(self._clock.now())
            return pump in self._on

    def playing(self) -> bool:
        with self._cond:
            self._run_due(self._clock.now())
            return bool(self._due)

    def pour(self, plan: Plan) -> float:
        self.check(plan)
        with self._cond:
            self._all_off()
            t0 = self._clock.now()
            self._due = [(t0 + at, pump, on) for at, pump, on in reversed(switches(plan))]
            self._run_due(t0)
            self._arm()
        return t0

    def halt(self) -> None:
        with self._cond:
            self._all_off()
            self._arm()

    def close(self) -> None:
        with self._cond:
            self._all_off()
            self._closed = True
            self._arm()

    def _arm(self) -> None:
        """Asks the clock to wake this driver when the next switch is due (and no earlier call)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._due and not self._closed:
            self._timer = self._clock.call_at(self._due[-1][0], self._wake, "barmaid-sim-pumps")

    def _wake(self) -> None:
        with self._cond:
            if not self._closed:
                self._run_due(self._clock.now())
                self._arm()

    def _run_due(self, now: float) -> None:
        """Makes every switch whose time has come, each at the time it was due."""
        while self._due and self._due[-1][0] <= now:
            deadline, pump, on = self._due.pop()
            self._switch(deadline, pump, on)

    def _all_off(self) -> None:
        """Ends the pour: what was due by now switches at its own time, the rest now."""
        now = self._clock.now()
        self._run_due(now)
        self._due.clear()
        for pump in sorted(self._on):
            self._switch(now, pump, False)

    def _switch(self, t: float, pump: int, on: bool) -> None:
        if (pump in self._on) == on:
            return
        if on:
            self._on[pump] = t
        else:
            self._pour_run(pump, t - self._on.pop(pump))
        self._timeline.append(Switch(t, pump, on))
        log.debug("simulated pump %d %s", pump, "on" if on else "off")

    def _pour_run(self, pump: int, seconds: float) -> None:
        if self._truths is None:
            return
        truth = self._truths[pump]
        ml = truth.law.ml(seconds)
        if ml > 0 and truth.noise_ml > 0:
            ml = max(0.0, ml + self._noise[pump].gauss(0.0, truth.noise_ml))
        self._poured[pump] += ml

"""Simulated pumps: the default backend, so a GUI can be built anywhere without a Raspberry Pi.

It times pours on its own thread, as the pigpio daemon would, and keeps a timeline of every
switch `(time, pump, on)` that tests assert on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, NamedTuple, Sequence

from .base import Driver, Plan, switches

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class Switch(NamedTuple):
    t: float
    pump: int
    on: bool


class SimulatedDriver(Driver):
    """Pumps that exist only as a timeline."""

    def __init__(
        self,
        gpios: Sequence[int],
        max_pump_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(gpios, max_pump_seconds)
        self._clock = clock
        self._cond = threading.Condition()
        self._on: set[int] = set()
        self._due: list[tuple[float, int, bool]] = []  # (deadline, pump, on), soonest last
        self._closed = False
        self.timeline: list[Switch] = []
        self._thread = threading.Thread(target=self._run, name="barmaid-sim-pumps", daemon=True)
        self._thread.start()

    def is_on(self, pump: int) -> bool:
        with self._cond:
            return pump in self._on

    def playing(self) -> bool:
        with self._cond:
            return bool(self._due)

    def pour(self, plan: Plan) -> float:
        self.check(plan)
        with self._cond:
            self._all_off()
            t0 = self._clock()
            self._due = [(t0 + at, pump, on) for at, pump, on in reversed(switches(plan))]
            self._run_due(t0)
            self._cond.notify_all()
        return t0

    def halt(self) -> None:
        with self._cond:
            self._due.clear()
            self._all_off()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._due.clear()
            self._all_off()
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=1)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._due:
                    self._cond.wait()
                    continue
                now = self._clock()
                if now < self._due[-1][0]:
                    self._cond.wait(self._due[-1][0] - now)
                    continue
                self._run_due(now)

    def _run_due(self, now: float) -> None:
        """Switches every pump whose time has come; those due together at one instant."""
        while self._due and self._due[-1][0] <= now:
            _, pump, on = self._due.pop()
            self._switch(now, pump, on)

    def _all_off(self) -> None:
        now = self._clock()
        for pump in sorted(self._on):
            self._switch(now, pump, False)

    def _switch(self, t: float, pump: int, on: bool) -> None:
        if (pump in self._on) == on:
            return
        (self._on.add if on else self._on.discard)(pump)
        self.timeline.append(Switch(t, pump, on))
        log.debug("simulated pump %d %s", pump, "on" if on else "off")

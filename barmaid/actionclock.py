"""The action clock: one running action's time, kept on a barmaid.clock Clock.

It wakes at each pump switch (to log it), every status_interval (to send the countdown) and at
the action's end (to end it); it never holds a thread between wake-ups, so under a FakeClock a
test sees every status and the end exactly when it advances the time past them. An adopted pour
(one a crashed barmaid started) ends when the hardware stops playing it, at most ADOPT_GRACE_S
after its planned end, since its start is the crashed barmaid's guess.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Callable, Optional

from .clock import Clock
from .drivers.base import Span, switches
from .outcomes import ActionKind

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: How long an adopted pour may go on playing after its planned end before it is recorded anyway.
ADOPT_GRACE_S = 2.0


class ActionClock:
    """Calls `status(remaining)` every `interval`, then `end()` at the end; `fail()` if it breaks.

    `status` returns False once the action is no longer the running one: the clock then stops.
    Setting `done` stops it too (the action ended some other way).
    """

    def __init__(
        self,
        clock: Clock,
        interval: float,
        kind: ActionKind,
        spans: dict[int, Span],
        t0: float,
        done: threading.Event,
        status: Callable[[int], bool],
        end: Callable[[], None],
        fail: Callable[[], None],
        playing: Optional[Callable[[], bool]] = None,
    ) -> None:
        """
        Args:
            playing: for an adopted pour, whether the hardware still plays it; None otherwise.
        """
        self._clock, self._interval, self._kind, self._spans = clock, interval, kind, spans
        self._done, self._status, self._end, self._fail, self._playing = done, status, end, fail, playing
        self.end_at = t0 + max(span.stop for span in spans.values())
        #: The pump switches still to log: (time, pump, on). What happened before an adopted
        #: pour was found was logged by the barmaid that started it.
        self._to_log = [(t0 + at, pump, on) for at, pump, on in switches(spans)]
        if playing is not None:
            self._to_log = [switch for switch in self._to_log if switch[0] > clock.now()]
        self._next_status = t0 + interval

    def start(self) -> None:
        """Logs the pumps that switched on at the start, then keeps the action's time."""
        self._log_switches(self._clock.now())
        self._wake_at(self._next_wake())

    def _next_wake(self) -> float:
        return min(self._next_status, self.end_at, *(at for at, _, _ in self._to_log[:1]))

    def _wake_at(self, at: float) -> None:
        self._clock.call_at(at, self._wake, name=f"barmaid-{self._kind}")

    def _wake(self) -> None:
        """One wake-up; if it fails, the action ends at once rather than never."""
        try:
            wake = self._tick()
        except Exception:
            log.exception("the %s's clock failed; ending it now", self._kind)
            self._fail()
            return
        if wake is not None:
            self._wake_at(wake)

    def _log_switches(self, now: float) -> None:
        """Logs each pump switch due by `now`."""
        while self._to_log and self._to_log[0][0] <= now:
            _, pump, on = self._to_log.pop(0)
            span = self._spans[pump]
            if on:
                log.info("pump %d on for %.3f s (%s)", pump, span.seconds, self._kind)
            else:
                log.info("pump %d off after %.3f s", pump, span.seconds)

    def _tick(self) -> Optional[float]:
        """Logs each pump switch due, sends status when its time came, and ends the action at
        its end; returns when to wake next, None once the action is over."""
        if self._done.is_set():
            return None
        now = self._clock.now()
        self._log_switches(now)
        if now < self.end_at:
            if now >= self._next_status:
                if not self._status(math.ceil(self.end_at - now)):
                    return None
                while self._next_status <= now:
                    self._next_status += self._interval
            return self._next_wake()
        if self._playing is not None and self._playing() and now < self.end_at + ADOPT_GRACE_S:
            return now + min(self._interval, 0.05)
        self._end()
        return None

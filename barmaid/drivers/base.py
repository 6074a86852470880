"""The pump driver interface: what every backend (simulated, pigpio, rgpio) must guarantee.

It speaks in whole pours (pump -> seconds) so that a backend can time them itself: a pour
handed to a GPIO daemon (pigpiod, rgpiod) ends on time even if barmaid dies in the middle of it;
what the two daemon-backed drivers share is in daemon.py.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Callable, NamedTuple, Optional, Union

from ..errors import PourRejected

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class Span(NamedTuple):
    """When one pump runs, in seconds from the start of the pour."""

    start: float
    stop: float

    @property
    def seconds(self) -> float:
        return self.stop - self.start


#: pump number -> its Span, or just its seconds (then it starts with the pour).
Plan = Mapping[int, Union[Span, float]]


def spans(plan: Plan) -> dict[int, Span]:
    """The plan with every pump as a Span."""
    return {pump: s if isinstance(s, Span) else Span(0.0, float(s)) for pump, s in plan.items()}


def switches(plan: Plan) -> list[tuple[float, int, bool]]:
    """Every switch of a plan as (seconds from start, pump, on), in order; offs first at a tie."""
    events = [(span.start, pump, True) for pump, span in spans(plan).items()]
    events += [(span.stop, pump, False) for pump, span in spans(plan).items()]
    return sorted(events, key=lambda e: (e[0], e[2], e[1]))


class Driver(ABC):
    """Switches the pumps.

    A driver MUST:
      - leave every pump off once constructed (and once it (re)connects to its hardware);
      - time each pour itself: `pour` returns at once; each pump of the plan switches on and
        off by itself at its Span's times (pumps that start together, at one instant), whether
        or not the caller lives on;
      - `halt`: stop the pour in progress and switch every pump off; idempotent, any time;
      - `close`: halt, then release the hardware; idempotent;
      - refuse in `check`, before anything moves, a plan it cannot time exactly.
      - never halt, nor write the pins of, a pour it finds playing when it connects (one a crashed
        barmaid or another process started): `playing()` is True until that pour ends by itself,
        and then every pump is switched off;
    A driver MAY:
      - report `available` False while its hardware is out of reach; `pour` then raises
        PumpsUnavailable (with `maybe_started` True if the pour was sent but not confirmed);
      - call `on_lost(reason)` when the hardware goes away mid-pour (from any thread).
    A daemon-backed driver (a DaemonDriver, daemon.py) also offers, for `barmaid off`
    (barmaid/off.py), without an instance:
        @classmethod
        def force_off(cls, gpios: Sequence[int], driver_config: DriverConfig,
                      wait_for_pour_s: float) -> str
      one bounded connection attempt; if a pour still plays, wait up to `wait_for_pour_s` for it
      to end by itself; then stop any pour, switch every pump off, read the pins back, and return
      one line saying what was done. Raises PumpsUnavailable (host, port, how to start the
      daemon) when the daemon cannot be reached or did not switch the pumps off.
    """

    #: Called with a reason when the hardware is lost mid-pour; set by the owner.
    on_lost: Optional[Callable[[str], None]] = None

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float) -> None:
        self.gpios = tuple(gpios)
        self.max_pump_seconds = max_pump_seconds

    @property
    def available(self) -> bool:
        return True

    def playing(self) -> bool:
        """True while the hardware still plays a pour: one this driver started, or one it found
        playing when it connected."""
        return False

    def check(self, plan: Plan) -> None:
        """Raises PourRejected if the plan cannot be poured exactly; moves nothing."""
        for pump, span in spans(plan).items():
            if not 0 <= pump < len(self.gpios):
                raise PourRejected(f"pump {pump} is not configured (pumps 0 to {len(self.gpios) - 1})")
            if span.start < 0 or not 0 < span.seconds <= self.max_pump_seconds:
                raise PourRejected(
                    f"pump {pump} would run {span.seconds:.1f} s, over limits.max_pump_seconds"
                    f" ({self.max_pump_seconds:g} s); pour less or raise the limit"
                )
        if not plan:
            raise PourRejected("nothing to pour")

    @abstractmethod
    def pour(self, plan: Plan) -> float:
        """Starts the pour and returns its start on time.monotonic(); does not wait for it.

        The time returned is no earlier than the real start, so an owner that halts at
        start + the longest Span never cuts a pump short.

        Raises:
            PourRejected: the plan cannot be poured (see `check`); nothing moved.
            PumpsUnavailable: the hardware cannot be reached; nothing moved, unless
                `maybe_started`: the pour was sent, then the hardware was lost before it
                confirmed it, so the pumps may run (at most to the plan's end).
        """

    @abstractmethod
    def halt(self) -> None:
        """Stops any pour now: every pump off."""

    def close(self) -> None:
        """Halts and releases the hardware. Idempotent."""
        self.halt()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

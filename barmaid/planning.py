"""Planning: how long each pump of a pour runs, when, and what it pours. Pure: no I/O, no clock.

An `Order` is what a client asked to pour; `run_seconds` says how long each of its pumps runs (the
pour law of barmaid.calibration), `schedule` turns that into spans (per pump, its Span: when it is
on, counted from the start of the pour, as the drivers take it), `poured` says what a pour cut
short poured, and `counted_seconds` how long a pour that ended in a given way counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from .calibration import Law
from .drivers.base import Span
from .errors import BadMessage
from .outcomes import ActionKind, Outcome


@dataclass(frozen=True)
class Order:
    """One pour as the controller takes it: its kind and, per pump, what to pour (by the pump's
    law) or how long to run (whatever that pours)."""

    kind: ActionKind
    #: pump -> millilitres to pour (a blend).
    ml: dict[int, float] = field(default_factory=dict)
    #: Pumps that pour their prime_ml (a refill or prime).
    primed: tuple[int, ...] = ()
    #: pump -> seconds on (a calibrate or clean).
    seconds: dict[int, float] = field(default_factory=dict)


def run_seconds(order: Order, laws: Sequence[Law], prime_ml: Sequence[float]) -> dict[int, float]:
    """Seconds each pump of the order runs: its ml and prime_ml by the pump's law
    (dead_s + volume / flow), its seconds as given.

    Raises:
        BadMessage: a refill/prime of a pump with prime_ml 0.
    """
    seconds = {p: laws[p].seconds(ml) for p, ml in order.ml.items()}
    for pump in order.primed:
        if prime_ml[pump] <= 0:
            raise BadMessage(f"pump {pump} has prime_ml 0 in the config: nothing to {order.kind}")
        seconds[pump] = laws[pump].seconds(prime_ml[pump])
    return {**seconds, **order.seconds}


def schedule(seconds: dict[int, float], lanes: Optional[int]) -> dict[int, Span]:
    """Spans for pumps that run `seconds` each, at most `lanes` at once (None: all together).

    Longest first, each into the lane that frees first: the whole pour is as short as greedy gets.
    """
    if lanes is None or lanes >= len(seconds):
        return {pump: Span(0.0, s) for pump, s in seconds.items()}
    free = [0.0] * lanes
    spans = {}
    for pump, s in sorted(seconds.items(), key=lambda item: (-item[1], item[0])):
        lane = min(range(lanes), key=free.__getitem__)
        spans[pump] = Span(free[lane], free[lane] + s)
        free[lane] += s
    return spans


def planned_ml(seconds: dict[int, float], laws: Sequence[Law]) -> dict[int, float]:
    """Millilitres each pump pours if it runs its `seconds` to the end."""
    return {p: laws[p].ml(s) for p, s in seconds.items()}


def poured(spans: dict[int, Span], ml: dict[int, float], dead_s: dict[int, float], elapsed: float) -> dict[int, float]:
    """Millilitres each pump has poured `elapsed` seconds after the start, given what it pours
    in full (`ml`) and its start-up time (`dead_s`, missing: 0): nothing during its start-up
    time, then at its flow (the share of its run past the start-up time)."""
    result = {}
    for pump, span in spans.items():
        dead = dead_s.get(pump, 0.0)
        on = min(max(elapsed - span.start, 0.0), span.seconds)
        share = (on - dead) / (span.seconds - dead) if span.seconds > dead else 0.0
        result[pump] = round(ml[pump] * min(max(share, 0.0), 1.0), 3)
    return result


def counted_seconds(outcome: Outcome, ran: float, seconds: float) -> float:
    """How long a pour that ended with `outcome` after `ran` seconds is counted to have run: a
    lost one in full (the daemon may well finish it), any other as far as it ran, never more
    than planned."""
    return seconds if outcome == Outcome.LOST else min(ran, seconds)

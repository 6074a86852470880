"""Planning: how long each pump of a pour runs, when, and what it pours. Pure: no I/O, no clock.

A plan is what the word means everywhere in barmaid (and in the drivers): per pump, its Span,
when it is on counted from the start of the pour. `run_seconds` says how long each pump runs
(the pour law of barmaid.calibration), `schedule` turns that into the plan, `poured` says what a
pour cut short poured, and `counted_seconds` how long a pour that ended in a given way counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from .calibration import Law
from .drivers.base import Span
from .errors import BadMessage
from .outcomes import Outcome
from .protocol import Blend, Calibrate, Clean, Prime, Refill, Request


def run_seconds(request: Request, laws: Sequence[Law], prime_ml: Sequence[float]) -> dict[int, float]:
    """Seconds each pump runs: a blend or refill/prime by its law (dead_s + volume / flow), a
    calibrate or clean for the seconds asked.

    Raises:
        BadMessage: the request moves no pumps, or a refill/prime of a pump with prime_ml 0.
    """
    if isinstance(request, Blend):
        return {p: laws[p].seconds(request.cup_size * 1000 * r) for p, r in request.ratios.items()}
    if isinstance(request, (Refill, Prime)):
        if prime_ml[request.pump] <= 0:
            raise BadMessage(f"pump {request.pump} has prime_ml 0 in the config: nothing to {request.type}")
        return {request.pump: laws[request.pump].seconds(prime_ml[request.pump])}
    if isinstance(request, Calibrate):
        return {request.pump: request.seconds}
    if isinstance(request, Clean):
        return dict.fromkeys(request.pumps or range(len(laws)), request.seconds)
    raise BadMessage(f"{request.type} does not move pumps")


def schedule(seconds: dict[int, float], lanes: Optional[int]) -> dict[int, Span]:
    """Spans for pumps that run `seconds` each, at most `lanes` at once (None: all together).

    Longest first, each into the lane that frees first: the whole pour is as short as greedy gets.
    """
    if lanes is None or lanes >= len(seconds):
        return {pump: Span(0.0, s) for pump, s in seconds.items()}
    free = [0.0] * lanes
    plan = {}
    for pump, s in sorted(seconds.items(), key=lambda item: (-item[1], item[0])):
        lane = min(range(lanes), key=free.__getitem__)
        plan[pump] = Span(free[lane], free[lane] + s)
        free[lane] += s
    return plan


def planned_ml(seconds: dict[int, float], laws: Sequence[Law]) -> dict[int, float]:
    """Millilitres each pump pours if it runs its `seconds` to the end."""
    return {p: laws[p].ml(s) for p, s in seconds.items()}


def poured(plan: dict[int, Span], ml: dict[int, float], dead_s: dict[int, float], elapsed: float) -> dict[int, float]:
    """Millilitres each pump has poured `elapsed` seconds after the start, given what it pours
    in full (`ml`) and its start-up time (`dead_s`, missing: 0): nothing during its start-up
    time, then at its flow (the share of its run past the start-up time)."""
    result = {}
    for pump, span in plan.items():
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

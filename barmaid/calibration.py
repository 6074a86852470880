"""How many millilitres a pump pours in t seconds, and the fit of that law to calibrate runs.

A pump does not pour from the instant it is switched on: the motor spins up and the liquid has
to reach the outlet. So pump i pours `flow_ml_s * max(0, t - dead_s)` ml in t seconds on, and
v ml take `dead_s + v / flow_ml_s` seconds. A single run cannot tell the two apart (one point
fits any start-up time): one point gives `flow = ml / seconds` and `dead_s` 0; runs of two or
more lengths give both, by least squares. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from .config import MAX_FLOW_ML_S
from .errors import BadMessage

#: Slower than any pump a cocktail machine uses: a flow below it is a measuring mistake.
MIN_FLOW_ML_S = 0.01
#: No pump takes longer to start pouring; a fit above it comes from a wrong measurement.
MAX_DEAD_S = 5.0
#: A fitted start-up time this little below 0 is measuring noise on a pump that has none: such
#: runs are fitted again with dead_s 0 (a line through the origin) instead of being refused.
NEGATIVE_DEAD_TOLERANCE_S = 0.05
#: Runs whose lengths differ by less than this are of one length: they only give a flow.
SAME_LENGTH_S = 1e-3


@dataclass(frozen=True)
class Law:
    """What one pump pours: nothing for `dead_s` seconds after it is switched on, then `flow_ml_s`."""

    flow_ml_s: float
    dead_s: float = 0.0

    def seconds(self, ml: float) -> float:
        """How long the pump must run to pour `ml` (> 0)."""
        return self.dead_s + ml / self.flow_ml_s

    def ml(self, seconds: float) -> float:
        """What the pump pours in `seconds` on."""
        return self.flow_ml_s * max(0.0, seconds - self.dead_s)


@dataclass(frozen=True)
class Run:
    """One calibrate run of a pump; once its ml is measured (set_flow), a point of the fit."""

    pump: int
    #: How long the pump really ran (stopped runs: until the stop).
    seconds: float
    #: Unix time the run ended.
    taken: float
    #: What the run took off the bottle's level, by the law in use when it ran.
    charged_ml: float
    #: Why the run's length is not known (the pour's outcome: lost, interrupted, ...); None: known.
    cut: Optional[str] = None
    #: Millilitres measured after it; None: not given yet, not a point.
    ml: Optional[float] = None
    #: Its row in the store; None: not stored yet.
    id: Optional[int] = None


@dataclass(frozen=True)
class Fit:
    law: Law
    #: Per point, in order: measured ml minus what the law says the run poured.
    residuals_ml: tuple[float, ...]


def fit(points: Sequence[Run]) -> Fit:
    """The law of one pump from its measured runs (at least one).

    Raises:
        BadMessage: the runs give a law no pump has (negative flow or start-up time, a start-up
            time over MAX_DEAD_S, a flow outside MIN_FLOW_ML_S..MAX_FLOW_ML_S), saying which
            and what to do.
    """
    if not points:
        raise ValueError("fit needs at least one measured run")
    seconds = [p.seconds for p in points]
    ml = [_measured(p) for p in points]
    same_length = max(seconds) - min(seconds) < SAME_LENGTH_S
    law = Law(sum(ml) / sum(seconds)) if same_length else _least_squares(seconds, ml)
    _check(law, points)
    return Fit(law, tuple(m - law.ml(s) for s, m in zip(seconds, ml)))


def _measured(run: Run) -> float:
    if run.ml is None:
        raise ValueError(f"run {run.id} of pump {run.pump} has no measured ml: only measured runs are fitted")
    return run.ml


def _least_squares(seconds: list[float], ml: list[float]) -> Law:
    """The line ml = flow * (t - dead) closest to the points (ordinary least squares)."""
    n = len(seconds)
    mean_t, mean_ml = sum(seconds) / n, sum(ml) / n
    spread = sum((t - mean_t) ** 2 for t in seconds)
    flow = sum((t - mean_t) * (m - mean_ml) for t, m in zip(seconds, ml)) / spread
    if flow <= 0:
        raise BadMessage(
            f"the longer runs poured no more than the shorter ones ({_listed(seconds, ml)}): that is no pump's"
            " behaviour; measure the runs again, or send reset_calibration to start over"
        )
    dead = round(mean_t - mean_ml / flow, 6)  # drivers time to the microsecond
    if -NEGATIVE_DEAD_TOLERANCE_S <= dead < 0:
        return Law(sum(t * m for t, m in zip(seconds, ml)) / sum(t * t for t in seconds))
    return Law(flow, dead)


def _check(law: Law, points: Sequence[Run]) -> None:
    listed = _listed([p.seconds for p in points], [_measured(p) for p in points])
    if law.dead_s < 0:
        raise BadMessage(
            f"the runs ({listed}) fit a start-up time of {law.dead_s:.2f} s: the pump would pour before it is"
            " switched on; measure the runs again, or send reset_calibration to start over"
        )
    if law.dead_s > MAX_DEAD_S:
        raise BadMessage(
            f"the runs ({listed}) fit a start-up time of {law.dead_s:.2f} s, more than {MAX_DEAD_S:g} s; prime"
            " the tube (refill) and measure the runs again, or send reset_calibration to start over"
        )
    if not MIN_FLOW_ML_S <= law.flow_ml_s <= MAX_FLOW_ML_S:
        raise BadMessage(
            f"the runs ({listed}) fit a flow of {law.flow_ml_s:.3g} ml/s, outside {MIN_FLOW_ML_S:g} to"
            f" {MAX_FLOW_ML_S:g} ml/s; calibrate for longer and measure again (ml, not litres)"
        )


def _listed(seconds: Sequence[float], ml: Sequence[float]) -> str:
    return ", ".join(f"{m:g} ml in {s:.3f} s" for s, m in zip(seconds, ml))

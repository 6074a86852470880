"""The pump book: what barmaid knows of each pump (level, flow, start-up time, calibration runs)
and keeps in the store, on disk first, so memory never holds what a restart would lose.

The controller asks it for the laws a pour is planned by, to check the bottles before a pour,
and tells it what a pour did; levels never go below zero nor above the bottle. Not locked:
the controller calls it under its own lock.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional, cast

from .calibration import MIN_FLOW_ML_S, Law, Run, fit
from .config import MAX_FLOW_ML_S, Config
from .errors import BadMessage, BottleTooLow, StoreError
from .outcomes import ActionKind, Outcome
from .store import PumpRecord, Store

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Point:
    """One measured calibrate run, and how far the fitted law is from it."""

    #: How long the pump really ran.
    seconds: float
    #: What it poured, as measured.
    ml: float
    #: Unix time of the run.
    taken: float
    #: ml minus what the fitted law says the run poured.
    residual_ml: float


@dataclass(frozen=True)
class Pump:
    """What barmaid knows of one pump now."""

    pump: int
    #: What the bottle holds; None: not named.
    name: Optional[str]
    flow_ml_s: float
    #: Start-up time: seconds on before liquid comes out.
    dead_s: float
    prime_ml: float
    #: What is left in the bottle; None: not tracked.
    level_ml: Optional[float]
    #: A full bottle; None: unknown.
    capacity_ml: Optional[float]
    #: Length of the last calibrate run; None: none, or cut so its length is unknown.
    calibration_seconds: Optional[float] = None
    #: The runs flow_ml_s and dead_s are fitted to.
    points: list[Point] = field(default_factory=list)


class PumpBook:
    """Each configured pump's state, loaded from the store at start-up and kept there."""

    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
        saved = store.pumps()
        #: pump -> its calibrate runs since its last reset, oldest first; the last is the one set_flow measures.
        self._runs = store.calibration_runs()
        self.pumps: list[Pump] = [
            Pump(
                pump=number,
                name=pump.name,
                prime_ml=pump.prime_ml,
                level_ml=saved.get(number, PumpRecord()).level_ml,
                capacity_ml=pump.capacity_ml,
                # a calibration wins over the config
                **self._loaded_calibration(number, saved.get(number, PumpRecord())),
            )
            for number, pump in enumerate(config.pumps)
        ]

    @property
    def laws(self) -> list[Law]:
        """What each pump pours in t seconds: nothing for dead_s, then flow_ml_s."""
        return [Law(pump.flow_ml_s, pump.dead_s) for pump in self.pumps]

    @property
    def prime_ml(self) -> list[float]:
        return [pump.prime_ml for pump in self.pumps]

    def check_levels(self, ml: dict[int, float]) -> None:
        """Raises BottleTooLow naming every pump whose tracked level is below what it would pour."""
        levels = {p: self.pumps[p].level_ml for p in ml}
        short = [
            f"pump {p} needs {need:.1f} ml but has {level:.1f} ml left"
            for p, need in sorted(ml.items())
            if (level := levels[p]) is not None and need > level + 1e-6
        ]
        if short:
            raise BottleTooLow("; ".join(short) + ": change the bottle and send refill, or correct it with set_level")

    # ---- what pours did ---------------------------------------------------------------------

    def record_pour(self, kind: ActionKind, pour_id: int, outcome: Outcome, poured: dict[int, float]) -> None:
        """What a pour did to each pump's level, in memory and, with its outcome, on disk."""
        updates: dict[int, dict[str, Optional[float]]] = {}
        for pump, ml in poured.items():
            state = self.pumps[pump]
            if kind == ActionKind.REFILL:  # a new bottle, less what priming took from it
                level = None if state.capacity_ml is None else max(0.0, state.capacity_ml - ml)
            elif kind != ActionKind.CLEAN and state.level_ml is not None:  # cleaning runs water
                level = max(0.0, state.level_ml - ml)
            else:
                continue
            updates[pump] = {"level_ml": level}
            self.pumps[pump] = replace(state, level_ml=level)
        try:
            self._store.end_pour(pour_id, outcome, poured, updates)
        except StoreError as exc:
            log.error("the %s ended (%s) but could not be recorded: %s", kind, outcome, exc)

    def record_failed(self, kind: ActionKind, pour_id: int) -> None:
        """Records a pour that did not start: nothing poured, no level changed."""
        try:
            self._store.end_pour(pour_id, Outcome.FAILED, {}, {})
        except StoreError as exc:
            log.error("the %s that failed to start could not be recorded: %s", kind, exc)

    def record_calibration(self, pump: int, seconds: float, charged_ml: float, outcome: Outcome) -> None:
        """A calibrate run ended: it becomes its pump's last run, the one set_flow measures. Only
        a completed or stopped run has a known length; any other was cut at a time not known."""
        cut = None if outcome in (Outcome.COMPLETED, Outcome.STOPPED) else Outcome(outcome).value
        run = Run(pump, seconds, time.time(), charged_ml, cut)
        try:
            run = replace(run, id=self._store.save_calibration_run(run))
        except StoreError as exc:
            log.error("the calibrate run of pump %d could not be stored (%s); it is kept until a restart", pump, exc)
        self._runs[pump] = [*(r for r in self._runs.get(pump, []) if r.ml is not None), run]
        self.pumps[pump] = replace(self.pumps[pump], calibration_seconds=None if cut else seconds)
        if cut:
            log.warning(
                "the calibrate run of pump %d was cut (%s): how long it ran is not known; calibrate again", pump, cut
            )

    # ---- what clients set -------------------------------------------------------------------

    def set_level(self, pump: int, ml: float) -> None:
        capacity = self.pumps[pump].capacity_ml
        if capacity is not None and ml > capacity:
            raise BadMessage(f"set_level: pump {pump}'s bottle holds {capacity:g} ml, less than {ml:g}")
        self._store.set_pump(pump, level_ml=ml)
        self.pumps[pump] = replace(self.pumps[pump], level_ml=ml)

    def set_flow(self, pump: int, ml: float) -> None:
        """The ml the pump's last calibrate run poured: a point; its law is fitted again to all."""
        runs = self._runs.get(pump, [])
        if not runs:
            raise BadMessage(
                f"set_flow: pump {pump} has no calibration run; send calibrate first, then the ml it poured"
            )
        last = runs[-1]
        if last.cut:
            raise BadMessage(
                f"set_flow: pump {pump}'s last calibration was cut ({last.cut}) before its end, so how long it"
                " ran is not known; calibrate again, then send the ml it poured"
            )
        measured = replace(last, ml=ml)
        try:
            fields = self._fitted([*runs[:-1], measured])
        except BadMessage as exc:
            raise BadMessage(f"set_flow: pump {pump}: {exc}") from None
        state, values = self.pumps[pump], {"flow_ml_s": fields["flow_ml_s"]}
        if state.level_ml is not None:  # the run took charged_ml (or the last measure) off the level
            level = state.level_ml + (last.charged_ml if last.ml is None else last.ml) - ml
            values["level_ml"] = min(max(level, 0.0), state.capacity_ml or math.inf)
        run_id = self._store.save_calibration_run(measured, **values)
        self._runs[pump] = [*runs[:-1], replace(measured, id=run_id)]
        self.pumps[pump] = replace(state, **{**fields, **values})
        log.info("pump %d: %g ml in %.3f s; flow %.3f ml/s, start-up time %.3f s from %d points", pump, ml,
                 last.seconds, fields["flow_ml_s"], fields["dead_s"], len(fields["points"]))

    def reset_calibration(self, pump: int) -> None:
        self._store.reset_calibration(pump)
        self._runs[pump] = []
        self.pumps[pump] = replace(self.pumps[pump], **self._uncalibrated(pump))
        log.info("pump %d: calibration reset; flow %g ml/s from the config", pump, self.pumps[pump].flow_ml_s)

    # ---- calibration ------------------------------------------------------------------------

    def _loaded_calibration(self, pump: int, record: PumpRecord) -> dict[str, Any]:
        """Pump fields of a pump's calibration at start-up: fitted to its stored points,
        else its stored one-number flow (older barmaid), else the config's."""
        runs = self._runs.get(pump, [])
        last = {"calibration_seconds": runs[-1].seconds if runs and not runs[-1].cut else None}
        if any(run.ml is not None for run in runs):
            try:
                return {**self._fitted(runs), **last}
            except BadMessage as exc:
                log.error("pump %d: its stored calibration runs fit no pump (%s); send reset_calibration", pump, exc)
        flow = record.flow_ml_s
        if flow is not None and MIN_FLOW_ML_S <= flow <= MAX_FLOW_ML_S:
            return {**self._uncalibrated(pump), "flow_ml_s": flow, **last}
        if flow is not None:
            log.warning(
                "pump %d: the stored flow %g ml/s is not plausible (%g to %g ml/s), so the config's %g ml/s is"
                " used; calibrate it again",
                pump, flow, MIN_FLOW_ML_S, MAX_FLOW_ML_S, self._config.pumps[pump].flow_ml_s,
            )
        return {**self._uncalibrated(pump), **last}

    def _uncalibrated(self, pump: int) -> dict[str, Any]:
        flow = self._config.pumps[pump].flow_ml_s
        return {"flow_ml_s": flow, "dead_s": 0.0, "points": [], "calibration_seconds": None}

    @staticmethod
    def _fitted(runs: list[Run]) -> dict[str, Any]:
        """Pump fields of the law fitted to the measured runs, with each point's residual.

        Raises:
            BadMessage: the runs fit no plausible pump.
        """
        points = [run for run in runs if run.ml is not None]
        result = fit(points)
        return {
            "flow_ml_s": result.law.flow_ml_s,
            "dead_s": result.law.dead_s,
            "points": [
                Point(p.seconds, cast(float, p.ml), p.taken, round(residual, 3))
                for p, residual in zip(points, result.residuals_ml)
            ],
        }

"""Pump lists for test configs: 8 very fast pumps on the default GPIOs.

At 400 ml/s a 0.1 l blend lasts 0.25 s, so the suite stays quick while a pour still lasts long
enough to be watched, stopped or crashed in the middle.
"""

from __future__ import annotations

from typing import Any, Optional

from barmaid.config import DEFAULT_GPIOS

FAST_FLOW_ML_S = 400.0


def fast_pumps(flow_ml_s: float = FAST_FLOW_ML_S, prime_ml: Optional[float] = None) -> list[dict[str, Any]]:
    """8 pumps on the default GPIOs; prime_ml 20, 30, ... unless one volume is given."""
    return [
        {"gpio": gpio, "flow_ml_s": flow_ml_s, "prime_ml": 20.0 + 10 * i if prime_ml is None else prime_ml}
        for i, gpio in enumerate(DEFAULT_GPIOS)
    ]


def pumps_with(
    flow: float = FAST_FLOW_ML_S, capacity: Optional[dict[int, float]] = None, **per_pump: dict[str, Any]
) -> list[dict[str, Any]]:
    """fast_pumps(flow) with capacity_ml for some pumps and any other keys per pump (p3={...})."""
    pumps = fast_pumps(flow)
    for pump, ml in (capacity or {}).items():
        pumps[pump]["capacity_ml"] = ml
    for key, values in per_pump.items():
        pumps[int(key[1:])].update(values)
    return pumps

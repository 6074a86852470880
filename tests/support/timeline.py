"""Assertions on timelines: the countdown a client was sent, and what the pumps really did.

A pour is checked by what was recorded (the `remaining_time` of each status, the simulated
driver's `timeline` of Switch(t, pump, on)), in order, rather than by sleeping and looking.
"""

from __future__ import annotations

import math
from typing import Any

from barmaid.drivers.simulated import SimulatedDriver


def status_times(messages: list[dict[str, Any]]) -> list[int]:
    """The remaining_time of every status message, in order."""
    return [m["data"]["remaining_time"] for m in messages if m["type"] == "status"]


def assert_countdown(times: list[int], seconds: float) -> None:
    """Statuses as the protocol wants them: ceil(seconds) first, never increasing, one 0, last."""
    assert times, "no status message"
    assert times[0] == math.ceil(seconds), times
    assert all(later <= earlier for earlier, later in zip(times, times[1:])), times
    assert times.count(0) == 1 and times[-1] == 0, times


def one_final_status(messages: list[dict[str, Any]]) -> None:
    """Exactly one final status (remaining_time 0), and it came last."""
    times = status_times(messages)
    assert times.count(0) == 1 and times[-1] == 0, times


def runs(driver: SimulatedDriver) -> dict[int, list[tuple[float, float]]]:
    """pump -> [(on, off), ...] from the simulated timeline; fails if a pump is left on."""
    on: dict[int, float] = {}
    result: dict[int, list[tuple[float, float]]] = {}
    for switch in driver.timeline:
        if switch.on:
            on[switch.pump] = switch.t
        else:
            result.setdefault(switch.pump, []).append((on.pop(switch.pump), switch.t))
    assert not on, f"pumps left on: {sorted(on)}"
    return result


def on_times(driver: SimulatedDriver) -> dict[int, float]:
    """pump -> seconds of its last run; fails if a pump is left on."""
    return {pump: spans[-1][1] - spans[-1][0] for pump, spans in runs(driver).items()}


def most_on_at_once(driver: SimulatedDriver) -> int:
    """The most pumps that were on at the same time."""
    on: set[int] = set()
    most = 0
    for switch in driver.timeline:
        (on.add if switch.on else on.discard)(switch.pump)
        most = max(most, len(on))
    return most

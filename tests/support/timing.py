"""One tolerance for every real-time assertion, scaled by `BARMAID_TEST_TIME_FACTOR`.

Real-time tests (a driver on a fake daemon, a barmaid process, a pour over a WebSocket) read
back what the pumps really did as a timeline and compare it with the plan. On a shared 2-core
machine with two CPU-bound processes beside the suite, a thread wakes up to a few tens of
milliseconds late; `TOLERANCE` covers that and still fails a pump that runs 100 ms too long.
A slower machine (an emulated CI runner, a Pi) sets `BARMAID_TEST_TIME_FACTOR=3` or so, as
websockets' tests do with `WEBSOCKETS_TESTS_TIMEOUT_FACTOR`.

Logic that does not need real time (countdowns, accounting, scheduling) is tested in fake time
with exact assertions; this constant is only for what a real clock measures.
"""

from __future__ import annotations

import os


def _factor() -> float:
    raw = os.environ.get("BARMAID_TEST_TIME_FACTOR", "1")
    try:
        factor = float(raw)
    except ValueError:
        raise RuntimeError(f"BARMAID_TEST_TIME_FACTOR={raw!r}: must be a number such as 1 or 2.5") from None
    if not factor >= 1:
        raise RuntimeError(f"BARMAID_TEST_TIME_FACTOR={raw!r}: must be 1 or more (it only widens tolerances)")
    return factor


#: How much slower than a loaded 2-core machine this one is (1: not slower).
TIME_FACTOR = _factor()

#: Seconds a real-time measurement may be off: 40 ms, times TIME_FACTOR.
TOLERANCE = 0.040 * TIME_FACTOR


def allowance(lateness: float = 0.0) -> float:
    """TOLERANCE plus how late a fake daemon's player ran behind its own schedule (its
    `max_lateness()`): a late player is the test machine's fault, not the driver's."""
    return TOLERANCE + lateness


"""Planning, pure: how long each pump runs, the schedule under max_parallel_pumps, what a pour
cut short poured and how long a pour is counted to have run."""

from __future__ import annotations

import json
import random

import pytest

from barmaid.calibration import Law
from barmaid.dispatch import order_of
from barmaid.drivers.base import Span
from barmaid.errors import BadMessage
from barmaid.outcomes import Outcome
from barmaid.planning import counted_seconds, planned_ml, poured, run_seconds, schedule
from barmaid.protocol import Limits, parse

LIMITS = Limits(pumps=3, max_cup_size=1.0)
LAWS = [Law(100.0), Law(50.0, dead_s=0.5), Law(200.0)]


def request(kind: str, **data):
    """The order a request of `kind` with `data` places."""
    return order_of(parse(json.dumps({"type": kind, "data": data}), LIMITS), LIMITS.pumps)


def test_run_seconds_of_a_blend_adds_each_pumps_start_up_time_to_volume_over_flow():
    seconds = run_seconds(request("blend", cup_size=0.2, ratios={"0": 0.5, "1": 0.5}), LAWS, [0, 0, 0])
    assert seconds == pytest.approx({0: 1.0, 1: 2.5})


def test_run_seconds_of_a_refill_pours_prime_ml_and_refuses_prime_ml_0():
    assert run_seconds(request("refill", pump=2), LAWS, [0, 0, 40.0]) == pytest.approx({2: 0.2})
    with pytest.raises(BadMessage, match="prime_ml 0"):
        run_seconds(request("refill", pump=0), LAWS, [0, 0, 40.0])


def test_run_seconds_of_calibrate_and_clean_are_the_seconds_asked_clean_all_by_default():
    assert run_seconds(request("calibrate", pump=1, seconds=3), LAWS, [0, 0, 0]) == {1: 3}
    assert run_seconds(request("clean", seconds=2), LAWS, [0, 0, 0]) == {0: 2, 1: 2, 2: 2}


def test_planned_ml_and_poured_follow_the_law_nothing_during_the_start_up_time():
    spans, ml = {0: Span(0.0, 1.0), 1: Span(0.0, 2.5)}, planned_ml({0: 1.0, 1: 2.5}, LAWS)
    assert ml == {0: 100.0, 1: 100.0}
    dead = {1: 0.5}
    assert poured(spans, ml, dead, 0.5) == {0: 50.0, 1: 0.0}
    assert poured(spans, ml, dead, 1.5) == {0: 100.0, 1: 50.0}
    assert poured(spans, ml, dead, 99.0) == {0: 100.0, 1: 100.0}


def test_poured_counts_nothing_for_a_pump_whose_turn_had_not_come():
    spans = {0: Span(0.0, 1.0), 1: Span(1.0, 2.0)}
    assert poured(spans, {0: 100.0, 1: 100.0}, {}, 0.75) == {0: 75.0, 1: 0.0}


@pytest.mark.parametrize(
    ("outcome", "ran", "counted"),
    [(Outcome.COMPLETED, 2.0, 2.0), (Outcome.STOPPED, 0.5, 0.5), (Outcome.LOST, 0.5, 2.0), (Outcome.SHUT_DOWN, 3.0, 2.0)],
)
def test_counted_seconds_a_lost_pour_in_full_any_other_as_far_as_it_ran(outcome, ran, counted):
    assert counted_seconds(outcome, ran, 2.0) == counted


def test_schedule_without_a_cap_starts_every_pump_at_once():
    seconds = {0: 0.5, 3: 1.25, 7: 0.1}
    expected = {0: Span(0.0, 0.5), 3: Span(0.0, 1.25), 7: Span(0.0, 0.1)}
    assert schedule(seconds, None) == expected
    assert schedule(seconds, 3) == expected
    assert schedule(seconds, 8) == expected
    assert schedule({}, 2) == {}


def test_schedule_with_one_lane_runs_longest_first_one_after_another_ties_by_pump():
    assert schedule({0: 1.0, 1: 2.0, 2: 1.0}, 1) == {1: Span(0.0, 2.0), 0: Span(2.0, 3.0), 2: Span(3.0, 4.0)}


def test_schedule_with_two_lanes_fills_the_lane_that_frees_first():
    assert schedule({0: 3.0, 1: 1.0, 2: 2.0, 3: 2.0}, 2) == {
        0: Span(0.0, 3.0),
        2: Span(0.0, 2.0),
        3: Span(2.0, 4.0),
        1: Span(3.0, 4.0),
    }


@pytest.mark.parametrize("lanes", [1, 2, 3, 5])
def test_schedule_keeps_every_pumps_seconds_and_never_exceeds_the_lanes(lanes):
    rng = random.Random(lanes)
    for _ in range(200):
        seconds = {p: round(rng.uniform(0.01, 5), 3) for p in rng.sample(range(8), rng.randint(1, 8))}
        spans = schedule(seconds, lanes)
        assert set(spans) == set(seconds)
        for pump, span in spans.items():
            assert span.start >= 0 and span.seconds == pytest.approx(seconds[pump])
        edges = sorted([(s.start, 1) for s in spans.values()] + [(s.stop, -1) for s in spans.values()])
        running = 0
        for _, change in edges:  # at a tie, a stop (-1) sorts before a start
            running += change
            assert running <= lanes
        whole = max(s.stop for s in spans.values())
        # Greedy list scheduling is never worse than the mean load plus the longest job.
        assert whole <= sum(seconds.values()) / lanes + max(seconds.values()) + 1e-9
        if lanes >= len(seconds):
            assert whole == max(seconds.values())

"""The suite's own promises: one real-time tolerance that still catches a pump running 100 ms
too long, scaled only upwards by BARMAID_TEST_TIME_FACTOR."""

from __future__ import annotations

import pytest
from support import timing


def test_at_factor_1_the_tolerance_fails_a_pump_that_runs_100_ms_too_long():
    assert timing.TIME_FACTOR > 1 or pytest.approx(0.0, abs=timing.allowance()) != 0.1


@pytest.mark.parametrize(("raw", "says"), [("fast", "must be a number"), ("0.5", "must be 1 or more")])
def test_a_time_factor_that_would_not_widen_says_what_to_set(monkeypatch, raw, says):
    monkeypatch.setenv("BARMAID_TEST_TIME_FACTOR", raw)
    with pytest.raises(RuntimeError, match=says):
        timing._factor()


def test_a_slower_machine_sets_a_factor_above_1(monkeypatch):
    monkeypatch.setenv("BARMAID_TEST_TIME_FACTOR", "2.5")
    assert timing._factor() == 2.5

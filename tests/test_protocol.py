"""Protocol `parse`: what each client message becomes, and the words for each bad one."""

from __future__ import annotations

import json

import pytest

from barmaid.errors import BadMessage
from barmaid.protocol import Blend, Echo, Limits, Refill, parse

LIMITS = Limits(pumps=8, max_cup_size=1.0)


def message(kind: str, data: object) -> str:
    return json.dumps({"type": kind, "data": data})


def test_bad_input_raises_bad_message_saying_what_was_wrong(bad_input):
    with pytest.raises(BadMessage) as caught:
        parse(bad_input.frame, LIMITS)
    for fragment in bad_input.says:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "data", [{"msg": "toaster"}, [1, "two", None, {"x": []}], "anything", 3.5, 0, None, True, {}, ""]
)
def test_echo_parses_with_any_data(data):
    request = parse(message("echo", data), LIMITS)
    assert isinstance(request, Echo)
    assert request.data == data and type(request.data) is type(data)


def test_echo_without_data_parses_with_data_null():
    request = parse('{"type": "echo"}', LIMITS)
    assert isinstance(request, Echo) and request.data is None


def test_blend_from_the_seed_readme_parses_string_keys_to_pump_numbers():
    request = parse('{"type": "blend", "data": {"cup_size": 0.04, "ratios": {"1": 0.2, "2": 0.1, "5": 0.7}}}', LIMITS)
    assert isinstance(request, Blend)
    assert request.cup_size == 0.04
    assert request.ratios == {1: 0.2, 2: 0.1, 5: 0.7}


@pytest.mark.parametrize(
    "ratios",
    [{"0": 0.35, "1": 0.65}, {"0": 0.1, "1": 0.2, "2": 0.7}, {"7": 1}, {"0": 0.5}],
    ids=["0.35+0.65", "0.1+0.2+0.7", "integer-1", "half-cup"],
)
def test_blend_with_ratios_adding_up_to_at_most_one_is_accepted(ratios):
    request = parse(message("blend", {"cup_size": 0.2, "ratios": ratios}), LIMITS)
    assert request.ratios == {int(key): float(ratio) for key, ratio in ratios.items()}


def test_blend_drops_pumps_with_ratio_zero():
    request = parse(message("blend", {"cup_size": 0.2, "ratios": {"0": 0.5, "3": 0, "4": 0.5}}), LIMITS)
    assert request.ratios == {0: 0.5, 4: 0.5}


def test_blend_cup_size_up_to_max_cup_size_is_accepted():
    assert parse(message("blend", {"cup_size": 1, "ratios": {"0": 1}}), LIMITS).cup_size == 1.0
    with pytest.raises(BadMessage, match=r"<= 0\.5 litres, got 0\.6"):
        parse(message("blend", {"cup_size": 0.6, "ratios": {"0": 1}}), Limits(pumps=8, max_cup_size=0.5))


@pytest.mark.parametrize(("pump", "number"), [("0", 0), (0, 0), ("7", 7), (7, 7)])
def test_refill_pump_is_an_integer_or_a_string_of_digits(pump, number):
    request = parse(message("refill", {"pump": pump}), LIMITS)
    assert isinstance(request, Refill) and request.pump == number


def test_configured_pump_count_decides_which_pumps_exist():
    four = Limits(pumps=4, max_cup_size=1.0)
    assert parse(message("refill", {"pump": 3}), four).pump == 3
    with pytest.raises(BadMessage, match="pump 4 is not a configured pump; use a pump number from 0 to 3"):
        parse(message("refill", {"pump": 4}), four)
    with pytest.raises(BadMessage, match='ratios key "4" is not a configured pump'):
        parse(message("blend", {"cup_size": 0.1, "ratios": {"4": 1}}), four)

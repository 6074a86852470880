"""Protocol `parse` and strict JSON: what each client message becomes, the words for each bad one,
and the published schema agreeing with both."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from support.badinput import GOOD_INPUTS

from barmaid.errors import BadMessage
from barmaid.protocol import Blend, Echo, Limits, Refill, parse, read_frame, schema
from barmaid.strictjson import MAX_DEPTH, decode, encode

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


# ---- strict JSON, ids, and the schema agreeing with the parser ------------------------------

TO_SERVER = Draft202012Validator({"$defs": schema()["$defs"], "$ref": "#/$defs/ToServer"})


def test_the_schema_is_valid_json_schema_2020_12_without_pydantic_only_keywords():
    generated = schema()
    Draft202012Validator.check_schema(generated)
    keys: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            keys.update(k for k in node if not isinstance(node.get("properties"), dict) or k != "properties")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for definition in generated["$defs"].values():
        walk(definition)
    assert not keys & {"gt", "ge", "lt", "le", "$barmaid"}, keys & {"gt", "ge", "lt", "le", "$barmaid"}


def test_every_object_in_the_schema_is_closed():
    for name, definition in schema()["$defs"].items():
        if definition.get("type") == "object" and "properties" in definition:
            assert definition.get("additionalProperties") is False, name
    for side in ("ToServer", "FromServer"):
        for envelope in schema()["$defs"][side]["oneOf"]:
            assert envelope["additionalProperties"] is False


def test_the_schema_rejects_exactly_what_the_server_rejects(bad_input):
    """The same frame through the server's parser and the published schema."""
    with pytest.raises(BadMessage):
        parse(bad_input.frame, LIMITS)
    try:
        document = decode(bad_input.frame)
    except BadMessage:
        assert bad_input.level == "json", "strict JSON refused a frame the table expects the schema to judge"
        return
    assert bad_input.level != "json", "the strict JSON decoder let through a frame it must refuse"
    if bad_input.level == "server":  # a sum of ratios: no JSON Schema keyword says that
        assert TO_SERVER.is_valid(document)
    else:
        assert not TO_SERVER.is_valid(document), f"the schema accepts {bad_input.frame[:100]}"


@pytest.mark.parametrize("frame", GOOD_INPUTS)
def test_frames_the_server_accepts_are_valid_for_the_schema_too(frame):
    parse(frame, LIMITS)
    errors = list(TO_SERVER.iter_errors(decode(frame)))
    assert not errors, errors[0].message


def test_a_typo_in_a_clean_does_not_clean_every_pump():
    with pytest.raises(BadMessage, match='unknown key "pump" in data; allowed: seconds, pumps'):
        parse('{"type": "clean", "data": {"seconds": 0.5, "pump": [3]}}', LIMITS)


def test_a_duplicate_key_is_refused_instead_of_the_last_one_winning():
    with pytest.raises(BadMessage, match='duplicate key "0"'):
        parse('{"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.5, "0": 0.9}}}', LIMITS)


def test_nesting_up_to_the_limit_is_fine_one_more_is_refused_with_its_own_message():
    assert decode("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    with pytest.raises(BadMessage, match="nested too deeply") as caught:
        decode("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert "not JSON" not in str(caught.value)


def test_a_5000_digit_number_is_too_large_not_not_json():
    with pytest.raises(BadMessage) as caught:
        decode("9" * 5000)
    assert "too large" in str(caught.value) and "not JSON" not in str(caught.value)


def test_numbers_a_float_holds_pass_unchanged():
    assert decode("[1e308, 123456789012345678901234567890, -0.0, 1e-400]") == [1e308, 123456789012345678901234567890, -0.0, 0.0]


def test_encode_refuses_nan_and_infinity_rather_than_writing_what_no_parser_reads():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            encode({"x": value})


@pytest.mark.parametrize(("id_text", "expected"), [('"a-1"', "a-1"), ("7", 7), ("-3", -3), ("7.0", 7), (str(2**53 - 1), 2**53 - 1)])
def test_read_frame_keeps_a_valid_id(id_text, expected):
    incoming = read_frame(f'{{"type": "stop", "id": {id_text}}}')
    assert incoming.id == expected and type(incoming.id) is type(expected)


def test_a_frame_without_id_has_id_none():
    assert read_frame('{"type": "stop"}').id is None


def test_the_schema_follows_the_configured_pumps_and_limits():
    four = Draft202012Validator({"$defs": schema(Limits(4, 0.5, 10))["$defs"], "$ref": "#/$defs/ToServer"})
    assert four.is_valid({"type": "refill", "data": {"pump": "3"}})
    assert not four.is_valid({"type": "refill", "data": {"pump": "4"}})
    assert not four.is_valid({"type": "blend", "data": {"cup_size": 0.6, "ratios": {"0": 1}}})
    assert not four.is_valid({"type": "calibrate", "data": {"pump": 0, "seconds": 11}})


def test_a_new_request_model_slots_into_parse_and_the_schema_by_being_listed(monkeypatch):
    """How `prime` or `reset_calibration` join: a model with a type, listed in REQUESTS."""
    from barmaid import protocol

    class Prime(protocol.Request):
        """Fills one pump's tube."""

        type = "prime"
        guarded = True
        blocking = True
        pump: protocol.PumpNumber

    monkeypatch.setitem(protocol.REQUESTS, "prime", Prime)
    primed = parse('{"type": "prime", "data": {"pump": "3"}}', LIMITS)
    assert isinstance(primed, Prime) and primed.pump == 3
    with pytest.raises(BadMessage, match='prime: unknown key "pumps" in data; allowed: pump'):
        parse('{"type": "prime", "data": {"pumps": [3]}}', LIMITS)
    generated = schema()
    Draft202012Validator.check_schema(generated)
    validator = Draft202012Validator({"$defs": generated["$defs"], "$ref": "#/$defs/ToServer"})
    assert validator.is_valid({"type": "prime", "data": {"pump": 3}, "id": 1})
    assert not validator.is_valid({"type": "prime", "data": {"pump": 8}})
    assert not validator.is_valid({"type": "prime", "data": {"pump": 3, "extra": 1}})


@given(
    mantissa=st.integers(min_value=0, max_value=10**320),
    fraction=st.sampled_from(["", ".5", ".000001"]),
    exponent=st.sampled_from(["", "e0", "e9", "e10", "e+10", "e100", "e292", "e308", "E0308", "e-400", "e1000"]),
)
def test_decode_never_lets_a_number_through_that_a_float_cannot_hold(mantissa, fraction, exponent):
    text = f"[{mantissa}{fraction}{exponent}]"
    try:
        [number] = decode(text)
    except BadMessage as refused:
        assert "too large" in str(refused)
    else:
        assert math.isfinite(float(number))

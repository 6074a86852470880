"""The bad-input table: frames barmaid must refuse, with what each error must say, and frames it
must act on. One table serves `parse`, the server and the published protocol schema, so the three
cannot drift apart (the `bad_input` fixture in conftest walks it)."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest


class BadInput(NamedTuple):
    frame: str
    #: Fragments the error message must contain: what was wrong, and the offending value.
    says: tuple[str, ...]
    #: Who refuses it: "json" (not a strict JSON document: no schema sees it), "schema" (the
    #: protocol schema rejects it too), "server" (beyond what a JSON Schema can say).
    level: str = "schema"


def _blend(cup_size: str = "0.1", ratios: str = '{"0": 1}') -> str:
    return f'{{"type": "blend", "data": {{"cup_size": {cup_size}, "ratios": {ratios}}}}}'


def _refill(pump: str) -> str:
    return f'{{"type": "refill", "data": {{"pump": {pump}}}}}'


def _with_id(id: str) -> str:
    return f'{{"type": "echo", "data": 1, "id": {id}}}'


def _bad(frame: str, says: tuple[str, ...], id: str, level: str = "schema") -> Any:
    return pytest.param(BadInput(frame, says, level), id=id)


_HUGE_INT = "1" + "0" * 400
_5000_DIGITS = "9" * 5000
_TOO_LARGE = ("too large", "a float cannot hold it")

BAD_INPUTS = [
    _bad("hello", ("not JSON", "hello"), id="not-json", level="json"),
    _bad('{"type": "echo"', ("not JSON",), id="truncated-json", level="json"),
    _bad("[1, 2]", ("JSON object", "[1, 2]"), id="list"),
    _bad('"echo"', ("JSON object", '"echo"'), id="string"),
    _bad("42", ("JSON object", "42"), id="number"),
    _bad("null", ("JSON object", "null"), id="null"),
    _bad('{"data": 1}', ('missing "type"',), id="no-type"),
    _bad('{"type": 3, "data": {}}', ('"type" must be a string', "3"), id="type-number"),
    _bad('{"type": null}', ('"type" must be a string', "null"), id="type-null"),
    _bad('{"type": "dance", "data": {}}', ("unknown type", '"dance"'), id="unknown-type"),
    _bad('{"type": "status", "data": {}}', ("unknown type", '"status"'), id="server-only-type"),
    _bad('{"type": "echo", "data": 1, "extra": 2}', ('unknown key "extra" in the message', "allowed: type, data, id"), id="unknown-top-level-key"),
    _bad('{"type": "blend"}', ("blend", '"data" missing'), id="blend-no-data"),
    _bad('{"type": "blend", "data": null}', ("blend", '"data" missing'), id="blend-data-null"),
    _bad('{"type": "refill"}', ("refill", '"data" missing'), id="refill-no-data"),
    _bad('{"type": "blend", "data": [0.1]}', ('"data" must be an object', "[0.1]"), id="blend-data-list"),
    _bad('{"type": "refill", "data": 4}', ('"data" must be an object', "4"), id="refill-data-number"),
    _bad('{"type": "blend", "data": {"ratios": {"0": 1}}}', ('missing "cup_size"',), id="cup-size-missing"),
    _bad(_blend(cup_size='"0.1"'), ("cup_size", 'got "0.1"'), id="cup-size-string"),
    _bad(_blend(cup_size="true"), ("cup_size", "got true"), id="cup-size-bool"),
    _bad(_blend(cup_size="null"), ("cup_size", "got null"), id="cup-size-null"),
    _bad(_blend(cup_size="NaN"), ("NaN is not JSON",), id="cup-size-nan", level="json"),
    _bad(_blend(cup_size="1e999"), ("1e999", *_TOO_LARGE), id="cup-size-1e999", level="json"),
    _bad(_blend(cup_size="Infinity"), ("Infinity is not JSON",), id="cup-size-infinity", level="json"),
    _bad(_blend(cup_size="-Infinity"), ("-Infinity is not JSON",), id="cup-size-minus-infinity", level="json"),
    _bad(_blend(cup_size="0"), ("cup_size", "> 0", "got 0"), id="cup-size-zero"),
    _bad(_blend(cup_size="-0.1"), ("cup_size", "got -0.1"), id="cup-size-negative"),
    _bad(_blend(cup_size="1.5"), ("cup_size", "<= 1.0", "got 1.5"), id="cup-size-over-max"),
    _bad(_blend(cup_size=_HUGE_INT), _TOO_LARGE, id="cup-size-huge-integer", level="json"),
    _bad(_blend(cup_size=_5000_DIGITS), _TOO_LARGE, id="cup-size-5000-digits", level="json"),
    _bad('{"type": "blend", "data": {"cup_size": 0.1}}', ('missing "ratios"',), id="ratios-missing"),
    _bad(_blend(ratios='"0: 1"'), ("ratios must be an object", '"0: 1"'), id="ratios-string"),
    _bad(_blend(ratios="[0.5, 0.5]"), ("ratios must be an object", "[0.5, 0.5]"), id="ratios-list"),
    _bad(_blend(ratios='{"8": 1}'), ('ratios key "8"', "not a configured pump"), id="ratios-key-8"),
    _bad(_blend(ratios='{"-1": 1}'), ("ratios key", 'got "-1"'), id="ratios-key-minus-1"),
    _bad(_blend(ratios='{"x": 1}'), ("ratios key", 'got "x"'), id="ratios-key-x"),
    _bad(_blend(ratios='{"1.5": 1}'), ("ratios key", 'got "1.5"'), id="ratios-key-fraction"),
    _bad(_blend(ratios='{"": 1}'), ("ratios key", 'got ""'), id="ratios-key-empty"),
    _bad(_blend(ratios='{"01": 1}'), ("ratios key", 'got "01"'), id="ratios-key-leading-zero"),
    _bad(_blend(ratios='{"0": 0.5, "0": 0.9}'), ("duplicate key", '"0"'), id="ratios-duplicate-key", level="json"),
    _bad(_blend(ratios='{"0": "0.5"}'), ("ratio of pump 0", 'got "0.5"'), id="ratio-string"),
    _bad(_blend(ratios='{"0": true}'), ("ratio of pump 0", "got true"), id="ratio-bool"),
    _bad(_blend(ratios='{"0": null}'), ("ratio of pump 0", "got null"), id="ratio-null"),
    _bad(_blend(ratios='{"0": -0.1}'), ("ratio of pump 0", "got -0.1"), id="ratio-negative"),
    _bad(_blend(ratios='{"0": 1.1}'), ("ratio of pump 0", "got 1.1"), id="ratio-over-1"),
    _bad(_blend(ratios='{"0": NaN}'), ("NaN is not JSON",), id="ratio-nan", level="json"),
    _bad(_blend(ratios=f'{{"0": {_HUGE_INT}}}'), _TOO_LARGE, id="ratio-huge-integer", level="json"),
    _bad(_blend(ratios='{"0": 0.6, "1": 0.6}'), ("add up to 1.2", "more than a full cup"), id="ratios-sum-1.2", level="server"),
    _bad(_blend(ratios='{"0": 0, "1": 0}'), ("nothing to pour",), id="ratios-all-zero"),
    _bad(_blend(ratios="{}"), ("nothing to pour",), id="ratios-empty"),
    _bad(
        '{"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}, "extra": 1}}',
        ('blend: unknown key "extra" in data', "allowed: cup_size, ratios"),
        id="blend-unknown-key",
    ),
    _bad(
        '{"type": "echo", "type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}}',
        ("duplicate key", '"type"'),
        id="duplicate-type",
        level="json",
    ),
    _bad('{"type": "refill", "data": {}}', ('missing "pump"',), id="pump-missing"),
    _bad(_refill("true"), ("pump", "got true"), id="pump-bool"),
    _bad(_refill("null"), ("pump", "got null"), id="pump-null"),
    _bad(_refill("1.5"), ("pump", "got 1.5"), id="pump-fraction"),
    _bad(_refill('"x"'), ("pump", 'got "x"'), id="pump-x"),
    _bad(_refill('"-1"'), ("pump", 'got "-1"'), id="pump-string-minus-1"),
    _bad(_refill('"07"'), ("pump", 'got "07"'), id="pump-leading-zero"),
    _bad(_refill("-1"), ("pump -1", "not a configured pump"), id="pump-minus-1"),
    _bad(_refill("8"), ("pump 8", "not a configured pump"), id="pump-8"),
    _bad(_refill('"8"'), ('pump "8"', "not a configured pump"), id="pump-string-8"),
    _bad('{"type": "refill", "data": {"pump": 1, "pumps": 2}}', ('unknown key "pumps" in data', "allowed: pump"), id="refill-unknown-key"),
    _bad(
        '{"type": "clean", "data": {"seconds": 0.5, "pump": [3]}}',
        ('clean: unknown key "pump" in data', "allowed: seconds, pumps"),
        id="clean-pump-typo",
    ),
    _bad('{"type": "clean", "data": {"seconds": -1}}', ("seconds must be a number > 0", "got -1"), id="clean-seconds-negative"),
    _bad('{"type": "clean", "data": {"seconds": 0}}', ("seconds must be a number > 0", "got 0"), id="clean-seconds-zero"),
    _bad('{"type": "clean", "data": {"seconds": 1, "pumps": [-4]}}', ("pumps item -4", "not a configured pump"), id="clean-pump-minus-4"),
    _bad('{"type": "clean", "data": {"seconds": 1, "pumps": []}}', ("non-empty list",), id="clean-pumps-empty"),
    _bad('{"type": "clean", "data": {"seconds": 1, "pumps": [1, 1]}}', ("names a pump twice",), id="clean-pumps-twice"),
    _bad('{"type": "calibrate", "data": {"pump": 0, "seconds": -0.5}}', ("seconds must be a number > 0",), id="calibrate-seconds-negative"),
    _bad('{"type": "history", "data": {"limt": 5}}', ('history: unknown key "limt" in data', "allowed: limit"), id="history-limit-typo"),
    _bad('{"type": "history", "data": {"limit": 0}}', ("limit must be a whole number from 1 to 500", "got 0"), id="history-limit-0"),
    _bad('{"type": "history", "data": {"limit": "5"}}', ("limit must be a whole number", 'got "5"'), id="history-limit-string"),
    _bad('{"type": "set_level", "data": {"pump": 0, "ml": -1}}', ("ml must be a number of millilitres >= 0", "got -1"), id="set-level-negative"),
    _bad('{"type": "set_flow", "data": {"pump": 0, "ml": 0}}', ("ml must be a number > 0", "got 0"), id="set-flow-zero"),
    _bad('{"type": "hello", "data": {"token": 5}}', ("token must be text", "got 5"), id="hello-token-number"),
    _bad('{"type": "stop", "data": {"now": true}}', ('stop: unknown key "now" in data', "allowed: none"), id="stop-unknown-key"),
    _bad(_with_id("true"), ('"id" must be a string', "got true"), id="id-bool"),
    _bad(_with_id("1.5"), ('"id" must be', "got 1.5"), id="id-fraction"),
    _bad(_with_id('""'), ('"id" must be a string of 1 to 64 characters', 'got ""'), id="id-empty"),
    _bad(_with_id('"' + "x" * 65 + '"'), ('"id" must be a string of 1 to 64 characters',), id="id-65-characters"),
    _bad(_with_id(str(2**53)), ('"id" must be', str(2**53)), id="id-over-2-53"),
    _bad(_with_id("[1]"), ('"id" must be', "got [1]"), id="id-list"),
    _bad(_with_id("NaN"), ("NaN is not JSON",), id="id-nan", level="json"),
    _bad('{"type": "echo", "data": 1e400}', ("1e400", *_TOO_LARGE), id="echo-1e400", level="json"),
    _bad('{"type": "echo", "data": [1E+1000]}', ("1E+1000", *_TOO_LARGE), id="echo-1e1000", level="json"),
    _bad('{"type": "echo", "data": 2e0308}', ("2e0308", *_TOO_LARGE), id="echo-2e308", level="json"),
    _bad('{"type": "echo", "data": 17976931348623159e292}', _TOO_LARGE, id="echo-long-mantissa", level="json"),
    _bad('{"type": "echo", "data": ' + "9" * 299 + 'e10}', _TOO_LARGE, id="echo-299-digits-e10", level="json"),
    _bad('{"type": "echo", "data": ' + _5000_DIGITS + "}", _TOO_LARGE, id="echo-5000-digits", level="json"),
    _bad('{"type": "echo", "data": ' + "[" * 33 + "]" * 33 + "}", ("nested too deeply", "at most 32"), id="echo-33-deep", level="json"),
    _bad('{"type": "echo", "data": ' + "[" * 30000 + "]" * 30000 + "}", ("nested too deeply",), id="echo-30000-deep", level="json"),
]

#: Frames the server acts on; the protocol schema accepts each of them too.
GOOD_INPUTS = [
    '{"type": "blend", "data": {"cup_size": 0.04, "ratios": {"1": 0.2, "2": 0.1, "5": 0.7}}}',
    '{"type": "blend", "data": {"cup_size": 1, "ratios": {"0": 0.35, "1": 0.65}}, "id": "order-1"}',
    '{"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.5, "7": 0}}}',
    '{"type": "refill", "data": {"pump": 4}}',
    '{"type": "refill", "data": {"pump": "4"}, "id": 17}',
    '{"type": "refill", "data": {"pump": 4.0}}',
    '{"type": "echo", "data": {"msg": "toaster"}}',
    '{"type": "echo"}',
    '{"type": "echo", "data": ' + "[" * 31 + "]" * 31 + "}",
    '{"type": "echo", "data": [1e308, -1e-400, 123456789012345678901234567890]}',
    '{"type": "stop"}',
    '{"type": "stop", "data": null, "id": -5}',
    '{"type": "state", "data": {}}',
    '{"type": "history"}',
    '{"type": "history", "data": {"limit": 500}}',
    '{"type": "set_level", "data": {"pump": 2, "ml": 0}}',
    '{"type": "set_flow", "data": {"pump": "2", "ml": 203}}',
    '{"type": "calibrate", "data": {"pump": 2, "seconds": 10}}',
    '{"type": "clean", "data": {"seconds": 20}}',
    '{"type": "clean", "data": {"seconds": 0.5, "pumps": ["0", 3]}}',
    '{"type": "clean", "data": {"seconds": 0.5, "pumps": null}}',
    '{"type": "hello"}',
    '{"type": "hello", "data": {"token": "s3cret-party"}, "id": "' + "x" * 64 + '"}',
]

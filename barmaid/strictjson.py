"""JSON as barmaid reads and writes it: strict, so that what one side sends the other reads alike.

Python's json module reads NaN and Infinity (which are not JSON), lets the last of two equal keys
win, turns 1e400 into Infinity (which it then writes as bare `Infinity`), and calls a 5,000-digit
number or 30,000 nested arrays "not JSON" through errors of its own. `decode` refuses each of
these with its own sentence; `encode` never writes NaN or Infinity.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from .errors import BadMessage
from .explain import clip

#: Arrays and objects inside one another, the outermost included.
MAX_DEPTH = 32
_FLOAT_MAX_DIGITS = len(str(int(sys.float_info.max)))


class _Refused(ValueError):
    """Valid for Python's json module, but not a JSON document barmaid accepts."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON: JSON numbers are finite; send a number")


def _too_large(text: str) -> _Refused:
    return _Refused(f"the number {clip(text, 40)} is too large: a float cannot hold it (the largest is about 1.8e308)")


def _float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _too_large(text)
    return number


def _int(text: str) -> int:
    # Python refuses int() of more than 4300 digits with its own ValueError: check the length first.
    if len(text.lstrip("-")) > _FLOAT_MAX_DIGITS:
        raise _too_large(text)
    number = int(text)
    try:
        float(number)
    except OverflowError:
        raise _too_large(text) from None
    return number


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {clip(json.dumps(key), 40)}: give each key once")
            seen.add(key)
    return result


def _depth(value: Any) -> int:
    """How many arrays and objects are nested in `value`, counting itself (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


_number_hooks: dict[str, Any] = {"parse_float": _float, "parse_int": _int}
#: A number overflows a float only with 300 or more digits before its point, or with fewer and
#: an exponent of 10 or more: frames with neither skip the (slower) number hooks.
_EXPONENT = re.compile(r"[eE]\+?0*[1-9][0-9]")
_DIGIT_RUN = re.compile(r"[0-9]{300}")
_TOO_DEEP = f"nested too deeply: at most {MAX_DEPTH} levels of arrays and objects"


def decode(frame: str) -> Any:
    """One JSON document, strictly: no NaN or Infinity, no duplicate key, only numbers a float holds,
    at most MAX_DEPTH levels deep.

    Raises:
        BadMessage: naming what was wrong.
    """
    huge = _EXPONENT.search(frame) or (len(frame) >= 300 and _DIGIT_RUN.search(frame))
    numbers = _number_hooks if huge else {}
    try:
        value = json.loads(frame, parse_constant=_no_constant, object_pairs_hook=_object, **numbers)
    except _Refused as exc:
        raise BadMessage(str(exc)) from None
    except RecursionError:
        raise BadMessage(_TOO_DEEP) from None
    except ValueError:
        raise BadMessage(f'not JSON: send an object like {{"type": "echo", "data": "hi"}}, got {clip(frame)}') from None
    # Counting brackets first keeps the walk off the common, shallow frame.
    if frame.count("[") + frame.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise BadMessage(_TOO_DEEP)
    return value


def encode(value: Any) -> str:
    """JSON text that every parser reads: NaN and Infinity raise ValueError instead of going out."""
    return json.dumps(value, allow_nan=False)

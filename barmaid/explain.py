"""pydantic's validation errors said in barmaid's words: the value, shown as JSON, and what is allowed.

The config loader and the protocol parser both report through `allowed`, so no Python type name
("instance of ServerConfig", "tuple should have at least 1 item") ever reaches a user.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def show(value: Any, limit: int = 80, name_containers: bool = False) -> str:
    """A value as its JSON text, clipped; with `name_containers`, a mapping or a list is named
    ("a list of 2 items") rather than dumped."""
    if name_containers and isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if name_containers and isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'s' * (len(value) != 1)}" if value else "an empty list"
    if isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return clip(text, limit)


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: pydantic error type -> what is allowed, from the error's context.
_ALLOWED = {
    "greater_than": "a number > {gt}",
    "greater_than_equal": "a number >= {ge}",
    "less_than": "a number < {lt}",
    "less_than_equal": "a number <= {le}",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "string_too_short": "text of at least {min_length} characters",
    "string_too_long": "text of at most {max_length} characters",
    "literal_error": "{expected}",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "tuple_type": "a list",
    "list_type": "a list",
    "too_short": "a list of at least {min_length} items",
    "too_long": "a list of at most {max_length} items",
    "path_type": "a folder name",
}


def allowed(err: Mapping[str, Any]) -> str:
    """What the field of one pydantic error allows, in words ("a number > 0", "true or false")."""
    template = _ALLOWED.get(err["type"])
    if template is None:  # not one we know: pydantic's sentence, without its "Input should be"
        msg = err["msg"]
        return msg.removeprefix("Input should be ").removeprefix("Value error, ")
    if err["type"] == "string_too_short" and (err.get("ctx") or {}).get("min_length") == 1:
        return "text, not empty"
    return template.format(**{k: show(v) if k != "expected" else v for k, v in (err.get("ctx") or {}).items()})

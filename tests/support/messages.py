"""What barmaid sends, checked and recognised: the protocol schema on every received frame, and
the predicates tests wait on (`recv_until(is_type("state"))`)."""

from __future__ import annotations

import json
from typing import Any, Callable

import jsonschema

from barmaid.protocol import schema

#: What a GUI that speaks only the seed protocol may ever receive.
SEED_TYPES = {"status", "echo", "error"}

#: Every message a test receives from barmaid is checked against the published protocol schema.
_FROM_SERVER = jsonschema.Draft202012Validator({"$defs": schema()["$defs"], "$ref": "#/$defs/FromServer"})


def from_server(frame: str) -> dict[str, Any]:
    """A frame the server sent, parsed, after checking it against docs/protocol.schema.json."""
    message = json.loads(frame)
    errors = sorted(_FROM_SERVER.iter_errors(message), key=str)
    assert not errors, f"server sent a message outside the protocol schema: {frame}\n{errors[0].message}"
    return message


def is_final_status(message: dict[str, Any]) -> bool:
    return message["type"] == "status" and message["data"]["remaining_time"] == 0


def is_type(kind: str) -> Callable[[dict], bool]:
    return lambda message: message["type"] == kind


def is_state(state: str) -> Callable[[dict], bool]:
    return lambda message: message["type"] == "state" and message["data"]["state"] == state

"""The WebSocket protocol: every message in and out, as typed models, validated at the edge.

The inside of barmaid never sees a raw dict from the network: `parse` turns a frame into one
request model or raises BadMessage with a sentence the GUI can show as it is.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, BeforeValidator, WithJsonSchema, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import BadMessage
from .outcomes import Outcome

#: Ratios are floats; 0.35 + 0.65 must not count as more than a full cup.
RATIO_SUM_TOLERANCE = 1e-6
_DIGITS = re.compile(r"[0-9]{1,3}")


@dataclass(frozen=True)
class Limits:
    """What a request is checked against: the configured pumps and the largest cup."""

    pumps: int
    max_cup_size: float


def _finite(value: Any) -> Optional[float]:
    """The value as a float if it is a finite JSON number, else None."""
    # bool is an int in Python but not a number in JSON; a 400-digit integer overflows a float.
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def positive(value: Any, field: str) -> float:
    """A finite JSON number > 0, or ValueError naming the field and the value."""
    number = _finite(value)
    if number is None or number <= 0:
        raise ValueError(f"{field} must be a number > 0, got {_clip(json.dumps(value))}")
    return number


def _limits(info: ValidationInfo) -> Limits:
    return info.context["limits"]


_PUMP_KEY = {"type": "string", "pattern": "^[0-9]{1,3}$"}
#: A configured pump's number; the GUI sends it as a string ("4") as often as an integer.
PumpNumber = Annotated[
    int,
    BeforeValidator(lambda value, info: pump_number(value, _limits(info), info.field_name)),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, _PUMP_KEY], "description": "a pump number"}),
]
#: A finite number > 0 (seconds, millilitres).
Positive = Annotated[float, BeforeValidator(lambda value, info: positive(value, info.field_name)), Field(gt=0)]


def pump_number(value: Any, limits: Limits, field: str = "pump") -> int:
    """A configured pump's number from an int or a string of decimal digits (the GUI sends "0").

    Raises:
        ValueError: naming the field, the value and the range allowed.
    """
    allowed = f"a pump number from 0 to {limits.pumps - 1}"
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(f"{field} must be {allowed}, got {json.dumps(value)}")
    if not 0 <= number < limits.pumps:
        raise ValueError(f"{field} {json.dumps(value)} is not a configured pump; use {allowed}")
    return number


class Request(BaseModel):
    """A message from a client. `type` is the protocol's name for it."""

    model_config = ConfigDict(frozen=True)
    type: ClassVar[str]
    #: False: the message may come without `data` (and `data` is then None).
    needs_data: ClassVar[bool] = True
    #: Seed messages are the original protocol; a seed-only GUI never sees the others.
    seed: ClassVar[bool] = False
    #: Moves pumps or changes what they pour: needs the token when server.token is set.
    guarded: ClassVar[bool] = False


class Echo(Request):
    """Sends `data` back to the sender, exactly as it came, at any time."""

    type: ClassVar[str] = "echo"
    needs_data: ClassVar[bool] = False
    seed: ClassVar[bool] = True
    data: Any = None


class Blend(Request):
    """Pours a cup: every pump with a ratio > 0 runs cup_size*1000*ratio/flow seconds."""

    type: ClassVar[str] = "blend"
    guarded: ClassVar[bool] = True
    seed: ClassVar[bool] = True
    cup_size: float = Field(gt=0, description="litres, > 0 and <= limits.max_cup_size")
    ratios: dict[int, Annotated[float, Field(ge=0, le=1)]] = Field(
        description='pump number (as a string, "0") -> share of the cup, 0..1; the shares add up to 1 at most',
        json_schema_extra={"propertyNames": _PUMP_KEY, "minProperties": 1},
    )

    @field_validator("cup_size", mode="before")
    @classmethod
    def _cup_size(cls, value: Any, info: ValidationInfo) -> float:
        top = _limits(info).max_cup_size
        litres = _finite(value)
        if litres is None:
            raise ValueError(f"cup_size must be a number of litres (> 0 and <= {top}), got {_clip(json.dumps(value))}")
        if not 0 < litres <= top:
            raise ValueError(f"cup_size must be > 0 and <= {top} litres, got {value}")
        return litres

    @field_validator("ratios", mode="before")
    @classmethod
    def _ratios(cls, value: Any, info: ValidationInfo) -> dict[int, float]:
        limits = _limits(info)
        if not isinstance(value, dict):
            raise ValueError(f'ratios must be an object like {{"0": 0.5, "3": 0.5}}, got {json.dumps(value)}')
        ratios: dict[int, float] = {}
        for key, ratio in value.items():
            pump = pump_number(key, limits, field="ratios key")
            if pump in ratios:
                raise ValueError(f"ratios name pump {pump} twice")
            share = _finite(ratio)
            if share is None or not 0 <= share <= 1:
                raise ValueError(f"ratio of pump {key} must be a number from 0 to 1, got {_clip(json.dumps(ratio))}")
            ratios[pump] = share
        total = sum(ratios.values())
        if total > 1 + RATIO_SUM_TOLERANCE:
            raise ValueError(f"ratios add up to {total:g}, more than a full cup (1); lower them")
        if total <= 0:
            raise ValueError("nothing to pour: give at least one pump a ratio > 0")
        return {pump: ratio for pump, ratio in ratios.items() if ratio > 0}


class Refill(Request):
    """Primes the tube of one pump after its bottle was changed: prime_ml at its flow."""

    type: ClassVar[str] = "refill"
    guarded: ClassVar[bool] = True
    seed: ClassVar[bool] = True
    pump: PumpNumber


class Prime(Request):
    """Primes the tube of one pump again (after cleaning): prime_ml at its flow, same bottle.

    Unlike refill it does not reset the level to a new bottle; what priming draws is taken off it.
    """

    type: ClassVar[str] = "prime"
    guarded: ClassVar[bool] = True
    pump: PumpNumber


class Stop(Request):
    """Ends whatever runs now: every pump off, back to idle."""

    type: ClassVar[str] = "stop"
    needs_data: ClassVar[bool] = False


class State(Request):
    """Asks for the machine's state; the sender then also gets it on every change."""

    type: ClassVar[str] = "state"
    needs_data: ClassVar[bool] = False


class History(Request):
    """Asks for the last pours, newest first."""

    type: ClassVar[str] = "history"
    needs_data: ClassVar[bool] = False
    limit: int = Field(20, ge=1, le=500, strict=True)


class SetLevel(Request):
    """Sets what is left in one pump's bottle, by hand."""

    type: ClassVar[str] = "set_level"
    guarded: ClassVar[bool] = True
    pump: PumpNumber
    ml: float = Field(ge=0, description="millilitres left; 0 or more, at most the bottle's capacity_ml")

    @field_validator("ml", mode="before")
    @classmethod
    def _ml(cls, value: Any) -> float:
        number = _finite(value)
        if number is None or number < 0:
            raise ValueError(f"ml must be a number of millilitres >= 0, got {_clip(json.dumps(value))}")
        return number


class Calibrate(Request):
    """Runs one pump for exactly `seconds`, to measure what it pours."""

    type: ClassVar[str] = "calibrate"
    guarded: ClassVar[bool] = True
    pump: PumpNumber
    seconds: Positive = Field(description="how long the pump runs; at most limits.max_pump_seconds")


class SetFlow(Request):
    """Gives the ml that pump's last calibrate run poured: a point; flow_ml_s and dead_s are fitted to them."""

    type: ClassVar[str] = "set_flow"
    guarded: ClassVar[bool] = True
    pump: PumpNumber
    ml: Positive = Field(description="millilitres measured after the last calibrate of this pump")


class ResetCalibration(Request):
    """Starts one pump's calibration over: its runs are forgotten and the config's flow counts again."""

    type: ClassVar[str] = "reset_calibration"
    guarded: ClassVar[bool] = True
    pump: PumpNumber


class Clean(Request):
    """Runs the listed pumps (default all) for `seconds` each, to rinse the tubes."""

    type: ClassVar[str] = "clean"
    guarded: ClassVar[bool] = True
    seconds: Positive = Field(description="how long each pump runs; at most limits.max_pump_seconds")
    pumps: Optional[tuple[int, ...]] = Field(None, description="pump numbers; default: every pump")

    @field_validator("pumps", mode="before")
    @classmethod
    def _pumps(cls, value: Any, info: ValidationInfo) -> Optional[tuple[int, ...]]:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ValueError(f"pumps must be a non-empty list of pump numbers, got {_clip(json.dumps(value))}")
        pumps = tuple(pump_number(v, _limits(info), field="pumps item") for v in value)
        if len(set(pumps)) != len(pumps):
            raise ValueError(f"pumps names a pump twice: {_clip(json.dumps(value))}")
        return pumps


class Hello(Request):
    """Presents server.token, for clients that cannot put it in the URL (?token=...)."""

    type: ClassVar[str] = "hello"
    token: str = Field(max_length=1024)


REQUESTS: dict[str, type[Request]] = {
    cls.type: cls
    for cls in (Blend, Refill, Prime, Echo, Stop, State, History, SetLevel, Calibrate, SetFlow, ResetCalibration, Clean, Hello)
}


def parse(frame: str, limits: Limits) -> Request:
    """Turns one text frame into a request.

    Raises:
        BadMessage: what was wrong, in words a GUI can show.
    """
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        raise BadMessage(f'not JSON: send an object like {{"type": "echo", "data": "hi"}}, got {_clip(frame)}') from None
    if not isinstance(message, dict):
        raise BadMessage(f'a message must be a JSON object with "type" and "data", got {_clip(frame)}')
    kind = message.get("type")
    model = REQUESTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(REQUESTS)
        if "type" not in message:
            raise BadMessage(f'missing "type": expected one of {known}')
        if not isinstance(kind, str):
            raise BadMessage(f'"type" must be a string, one of {known}; got {_clip(json.dumps(kind))}')
        raise BadMessage(f"unknown type {_clip(json.dumps(kind))}: expected one of {known}")
    data = message.get("data")
    if model is Echo:
        return Echo(data=data)
    if data is None and not model.needs_data:
        data = {}
    if not isinstance(data, dict):
        what = "missing" if data is None else f"must be an object, got {_clip(json.dumps(data))}"
        raise BadMessage(f'{kind}: "data" {what}; expected {_example(model)}')
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise BadMessage(f"{kind}: {_first_error(exc, model)}") from None


def _first_error(exc: ValidationError, model: type[Request]) -> str:
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return f'missing "{field}"; expected {_example(model)}'
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    return f"{field}: {err['msg']}"


def _example(model: type[Request]) -> str:
    fields = ", ".join(f'"{name}": ...' for name in model.model_fields)
    return "{" + fields + "}"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- messages from the server -------------------------------------------------------------


class Reply(BaseModel):
    """A message to clients: `{"type": <type>, "data": <model fields>}`."""

    model_config = ConfigDict(frozen=True)
    type: ClassVar[str]
    seed: ClassVar[bool] = False

    def frame(self) -> str:
        return json.dumps({"type": self.type, "data": self.model_dump(mode="json", exclude_none=True)})


class Status(Reply):
    """Progress of the running action, to every client; remaining_time 0 exactly once, at the end."""

    type: ClassVar[str] = "status"
    seed: ClassVar[bool] = True
    remaining_time: int = Field(ge=0, description="whole seconds to the end, rounded up")
    action: Optional[Literal["blend", "refill", "prime", "calibrate", "clean"]] = None
    initial_time: Optional[int] = Field(None, ge=0, description="remaining_time of the first status")
    outcome: Optional[Outcome] = Field(None, description="how the action ended; only on the final status (0)")


class Error(Reply):
    """Something the sender asked for cannot be done; `msg` says what and what to do."""

    type: ClassVar[str] = "error"
    seed: ClassVar[bool] = True
    msg: str


class Welcome(Reply):
    """The answer to a `hello` with the right token: this connection may now pour."""

    type: ClassVar[str] = "welcome"
    msg: str = "token accepted: this connection may pour"


class EchoReply(Reply):
    """The data of an echo, exactly as it came (any JSON value)."""

    type: ClassVar[str] = "echo"
    seed: ClassVar[bool] = True


class Stopped(Reply):
    """The answer to `stop`, to its sender: what was stopped, or that nothing ran."""

    type: ClassVar[str] = "stopped"
    action: Optional[str] = Field(None, description="the action stopped; absent when nothing ran")
    after: Optional[float] = Field(None, description="seconds it had run")
    msg: str


class CalibrationPoint(BaseModel):
    """One measured calibrate run, and how far the fitted law is from it."""

    seconds: float = Field(description="how long the pump really ran")
    ml: float = Field(description="what it poured, as given with set_flow")
    taken: float = Field(description="Unix time of the run")
    residual_ml: float = Field(description="ml minus what flow_ml_s and dead_s say the run poured")


class PumpState(BaseModel):
    pump: int
    flow_ml_s: float
    dead_s: float = Field(0.0, description="start-up time: seconds on before liquid comes out")
    prime_ml: float
    level_ml: Optional[float] = Field(None, description="what is left in the bottle; null: not tracked")
    capacity_ml: Optional[float] = Field(None, description="a full bottle; null: unknown")
    calibration_seconds: Optional[float] = Field(
        None, description="length of the last calibrate run; null: none, or cut so its length is unknown"
    )
    points: list[CalibrationPoint] = Field(default_factory=list, description="the runs flow_ml_s and dead_s are fitted to")
    sim_poured_ml: Optional[float] = Field(
        None, description="simulated pumps only (absent otherwise): what the pump really poured since start"
    )


class StateReply(Reply):
    """The machine's state, to whoever asked, and on every change to every client that did."""

    type: ClassVar[str] = "state"
    state: str = Field(description="idle, blending, refilling, calibrating or cleaning")
    action: Optional[str] = None
    remaining_time: int = Field(ge=0)
    pumps: list[PumpState]

    def frame(self) -> str:  # level_ml null means "not tracked": keep the nulls, but sim_poured_ml's
        data = self.model_dump(mode="json")
        for pump in data["pumps"]:
            if pump["sim_poured_ml"] is None:
                del pump["sim_poured_ml"]
        return json.dumps({"type": self.type, "data": data})


class PourEntry(BaseModel):
    id: int
    started: float = Field(description="Unix time")
    ended: Optional[float] = None
    action: str
    planned_ml: dict[int, float]
    poured_ml: Optional[dict[int, float]] = None
    outcome: str = Field(description="running, completed, stopped, lost, shut down, failed or interrupted")


class HistoryReply(Reply):
    """The last pours, newest first."""

    type: ClassVar[str] = "history"
    pours: list[PourEntry]


REPLIES: tuple[type[Reply], ...] = (Status, Error, EchoReply, Stopped, StateReply, HistoryReply, Welcome)


def echo_frame(data: Any) -> str:
    """The echo reply: the data exactly as it came (the same text json.dumps gives for the whole)."""
    return '{"type": "echo", "data": ' + json.dumps(data) + "}"


def error_frame(msg: str) -> str:
    return Error(msg=msg).frame()


def schema() -> dict[str, Any]:
    """JSON Schema of every message, both ways, from the models `parse` and the replies use."""
    defs: dict[str, Any] = {}

    def envelope(model: type[BaseModel], kind: str, seed: bool, required: bool, mode: str) -> dict[str, Any]:
        data: dict[str, Any] = {}  # any JSON value: the echo's data
        if model not in (Echo, EchoReply):
            body = model.model_json_schema(ref_template="#/$defs/{model}", mode=mode)
            defs.update(body.pop("$defs", {}))
            defs[model.__name__] = body
            data = {"$ref": f"#/$defs/{model.__name__}"}
        return {
            "type": "object",
            "description": f"{'seed' if seed else 'new'}: {model.__doc__.strip()}",
            "properties": {"type": {"const": kind}, "data": data},
            "required": ["type", "data"] if required else ["type"],
        }

    inbound = [envelope(m, m.type, m.seed, m.needs_data, "validation") for m in REQUESTS.values()]
    outbound = [envelope(m, m.type, m.seed, True, "serialization") for m in REPLIES]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "barmaid WebSocket protocol",
        "$defs": {**defs, "ToServer": {"oneOf": inbound}, "FromServer": {"oneOf": outbound}},
        "anyOf": [{"$ref": "#/$defs/ToServer"}, {"$ref": "#/$defs/FromServer"}],
    }

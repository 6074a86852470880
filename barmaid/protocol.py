"""The WebSocket protocol: every message in and out, as typed models, validated at the edge.

The inside of barmaid never sees a raw dict from the network: a frame is decoded as strict JSON
(`read_frame`), its type looked up (`request_model`) and its data validated (`build`), each step
raising BadMessage with a sentence the GUI can show as it is. `parse` does all three.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaMode

from . import __version__
from .errors import BadMessage, ErrorCode
from .explain import allowed, clip, show
from .outcomes import ActionKind, Outcome
from .strictjson import MAX_DEPTH, decode, encode

if TYPE_CHECKING:
    from .config import Config

#: Raised whenever the protocol changes (a new message, field or rule); the seed protocol was 1.
PROTOCOL_VERSION = 2
#: Ratios are floats; 0.35 + 0.65 must not count as more than a full cup.
RATIO_SUM_TOLERANCE = 1e-6
#: The longest string a request's "id" may be.
MAX_ID_LENGTH = 64
#: Integer ids stay within what a JavaScript number holds exactly.
MAX_ID_INTEGER = 2**53 - 1
#: The keys a message may have; any other is refused.
ENVELOPE_KEYS = ("type", "data", "id")
#: A pump number written as JSON text: decimal, without leading zeros.
_CANONICAL = re.compile(r"0|[1-9][0-9]{0,2}")
#: Every model here. defer_build: pydantic builds a model's validator and serializer when it is
#: first used, not at import; a process uses a few of these models (`barmaid serve` answering
#: one GUI, a client command), and building all of them took a third of its start-up.
_MODEL = ConfigDict(frozen=True, extra="forbid", defer_build=True)

RequestId = Union[str, int]


@dataclass(frozen=True)
class Limits:
    """What a request is checked against: the configured pumps, the largest cup, the longest run."""

    pumps: int
    max_cup_size: float
    max_pump_seconds: float = 120.0

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(len(config.pumps), config.limits.max_cup_size, config.limits.max_pump_seconds)


# ---- fields ---------------------------------------------------------------------------------


def _finite(value: Any) -> Optional[float]:
    """The value as a float if it is a finite JSON number, else None."""
    # bool is an int in Python but not a number in JSON.
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any) -> Optional[int]:
    """The value as an int if it is a JSON integer (JSON Schema counts 3.0 as one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def positive(value: Any, field: str) -> float:
    """A finite JSON number > 0, or ValueError naming the field and the value."""
    number = _finite(value)
    if number is None or number <= 0:
        raise ValueError(f"{field} must be a number > 0, got {show(value)}")
    return number


def _limits(info: ValidationInfo) -> Limits:
    if not info.context or "limits" not in info.context:
        raise TypeError("request models validate only with context={'limits': Limits}: build them with protocol.build")
    limits: Limits = info.context["limits"]
    return limits


def _placeholder(name: str) -> WithJsonSchema:
    """A field whose schema depends on the configuration: `schema` fills it in from the limits."""
    return WithJsonSchema({"$barmaid": name})


#: A configured pump's number; the GUI sends it as a string ("4") as often as an integer.
PumpNumber = Annotated[
    int,
    BeforeValidator(lambda value, info: pump_number(value, _limits(info), info.field_name)),
    _placeholder("PumpNumber"),
]
#: A finite number > 0 (millilitres).
Positive = Annotated[
    float,
    BeforeValidator(lambda value, info: positive(value, info.field_name)),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
]
#: A pump's running time: > 0, and at most limits.max_pump_seconds (the driver refuses longer).
PumpSeconds = Annotated[
    float, BeforeValidator(lambda value, info: positive(value, info.field_name)), _placeholder("PumpSeconds")
]


def pump_number(value: Any, limits: Limits, field: str = "pump") -> int:
    """A configured pump's number from an integer or its decimal text (the GUI sends "0").

    Raises:
        ValueError: naming the field, the value and the range allowed.
    """
    allowed_text = f"a pump number from 0 to {limits.pumps - 1}"
    if isinstance(value, str) and _CANONICAL.fullmatch(value):
        number: Optional[int] = int(value)
    else:
        number = _whole(value) if not isinstance(value, str) else None
    if number is None:
        raise ValueError(f"{field} must be {allowed_text}, got {show(value)}")
    if not 0 <= number < limits.pumps:
        raise ValueError(f"{field} {show(value)} is not a configured pump; use {allowed_text}")
    return number


# ---- messages from clients ------------------------------------------------------------------


class Request(BaseModel):
    """A message from a client. `type` is the protocol's name for it."""

    model_config = _MODEL
    type: ClassVar[str]
    #: False: the message may come without `data` (and `data` is then None).
    needs_data: ClassVar[bool] = True
    #: Seed messages are the original protocol; a seed-only GUI never sees the others.
    seed: ClassVar[bool] = False
    #: Moves pumps or changes what they pour: needs the token when server.token is set.
    guarded: ClassVar[bool] = False
    #: Starts a blocking action (the machine is busy until it ends); acknowledged with `started`.
    blocking: ClassVar[bool] = False


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
    blocking: ClassVar[bool] = True
    cup_size: Annotated[float, _placeholder("CupSize")] = Field(description="litres, > 0 and <= limits.max_cup_size")
    ratios: Annotated[dict[int, float], _placeholder("Ratios")] = Field(
        description='pump number (as a string, "0") -> share of the cup, 0..1; the shares add up to 1 at most',
    )

    @field_validator("cup_size", mode="before")
    @classmethod
    def _cup_size(cls, value: Any, info: ValidationInfo) -> float:
        top = _limits(info).max_cup_size
        litres = _finite(value)
        if litres is None:
            raise ValueError(f"cup_size must be a number of litres (> 0 and <= {top}), got {show(value)}")
        if not 0 < litres <= top:
            raise ValueError(f"cup_size must be > 0 and <= {top} litres, got {show(value)}")
        return litres

    @field_validator("ratios", mode="before")
    @classmethod
    def _ratios(cls, value: Any, info: ValidationInfo) -> dict[int, float]:
        limits = _limits(info)
        if not isinstance(value, dict):
            raise ValueError(f'ratios must be an object like {{"0": 0.5, "3": 0.5}}, got {show(value)}')
        ratios: dict[int, float] = {}
        for key, ratio in value.items():
            pump = pump_number(key, limits, field="ratios key")
            share = _finite(ratio)
            if share is None or not 0 <= share <= 1:
                raise ValueError(f"ratio of pump {key} must be a number from 0 to 1, got {show(ratio)}")
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
    blocking: ClassVar[bool] = True
    pump: PumpNumber


class Prime(Request):
    """Primes the tube of one pump again (after cleaning): prime_ml at its flow, same bottle.

    Unlike refill it does not reset the level to a new bottle; what priming draws is taken off it.
    """

    type: ClassVar[str] = "prime"
    guarded: ClassVar[bool] = True
    blocking: ClassVar[bool] = True
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
    limit: Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 500})] = Field(
        20, description="how many pours, 1 to 500"
    )

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> int:
        number = _whole(value)
        if number is None or not 1 <= number <= 500:
            raise ValueError(f"limit must be a whole number from 1 to 500, got {show(value)}")
        return number


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
            raise ValueError(f"ml must be a number of millilitres >= 0, got {show(value)}")
        return number


class Calibrate(Request):
    """Runs one pump for exactly `seconds`, to measure what it pours."""

    type: ClassVar[str] = "calibrate"
    guarded: ClassVar[bool] = True
    blocking: ClassVar[bool] = True
    pump: PumpNumber
    seconds: PumpSeconds = Field(description="how long the pump runs; at most limits.max_pump_seconds")


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
    blocking: ClassVar[bool] = True
    seconds: PumpSeconds = Field(description="how long each pump runs; at most limits.max_pump_seconds")
    pumps: Annotated[Optional[tuple[int, ...]], _placeholder("PumpList")] = Field(
        None, description="pump numbers, each once; default (absent or null): every pump"
    )

    @field_validator("pumps", mode="before")
    @classmethod
    def _pumps(cls, value: Any, info: ValidationInfo) -> Optional[tuple[int, ...]]:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ValueError(f"pumps must be a non-empty list of pump numbers, got {show(value)}")
        pumps = tuple(pump_number(v, _limits(info), field="pumps item") for v in value)
        if len(set(pumps)) != len(pumps):
            raise ValueError(f"pumps names a pump twice: {clip(json.dumps(value))}")
        return pumps


class Hello(Request):
    """Asks what this server is (answered by `welcome`); presents server.token when given, for
    clients that cannot put it in the URL (?token=...)."""

    type: ClassVar[str] = "hello"
    needs_data: ClassVar[bool] = False
    token: Optional[str] = Field(None, max_length=1024, description="server.token; optional")


#: Every message a client may send, by type. A new request model only needs to be listed here.
REQUESTS: dict[str, type[Request]] = {
    cls.type: cls
    for cls in (
        Blend, Refill, Prime, Echo, Stop, State, History, SetLevel, Calibrate, SetFlow, ResetCalibration, Clean, Hello
    )
}


@dataclass(frozen=True)
class Incoming:
    """A frame decoded: the message object and the client's id for it (None: it gave none)."""

    message: dict[str, Any]
    id: Optional[RequestId]


def read_frame(frame: str) -> Incoming:
    """Decodes a frame into a message object and checks its id, so every later error can carry it.

    Raises:
        BadMessage: not strict JSON, not an object, or a bad "id".
    """
    message = decode(frame)
    if not isinstance(message, dict):
        raise BadMessage(f'a message must be a JSON object with "type" and "data", got {clip(frame)}')
    return Incoming(message, request_id(message.get("id")))


def request_id(value: Any) -> Optional[RequestId]:
    """A valid "id" as given, or None when there is none.

    Raises:
        BadMessage: naming the value and what an id may be.
    """
    if value is None:
        return None
    number = _whole(value)
    if isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH:
        return value
    if number is not None and abs(number) <= MAX_ID_INTEGER:
        return number
    raise BadMessage(
        f'"id" must be a string of 1 to {MAX_ID_LENGTH} characters or an integer of at most'
        f" {MAX_ID_INTEGER} in size, got {show(value)}"
    )


def request_model(message: dict[str, Any]) -> type[Request]:
    """The request model for a message's "type".

    Raises:
        BadMessage: the type is missing, not a string, or unknown; or the message has other keys.
    """
    kind = message.get("type")
    model = REQUESTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(REQUESTS)
        if "type" not in message:
            raise BadMessage(f'missing "type": expected one of {known}')
        if not isinstance(kind, str):
            raise BadMessage(f'"type" must be a string, one of {known}; got {show(kind)}')
        raise BadMessage(f"unknown type {show(kind)}: expected one of {known}")
    _no_unknown_keys(message, ENVELOPE_KEYS, f"{kind}: unknown key {{key}} in the message")
    return model


def build(model: type[Request], message: dict[str, Any], limits: Limits) -> Request:
    """The request from a message whose type is `model`'s, its data validated against `limits`.

    Raises:
        BadMessage: what was wrong with the data, naming the field and the value.
    """
    data = message.get("data")
    if model is Echo:
        return Echo(data=data)
    if data is None and not model.needs_data:
        data = {}
    if not isinstance(data, dict):
        what = "missing" if data is None else f"must be an object, got {show(data)}"
        raise BadMessage(f'{model.type}: "data" {what}; expected {_example(model)}')
    _no_unknown_keys(data, tuple(model.model_fields), f"{model.type}: unknown key {{key}} in data")
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise BadMessage(f"{model.type}: {_first_error(exc, model)}") from None


def build_request_models() -> None:
    """Builds every request model now, where defer_build would wait for its first use (about
    35 ms for the first model a process builds). A server calls it before it listens, so that no
    frame, least of all a GUI's first stop, waits for pydantic before the pumps go off."""
    for model in REQUESTS.values():
        model.model_rebuild()  # a no-op for a model built already


def parse(frame: str, limits: Limits) -> Request:
    """Turns one text frame into a request (its id, if any, is dropped: see `read_frame`).

    Raises:
        BadMessage: what was wrong, in words a GUI can show.
    """
    message = read_frame(frame).message
    return build(request_model(message), message, limits)


def _no_unknown_keys(mapping: dict[str, Any], known: tuple[str, ...], sentence: str) -> None:
    for key in mapping:
        if key not in known:
            allowed_keys = ", ".join(known) if known else "none"
            raise BadMessage(sentence.format(key=clip(json.dumps(key), 40)) + f"; allowed: {allowed_keys}")


def _first_error(exc: ValidationError, model: type[Request]) -> str:
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return f'missing "{field}"; expected {_example(model)}'
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    return f"{field} must be {allowed(err)}, got {show(err['input'])}"


def _example(model: type[Request]) -> str:
    fields = ", ".join(f'"{name}": ...' for name in model.model_fields)
    return "{" + fields + "}"


# ---- messages from the server -------------------------------------------------------------


class Reply(BaseModel):
    """A message to clients: `{"type": <type>, "data": <model fields>}`, and the request's "id"
    when it answers a request that had one."""

    model_config = _MODEL
    type: ClassVar[str]
    seed: ClassVar[bool] = False
    #: False: fields that are None are left out; True: they go out as null.
    keep_nulls: ClassVar[bool] = False

    def data(self) -> dict[str, Any]:
        """The frame's `data`."""
        return self.model_dump(mode="json", exclude_none=not self.keep_nulls)

    def frame(self, id: Optional[RequestId] = None) -> str:
        message: dict[str, Any] = {"type": self.type, "data": self.data()}
        if id is not None:
            message["id"] = id
        return encode(message)


class Status(Reply):
    """Progress of the running action, to every client; remaining_time 0 exactly once, at the end."""

    type: ClassVar[str] = "status"
    seed: ClassVar[bool] = True
    remaining_time: int = Field(ge=0, description="whole seconds to the end, rounded up")
    action: Optional[ActionKind] = None
    initial_time: Optional[int] = Field(None, ge=0, description="remaining_time of the first status")
    outcome: Optional[Outcome] = Field(None, description="how the action ended; only on the final status (0)")


class Error(Reply):
    """Something the sender asked for cannot be done; `msg` says what and what to do."""

    type: ClassVar[str] = "error"
    seed: ClassVar[bool] = True
    msg: str
    code: Optional[ErrorCode] = Field(
        None, description="what kind of refusal; only to clients that speak the extended protocol"
    )
    retry_in: Optional[int] = Field(None, ge=0, description="busy only: whole seconds until the running action ends")


class EchoReply(Reply):
    """The data of an echo, exactly as it came (any JSON value)."""

    type: ClassVar[str] = "echo"
    seed: ClassVar[bool] = True


class Started(Reply):
    """A blocking action the sender asked for has started (sent just before its first status)."""

    type: ClassVar[str] = "started"
    action: str = Field(description="blend, refill, calibrate, clean, ...")
    seconds: float = Field(ge=0, description="how long it runs, to the millisecond")


class Stopped(Reply):
    """The answer to `stop`, to its sender: what was stopped, or that nothing ran."""

    type: ClassVar[str] = "stopped"
    action: Optional[str] = Field(None, description="the action stopped; absent when nothing ran")
    after: Optional[float] = Field(None, description="seconds it had run")
    msg: str


class CalibrationPoint(BaseModel):
    """One measured calibrate run, and how far the fitted law is from it."""

    model_config = _MODEL

    seconds: float = Field(description="how long the pump really ran")
    ml: float = Field(description="what it poured, as given with set_flow")
    taken: float = Field(description="Unix time of the run")
    residual_ml: float = Field(description="ml minus what flow_ml_s and dead_s say the run poured")


class PumpState(BaseModel):
    model_config = _MODEL

    pump: int
    name: Optional[str] = Field(None, description="what the bottle holds (pumps[i].name); null: not named")
    flow_ml_s: float
    dead_s: float = Field(0.0, description="start-up time: seconds on before liquid comes out")
    prime_ml: float
    level_ml: Optional[float] = Field(None, description="what is left in the bottle; null: not tracked")
    capacity_ml: Optional[float] = Field(None, description="a full bottle; null: unknown")
    calibration_seconds: Optional[float] = Field(
        None, description="length of the last calibrate run; null: none, or cut so its length is unknown"
    )
    points: list[CalibrationPoint] = Field(
        default_factory=list, description="the runs flow_ml_s and dead_s are fitted to"
    )
    sim_poured_ml: Optional[float] = Field(
        None, description="simulated pumps only (absent otherwise): what the pump really poured since start"
    )


def _pump_data(pump: dict[str, Any]) -> dict[str, Any]:
    """A pump state as it goes out: its nulls kept (level_ml null: not tracked), but
    sim_poured_ml absent with real pumps."""
    if pump.get("sim_poured_ml") is None:
        pump.pop("sim_poured_ml", None)
    return pump


class StateReply(Reply):
    """The machine's state, to whoever asked, and on every change to every client that did."""

    type: ClassVar[str] = "state"
    keep_nulls: ClassVar[bool] = True  # level_ml null means "not tracked"
    state: str = Field(description="idle, blending, refilling, priming, calibrating or cleaning")
    action: Optional[str] = None
    remaining_time: int = Field(ge=0)
    hardware: bool = Field(description="false while the pump hardware (the GPIO daemon) cannot be reached")
    pumps: list[PumpState]

    def data(self) -> dict[str, Any]:
        data = super().data()
        data["pumps"] = [_pump_data(pump) for pump in data["pumps"]]
        return data


class Done(Reply):
    """The answer to a request that changes a pump's record (set_level, set_flow): its new state."""

    type: ClassVar[str] = "done"
    keep_nulls: ClassVar[bool] = True
    request: str = Field(description="the type of the request answered")
    pump: PumpState

    def data(self) -> dict[str, Any]:
        data = super().data()
        data["pump"] = _pump_data(data["pump"])
        return data


class PourEntry(BaseModel):
    model_config = _MODEL

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


class ServedLimits(BaseModel):
    """What requests are checked against on this server."""

    model_config = _MODEL

    pumps: int = Field(description="pump numbers go from 0 to pumps - 1")
    max_cup_size: float = Field(description="litres")
    max_pump_seconds: float
    max_parallel_pumps: Optional[int] = Field(None, description="null: every pump may run at once")
    max_message_bytes: int
    max_depth: int = Field(MAX_DEPTH, description="arrays and objects inside one another")
    max_id_length: int = MAX_ID_LENGTH
    status_interval: float = Field(description="seconds between status messages")


class Welcome(Reply):
    """The answer to `hello`: what this server is, and whether this connection may pour."""

    type: ClassVar[str] = "welcome"
    keep_nulls: ClassVar[bool] = True  # a pump's level_ml null means "not tracked"
    msg: str
    server: str = Field(__version__, description="barmaid's version")
    protocol: int = Field(PROTOCOL_VERSION, description="raised whenever the protocol changes")
    types: list[str] = Field(default_factory=lambda: list(REQUESTS), description="the message types accepted")
    limits: ServedLimits
    token_required: bool = Field(description="server.token is set: pumping messages need it")
    may_pour: bool = Field(description="this connection may send pumping messages now")
    hardware: bool = Field(description="the pump hardware can be reached now")
    pumps: list[PumpState]


#: Every message the server sends.
REPLIES: tuple[type[Reply], ...] = (
    Status, Error, EchoReply, Started, Stopped, StateReply, Done, HistoryReply, Welcome
)


def echo_frame(data: Any, id: Optional[RequestId] = None) -> str:
    """The echo reply: the data exactly as it came (the same text json.dumps gives for the whole)."""
    tail = "}" if id is None else ', "id": ' + encode(id) + "}"
    return '{"type": "echo", "data": ' + encode(data) + tail


def error_frame(msg: str) -> str:
    """A seed-shaped error: `msg` only."""
    return Error(msg=msg).frame()


# ---- the JSON Schema ------------------------------------------------------------------------


def schema(limits: Optional[Limits] = None) -> dict[str, Any]:
    """JSON Schema (2020-12) of every message, both ways, from the models `build` and the replies use.

    Args:
        limits: what pump numbers, cup sizes and run times are allowed; by default those of the
            default configuration (8 pumps), which docs/protocol.schema.json is generated for.
    """
    if limits is None:
        from .config import Config  # the protocol knows no config otherwise

        limits = Limits.from_config(Config())
    defs: dict[str, Any] = {}

    def envelope(
        model: type[BaseModel], kind: str, seed: bool, data_required: bool, mode: JsonSchemaMode
    ) -> dict[str, Any]:
        data: dict[str, Any] = {}  # any JSON value: the echo's data
        if model not in (Echo, EchoReply):
            body = model.model_json_schema(ref_template="#/$defs/{model}", mode=mode)
            defs.update(body.pop("$defs", {}))
            defs[model.__name__] = body
            data = {"$ref": f"#/$defs/{model.__name__}"}
            if not data_required and mode == "validation":
                data = {"anyOf": [data, {"type": "null"}]}
        return {
            "type": "object",
            "description": f"{'seed' if seed else 'new'}: {' '.join((model.__doc__ or '').split())}",
            "properties": {"type": {"const": kind}, "data": data, "id": {"$ref": "#/$defs/RequestId"}},
            "required": ["type", "data"] if data_required else ["type"],
            "additionalProperties": False,
        }

    inbound = [envelope(m, m.type, m.seed, m.needs_data, "validation") for m in REQUESTS.values()]
    outbound = [envelope(m, m.type, m.seed, True, "serialization") for m in REPLIES]
    defs.update(_limited(limits))
    return _filled(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "barmaid WebSocket protocol",
            "description": (
                f"protocol {PROTOCOL_VERSION}, for {limits.pumps} pumps, cups up to {limits.max_cup_size} l and runs"
                f" up to {limits.max_pump_seconds} s; beyond the schema: strict JSON (no NaN, no duplicate"
                f" key, numbers a float holds, at most {MAX_DEPTH} levels deep) and ratios adding up to 1 at most"
            ),
            "$defs": {**defs, "ToServer": {"oneOf": inbound}, "FromServer": {"oneOf": outbound}},
            "anyOf": [{"$ref": "#/$defs/ToServer"}, {"$ref": "#/$defs/FromServer"}],
        }
    )


def _limited(limits: Limits) -> dict[str, Any]:
    """The definitions that depend on the configuration."""
    names = "|".join(str(n) for n in range(limits.pumps))
    key = {"type": "string", "pattern": f"^(?:{names})$"}
    number = {
        "description": "a pump number, as an integer or its decimal text",
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": limits.pumps - 1}, key],
    }
    return {
        "RequestId": {
            "description": "copied into every reply to this request",
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                {"type": "integer", "minimum": -MAX_ID_INTEGER, "maximum": MAX_ID_INTEGER},
            ],
        },
        "PumpNumber": number,
        "PumpSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": limits.max_pump_seconds},
        "CupSize": {"description": "litres", "type": "number", "exclusiveMinimum": 0, "maximum": limits.max_cup_size},
        "Ratios": {
            "description": "pump number -> share of the cup; at least one share > 0",
            "type": "object",
            "propertyNames": key,
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
            "not": {"additionalProperties": {"maximum": 0}},
        },
        "PumpList": {
            "anyOf": [
                {"type": "array", "items": {"$ref": "#/$defs/PumpNumber"}, "minItems": 1, "uniqueItems": True},
                {"type": "null"},
            ]
        },
    }


def _filled(node: Any) -> Any:
    """The schema with each field placeholder replaced by a reference to its definition."""
    if isinstance(node, dict):
        if "$barmaid" in node:
            rest = {k: v for k, v in node.items() if k not in ("$barmaid", "title")}
            return {"$ref": f"#/$defs/{node['$barmaid']}", **rest}
        return {k: _filled(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_filled(v) for v in node]
    return node

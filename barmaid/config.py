"""The machine's configuration: typed, immutable, validated once at start-up.

A wrong key or value stops barmaid before any pump is touched, with a message naming the key,
the value and what is allowed. Every key is optional; command-line flags win over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .explain import allowed, show

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

#: BCM numbers of the 8 default pumps: free of I2C, SPI and UART, on the header's last rows.
DEFAULT_GPIOS = (5, 6, 13, 16, 19, 20, 21, 26)
#: A 12 V diaphragm pump moves about 1.2 l/min.
DEFAULT_FLOW_ML_S = 20.0
#: Faster than any pump a cocktail machine uses: a flow above it is a mistake.
MAX_FLOW_ML_S = 1000.0
#: The tube of pump 0 is the shortest; each next pump sits 1 ml of tube further from the outlet.
DEFAULT_PRIME_ML = tuple(8.0 + i for i in range(8))
#: Shortest server.status_interval, in seconds.
MIN_STATUS_INTERVAL = 0.05
#: Longest pumps[i].name.
MAX_NAME_LENGTH = 40


class ServerConfig(BaseModel):
    model_config = _STRICT

    #: An IPv4 or IPv6 address or a host name ("::" listens on every IPv6 interface).
    host: str = Field("0.0.0.0", min_length=1, max_length=255)
    #: 0: the system picks a free port (logged at start-up).
    port: int = Field(8765, ge=0, le=65535)
    #: Faster than 20 a second would only spin the action clock; no GUI redraws that often.
    status_interval: float = Field(1.0, ge=MIN_STATUS_INTERVAL, le=60)
    #: Larger frames are refused (close 1009) before their payload is read.
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: One more connection is refused with close 1013.
    max_clients: int = Field(32, ge=1, le=1000)
    #: None: any Origin (GUIs run from file:// or a kiosk); else the Origin headers accepted.
    allowed_origins: Optional[tuple[str, ...]] = None
    #: None: anyone who reaches the port may pour; else clients present it first.
    token: Optional[str] = Field(None, min_length=8, max_length=1024)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins_as_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class DriverConfig(BaseModel):
    model_config = _STRICT

    kind: Literal["sim", "pigpio", "rgpio"] = "sim"
    #: None: the daemon's client's own variables (pigpio: PIGPIO_ADDR / PIGPIO_PORT, else
    #: localhost:8888; rgpio: LG_ADDR / LG_PORT, else localhost:8889).
    host: Optional[str] = None
    port: Optional[int] = Field(None, ge=1, le=65535)
    active_low: bool = False

    #: kind -> the client's variables for the daemon's host and port, and its default port.
    _DAEMON_ENV: ClassVar[dict[str, tuple[str, str, int]]] = {
        "pigpio": ("PIGPIO_ADDR", "PIGPIO_PORT", 8888),
        "rgpio": ("LG_ADDR", "LG_PORT", 8889),
    }

    def daemon_address(self) -> tuple[str, int]:
        addr, port_var, default_port = self._DAEMON_ENV.get(self.kind, self._DAEMON_ENV["pigpio"])
        host = self.host or os.environ.get(addr) or "localhost"
        port = self.port or int(os.environ.get(port_var) or default_port)
        return host, port


class LimitsConfig(BaseModel):
    model_config = _STRICT

    #: At least 1 ml: a smaller limit would refuse every blend.
    max_cup_size: float = Field(1.0, ge=0.001, le=20)
    #: No pump is ever commanded on for longer than this, whatever the request; at least 10 ms.
    max_pump_seconds: float = Field(120.0, ge=0.01, le=1800)
    #: Most pumps on at once (power supplies that cannot feed all); None: no cap.
    max_parallel_pumps: Optional[int] = Field(None, ge=1, le=32)


class SimPumpConfig(BaseModel):
    """How a simulated pump really pours, unknown to the controller (which calibrates against it)."""

    model_config = _STRICT

    #: None: the pump's configured flow_ml_s.
    flow_ml_s: Optional[float] = Field(None, gt=0, le=MAX_FLOW_ML_S)
    #: Seconds on before liquid comes out.
    dead_s: float = Field(0.0, ge=0, le=60)
    #: Standard deviation of each run's volume, in ml (seeded: runs repeat).
    noise_ml: float = Field(0.0, ge=0, le=1000)


class PumpConfig(BaseModel):
    model_config = _STRICT

    #: BCM number; pigpio lets a client drive GPIO 2 to 27 (the header's pins).
    gpio: int = Field(ge=2, le=27)
    #: What the bottle holds ("rum"), shown to GUIs in state and welcome.
    name: Optional[str] = Field(None, min_length=1, max_length=MAX_NAME_LENGTH)
    #: At least 0.01 ml/s: a slower pump would need hours for a cup.
    flow_ml_s: float = Field(DEFAULT_FLOW_ML_S, ge=0.01, le=MAX_FLOW_ML_S)
    prime_ml: float = Field(8.0, ge=0, le=1000)
    #: What a full bottle holds (at least 1 ml); None: its level is not tracked.
    capacity_ml: Optional[float] = Field(None, ge=1, le=100_000)
    #: The simulated driver's truth for this pump; real drivers ignore it.
    sim: SimPumpConfig = SimPumpConfig()


def _default_pumps() -> tuple[PumpConfig, ...]:
    return tuple(PumpConfig(gpio=g, prime_ml=p) for g, p in zip(DEFAULT_GPIOS, DEFAULT_PRIME_ML))


def _default_data_dir() -> Path:
    return Path(os.environ.get("BARMAID_DATA_DIR") or platformdirs.user_data_dir("barmaid"))


class Config(BaseModel):
    model_config = _STRICT

    #: Where levels, calibrations and the pour history are kept (barmaid.db).
    data_dir: Path = Field(default_factory=_default_data_dir)
    server: ServerConfig = ServerConfig()
    driver: DriverConfig = DriverConfig()
    limits: LimitsConfig = LimitsConfig()
    #: List position is the pump number the protocol uses.
    pumps: tuple[PumpConfig, ...] = Field(default_factory=_default_pumps, min_length=1, max_length=32)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_as_path(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise ValueError(f"data_dir = {show(value, name_containers=True)}: must be a folder name")
        return Path(value).expanduser()

    @field_validator("pumps", mode="before")
    @classmethod
    def _pumps_as_tuple(cls, value: Any) -> Any:
        # YAML gives a list; strict mode wants the declared tuple.
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _distinct_gpios(self) -> Config:
        seen: dict[int, int] = {}
        for number, pump in enumerate(self.pumps):
            if pump.gpio in seen:
                raise ValueError(
                    f"pumps.{number}.gpio = {pump.gpio} is already used by pump {seen[pump.gpio]};"
                    " every pump needs its own GPIO"
                )
            seen[pump.gpio] = number
        return self


def load_config(path: Optional[Path] = None, overrides: Optional[dict[str, dict[str, Any]]] = None) -> Config:
    """Read the YAML file (if any), apply command-line overrides, and validate.

    Args:
        path: the YAML file; None for the built-in defaults.
        overrides: section -> key -> value, from command-line flags; None values are ignored.

    Raises:
        ConfigError: naming where the value came from (the file or the command line), the key,
            the value and what is allowed.
    """
    raw: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as stream:  # a stream: YAML errors then name the file
                raw = yaml.safe_load(stream) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            got = show(raw, name_containers=True)
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {got}")
    flags: set[tuple[str, str]] = set()
    for section, values in (overrides or {}).items():
        given = {k: v for k, v in values.items() if v is not None}
        current = raw.get(section, {})
        if given and isinstance(current, dict):  # a broken section stays broken, to be reported
            raw[section] = {**current, **given}
            flags.update((section, key) for key in given)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        # A pump with a bad key also empties the tuple "after validation": report only the key.
        errors = [err for err in exc.errors() if err["type"] != "too_short" or err["loc"] != ("pumps",)]
        errors = errors or exc.errors()
        lines = []
        for err in errors:
            source = "command line" if tuple(err["loc"][:2]) in flags else str(path) if path else "defaults"
            lines.append(f"{source}: {_describe(err)}")
        raise ConfigError("; ".join(lines)) from None


def _describe(err: Any) -> str:
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = key.rpartition(".")[0]
        allowed_keys = _allowed_keys(err["loc"][:-1])
        where = f" in {parent}" if parent else ""
        return f"unknown key {key!r}{where}; allowed: {', '.join(allowed_keys)}"
    if err["type"] == "missing":
        return f"{key} is missing; give it a value"
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    if err["loc"] == ("pumps",) and err["type"] == "too_short":
        return "pumps must list at least one pump, like [{gpio: 5}]"
    if err["type"] in ("model_type", "model_attributes_type"):
        keys = ", ".join(_allowed_keys(err["loc"]))
        return f"{key} = {show(err['input'], name_containers=True)}: must be a mapping with the keys {keys}"
    return f"{key} = {show(err['input'], name_containers=True)}: must be {allowed(err)}"
def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        model = getattr(annotation, "__args__", (annotation,))[0] if part == "pumps" else annotation
    return list(model.model_fields)

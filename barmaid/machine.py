"""The controller: a `transitions` state machine (states.yaml) that guards the blocking actions.

Events come from many connection threads; one lock serialises them, so of two blends sent at the
same instant exactly one starts. A watcher thread per action sends status and ends it on time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from transitions import EventData, Machine, MachineError

from .config import Config
from .drivers.base import Driver
from .errors import BadMessage, Busy, ConfigError
from .protocol import Blend, Refill, Request, Status, error_frame

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: Triggers and states the code below fires or relies on; states.yaml must declare them.
REQUIRED_TRIGGERS = ("blend", "refill", "finish", "abort")
REQUIRED_STATES = ("idle",)
_STATE_KEYS = {"name", "on_enter", "on_exit"}
_TRANSITION_KEYS = {"trigger", "source", "dest", "before", "after", "prepare", "conditions", "unless"}
_CALLBACK_KEYS = ("on_enter", "on_exit", "before", "after", "prepare", "conditions", "unless")


def states_file() -> Path:
    """states.yaml: inside the installed package, else at the top of the source checkout."""
    packaged = resources.files("barmaid") / "states.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "states.yaml"


def load_definition(path: Optional[Path] = None, model: type = None) -> dict[str, Any]:
    """Reads states.yaml and checks it against the model class, so mistakes stop start-up.

    Raises:
        ConfigError: naming the file and the offending state, transition or callback.
    """
    path = path or states_file()
    model = model or Controller
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot load state machine {path}: {exc}") from exc

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{path}: {what}")

    if not isinstance(spec, dict):
        raise fail("must be a mapping with the keys initial, states and transitions")
    for key in set(spec) ^ {"initial", "states", "transitions"}:
        raise fail(f"{'unknown' if key in spec else 'missing'} top-level key {key!r}; the keys are initial, states, transitions")
    states = [{"name": s} if isinstance(s, str) else s for s in spec["states"] or []]
    names = []
    for state in states:
        if not isinstance(state, dict) or "name" not in state or not set(state) <= _STATE_KEYS:
            raise fail(f"state {state!r}: give a name and optionally {', '.join(sorted(_STATE_KEYS - {'name'}))}")
        names.append(state["name"])
    for name in REQUIRED_STATES:
        if name not in names:
            raise fail(f"missing state {name!r}: barmaid returns there after every action")
    if spec["initial"] not in names:
        raise fail(f"initial state {spec['initial']!r} is not one of the states {names}")
    triggers = set()
    for number, transition in enumerate(spec["transitions"] or []):
        where = f"transition {number} ({transition.get('trigger', '?') if isinstance(transition, dict) else transition})"
        if not isinstance(transition, dict) or not {"trigger", "source", "dest"} <= set(transition):
            raise fail(f"{where}: needs trigger, source and dest")
        unknown = set(transition) - _TRANSITION_KEYS
        if unknown:
            raise fail(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TRANSITION_KEYS))}")
        sources = transition["source"] if isinstance(transition["source"], list) else [transition["source"]]
        for state in [*sources, transition["dest"]]:
            if state not in names and state != "*":
                raise fail(f"{where}: unknown state {state!r}; states are {', '.join(names)}")
        triggers.add(transition["trigger"])
    for trigger in REQUIRED_TRIGGERS:
        if trigger not in triggers:
            raise fail(f"missing trigger {trigger!r}: barmaid fires it")
    for owner in [*states, *spec["transitions"]]:
        for key in _CALLBACK_KEYS:
            callbacks = owner.get(key) or []
            for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
                if not callable(getattr(model, callback, None)):
                    raise fail(f"{key} callback {callback!r} is not a method of {model.__name__}")
    return {"initial": spec["initial"], "states": states, "transitions": spec["transitions"]}


@dataclass
class Action:
    """One blocking action in progress: which pumps run how long, from when."""

    kind: str
    plan: dict[int, float]
    t0: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        return max(self.plan.values())

    @property
    def end(self) -> float:
        return self.t0 + self.seconds


class Controller:
    """The `transitions` model: turns validated requests into pours, one at a time.

    Trigger methods (blend, refill, finish, abort) are added by the machine from states.yaml;
    call `submit`, `close` and `remaining` from outside.
    """

    state: str

    def __init__(
        self,
        config: Config,
        driver: Driver,
        broadcast: Callable[[str], None],
        definition: Optional[dict[str, Any]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.driver = driver
        self.flows = [pump.flow_ml_s for pump in config.pumps]
        self.action: Optional[Action] = None
        self._broadcast = broadcast
        self._clock = clock
        self._lock = threading.RLock()
        self.machine = Machine(
            model=self,
            **(definition or load_definition()),
            auto_transitions=False,
            send_event=True,
        )
        driver.on_lost = self._driver_lost

    # ---- from outside ---------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Starts the pour a blend or refill asks for; returns once the pumps run.

        Raises:
            BadMessage / PourRejected: the request cannot be poured; nothing moved.
            Busy: another action runs; it goes on untouched.
            PumpsUnavailable: the pump hardware is out of reach; nothing moved.
        """
        plan = self.plan(request)
        self.driver.check(plan)
        with self._lock:
            try:
                getattr(self, request.type)(action=Action(request.type, plan))
            except MachineError:
                raise Busy(f"Already {self.state} ! Retry in {self.remaining()} sec") from None
            except BaseException:
                # transitions keeps the new state when a callback fails after the change (T2).
                if self.action is not None:
                    self.abort(outcome="failed")
                raise

    def plan(self, request: Request) -> dict[int, float]:
        """Seconds each pump runs: volume (ml) / flow (ml/s)."""
        if isinstance(request, Blend):
            return {p: request.cup_size * 1000 * r / self.flows[p] for p, r in request.ratios.items()}
        if isinstance(request, Refill):
            prime = self.config.pumps[request.pump].prime_ml
            if prime <= 0:
                raise BadMessage(f"pump {request.pump} has prime_ml 0 in the config: nothing to refill")
            return {request.pump: prime / self.flows[request.pump]}
        raise BadMessage(f"{request.type} does not move pumps")

    def remaining(self) -> int:
        """Whole seconds until the running action ends (rounded up); 0 when idle."""
        with self._lock:
            if self.action is None:
                return 0
            return max(0, math.ceil(self.action.end - self._clock()))

    def close(self) -> None:
        """Ends any action and releases the pumps: every pump off."""
        with self._lock:
            if self.action is not None:
                self.abort(outcome="shut down")
        self.driver.close()

    # ---- callbacks named in states.yaml ---------------------------------------------------

    def start_pour(self, event: EventData) -> None:
        action: Action = event.kwargs["action"]
        action.t0 = self.driver.pour(action.plan)
        self.action = action
        for pump, seconds in sorted(action.plan.items()):
            log.info("pump %d on for %.3f s (%s)", pump, seconds, action.kind)

    def start_clock(self, event: EventData) -> None:
        action = self.action
        self._send_status(action, math.ceil(action.seconds))
        threading.Thread(target=self._watch, args=(action,), name=f"barmaid-{action.kind}", daemon=True).start()

    def end_action(self, event: EventData) -> None:
        action, self.action = self.action, None
        if action is None:  # entering the initial state
            return
        action.done.set()
        try:
            self.driver.halt()
        except Exception:
            log.exception("could not halt the pumps after %s", action.kind)
        outcome = event.kwargs.get("outcome", "completed")
        if outcome != "completed":
            ran = self._clock() - action.t0
            for pump, seconds in sorted(action.plan.items()):
                if seconds > ran:
                    log.info("pump %d off after %.3f s (%s)", pump, ran, outcome)
        log.info("%s %s after %.3f s", action.kind, outcome, self._clock() - action.t0)
        self._send_status(action, 0)

    # ---- inside ---------------------------------------------------------------------------

    def _send_status(self, action: Action, remaining: int) -> None:
        self._broadcast(
            Status(remaining_time=remaining, action=action.kind, initial_time=math.ceil(action.seconds)).frame()
        )

    def _watch(self, action: Action) -> None:
        """Logs each pump's stop, sends status every status_interval, and ends the action."""
        interval = self.config.server.status_interval
        offs = sorted((action.t0 + s, p) for p, s in action.plan.items())
        next_tick = action.t0 + interval
        while True:
            now = self._clock()
            while offs and offs[0][0] <= now:
                at, pump = offs.pop(0)
                log.info("pump %d off after %.3f s", pump, at - action.t0)
            if now >= action.end:
                break
            if now >= next_tick:
                with self._lock:
                    if self.action is not action:
                        return
                    self._send_status(action, math.ceil(action.end - now))
                while next_tick <= now:
                    next_tick += interval
            wake = min(next_tick, action.end, offs[0][0] if offs else math.inf)
            if action.done.wait(max(0.0, wake - now)):
                return
        with self._lock:
            if self.action is action:
                self.finish(outcome="completed")

    def _driver_lost(self, reason: str) -> None:
        with self._lock:
            if self.action is None:
                return
            self._broadcast(error_frame(f"pump hardware lost: {reason}; the {self.action.kind} was stopped"))
            self.abort(outcome="lost")

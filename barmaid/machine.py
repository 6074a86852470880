"""The controller: a `transitions` state machine (states.yaml) that guards the blocking actions.

Events come from many connection threads; one lock serialises them, so of two blends sent at the
same instant exactly one starts. A watcher thread per action sends status and ends it on time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from transitions import EventData, Machine, MachineError

from .config import MAX_FLOW_ML_S, Config
from .drivers.base import Driver, Span, switches
from .errors import BadMessage, BottleTooLow, Busy, ConfigError, StoreError
from .outcomes import Outcome
from .protocol import (
    Blend,
    Calibrate,
    Clean,
    History,
    HistoryReply,
    PourEntry,
    PumpState,
    Refill,
    Reply,
    Request,
    SetFlow,
    SetLevel,
    State,
    StateReply,
    Status,
    Stop,
    Stopped,
    error_frame,
)
from .store import PumpRecord, Store

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: Triggers and states the code below fires or relies on; states.yaml must declare them.
REQUIRED_TRIGGERS = ("blend", "refill", "calibrate", "clean", "finish", "stop", "abort")
REQUIRED_STATES = ("idle",)
_STATE_KEYS = {"name", "on_enter", "on_exit"}
_TRANSITION_KEYS = {"trigger", "source", "dest", "before", "after", "prepare", "conditions", "unless"}
_CALLBACK_KEYS = ("on_enter", "on_exit", "before", "after", "prepare", "conditions", "unless", "after_state_change")
_TOP_KEYS = {"initial", "states", "transitions", "after_state_change"}


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
    for key in set(spec) - _TOP_KEYS:
        raise fail(f"unknown top-level key {key!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for key in {"initial", "states", "transitions"} - set(spec):
        raise fail(f"missing top-level key {key!r}")
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
    for owner in [*states, *spec["transitions"], {k: v for k, v in spec.items() if k == "after_state_change"}]:
        for key in _CALLBACK_KEYS:
            callbacks = owner.get(key) or []
            for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
                if not callable(getattr(model, callback, None)):
                    raise fail(f"{key} callback {callback!r} is not a method of {model.__name__}")
    return {**spec, "states": states}


@dataclass
class Action:
    """One blocking action in progress: which pumps run when, how much they pour, from when."""

    kind: str
    plan: dict[int, Span]
    #: Millilitres each pump pours if it runs to the end.
    ml: dict[int, float]
    t0: float = 0.0
    pour_id: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        return max(span.stop for span in self.plan.values())

    @property
    def end(self) -> float:
        return self.t0 + self.seconds

    def poured(self, elapsed: float) -> dict[int, float]:
        """Millilitres each pump has poured `elapsed` seconds after the start."""
        share = {p: min(max((elapsed - s.start) / s.seconds, 0.0), 1.0) for p, s in self.plan.items()}
        return {p: round(self.ml[p] * share[p], 3) for p in self.plan}


def schedule(seconds: dict[int, float], lanes: Optional[int]) -> dict[int, Span]:
    """Spans for pumps that run `seconds` each, at most `lanes` at once (None: all together).

    Longest first, each into the lane that frees first: the whole pour is as short as greedy gets.
    """
    if lanes is None or lanes >= len(seconds):
        return {pump: Span(0.0, s) for pump, s in seconds.items()}
    free = [0.0] * lanes
    plan = {}
    for pump, s in sorted(seconds.items(), key=lambda item: (-item[1], item[0])):
        lane = min(range(lanes), key=free.__getitem__)
        plan[pump] = Span(free[lane], free[lane] + s)
        free[lane] += s
    return plan


class Controller:
    """The `transitions` model: turns validated requests into pours, one at a time.

    Trigger methods (blend, refill, calibrate, clean, finish, stop, abort) are added by the
    machine from states.yaml; call `submit`, `snapshot`, `remaining` and `close` from outside.
    """

    state: str

    def __init__(
        self,
        config: Config,
        driver: Driver,
        broadcast: Callable[[str], None],
        store: Optional[Store] = None,
        publish: Callable[[str], None] = lambda frame: None,
        definition: Optional[dict[str, Any]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            broadcast: sends a frame to every client (status, errors about the hardware).
            store: where levels and calibrations persist; None keeps them in memory.
            publish: sends a `state` frame to the clients that asked for the state.
        """
        self.config = config
        self.driver = driver
        self.store = store or Store(None)
        saved = self.store.pumps()
        self.pumps = []
        for number, pump in enumerate(config.pumps):
            record = saved.get(number, PumpRecord())
            self.pumps.append(
                PumpState(
                    pump=number,
                    name=pump.name,
                    flow_ml_s=record.flow_ml_s or pump.flow_ml_s,  # a calibration wins over the config
                    prime_ml=pump.prime_ml,
                    level_ml=record.level_ml,
                    capacity_ml=pump.capacity_ml,
                    calibration_seconds=record.calibration_seconds,
                )
            )
        self.action: Optional[Action] = None
        self._broadcast = broadcast
        self._publish = publish
        self._clock = clock
        self._lock = threading.RLock()
        self._handlers: dict[type[Request], Callable[[Any], Optional[Reply]]] = {
            Blend: self._pour,
            Refill: self._pour,
            Calibrate: self._pour,
            Clean: self._pour,
            Stop: self._stop,
            State: lambda request: self.snapshot(),
            History: self._history,
            SetLevel: self._set_level,
            SetFlow: self._set_flow,
        }
        self.machine = Machine(
            model=self,
            **(definition or load_definition()),
            auto_transitions=False,
            send_event=True,
        )
        driver.on_lost = self._driver_lost
        self._recover()

    @property
    def flows(self) -> list[float]:
        return [pump.flow_ml_s for pump in self.pumps]

    # ---- from outside ---------------------------------------------------------------------

    def submit(self, request: Request) -> Optional[Reply]:
        """Acts on one validated request; returns the reply for its sender, if any.

        Raises:
            BadMessage / PourRejected: the request cannot be carried out; nothing moved.
            Busy: another action runs; it goes on untouched.
            PumpsUnavailable: the pump hardware is out of reach; nothing moved.
            StoreError: the pour could not be recorded; nothing moved.
        """
        return self._handlers[type(request)](request)

    def plan(self, request: Request) -> dict[int, float]:
        """Seconds each pump runs for a blend (volume / flow), refill, calibrate or clean."""
        flows = self.flows
        if isinstance(request, Blend):
            return {p: request.cup_size * 1000 * r / flows[p] for p, r in request.ratios.items()}
        if isinstance(request, Refill):
            prime = self.pumps[request.pump].prime_ml
            if prime <= 0:
                raise BadMessage(f"pump {request.pump} has prime_ml 0 in the config: nothing to refill")
            return {request.pump: prime / flows[request.pump]}
        if isinstance(request, Calibrate):
            return {request.pump: request.seconds}
        if isinstance(request, Clean):
            return {p: request.seconds for p in (request.pumps or range(len(self.pumps)))}
        raise BadMessage(f"{request.type} does not move pumps")

    def snapshot(self) -> StateReply:
        with self._lock:
            action = self.action
            return StateReply(
                state=self.state,
                action=action.kind if action else None,
                remaining_time=self.remaining(),
                hardware=self.driver.available,
                pumps=list(self.pumps),
            )

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
                self.abort(outcome=Outcome.SHUT_DOWN)
        try:
            self.driver.close()
        finally:
            self.store.close()

    # ---- request handlers -----------------------------------------------------------------

    def _pour(self, request: Request) -> None:
        seconds = self.plan(request)
        ml = {p: s * self.flows[p] for p, s in seconds.items()}
        plan = schedule(seconds, self.config.limits.max_parallel_pumps)
        self.driver.check(plan)
        with self._lock:
            try:
                getattr(self, request.type)(action=Action(request.type, plan, ml))
            except MachineError:
                retry_in = self.remaining()
                raise Busy(f"Already {self.state} ! Retry in {retry_in} sec", retry_in=retry_in) from None
            except BaseException:
                # transitions keeps the new state when a callback fails after the change (T2).
                if self.action is not None:
                    self.abort(outcome=Outcome.FAILED)
                raise

    def _check_levels(self, ml: dict[int, float]) -> None:
        short = [
            f"pump {p} needs {need:.1f} ml but has {self.pumps[p].level_ml:.1f} ml left"
            for p, need in sorted(ml.items())
            if self.pumps[p].level_ml is not None and need > self.pumps[p].level_ml + 1e-6
        ]
        if short:
            raise BottleTooLow("; ".join(short) + ": change the bottle and send refill, or correct it with set_level")

    def _stop(self, request: Stop) -> Stopped:
        with self._lock:
            action = self.action
            if action is None:
                return Stopped(msg="nothing was running")
            after = self._clock() - action.t0
            self.stop(outcome=Outcome.STOPPED)
        return Stopped(action=action.kind, after=round(after, 3), msg=f"stopped the {action.kind} after {after:.1f} s")

    def _history(self, request: History) -> HistoryReply:
        return HistoryReply(pours=[PourEntry(**asdict(record)) for record in self.store.history(request.limit)])

    def _set_level(self, request: SetLevel) -> None:
        capacity = self.pumps[request.pump].capacity_ml
        if capacity is not None and request.ml > capacity:
            raise BadMessage(f"set_level: pump {request.pump}'s bottle holds {capacity:g} ml, less than {request.ml:g}")
        self._update_pump(request.pump, level_ml=request.ml)

    def _set_flow(self, request: SetFlow) -> None:
        seconds = self.pumps[request.pump].calibration_seconds
        if not seconds:
            raise BadMessage(
                f"set_flow: pump {request.pump} has no calibration run; send calibrate first, then the ml it poured"
            )
        flow = request.ml / seconds
        if flow > MAX_FLOW_ML_S:
            raise BadMessage(
                f"set_flow: {request.ml:g} ml in {seconds:.3f} s is {flow:.0f} ml/s, more than any pump moves"
                f" ({MAX_FLOW_ML_S:g}); calibrate for longer and measure again"
            )
        self._update_pump(request.pump, flow_ml_s=flow)
        log.info("pump %d flow set to %.3f ml/s (%g ml in %.3f s)", request.pump, request.ml / seconds, request.ml, seconds)

    def _update_pump(self, pump: int, **values: Optional[float]) -> None:
        """Changes one pump's record (on disk first, so memory never holds what a restart loses)
        and sends the new state to the clients that follow it."""
        with self._lock:
            self.store.set_pump(pump, **values)
            self.pumps[pump] = self.pumps[pump].model_copy(update=values)
            self.publish_state()

    # ---- callbacks named in states.yaml ---------------------------------------------------

    def start_pour(self, event: EventData) -> None:
        action: Action = event.kwargs["action"]
        if action.kind == "blend":
            self._check_levels(action.ml)
        action.pour_id = self.store.begin_pour(action.kind, action.ml)  # StoreError: nothing moved
        try:
            action.t0 = self.driver.pour(action.plan)
        except BaseException:
            self.store.end_pour(action.pour_id, Outcome.FAILED, {}, {})
            raise
        self.action = action
        for pump, span in sorted(action.plan.items()):
            if span.start == 0:
                log.info("pump %d on for %.3f s (%s)", pump, span.seconds, action.kind)

    def start_clock(self, event: EventData) -> None:
        action = self.action
        threading.Thread(target=self._watch, args=(action,), name=f"barmaid-{action.kind}", daemon=True).start()
        self._send_status(action, math.ceil(action.seconds))

    def end_action(self, event: EventData) -> None:
        action, self.action = self.action, None
        if action is None:  # entering the initial state
            return
        action.done.set()
        try:
            self.driver.halt()
        except Exception:
            log.exception("could not halt the pumps after %s", action.kind)
        outcome = event.kwargs.get("outcome", Outcome.COMPLETED)
        ran = min(self._clock() - action.t0, action.seconds)
        if outcome != Outcome.COMPLETED:
            for pump, span in sorted(action.plan.items()):
                if span.start < ran < span.stop:
                    log.info("pump %d off after %.3f s (%s)", pump, ran - span.start, outcome)
        log.info("%s %s after %.3f s", action.kind, outcome, ran)
        # A lost daemon may well finish the wave: count the pour in full, to be safe.
        self._record(action, outcome, action.seconds if outcome == Outcome.LOST else ran)
        self._send_status(action, 0)

    def publish_state(self, event: Optional[EventData] = None) -> None:
        self._publish(self.snapshot().frame())

    # ---- inside ---------------------------------------------------------------------------

    def _record(self, action: Action, outcome: Outcome, ran: float) -> None:
        """What the pour did to each pump (level, calibration), in memory and, with the outcome, on disk."""
        poured = action.poured(ran)
        updates: dict[int, dict[str, Optional[float]]] = {}
        for pump, span in action.plan.items():
            state, update = self.pumps[pump], {}
            if action.kind == "refill":  # a new bottle, less what priming took from it
                update["level_ml"] = None if state.capacity_ml is None else max(0.0, state.capacity_ml - poured[pump])
            elif action.kind != "clean" and state.level_ml is not None:  # cleaning runs water
                update["level_ml"] = max(0.0, state.level_ml - poured[pump])
            if action.kind == "calibrate":
                update["calibration_seconds"] = min(max(ran - span.start, 0.0), span.seconds)
            if update:
                updates[pump] = update
                self.pumps[pump] = state.model_copy(update=update)
        try:
            self.store.end_pour(action.pour_id, outcome, poured, updates)
        except StoreError as exc:
            log.error("the %s ended (%s) but could not be recorded: %s", action.kind, outcome, exc)

    def _recover(self) -> None:
        """Pours a crash cut off: counted as poured in full (the pigpio daemon finishes a wave
        whatever became of barmaid), and marked interrupted."""
        for record in self.store.unfinished():
            ml = {p: v for p, v in record.planned_ml.items() if p < len(self.pumps)}
            plan = {p: Span(0.0, v / self.pumps[p].flow_ml_s) for p, v in ml.items()}
            action = Action(record.action, plan, ml, pour_id=record.id)
            self._record(action, Outcome.INTERRUPTED, action.seconds if plan else 0.0)
            log.warning("the %s started at %s was cut off by a crash; counted as poured: %s ml",
                        record.action, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started)), ml)

    def _send_status(self, action: Action, remaining: int) -> None:
        self._broadcast(
            Status(remaining_time=remaining, action=action.kind, initial_time=math.ceil(action.seconds)).frame()
        )

    def _watch(self, action: Action) -> None:
        """Runs the action's clock; if it fails, the action ends at once rather than never."""
        try:
            self._tick(action)
        except Exception:
            log.exception("the %s's clock failed; ending it now", action.kind)
            with self._lock:
                if self.action is action:
                    self.abort(outcome=Outcome.FAILED)

    def _tick(self, action: Action) -> None:
        """Logs each pump switch, sends status every status_interval, and ends the action."""
        interval = self.config.server.status_interval
        events = [(action.t0 + at, pump, on) for at, pump, on in switches(action.plan) if at > 0 or not on]
        next_tick = action.t0 + interval
        while True:
            now = self._clock()
            while events and events[0][0] <= now:
                at, pump, on = events.pop(0)
                span = action.plan[pump]
                if on:
                    log.info("pump %d on for %.3f s (%s)", pump, span.seconds, action.kind)
                else:
                    log.info("pump %d off after %.3f s", pump, span.seconds)
            if now >= action.end:
                break
            if now >= next_tick:
                with self._lock:
                    if self.action is not action:
                        return
                    self._send_status(action, math.ceil(action.end - now))
                while next_tick <= now:
                    next_tick += interval
            wake = min(next_tick, action.end, events[0][0] if events else math.inf)
            if action.done.wait(max(0.0, wake - now)):
                return
        with self._lock:
            if self.action is action:
                self.finish(outcome=Outcome.COMPLETED)

    def _driver_lost(self, reason: str) -> None:
        with self._lock:
            if self.action is None:
                return
            self._broadcast(error_frame(f"pump hardware lost: {reason}; the {self.action.kind} was stopped"))
            self.abort(outcome=Outcome.LOST)

"""The controller: a `transitions` state machine (states.yaml) that guards the blocking actions.

Events come from many connection threads; one lock serialises them, so of two blends sent at the
same instant exactly one starts. The action clock (calls at given times on barmaid.clock, real or
fake) sends each action's status and ends it on time.
A stop switches the pumps off before it waits for that lock: it never queues behind store I/O.
At start-up, pours a crash left unfinished are adopted (still playing) or counted (see _recover).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml
from transitions import EventData, Machine, MachineError

from .actionclock import ActionClock
from .clock import Clock, RealClock
from .config import Config
from .drivers.base import Driver, Span
from .drivers.simulated import SimulatedDriver
from .errors import BadMessage, Busy, ConfigError, PumpsUnavailable
from .outcomes import ActionKind, Outcome
from .planning import counted_seconds, planned_ml, poured, run_seconds, schedule
from .protocol import (
    Blend,
    Calibrate,
    Clean,
    History,
    HistoryReply,
    PourEntry,
    Prime,
    PumpState,
    Refill,
    Reply,
    Request,
    ResetCalibration,
    SetFlow,
    SetLevel,
    State,
    StateReply,
    Stop,
    Stopped,
)
from .pumpbook import PumpBook
from .store import PourRecord, Store

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


def _not_skipped_binding(record: logging.LogRecord) -> bool:
    """transitions warns of each helper (may_*, is_*, trigger) that model_override leaves unbound:
    here that is the point, so those warnings are dropped; every other one stays."""
    return "Skip binding of" not in record.getMessage()


logging.getLogger("transitions.core").addFilter(_not_skipped_binding)

#: Triggers and states the code below fires or relies on; states.yaml must declare them.
REQUIRED_TRIGGERS = ("blend", "refill", "prime", "calibrate", "clean", "adopt", "finish", "stop", "abort")
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


def load_definition(path: Optional[Path] = None, model: Optional[type] = None) -> dict[str, Any]:
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
        trigger = transition.get("trigger", "?") if isinstance(transition, dict) else transition
        where = f"transition {number} ({trigger})"
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
        if not callable(getattr(model, transition["trigger"], None)):
            raise fail(f"{where}: trigger {transition['trigger']!r} is not declared on {model.__name__}")
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
    #: Started by a barmaid that crashed; this one found it still playing.
    adopted: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    #: Each pump's start-up time: seconds on before it pours (missing: 0).
    dead_s: dict[int, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(span.stop for span in self.plan.values())

    @property
    def end(self) -> float:
        return self.t0 + self.seconds

    def poured(self, elapsed: float) -> dict[int, float]:
        """Millilitres each pump has poured `elapsed` seconds after the start (planning.poured)."""
        return poured(self.plan, self.ml, self.dead_s, elapsed)


@dataclass(frozen=True)
class Progress:
    """An action's countdown, for every client: at its start, every status_interval, and once at
    its end, with its outcome."""

    kind: str
    remaining: int
    #: Whole seconds the action lasts (rounded up).
    initial: int
    outcome: Optional[Outcome] = None


@dataclass(frozen=True)
class HardwareLost:
    """The pump hardware went away while an action ran; the action ended (outcome lost)."""

    kind: str
    reason: str


#: What the controller reports to every client; barmaid.server turns each into frames.
Event = Union[Progress, HardwareLost]


class Controller:
    """The `transitions` model: turns validated requests into pours, one at a time.

    The trigger methods below are declared so that type checkers see them; the machine replaces
    each with its trigger from states.yaml (model_override, docs/dependencies.md "transitions").
    Call `submit`, `snapshot`, `remaining` and `close` from outside.
    """

    state: str

    def blend(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def refill(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def prime(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def calibrate(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def clean(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def adopt(self, *, action: Action) -> bool:
        raise NotImplementedError("bound by the machine")

    def finish(self, *, outcome: Outcome) -> bool:
        raise NotImplementedError("bound by the machine")

    def stop(self, *, outcome: Outcome) -> bool:
        raise NotImplementedError("bound by the machine")

    def abort(self, *, outcome: Outcome) -> bool:
        raise NotImplementedError("bound by the machine")

    def __init__(
        self,
        config: Config,
        driver: Driver,
        broadcast: Callable[[Event], None],
        store: Optional[Store] = None,
        publish: Callable[[StateReply], None] = lambda state: None,
        definition: Optional[dict[str, Any]] = None,
        clock: Optional[Clock] = None,
    ) -> None:
        """
        Args:
            broadcast: tells every client of an Event (an action's progress, the hardware lost).
            store: where levels and calibrations persist; None keeps them in memory.
            publish: gives the new state, after every change, to the clients that asked for it.
            clock: what the action clock and every time taken here go by; the driver's must agree.
        """
        self.config = config
        self.driver = driver
        self.store = store or Store(None)
        self.book = PumpBook(config, self.store)
        self.action: Optional[Action] = None
        self._broadcast = broadcast
        self._publish = publish
        self._clock = clock or RealClock()
        self._lock = threading.RLock()
        self._handlers: dict[type[Request], Callable[[Any], Optional[Reply]]] = {
            Blend: self._pour,
            Refill: self._pour,
            Prime: self._pour,
            Calibrate: self._pour,
            Clean: self._pour,
            Stop: self._stop,
            State: lambda request: self.snapshot(),
            History: self._history,
            SetLevel: self._set_level,
            SetFlow: self._set_flow,
            ResetCalibration: self._reset_calibration,
        }
        self.machine = Machine(
            model=self,
            **(definition or load_definition()),
            auto_transitions=False,
            send_event=True,
            model_override=True,
        )
        #: The trigger that starts each kind of action.
        self._starts: dict[str, Callable[..., bool]] = {
            ActionKind.BLEND: self.blend,
            ActionKind.REFILL: self.refill,
            ActionKind.PRIME: self.prime,
            ActionKind.CALIBRATE: self.calibrate,
            ActionKind.CLEAN: self.clean,
        }
        driver.on_lost = self._driver_lost
        self._recover()

    @property
    def pumps(self) -> list[PumpState]:
        """Each pump as the pump book knows it."""
        return self.book.pumps

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
        """Seconds each pump runs for the request, by today's laws (planning.run_seconds)."""
        return run_seconds(request, self.book.laws, self.book.prime_ml)

    def snapshot(self) -> StateReply:
        with self._lock:
            action = self.action
            return StateReply(
                state=self.state,
                action=action.kind if action else None,
                remaining_time=self.remaining(),
                hardware=self.driver.available,
                pumps=self._pump_states(),
            )

    def remaining(self) -> int:
        """Whole seconds until the running action ends (rounded up); 0 when idle."""
        with self._lock:
            if self.action is None:
                return 0
            return max(0, math.ceil(self.action.end - self._clock.now()))

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
        seconds, laws = self.plan(request), self.book.laws
        ml = planned_ml(seconds, laws)
        plan = schedule(seconds, self.config.limits.max_parallel_pumps)
        self.driver.check(plan)
        with self._lock:
            try:
                action = Action(request.type, plan, ml, dead_s={p: laws[p].dead_s for p in seconds})
                self._starts[request.type](action=action)
            except MachineError:
                retry_in = self.remaining()
                raise Busy(f"Already {self.state} ! Retry in {retry_in} sec", retry_in=retry_in) from None
            except BaseException:
                # A callback that fails after the state change leaves the new state in place
                # (docs/dependencies.md, "transitions").
                if self.action is not None:
                    self.abort(outcome=Outcome.FAILED)
                raise

    def _stop(self, request: Stop) -> Stopped:
        # Pumps off first, outside the lock: another thread may hold it for seconds of store I/O.
        self._halt("on stop")
        with self._lock:
            action = self.action
            if action is None:
                return Stopped(msg="nothing was running")
            after = self._clock.now() - action.t0
            self.stop(outcome=Outcome.STOPPED)
        return Stopped(action=action.kind, after=round(after, 3), msg=f"stopped the {action.kind} after {after:.1f} s")

    def _history(self, request: History) -> HistoryReply:
        fields = set(PourEntry.model_fields)  # what a restart needs to count a pour stays inside
        return HistoryReply(
            pours=[
                PourEntry(**{k: v for k, v in asdict(record).items() if k in fields})
                for record in self.store.history(request.limit)
            ]
        )

    def _set_level(self, request: SetLevel) -> None:
        with self._lock:
            self.book.set_level(request.pump, request.ml)
            self.publish_state()

    def _set_flow(self, request: SetFlow) -> None:
        pump = request.pump
        with self._lock:
            if self.action is not None and self.action.kind == ActionKind.CALIBRATE and pump in self.action.plan:
                raise BadMessage(f"set_flow: pump {pump} is still calibrating; send the ml it poured once it is done")
            self.book.set_flow(pump, request.ml)
            self.publish_state()

    def _reset_calibration(self, request: ResetCalibration) -> None:
        with self._lock:
            self.book.reset_calibration(request.pump)
            self.publish_state()

    # ---- callbacks named in states.yaml ---------------------------------------------------

    def start_pour(self, event: EventData) -> None:
        action: Action = event.kwargs["action"]
        if action.kind in (ActionKind.BLEND, ActionKind.PRIME):
            self.book.check_levels(action.ml)
        # StoreError: nothing moved. The time is taken before the pour: a restart counts no less.
        action.pour_id = self.store.begin_pour(action.kind, action.ml, action.plan, self._clock.now())
        try:
            action.t0 = self.driver.pour(action.plan)
        except PumpsUnavailable as exc:
            if exc.maybe_started:
                self._lost_at_start(action, exc)
            self._end_failed(action)
            raise
        except BaseException:
            self._end_failed(action)
            raise
        self.action = action
        for pump, span in sorted(action.plan.items()):
            if span.start == 0:
                log.info("pump %d on for %.3f s (%s)", pump, span.seconds, action.kind)

    def adopts(self, event: EventData) -> bool:
        """Condition of `adopt`: the transition into the state the adopted action's own trigger
        leads to from idle (blend: blending), as states.yaml says."""
        starts = self.machine.get_transitions(trigger=event.kwargs["action"].kind, source="idle")
        return event.transition is not None and any(start.dest == event.transition.dest for start in starts)

    def adopt_pour(self, event: EventData) -> None:
        self.action = event.kwargs["action"]

    def start_clock(self, event: EventData) -> None:
        action = self.action
        assert action is not None, "start_clock runs after start_pour or adopt_pour set the action"
        ActionClock(
            self._clock,
            self.config.server.status_interval,
            action.kind,
            action.plan,
            action.t0,
            action.done,
            status=lambda remaining: self._status_if_current(action, remaining),
            end=lambda: self._end_if_current(action, Outcome.COMPLETED),
            fail=lambda: self._end_if_current(action, Outcome.FAILED),
            playing=self.driver.playing if action.adopted else None,
        ).start()
        self._send_status(action, self.remaining() if action.adopted else math.ceil(action.seconds))

    def end_action(self, event: EventData) -> None:
        action, self.action = self.action, None
        if action is None:  # entering the initial state
            return
        action.done.set()
        self._halt(f"after the {action.kind}")
        outcome = event.kwargs.get("outcome", Outcome.COMPLETED)
        ran = min(self._clock.now() - action.t0, action.seconds)
        if outcome != Outcome.COMPLETED:
            for pump, span in sorted(action.plan.items()):
                if span.start < ran < span.stop:
                    log.info("pump %d off after %.3f s (%s)", pump, ran - span.start, outcome)
        log.info("%s %s after %.3f s", action.kind, outcome, ran)
        self._record(action, outcome, counted_seconds(outcome, ran, action.seconds))
        self._send_status(action, 0, outcome)

    def publish_state(self, event: Optional[EventData] = None) -> None:
        self._publish(self.snapshot())

    # ---- inside ---------------------------------------------------------------------------

    def _record(self, action: Action, outcome: Outcome, ran: float) -> None:
        """What the pour did to each pump (level, calibration), in the pump book and on disk."""
        poured = action.poured(ran)
        self.book.record_pour(action.kind, action.pour_id, outcome, poured)
        if action.kind == ActionKind.CALIBRATE:
            ((pump, span),) = action.plan.items()
            self.book.record_calibration(pump, min(max(ran - span.start, 0.0), span.seconds), poured[pump], outcome)

    def _halt(self, why: str) -> None:
        try:
            self.driver.halt()
        except Exception:
            log.exception("could not halt the pumps %s", why)

    def _pump_states(self) -> list[PumpState]:
        """The pumps as `state` shows them; with simulated pumps, what each really poured."""
        poured = self.driver.poured_ml() if isinstance(self.driver, SimulatedDriver) else None
        if poured is None:
            return list(self.pumps)
        return [state.model_copy(update={"sim_poured_ml": ml}) for state, ml in zip(self.pumps, poured)]

    def _end_failed(self, action: Action) -> None:
        self.book.record_failed(action.kind, action.pour_id)

    def _lost_at_start(self, action: Action, exc: PumpsUnavailable) -> None:
        """The daemon went away after the pour was sent: it may have run in full, so it is counted
        so, and the client hears that in plain words (not the client library's own text).

        Raises:
            PumpsUnavailable: always.
        """
        log.error("the pump hardware was lost just after the %s was sent (%s); counted as poured in full",
                  action.kind, exc)
        self._halt(f"after the {action.kind} was lost")
        self._record(action, Outcome.LOST, action.seconds)
        poured = ", ".join(f"pump {p}: {ml:.1f} ml" for p, ml in sorted(action.ml.items()))
        raise PumpsUnavailable(
            f"the pump hardware was lost while the {action.kind} was being sent; it may have poured, so it"
            f" is counted as poured in full ({poured}): check the glass and the pump daemon, then try again",
            maybe_started=True,
        ) from None

    def _recover(self) -> None:
        """Pours a crash cut off. The last one, if the hardware still plays it, is adopted: the
        machine is busy with it until it ends, then records it. Any other is counted as poured up
        to now (exact within one boot, in full when the time is unknown), never more than
        planned, and marked interrupted."""
        unfinished = self.store.unfinished()
        now = self._clock.now()
        for record in unfinished:
            action = self._action_of(record)
            elapsed = record.elapsed(now, self.store.boot_id)
            if not action.plan:
                self._end_failed(action)
                continue
            if record is unfinished[-1] and elapsed is not None and self.driver.playing():
                action.t0, action.adopted = now - elapsed, True
                log.warning("the %s started %.1f s ago by a barmaid that stopped is still pouring: adopted,"
                            " it ends in %.1f s", action.kind, elapsed, max(0.0, action.seconds - elapsed))
                self.adopt(action=action)
                continue
            # A daemon out of reach may still be playing it to its end: count it in full then too.
            if elapsed is None or not self.driver.available:
                ran, unknown = action.seconds, True
            else:
                ran, unknown = min(elapsed, action.seconds), False
            self._record(action, Outcome.INTERRUPTED, ran)
            log.warning(
                "the %s started at %s was cut off by a crash; counted as poured %s: %s ml of %s ml planned",
                record.action, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started)),
                "in full (its running time is unknown)" if unknown else f"for {ran:.3f} s",
                action.poured(ran), action.ml,
            )

    def _action_of(self, record: PourRecord) -> Action:
        """The action an unfinished pour record describes, on this config's pumps."""
        ml = {p: v for p, v in record.planned_ml.items() if p < len(self.pumps) and v > 0}
        if record.spans is not None:
            plan = {p: span for p, span in record.spans.items() if p in ml}
        else:  # recorded before spans were: all together, at today's flow
            plan = {p: Span(0.0, v / self.pumps[p].flow_ml_s) for p, v in ml.items()}
        return Action(record.action, plan, {p: ml[p] for p in plan}, pour_id=record.id)

    def _send_status(self, action: Action, remaining: int, outcome: Optional[Outcome] = None) -> None:
        self._broadcast(Progress(action.kind, remaining, math.ceil(action.seconds), outcome))

    def _status_if_current(self, action: Action, remaining: int) -> bool:
        """The action clock's status: sent while `action` still runs; False once it does not."""
        with self._lock:
            if self.action is not action:
                return False
            self._send_status(action, remaining)
            return True

    def _end_if_current(self, action: Action, outcome: Outcome) -> None:
        """The action clock's end (completed) or failure (failed), if `action` still runs."""
        with self._lock:
            if self.action is action:
                (self.finish if outcome == Outcome.COMPLETED else self.abort)(outcome=outcome)

    def _driver_lost(self, reason: str) -> None:
        with self._lock:
            if self.action is None:
                return
            self._broadcast(HardwareLost(self.action.kind, reason))
            self.abort(outcome=Outcome.LOST)

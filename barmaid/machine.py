"""The controller: a `transitions` state machine (states.yaml) that guards the blocking actions.

Calls come from many connection threads; one lock serialises them, so of two blends sent at the
same instant exactly one starts. The controller is a thin shell: barmaid.planning says what runs
when, barmaid.pumpbook keeps each pump's level and calibration, the action clock (calls at given
times on barmaid.clock, real or fake) sends each action's status and ends it on time, and
barmaid.recovery decides what becomes of pours a crash cut off. It speaks in domain terms
(barmaid.action); barmaid.dispatch maps requests onto it and its answers into replies.
A stop switches the pumps off before it waits for that lock: it never queues behind store I/O.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Optional

from transitions import EventData, MachineError

from .action import Action, Event, HardwareLost, Progress, Snapshot, StoppedAction
from .actionclock import ActionClock
from .clock import Clock, RealClock
from .config import Config
from .definition import Triggers, build_machine
from .drivers.base import Driver
from .drivers.simulated import SimulatedDriver
from .errors import BadMessage, Busy, PumpsUnavailable
from .outcomes import ActionKind, Outcome
from .planning import Order, counted_seconds, planned_ml, run_seconds, schedule
from .pumpbook import Pump, PumpBook
from .recovery import recover
from .store import PourRecord, Store

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class Controller(Triggers):
    """The `transitions` model: turns orders into pours, one at a time.

    Its triggers (blend ... abort) are declared in barmaid.definition.Triggers, and the machine
    binds states.yaml's over them; its other public methods are either the callbacks states.yaml
    names or the entry points: `pour`, `stop_action`, `snapshot`, `history`, `set_level`,
    `set_flow`, `reset_calibration`, `run_seconds`, `remaining` and `close`.
    """

    state: str

    def __init__(
        self,
        config: Config,
        driver: Driver,
        broadcast: Callable[[Event], None],
        store: Optional[Store] = None,
        publish: Callable[[Snapshot], None] = lambda snapshot: None,
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
        self.machine = build_machine(self, definition)
        #: The trigger that starts each kind of action.
        self._starts: dict[ActionKind, Callable[..., bool]] = {
            ActionKind.BLEND: self.blend,
            ActionKind.REFILL: self.refill,
            ActionKind.PRIME: self.prime,
            ActionKind.CALIBRATE: self.calibrate,
            ActionKind.CLEAN: self.clean,
        }
        driver.on_lost = self._driver_lost
        self._recover()

    @property
    def pumps(self) -> list[Pump]:
        """Each pump as the pump book knows it."""
        return self.book.pumps

    # ---- entry points ---------------------------------------------------------------------

    def pour(self, order: Order) -> None:
        """Starts the order's action; it runs until its end, a stop, or the hardware's loss.

        Raises:
            BadMessage / PourRejected: the order cannot be carried out; nothing moved.
            Busy: another action runs; it goes on untouched.
            PumpsUnavailable: the pump hardware is out of reach; nothing moved.
            StoreError: the pour could not be recorded; nothing moved.
        """
        seconds, laws = self.run_seconds(order), self.book.laws
        ml = planned_ml(seconds, laws)
        spans = schedule(seconds, self.config.limits.max_parallel_pumps)
        self.driver.check(spans)
        with self._lock:
            try:
                action = Action(order.kind, spans, ml, dead_s={p: laws[p].dead_s for p in seconds})
                self._starts[order.kind](action=action)
            except MachineError:
                retry_in = self.remaining()
                raise Busy(f"Already {self.state} ! Retry in {retry_in} sec", retry_in=retry_in) from None
            except BaseException:
                # A callback that fails after the state change leaves the new state in place
                # (docs/dependencies.md, "transitions").
                if self.action is not None:
                    self.abort(outcome=Outcome.FAILED)
                raise

    def stop_action(self) -> Optional[StoppedAction]:
        """Ends the running action now (outcome stopped); None when nothing ran."""
        # Pumps off first, outside the lock: another thread may hold it for seconds of store I/O.
        self._halt("on stop")
        with self._lock:
            action = self.action
            if action is None:
                return None
            after = self._clock.now() - action.t0
            self.stop(outcome=Outcome.STOPPED)
        return StoppedAction(action.kind, after)

    def run_seconds(self, order: Order) -> dict[int, float]:
        """Seconds each pump runs for the order, by today's laws (planning.run_seconds)."""
        return run_seconds(order, self.book.laws, self.book.prime_ml)

    def snapshot(self) -> Snapshot:
        """The state now; with simulated pumps, also what each really poured."""
        with self._lock:
            action = self.action
            sim = self.driver.poured_ml() if isinstance(self.driver, SimulatedDriver) else None
            kind = action.kind if action else None
            return Snapshot(self.state, kind, self.remaining(), self.driver.available, list(self.pumps), sim)

    def history(self, limit: int) -> list[PourRecord]:
        """The last `limit` pours, newest first."""
        return self.store.history(limit)

    def set_level(self, pump: int, ml: float) -> None:
        with self._lock:
            self.book.set_level(pump, ml)
            self.publish_state()

    def set_flow(self, pump: int, ml: float) -> None:
        """`ml`: what the pump's last calibrate run poured."""
        with self._lock:
            if self.action is not None and self.action.kind == ActionKind.CALIBRATE and pump in self.action.spans:
                raise BadMessage(f"set_flow: pump {pump} is still calibrating; send the ml it poured once it is done")
            self.book.set_flow(pump, ml)
            self.publish_state()

    def reset_calibration(self, pump: int) -> None:
        with self._lock:
            self.book.reset_calibration(pump)
            self.publish_state()

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

    # ---- callbacks named in states.yaml ---------------------------------------------------

    def start_pour(self, event: EventData) -> None:
        action: Action = event.kwargs["action"]
        if action.kind in (ActionKind.BLEND, ActionKind.PRIME):
            self.book.check_levels(action.ml)
        # StoreError: nothing moved. The time is taken before the pour: a restart counts no less.
        action.pour_id = self.store.begin_pour(action.kind, action.ml, action.spans, self._clock.now())
        try:
            action.t0 = self.driver.pour(action.spans)
        except PumpsUnavailable as exc:
            if exc.maybe_started:
                self._lost_at_start(action, exc)
            self._end_failed(action)
            raise
        except BaseException:
            self._end_failed(action)
            raise
        self.action = action

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
            action.spans,
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
            for pump, span in sorted(action.spans.items()):
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
            ((pump, span),) = action.spans.items()
            self.book.record_calibration(pump, min(max(ran - span.start, 0.0), span.seconds), poured[pump], outcome)

    def _halt(self, why: str) -> None:
        try:
            self.driver.halt()
        except Exception:
            log.exception("could not halt the pumps %s", why)

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
        """Carries out what barmaid.recovery decides for the pours a crash left unfinished."""
        flows = [pump.flow_ml_s for pump in self.pumps]
        found = recover(self.store.unfinished(), self._clock.now(), self.store.boot_id, self.driver, flows)
        for action in found.empty:
            self._end_failed(action)
        for action, ran in found.interrupted:
            self._record(action, Outcome.INTERRUPTED, ran)
        if found.adopted is not None:
            self.adopt(action=found.adopted)

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

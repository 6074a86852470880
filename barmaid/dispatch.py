"""From requests to the controller and back: the controller call each request is, and the reply
its sender gets. The one place that knows both the protocol's messages and the controller's terms.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Optional

from .action import Snapshot
from .machine import Controller
from .outcomes import ActionKind
from .planning import Order
from .protocol import (
    Blend,
    Calibrate,
    Clean,
    Done,
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
from .pumpbook import Pump


def submit(controller: Controller, request: Request) -> Optional[Reply]:
    """Carries out one validated request (not echo, not hello); returns the reply for its sender,
    if any (a blocking action's progress goes to every client through the controller's events).

    Raises:
        BadMessage / PourRejected: the request cannot be carried out; nothing moved.
        Busy: another action runs; it goes on untouched.
        PumpsUnavailable: the pump hardware is out of reach; nothing moved.
        StoreError: a pour could not be recorded; nothing moved.
    """
    return _HANDLERS[type(request)](controller, request)


def order_of(request: Request, pumps: int) -> Order:
    """The order a blocking request places, on a machine with `pumps` pumps."""
    kind = ActionKind(request.type)
    if isinstance(request, Blend):  # the seed's formula: cup_size * 1000 * ratio ml by each pump's law
        return Order(kind, ml={p: request.cup_size * 1000 * r for p, r in request.ratios.items()})
    if isinstance(request, (Refill, Prime)):
        return Order(kind, primed=(request.pump,))
    if isinstance(request, Calibrate):
        return Order(kind, seconds={request.pump: request.seconds})
    if isinstance(request, Clean):
        return Order(kind, seconds=dict.fromkeys(request.pumps or range(pumps), request.seconds))
    raise TypeError(f"{request.type} places no order")


def state_reply(snapshot: Snapshot) -> StateReply:
    return StateReply(
        state=snapshot.state,
        action=snapshot.action.value if snapshot.action else None,
        remaining_time=snapshot.remaining,
        hardware=snapshot.hardware,
        pumps=pump_states(snapshot),
    )


def pump_states(snapshot: Snapshot) -> list[PumpState]:
    """The pumps as `state` shows them; with simulated pumps, what each really poured."""
    sim: list[Optional[float]] = [*snapshot.sim_poured_ml] if snapshot.sim_poured_ml else [None] * len(snapshot.pumps)
    return [_pump_state(pump, ml) for pump, ml in zip(snapshot.pumps, sim)]


def _pump_state(pump: Pump, sim_poured_ml: Optional[float]) -> PumpState:
    return PumpState(**asdict(pump), sim_poured_ml=sim_poured_ml)


def _pour(controller: Controller, request: Request) -> None:
    controller.pour(order_of(request, len(controller.pumps)))


def _stop(controller: Controller, request: Stop) -> Stopped:
    stopped = controller.stop_action()
    if stopped is None:
        return Stopped(msg="nothing was running")
    kind, after = stopped.kind.value, stopped.after
    return Stopped(action=kind, after=round(after, 3), msg=f"stopped the {kind} after {after:.1f} s")


def _history(controller: Controller, request: History) -> HistoryReply:
    fields = set(PourEntry.model_fields)  # what a restart needs to count a pour stays inside
    return HistoryReply(
        pours=[
            PourEntry(**{k: v for k, v in asdict(record).items() if k in fields})
            for record in controller.history(request.limit)
        ]
    )


def _done(controller: Controller, request: Any) -> Done:
    """The reply to a request that changed one pump's record: that pump's new state."""
    return Done(request=request.type, pump=pump_states(controller.snapshot())[request.pump])


def _set_level(controller: Controller, request: SetLevel) -> Done:
    controller.set_level(request.pump, request.ml)
    return _done(controller, request)


def _set_flow(controller: Controller, request: SetFlow) -> Done:
    controller.set_flow(request.pump, request.ml)
    return _done(controller, request)


def _reset_calibration(controller: Controller, request: ResetCalibration) -> Done:
    controller.reset_calibration(request.pump)
    return _done(controller, request)


_HANDLERS: dict[type[Request], Callable[[Controller, Any], Optional[Reply]]] = {
    Blend: _pour,
    Refill: _pour,
    Prime: _pour,
    Calibrate: _pour,
    Clean: _pour,
    Stop: _stop,
    State: lambda controller, request: state_reply(controller.snapshot()),
    History: _history,
    SetLevel: _set_level,
    SetFlow: _set_flow,
    ResetCalibration: _reset_calibration,
}

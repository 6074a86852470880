"""Requests onto the controller and back (barmaid.dispatch), and the controller's own terms.

The controller and its parts speak in domain types (orders, Snapshot, StoppedAction, ActionKind);
only barmaid.dispatch and barmaid.server know the protocol's messages.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.pumps import fast_pumps

from barmaid.action import Progress, Snapshot, StoppedAction
from barmaid.clock import FakeClock
from barmaid.config import load_config
from barmaid.dispatch import order_of, state_reply, submit
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.machine import Controller
from barmaid.outcomes import ActionKind, Outcome
from barmaid.planning import Order
from barmaid.protocol import Limits, parse

LIMITS = Limits(pumps=8, max_cup_size=1.0)
PACKAGE = Path(__file__).resolve().parent.parent / "barmaid"
#: The controller and the parts it is a shell over.
CORE = ["machine", "definition", "action", "planning", "pumpbook", "actionclock", "recovery"]


def request(kind: str, **data):
    return parse(json.dumps({"type": kind, "data": data}), LIMITS)


@pytest.mark.parametrize("module", CORE)
def test_the_controller_and_its_parts_do_not_know_the_protocol(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"protocol", "barmaid.protocol", "server", "dispatch"}, imported


def test_each_blocking_request_places_its_order_a_blend_by_the_seeds_formula():
    cup, ratios = 0.3, {"0": 0.1, "5": 0.7}
    assert order_of(request("blend", cup_size=cup, ratios=ratios), 8) == Order(
        ActionKind.BLEND, ml={0: cup * 1000 * 0.1, 5: cup * 1000 * 0.7}
    )
    assert order_of(request("refill", pump=3), 8) == Order(ActionKind.REFILL, primed=(3,))
    assert order_of(request("prime", pump=2), 8) == Order(ActionKind.PRIME, primed=(2,))
    assert order_of(request("calibrate", pump=1, seconds=4), 8) == Order(ActionKind.CALIBRATE, seconds={1: 4.0})
    assert order_of(request("clean", seconds=2), 3) == Order(ActionKind.CLEAN, seconds={0: 2.0, 1: 2.0, 2: 2.0})
    assert order_of(request("clean", seconds=2, pumps=[4]), 8) == Order(ActionKind.CLEAN, seconds={4: 2.0})


@pytest.fixture
def rig(write_config):
    """A controller on simulated pumps (400 ml/s) and a FakeClock, with the lists of what it
    reports: `events` (to every client) and `published` (its state after every change)."""
    clock, events, published = FakeClock(), [], []
    config = load_config(write_config({"pumps": fast_pumps()}), {"server": {"status_interval": 1.0}})
    driver = SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds, clock)
    controller = Controller(config, driver, events.append, publish=published.append, clock=clock)
    yield SimpleNamespace(controller=controller, clock=clock, events=events, published=published)
    controller.close()


def test_the_controller_reports_in_domain_terms(rig):
    controller = rig.controller
    controller.pour(Order(ActionKind.BLEND, ml={0: 40.0}))  # 0.1 s
    assert isinstance(rig.published[-1], Snapshot) and rig.published[-1].action is ActionKind.BLEND
    rig.clock.advance(0.05)
    assert controller.stop_action() == StoppedAction(ActionKind.BLEND, pytest.approx(0.05))
    assert rig.events == [Progress(ActionKind.BLEND, 1, 1), Progress(ActionKind.BLEND, 0, 1, Outcome.STOPPED)]
    assert controller.stop_action() is None
    assert [record.outcome for record in controller.history(5)] == ["stopped"]


def test_replies_carry_the_protocols_words(rig):
    controller = rig.controller
    submit(controller, request("set_level", pump=1, ml=500))
    stopped = submit(controller, parse('{"type": "stop"}', LIMITS))
    assert stopped is not None and stopped.data() == {"msg": "nothing was running"}
    submit(controller, request("blend", cup_size=0.04, ratios={"1": 1}))  # 40 ml, 0.1 s
    state = state_reply(controller.snapshot()).data()
    assert state["state"] == "blending" and state["action"] == "blend" and state["remaining_time"] == 1
    assert state["pumps"][1]["level_ml"] == 500.0  # counted when the pour ends
    rig.clock.advance(0.04)
    stopped = submit(controller, parse('{"type": "stop"}', LIMITS))
    assert stopped is not None
    assert stopped.data() == {"action": "blend", "after": 0.04, "msg": "stopped the blend after 0.0 s"}
    (pour,) = submit(controller, request("history", limit=5)).pours
    assert pour.action == "blend" and pour.outcome == "stopped" and pour.poured_ml == {1: pytest.approx(16.0)}
    done = submit(controller, request("set_level", pump=1, ml=300)).data()
    assert done["request"] == "set_level" and done["pump"]["level_ml"] == 300.0
    assert "sim_poured_ml" not in done["pump"]  # only simulated pumps with a truth say what they really poured

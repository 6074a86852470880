"""The controller: states.yaml validation, the on-time formula, pours, statuses, busy, shutdown.

The Controller runs here with the SimulatedDriver and no network, both on one FakeClock: time
moves only when a test advances it, so the driver's `timeline` of Switch(t, pump, on) and every
status are asserted exactly, whatever the load on the machine.
"""

from __future__ import annotations

import json
import threading

import pytest
import yaml
from support.broadcasts import Broadcasts
from support.pumps import fast_pumps
from support.timeline import status_times

from barmaid.clock import FakeClock
from barmaid.config import load_config
from barmaid.definition import load_definition, states_file
from barmaid.dispatch import order_of, submit
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.errors import BottleTooLow, Busy, ConfigError, PourRejected
from barmaid.machine import Controller
from barmaid.protocol import Limits, parse
from barmaid.store import Store

LIMITS = Limits(pumps=8, max_cup_size=1.0)
#: With 400 ml/s pumps and prime_ml 1000, a full 1 l cup and every refill last 2.5 s.
LONG = {"prime_ml": 1000.0}


def blend(cup_size: float, ratios: dict[str, float]):
    return parse(json.dumps({"type": "blend", "data": {"cup_size": cup_size, "ratios": ratios}}), LIMITS)


def refill(pump):
    return parse(json.dumps({"type": "refill", "data": {"pump": pump}}), LIMITS)


def set_level(pump: int, ml: float):
    return parse(json.dumps({"type": "set_level", "data": {"pump": pump, "ml": ml}}), LIMITS)


def switches(controller, on: bool) -> dict[int, float]:
    """pump -> time of its switch on (or off) in the simulated driver's timeline."""
    return {switch.pump: switch.t for switch in controller.driver.timeline if switch.on is on}


# ---- states.yaml ----------------------------------------------------------------------------


def _transition(spec: dict, trigger: str) -> dict:
    return next(t for t in spec["transitions"] if t["trigger"] == trigger)


def _state(spec: dict, name: str) -> dict:
    return next(s for s in spec["states"] if s["name"] == name)


def test_real_states_yaml_loads_every_state_and_trigger():
    definition = load_definition()
    assert definition["initial"] == "idle"
    assert {state["name"] for state in definition["states"]} == {
        "idle", "blending", "refilling", "priming", "calibrating", "cleaning"
    }
    assert {t["trigger"] for t in definition["transitions"]} == {
        "blend", "refill", "prime", "calibrate", "clean", "adopt", "finish", "stop", "abort"
    }


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        pytest.param(
            lambda s: _transition(s, "blend").update(dest="pouring"), "unknown state 'pouring'", id="unknown-dest"
        ),
        pytest.param(
            lambda s: _transition(s, "refill").update(source="resting"), "unknown state 'resting'", id="unknown-source"
        ),
        pytest.param(
            lambda s: _transition(s, "blend").update(before="start_pump"),
            "before callback 'start_pump' is not a method of Controller",
            id="unknown-callback",
        ),
        pytest.param(
            lambda s: _state(s, "idle").update(on_enter=["end_acton"]),
            "on_enter callback 'end_acton' is not a method of Controller",
            id="unknown-on-enter-callback",
        ),
        pytest.param(
            lambda s: s.update(states=[st for st in s["states"] if st["name"] != "idle"], initial="blending"),
            "missing state 'idle'",
            id="missing-idle-state",
        ),
        pytest.param(
            lambda s: s.update(transitions=[t for t in s["transitions"] if t["trigger"] != "abort"]),
            "missing trigger 'abort'",
            id="missing-abort-trigger",
        ),
        pytest.param(lambda s: s.update(initial="ready"), "initial state 'ready'", id="unknown-initial"),
        pytest.param(
            lambda s: _transition(s, "finish").update(trigger="done"),
            "trigger 'done' is not declared on Controller",
            id="undeclared-trigger",
        ),
        pytest.param(
            lambda s: _transition(s, "finish").update(guard="is_done"),
            "unknown key 'guard'",
            id="unknown-transition-key",
        ),
        pytest.param(lambda s: _state(s, "blending").update(timeout=5), "'timeout'", id="unknown-state-key"),
        pytest.param(
            lambda s: s.update(final="idle"),
            "'final'",
            id="unknown-top-level-key",
        ),
    ],
)
def test_broken_states_yaml_is_a_config_error_naming_the_problem(tmp_path, edit, says):
    spec = yaml.safe_load(states_file().read_text(encoding="utf-8"))
    edit(spec)
    path = tmp_path / "states.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_definition(path)
    assert str(path) in str(caught.value)
    assert says in str(caught.value)


# ---- the on-time formula ------------------------------------------------------------------


def test_blend_runs_each_pump_cup_size_times_1000_times_ratio_over_its_flow(make_controller):
    flows = [10.0, 20.0, 25.0, 40.0, 50.0, 80.0, 100.0, 200.0]
    controller, _ = make_controller(pumps=[{"gpio": 2 + i, "flow_ml_s": f} for i, f in enumerate(flows)])
    seconds = controller.run_seconds(order_of(blend(0.2, {"0": 0.25, "3": 0.5, "5": 0, "7": 0.25}), 8))
    assert seconds == pytest.approx({0: 5.0, 3: 2.5, 7: 0.25})


@pytest.mark.parametrize(("pump", "seconds"), [("0", 2.0), (0, 2.0), (3, 0.35)])
def test_refill_runs_prime_ml_over_flow(make_controller, pump, seconds):
    pumps = [{"gpio": 2 + i, "flow_ml_s": 10.0 * (i + 1), "prime_ml": 20.0 - 2 * i} for i in range(8)]
    controller, _ = make_controller(pumps=pumps)
    assert controller.run_seconds(order_of(refill(pump), 8)) == pytest.approx({int(pump): seconds})


# ---- pours, in fake time --------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_blend_goes_blending_then_idle_exactly_when_the_last_pump_stops(make_controller, clock):
    controller, _broadcasts = make_controller(clock=clock)
    assert controller.state == "idle"
    submit(controller, blend(0.1, {"1": 0.2, "4": 0.3, "6": 0.5}))  # the longest: 50 ml at 400 ml/s
    clock.advance(0.124)
    assert controller.state == "blending" and controller.driver.is_on(6)
    clock.advance(0.001)
    assert controller.state == "idle"
    assert controller.remaining() == 0
    assert max(switches(controller, on=False).values()) - min(switches(controller, on=True).values()) == 0.125


def test_blend_starts_every_pump_at_one_instant_and_stops_each_after_its_seconds(make_controller, clock):
    controller, _ = make_controller(clock=clock)
    submit(controller, blend(0.1, {"1": 0.2, "4": 0.3, "6": 0.5}))
    clock.run()
    ons, offs = switches(controller, on=True), switches(controller, on=False)
    assert len(controller.driver.timeline) == 6
    assert ons == {1: 1000.0, 4: 1000.0, 6: 1000.0}
    assert {pump: offs[pump] - ons[pump] for pump in ons} == pytest.approx({1: 0.05, 4: 0.075, 6: 0.125})


def test_refill_goes_refilling_and_runs_one_pump_for_its_prime_time(make_controller, clock):
    controller, _ = make_controller(clock=clock)
    submit(controller, refill("2"))  # prime_ml 40 at 400 ml/s
    assert controller.state == "refilling"
    clock.run()
    assert controller.state == "idle"
    [(pump, on), (same_pump, off)] = [(s.pump, s.t) for s in controller.driver.timeline]
    assert pump == same_pump == 2
    assert off - on == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("request_", "countdown"),
    [
        (lambda: blend(1.0, {"0": 1}), [3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0]),  # 2.5 s
        (lambda: refill(0), [3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0]),
        (lambda: blend(0.3, {"0": 1}), [1, 1, 1, 0]),  # 0.75 s
    ],
    ids=["blend", "refill", "short-blend"],
)
def test_status_counts_down_every_status_interval_from_ceil_seconds_to_exactly_one_zero(
    make_controller, clock, request_, countdown
):
    controller, broadcasts = make_controller(clock=clock, status_interval=0.25, **LONG)
    submit(controller, request_())
    clock.run()
    assert {m["type"] for m in broadcasts.messages} == {"status"}
    assert status_times(broadcasts.messages) == countdown
    assert controller.state == "idle"


def test_a_status_interval_that_does_not_divide_the_pour_still_ends_it_on_time(make_controller, clock):
    controller, broadcasts = make_controller(clock=clock, status_interval=1.0, **LONG)
    submit(controller, refill(0))  # 2.5 s: statuses at 0, 1 and 2 s, the end at 2.5 s
    clock.advance(2.499)
    assert status_times(broadcasts.messages) == [3, 2, 1]
    clock.advance(0.001)
    assert status_times(broadcasts.messages) == [3, 2, 1, 0]
    assert controller.state == "idle" and not controller.driver.is_on(0)


# ---- busy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "answer"),
    [
        (lambda: blend(1.0, {"0": 1}), lambda: blend(0.1, {"1": 1}), "Already blending ! Retry in 3 sec"),
        (lambda: blend(1.0, {"0": 1}), lambda: refill(1), "Already blending ! Retry in 3 sec"),
        (lambda: refill(0), lambda: blend(0.1, {"1": 1}), "Already refilling ! Retry in 3 sec"),
        (lambda: refill(0), lambda: refill(1), "Already refilling ! Retry in 3 sec"),
    ],
    ids=["blend-while-blending", "refill-while-blending", "blend-while-refilling", "refill-while-refilling"],
)
def test_second_pour_while_busy_raises_busy_and_leaves_the_first_untouched(
    make_controller, clock, first, second, answer
):
    controller, broadcasts = make_controller(clock=clock, **LONG)
    submit(controller, first())
    state, timeline = controller.state, list(controller.driver.timeline)
    with pytest.raises(Busy) as caught:
        submit(controller, second())
    assert str(caught.value) == answer
    assert controller.state == state
    assert controller.driver.timeline == timeline == [timeline[0]]
    assert controller.driver.is_on(0) and not controller.driver.is_on(1)
    assert status_times(broadcasts.messages) == [3]


def test_the_retry_time_counts_down_with_the_pour(make_controller, clock):
    controller, _ = make_controller(clock=clock, **LONG)
    submit(controller, blend(1.0, {"0": 1}))  # 2.5 s
    clock.advance(1.5)
    with pytest.raises(Busy, match=r"^Already blending ! Retry in 1 sec$"):
        submit(controller, refill(1))
    clock.advance(0.4)
    with pytest.raises(Busy, match=r"^Already blending ! Retry in 1 sec$"):
        submit(controller, refill(1))


def test_two_blends_at_the_same_instant_start_exactly_one(make_controller):
    for attempt in range(20):
        controller, _ = make_controller(clock=FakeClock(), **LONG)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def race(pump: str, barrier=barrier, controller=controller, outcomes=outcomes) -> None:
            request = blend(1.0, {pump: 1})
            barrier.wait(timeout=2)
            try:
                submit(controller, request)
                outcomes.append("started")
            except Busy as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=race, args=(pump,)) for pump in ("0", "1")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=2)
        assert sorted(outcomes) == ["Already blending ! Retry in 3 sec", "started"], f"attempt {attempt}"
        assert [switch.on for switch in controller.driver.timeline] == [True], f"attempt {attempt}"
        controller.close()


# ---- shutdown and failures ------------------------------------------------------------------


def test_close_mid_pour_switches_every_pump_off_at_once_and_sends_status_0(make_controller, clock):
    controller, broadcasts = make_controller(clock=clock, **LONG)
    submit(controller, blend(1.0, {"0": 0.5, "3": 0.25, "7": 0.25}))  # 1.25 s
    clock.advance(0.5)
    controller.close()
    ons, offs = switches(controller, on=True), switches(controller, on=False)
    assert ons == {0: 1000.0, 3: 1000.0, 7: 1000.0}
    assert offs == {0: 1000.5, 3: 1000.5, 7: 1000.5}
    assert not any(controller.driver.is_on(pump) for pump in range(8))
    assert status_times(broadcasts.messages)[0] == 2 and status_times(broadcasts.messages)[-1] == 0
    assert controller.state == "idle"


def fake_controller(broadcast, status_interval: float = 0.05) -> tuple[Controller, FakeClock]:
    """A Controller on the default config (20 ml/s), with simulated pumps, in fake time."""
    config = load_config(None, {"server": {"status_interval": status_interval}})
    clock = FakeClock()
    driver = SimulatedDriver([p.gpio for p in config.pumps], clock=clock)
    return Controller(config, driver, broadcast, clock=clock), clock


def test_exception_while_starting_a_pour_still_returns_to_idle():
    failed = threading.Event()

    def broadcast_failing_once(frame: str) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("client vanished")

    controller, _ = fake_controller(broadcast_failing_once)
    try:
        with pytest.raises(RuntimeError):
            submit(controller, blend(0.001, {"0": 1}))
        assert controller.state == "idle"
        assert not controller.driver.is_on(0)
    finally:
        controller.close()


def test_a_clock_that_fails_mid_pour_ends_the_action_instead_of_leaving_it_busy():
    statuses = []

    def broadcast_failing_on_ticks(frame: str) -> None:
        statuses.append(frame)
        if len(statuses) == 2:  # the first periodic status, sent by the action clock
            raise RuntimeError("broadcast broke")

    controller, clock = fake_controller(broadcast_failing_on_ticks)
    try:
        submit(controller, blend(0.01, {"0": 1}))  # 0.5 s at 20 ml/s
        clock.advance(0.05)
        assert controller.state == "idle"
        assert not controller.driver.is_on(0)
        on, off = controller.driver.timeline
        assert off.t - on.t == pytest.approx(0.05), "the pump ran on after its action's clock had died"
    finally:
        controller.close()


# ---- refused before anything moves ------------------------------------------------------------


class RefusingDriver(SimulatedDriver):
    """Simulated pumps whose driver refuses every plan, as a driver that cannot pour it exactly does."""

    def check(self, plan):
        raise PourRejected("this driver refuses every pour")


@pytest.mark.parametrize(
    ("setup", "cup_size", "refusal"),
    [
        (lambda controller: submit(controller, set_level(0, 10.0)), 0.1, BottleTooLow),
        (lambda controller: None, 1.0, PourRejected),  # 2.5 s, over max_pump_seconds 2
        ("refusing-driver", 0.1, PourRejected),
    ],
    ids=["bottle-too-low", "over-max-pump-seconds", "driver-check-refuses"],
)
def test_a_pour_refused_before_anything_moves_leaves_no_history_row(write_config, setup, cup_size, refusal):
    config = load_config(write_config({"pumps": fast_pumps(), "limits": {"max_pump_seconds": 2.0}}))
    clock = FakeClock()
    driver_class = RefusingDriver if setup == "refusing-driver" else SimulatedDriver
    controller = Controller(config, driver_class([p.gpio for p in config.pumps], 2.0, clock), Broadcasts(), clock=clock)
    try:
        if callable(setup):
            setup(controller)
        with pytest.raises(refusal):
            submit(controller, blend(cup_size, {"0": 1}))
        assert controller.store.history() == []
        assert controller.driver.timeline == []
        assert controller.state == "idle"
    finally:
        controller.close()


# ---- adoption after a crash, in fake time ----------------------------------------------------


def test_a_restart_adopts_the_pour_still_playing_and_ends_it_exactly_when_the_hardware_does(write_config, tmp_path):
    config = load_config(write_config({"pumps": fast_pumps()}), {"server": {"status_interval": 0.25}})
    clock = FakeClock()
    driver = SimulatedDriver([p.gpio for p in config.pumps], config.limits.max_pump_seconds, clock)
    first = Controller(config, driver, Broadcasts(), store=Store(tmp_path), clock=clock)
    submit(first, blend(0.4, {"0": 1}))  # 400 ml at 400 ml/s: 1 s
    clock.advance(0.25)
    first.action.done.set()  # what kill -9 leaves: its clock stops, the pumps' timeline plays on
    first.store._db.close()

    broadcasts = Broadcasts()
    second = Controller(config, driver, broadcasts, store=Store(tmp_path), clock=clock)
    try:
        assert second.state == "blending" and driver.is_on(0)
        assert second.remaining() == 1
        clock.advance(0.749)
        assert second.state == "blending" and driver.is_on(0)
        clock.advance(0.001)
        assert second.state == "idle" and not driver.is_on(0)
        assert status_times(broadcasts.messages) == [1, 1, 1, 1, 0]  # at 0.25 (found), 0.5, 0.75 and its end
        [pour] = second.store.history()
        assert pour.outcome == "completed" and pour.poured_ml == {0: 400.0}
    finally:
        second.close()

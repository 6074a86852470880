"""Millilitres, not seconds: the start-up time in every pour, and simulated pumps that really pour.

The end-to-end tests calibrate simulated pumps whose true flow and start-up time (`pumps[i].sim`)
the controller does not know, over a real WebSocket, exactly as a user with a measuring jug would:
run calibrate, read what came out (`sim_poured_ml` stands in for the jug), send set_flow. Pumps
are fast and runs short (0.1 s and 0.25 s instead of 1 s and 6 s) so the tests stay quick; the
simulated pumps pour by the times they were due, so a late thread wake-up does not blur the ml.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Optional

import pytest
from support.fake_pigpiod import FakePigpiod
from support.messages import is_final_status
from support.peer import Peer
from support.pumps import fast_pumps
from support.waiting import eventually

import barmaid.drivers.daemon as daemon_driver
from barmaid.action import Action
from barmaid.calibration import Law, Run
from barmaid.config import DEFAULT_GPIOS, load_config
from barmaid.dispatch import order_of
from barmaid.drivers.base import Span
from barmaid.drivers.pigpio import PigpioDriver
from barmaid.drivers.simulated import SimulatedDriver, Truth
from barmaid.errors import ConfigError
from barmaid.outcomes import ActionKind
from barmaid.protocol import parse
from barmaid.server import BarmaidServer
from barmaid.store import Store

#: Hidden truths: pump -> (flow ml/s, start-up s). Pump 2 has no start-up time.
TRUTHS = {0: (150.0, 0.05), 1: (400.0, 0.03), 2: (250.0, 0.0)}
SHORT_RUN, LONG_RUN = 0.1, 0.25
POURS_ML = (5.0, 20.0, 40.0)


def within_target(error_ml: float, ml: float) -> bool:
    """The promise: every pour within 0.2 ml or 1 %, whichever is larger."""
    return abs(error_ml) <= max(0.2, 0.01 * ml)


def hidden_pumps(**limits: Any) -> list[dict[str, Any]]:
    """fast_pumps(), configured at 400 ml/s, with TRUTHS as their real behaviour."""
    pumps = fast_pumps()
    for pump, (flow, dead) in TRUTHS.items():
        pumps[pump]["sim"] = {"flow_ml_s": flow, "dead_s": dead}
    return pumps


@pytest.fixture
def start(write_config, serve_config):
    made = iter(range(1000))

    def make(pumps: list[dict[str, Any]], limits: Optional[dict[str, Any]] = None, driver: Any = None) -> BarmaidServer:
        raw: dict[str, Any] = {"server": {"status_interval": 0.05}, "pumps": pumps}
        if limits:
            raw["limits"] = limits
        return serve_config(load_config(write_config(raw, name=f"volume{next(made)}.yaml")), driver)

    return make


class Bartender:
    """A client that calibrates and pours, reading the jug (`sim_poured_ml`) after each run."""

    def __init__(self, server: BarmaidServer) -> None:
        self.peer = Peer.at(server.port)
        assert self.peer.echo("hello") == []

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """The state or error that answers `message` (the last one before an echo's reply: frames
        are answered in order, and a state published before the answer comes before it)."""
        self.peer.send(message)
        return [m for m in self.peer.echo("answered?") if m["type"] in ("state", "error")][-1]

    def state(self) -> dict[str, Any]:
        return self.send({"type": "state"})["data"]

    def jug(self) -> list[float]:
        return [pump["sim_poured_ml"] for pump in self.state()["pumps"]]

    def run(self, message: dict[str, Any]) -> list[float]:
        """What each pump poured for one blocking request."""
        before = self.jug()
        self.peer.send(message)
        last = self.peer.recv_until(lambda m: is_final_status(m) or m["type"] == "error")[-1]
        assert last["type"] == "status", last
        return [after - was for after, was in zip(self.jug(), before)]

    def calibrate(self, pump: int, seconds: float) -> dict[str, Any]:
        poured = self.run({"type": "calibrate", "data": {"pump": pump, "seconds": seconds}})[pump]
        return self.send({"type": "set_flow", "data": {"pump": pump, "ml": poured}})

    def pour(self, ml: dict[int, float]) -> list[float]:
        """A blend of `ml` per pump; what each poured."""
        cup = sum(ml.values()) / 1000
        ratios = {str(p): v / 1000 / cup for p, v in ml.items()}
        return self.run({"type": "blend", "data": {"cup_size": cup, "ratios": ratios}})

    def close(self) -> None:
        self.peer.close()


# ---- the law, pure ------------------------------------------------------------------------


def test_a_pour_of_v_ml_runs_dead_s_plus_v_over_flow():
    law = Law(flow_ml_s=20.0, dead_s=0.3)
    assert law.seconds(10.0) == pytest.approx(0.8)
    assert law.ml(0.8) == pytest.approx(10.0)
    assert law.ml(0.2) == 0.0  # still starting up
    assert Law(20.0).seconds(10.0) == 10.0 / 20.0  # no start-up time: the seed formula, to the bit


def test_a_stopped_pour_counts_nothing_during_the_start_up_time_then_the_flow():
    action = Action(ActionKind.BLEND, {0: Span(0.0, 0.55), 1: Span(0.0, 0.25)}, {0: 10.0, 1: 5.0}, dead_s={0: 0.05})
    assert action.poured(0.04) == {0: 0.0, 1: 0.8}
    assert action.poured(0.30) == {0: 5.0, 1: 5.0}
    assert action.poured(9.0) == {0: 10.0, 1: 5.0}


# ---- the simulated pumps ------------------------------------------------------------------


def sim(*truths: Truth) -> SimulatedDriver:
    return SimulatedDriver(DEFAULT_GPIOS[: len(truths)], truths=truths)


def test_a_simulated_pump_pours_by_its_truth_for_the_time_it_was_due():
    driver = sim(Truth(Law(100.0, 0.02)), Truth(Law(50.0)))
    try:
        driver.pour({0: 0.07, 1: Span(0.01, 0.05)})
        assert eventually(lambda: not driver.playing())
        assert driver.poured_ml() == [pytest.approx(5.0, abs=1e-6), pytest.approx(2.0, abs=1e-6)]
        driver.pour({0: 0.01})  # shorter than the start-up time: nothing comes out
        assert eventually(lambda: not driver.playing())
        assert driver.poured_ml()[0] == pytest.approx(5.0, abs=1e-6)
    finally:
        driver.close()


def test_a_halted_simulated_pump_pours_up_to_the_halt():
    driver = sim(Truth(Law(100.0, 0.05)))
    try:
        started = driver.pour({0: 5.0})
        time.sleep(0.2)
        driver.halt()
        ran = driver.timeline[-1].t - started
        assert driver.poured_ml()[0] == pytest.approx(100.0 * (ran - 0.05), abs=0.05)
    finally:
        driver.close()


def test_the_noise_of_a_simulated_pump_is_seeded_so_runs_repeat():
    def poured() -> list[float]:
        driver = sim(Truth(Law(400.0), noise_ml=0.5))
        try:
            seen = []
            for _ in range(3):
                driver.pour({0: 0.02})
                assert eventually(lambda: not driver.playing())
                seen.append(driver.poured_ml()[0])
            return seen
        finally:
            driver.close()

    first = poured()
    assert first == poured()
    assert first[0] != pytest.approx(8.0, abs=1e-6)  # it is noisy


def test_sim_poured_ml_is_in_the_state_of_simulated_pumps_and_absent_with_real_ones(start, monkeypatch):
    monkeypatch.setattr(daemon_driver, "BACKOFF", (0.02, 0.1))
    with FakePigpiod() as daemon:
        config = load_config(None, {"driver": {"kind": "pigpio", "host": "127.0.0.1", "port": daemon.port}})
        real = Bartender(start(fast_pumps(), driver=PigpioDriver(DEFAULT_GPIOS, 120.0, config.driver)))
        assert all("sim_poured_ml" not in pump for pump in real.state()["pumps"])
        real.close()
    simulated = Bartender(start(fast_pumps()))
    assert simulated.jug() == [0.0] * 8
    simulated.close()


# ---- end to end: calibrate hidden pumps, then pour ----------------------------------------


def test_two_point_calibration_of_hidden_pumps_pours_every_volume_within_target(start):
    pumps = hidden_pumps()
    pumps[0]["capacity_ml"] = 1000.0
    bartender = Bartender(start(pumps))
    bartender.send({"type": "set_level", "data": {"pump": 0, "ml": 1000}})
    for pump in TRUTHS:
        assert bartender.calibrate(pump, SHORT_RUN)["type"] == "state"
        reply = bartender.calibrate(pump, LONG_RUN)
        assert reply["type"] == "state", reply
        fitted = reply["data"]["pumps"][pump]
        flow, dead = TRUTHS[pump]
        assert (fitted["flow_ml_s"], fitted["dead_s"]) == (pytest.approx(flow, rel=1e-3), pytest.approx(dead, abs=1e-3))
        assert [p["seconds"] for p in fitted["points"]] == [pytest.approx(SHORT_RUN), pytest.approx(LONG_RUN)]
        assert all(abs(p["residual_ml"]) < 0.01 for p in fitted["points"])
    misses = []
    for ml in POURS_ML:
        poured = bartender.pour(dict.fromkeys(TRUTHS, ml))
        misses += [(pump, ml, poured[pump]) for pump in TRUTHS if not within_target(poured[pump] - ml, ml)]
    assert not misses, misses
    # The level went down by what really came out: calibration runs and pours alike.
    assert bartender.state()["pumps"][0]["level_ml"] == pytest.approx(1000 - bartender.jug()[0], abs=0.01)
    bartender.close()


def test_one_point_calibration_of_a_late_pump_misses_its_small_pours(start):
    bartender = Bartender(start(hidden_pumps()))
    assert bartender.calibrate(0, LONG_RUN)["data"]["pumps"][0]["dead_s"] == 0.0
    poured = bartender.pour({0: 5.0})[0]
    assert not within_target(poured - 5.0, 5.0) and poured < 4.0, poured
    bartender.close()


def test_a_pump_with_no_start_up_time_keeps_the_seed_formula(start):
    server = start(hidden_pumps())
    bartender = Bartender(server)
    bartender.calibrate(2, SHORT_RUN)
    state = bartender.calibrate(2, LONG_RUN)["data"]["pumps"][2]
    assert state["dead_s"] == 0.0 and state["flow_ml_s"] == pytest.approx(250.0)
    blend = parse(json.dumps({"type": "blend", "data": {"cup_size": 0.05, "ratios": {"2": 0.5}}}), server.limits)
    assert server.controller.run_seconds(order_of(blend, 8)) == {2: 0.05 * 1000 * 0.5 / state["flow_ml_s"]}
    bartender.close()


def test_pours_in_groups_of_max_parallel_pumps_are_timed_by_each_pumps_law(start, data_dir):
    store = Store(data_dir)  # points as two measured runs of the true law would give them
    for pump, (flow, dead) in TRUTHS.items():
        for seconds in (SHORT_RUN, LONG_RUN):
            store.save_calibration_run(Run(pump, seconds, time.time(), 0.0, ml=Law(flow, dead).ml(seconds)))
    store.close()
    server = start(hidden_pumps(), limits={"max_parallel_pumps": 1})
    bartender = Bartender(server)
    poured = bartender.pour(dict.fromkeys(TRUTHS, 20.0))
    assert all(within_target(poured[pump] - 20.0, 20.0) for pump in TRUTHS), poured
    seconds = server.controller.run_seconds(order_of(parse(json.dumps(
        {"type": "blend", "data": {"cup_size": 0.06, "ratios": {str(p): 1 / 3 for p in TRUTHS}}}), server.limits), 8))
    assert seconds == {p: pytest.approx(dead + 20.0 / flow) for p, (flow, dead) in TRUTHS.items()}
    bartender.close()


@pytest.mark.parametrize(
    "sim, says",
    [
        ({"flow_ml_s": 10, "delay": 3}, "unknown key 'pumps.0.sim.delay' in pumps.0.sim; allowed: flow_ml_s, dead_s, noise_ml"),
        ({"dead_s": -1}, "pumps.0.sim.dead_s = -1"),
    ],
    ids=["unknown-key", "negative-start-up"],
)
def test_a_wrong_sim_truth_in_the_config_is_named(write_config, sim, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(write_config({"pumps": [{"gpio": 5, "sim": sim}]}))


def test_a_sim_truth_defaults_to_the_pumps_configured_flow_and_no_start_up_time(write_config):
    config = load_config(write_config({"pumps": [{"gpio": 5, "flow_ml_s": 12.5}]}))
    driver = SimulatedDriver.for_config(config)
    try:
        driver.pour({0: 0.04})
        assert eventually(lambda: not driver.playing())
        assert driver.poured_ml() == [pytest.approx(0.5, abs=1e-6)]
    finally:
        driver.close()

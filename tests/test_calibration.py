"""Calibration: the fit of flow and start-up time from calibrate runs, and its bookkeeping.

The fit itself is pure (barmaid.calibration) and tested alone; the bookkeeping (which run
set_flow divides, what a cut run allows, the level a measured run leaves) goes through the
protocol, over a real WebSocket, against simulated pumps or the fake pigpio daemon.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Optional

import pytest
from support.fake_pigpiod import FakePigpiod
from support.messages import is_final_status, is_type
from support.peer import Peer
from support.pumps import fast_pumps
from support.servers import close_quickly

import barmaid.drivers.daemon as daemon_driver
from barmaid.calibration import Law, Run, fit
from barmaid.config import DEFAULT_GPIOS, load_config
from barmaid.drivers.pigpio import PigpioDriver
from barmaid.errors import BadMessage
from barmaid.server import BarmaidServer
from barmaid.store import Store


def answer(peer: Peer) -> dict[str, Any]:
    """The answer to the request just sent: the last state or error before an echo's reply (the
    server answers a client's frames in order, and a state published before it comes first)."""
    return [m for m in peer.echo("answered?") if m["type"] in ("state", "error")][-1]


def ask_state(peer: Peer) -> dict[str, Any]:
    peer.send({"type": "state"})
    return answer(peer)["data"]


def calibrate(peer: Peer, pump: int, seconds: float) -> None:
    peer.send({"type": "calibrate", "data": {"pump": pump, "seconds": seconds}})
    peer.recv_until(is_final_status)


def set_flow(peer: Peer, pump: int, ml: float) -> dict[str, Any]:
    peer.send({"type": "set_flow", "data": {"pump": pump, "ml": ml}})
    return answer(peer)


@pytest.fixture
def start(write_config, data_dir, serve_config):
    """Starts a BarmaidServer from a pump list, on simulated pumps unless given other hardware."""
    made = iter(range(1000))

    def make(pumps: Optional[list[dict[str, Any]]] = None, hardware: Any = None, **extra: Any) -> BarmaidServer:
        raw = {"server": {"status_interval": 0.05}, "pumps": pumps or fast_pumps(), **extra}
        return serve_config(load_config(write_config(raw, name=f"cal{next(made)}.yaml")), hardware)

    return make


def peer_of(server: BarmaidServer) -> Peer:
    peer = Peer.at(server.port)
    assert peer.echo("hello") == []
    return peer


# ---- flows outside 0.01 to 1000 ml/s ------------------------------------------------------


def test_set_flow_with_a_tiny_ml_is_refused_and_the_pump_pours_on_at_its_old_flow(start):
    server = start()
    peer = peer_of(server)
    calibrate(peer, 0, 0.05)
    reply = set_flow(peer, 0, 5e-324)
    assert reply["type"] == "error", reply
    assert "0.01" in reply["data"]["msg"] and "pump 0" in reply["data"]["msg"], reply
    assert ask_state(peer)["pumps"][0]["flow_ml_s"] == 400.0
    peer.send({"type": "blend", "data": {"cup_size": 0.02, "ratios": {"0": 1}}})
    assert peer.recv_until(lambda m: is_final_status(m) or m["type"] == "error")[-1]["type"] == "status"


def test_a_stored_flow_of_0_is_not_silently_replaced_by_the_configs(start, data_dir, caplog):
    store = Store(data_dir)
    store.set_pump(3, flow_ml_s=0.0)
    store.close()
    caplog.set_level(logging.WARNING, logger="barmaid.machine")
    server = start()
    warned = [r.getMessage() for r in caplog.records if "pump 3" in r.getMessage()]
    assert warned and "not plausible" in warned[0] and "calibrate" in warned[0], warned
    assert server.controller.pumps[3].flow_ml_s == 400.0


# ---- a calibration cut by a lost daemon ---------------------------------------------------


@pytest.fixture
def daemon(monkeypatch):
    monkeypatch.setattr(daemon_driver, "BACKOFF", (0.02, 0.1))
    monkeypatch.setattr(daemon_driver, "HEARTBEAT", 0.02)
    with FakePigpiod() as fake:
        yield fake


def test_a_calibration_cut_by_a_lost_daemon_says_so_and_set_flow_after_it_is_refused(start, daemon):
    driver_config = {"kind": "pigpio", "host": "127.0.0.1", "port": daemon.port}
    config = load_config(None, {"driver": driver_config})
    server = start(hardware=PigpioDriver(DEFAULT_GPIOS, 120.0, config.driver), driver=driver_config)
    peer = peer_of(server)
    peer.send({"type": "calibrate", "data": {"pump": 2, "seconds": 4}})
    peer.recv_until(is_type("status"))
    daemon.drop_connections(keep_listening=True)
    peer.recv_until(is_final_status)
    assert ask_state(peer)["pumps"][2]["calibration_seconds"] is None  # not the planned 4 s
    reply = set_flow(peer, 2, 22)
    assert reply["type"] == "error", reply
    msg = reply["data"]["msg"]
    assert "pump 2" in msg and "cut" in msg and "calibrate again" in msg, msg
    assert ask_state(peer)["pumps"][2]["flow_ml_s"] == 400.0


# ---- the level a calibration run leaves ---------------------------------------------------


def test_a_calibration_run_is_taken_off_the_bottle_at_the_ml_measured_afterwards(start):
    pumps = fast_pumps()
    pumps[1]["capacity_ml"] = 1000.0
    server = start(pumps)
    peer = peer_of(server)
    peer.send({"type": "set_level", "data": {"pump": 1, "ml": 500}})
    answer(peer)
    calibrate(peer, 1, 0.05)  # 20 ml at the configured 400 ml/s
    assert ask_state(peer)["pumps"][1]["level_ml"] == pytest.approx(480)
    assert set_flow(peer, 1, 30)["type"] == "state"  # it really poured 30 ml
    assert ask_state(peer)["pumps"][1]["level_ml"] == pytest.approx(470)
    assert set_flow(peer, 1, 25)["type"] == "state"  # measured again: 25 after all
    assert ask_state(peer)["pumps"][1]["level_ml"] == pytest.approx(475)


# ---- the fit, pure ------------------------------------------------------------------------


def run(seconds: float, ml: float) -> Run:
    return Run(0, seconds, 0.0, 0.0, ml=ml)


def test_one_point_gives_ml_over_seconds_and_no_start_up_time():
    result = fit([run(10.0, 187.0)])
    assert result.law == Law(18.7, 0.0) and result.residuals_ml == (pytest.approx(0.0),)


def test_two_points_of_different_lengths_give_the_flow_and_the_start_up_time():
    result = fit([run(1.0, 14.0), run(6.0, 114.0)])
    assert result.law.flow_ml_s == pytest.approx(20.0) and result.law.dead_s == pytest.approx(0.3)


def test_more_points_are_fitted_by_least_squares_with_each_residual():
    result = fit([run(1.0, 14.5), run(3.0, 53.5), run(6.0, 114.0)])
    assert result.law.flow_ml_s == pytest.approx(19.921, abs=1e-3)
    assert result.law.dead_s == pytest.approx(0.288, abs=1e-3)
    assert sum(result.residuals_ml) == pytest.approx(0.0, abs=1e-4)
    assert [round(r, 2) for r in result.residuals_ml] == [0.32, -0.53, 0.21]


def test_points_of_one_length_give_their_mean_flow():
    assert fit([run(5.0, 100.0), run(5.0, 110.0)]).law == Law(21.0, 0.0)


def test_a_start_up_time_a_hair_below_0_is_noise_and_fitted_as_0():
    law = fit([run(1.0, 20.2), run(6.0, 120.0)]).law  # dead -0.01 s
    assert law.dead_s == 0.0 and law.flow_ml_s == pytest.approx((20.2 + 720) / 37)


@pytest.mark.parametrize(
    "points, says",
    [
        ([run(1.0, 30.0), run(6.0, 20.0)], "no more than the shorter"),
        ([run(1.0, 30.0), run(6.0, 130.0)], "start-up time of -0.50 s"),
        ([run(6.0, 1.0), run(7.0, 11.0)], "start-up time of 5.90 s, more than 5 s"),
        ([run(0.05, 500.0)], "flow of 1e+04 ml/s, outside 0.01 to 1000"),
        ([run(10.0, 0.05)], "flow of 0.005 ml/s, outside 0.01 to 1000"),
    ],
    ids=["negative-flow", "negative-start-up", "start-up-over-5-s", "too-fast", "too-slow"],
)
def test_a_fit_no_pump_has_is_refused_saying_why(points, says):
    with pytest.raises(BadMessage, match=re.escape(says)) as refused:
        fit(points)
    assert "measure" in str(refused.value)


# ---- points over the protocol -------------------------------------------------------------


def test_state_shows_flow_start_up_time_and_points_with_residuals_and_they_survive_a_restart(start):
    pumps = fast_pumps()
    pumps[3]["sim"] = {"flow_ml_s": 200.0, "dead_s": 0.05}
    server = start(pumps)
    peer = peer_of(server)
    calibrate(peer, 3, 0.1)
    one = set_flow(peer, 3, 10.0)["data"]["pumps"][3]
    assert (one["flow_ml_s"], one["dead_s"], len(one["points"])) == (pytest.approx(100.0), 0.0, 1)
    calibrate(peer, 3, 0.3)
    two = set_flow(peer, 3, 50.0)["data"]["pumps"][3]
    assert (two["flow_ml_s"], two["dead_s"]) == (pytest.approx(200.0), pytest.approx(0.05))
    assert [(p["seconds"], p["ml"], p["residual_ml"]) for p in two["points"]] == [
        (pytest.approx(0.1), 10.0, pytest.approx(0.0, abs=1e-3)),
        (pytest.approx(0.3), 50.0, pytest.approx(0.0, abs=1e-3)),
    ]
    assert all(abs(p["taken"] - time.time()) < 60 for p in two["points"])
    assert {(p["pump"], p["dead_s"], len(p["points"])) for p in ask_state(peer)["pumps"] if p["pump"] != 3} == {
        (n, 0.0, 0) for n in range(8) if n != 3
    }
    before = ask_state(peer)["pumps"]
    peer.close()
    close_quickly(server)
    again = peer_of(start(pumps))
    assert [{k: v for k, v in p.items() if k != "sim_poured_ml"} for p in ask_state(again)["pumps"]] == [
        {k: v for k, v in p.items() if k != "sim_poured_ml"} for p in before
    ]


def test_a_fit_no_pump_has_is_refused_over_the_protocol_and_changes_nothing(start):
    server = start()
    peer = peer_of(server)
    calibrate(peer, 0, 0.1)
    set_flow(peer, 0, 30.0)
    calibrate(peer, 0, 0.2)
    reply = set_flow(peer, 0, 20.0)  # the longer run poured less
    assert reply["type"] == "error" and "set_flow: pump 0" in reply["data"]["msg"], reply
    assert "reset_calibration" in reply["data"]["msg"]
    pump = ask_state(peer)["pumps"][0]
    assert (pump["flow_ml_s"], len(pump["points"])) == (pytest.approx(300.0), 1)
    assert set_flow(peer, 0, 70.0)["data"]["pumps"][0]["dead_s"] == pytest.approx(0.025)  # measured again


def test_reset_calibration_starts_over_from_the_configs_flow_and_survives_a_restart(start):
    server = start()
    peer = peer_of(server)
    calibrate(peer, 5, 0.1)
    set_flow(peer, 5, 30.0)
    calibrate(peer, 5, 0.2)
    assert set_flow(peer, 5, 70.0)["data"]["pumps"][5]["dead_s"] == pytest.approx(0.025)
    peer.send({"type": "reset_calibration", "data": {"pump": 5}})
    pump = answer(peer)["data"]["pumps"][5]
    assert (pump["flow_ml_s"], pump["dead_s"], pump["points"], pump["calibration_seconds"]) == (400.0, 0.0, [], None)
    assert "no calibration run" in set_flow(peer, 5, 10.0)["data"]["msg"]
    peer.close()
    close_quickly(server)
    again = peer_of(start())
    pump = ask_state(again)["pumps"][5]
    assert (pump["flow_ml_s"], pump["dead_s"], pump["points"]) == (400.0, 0.0, [])


def test_a_blend_stopped_during_the_start_up_time_takes_nothing_off_the_bottle(start, data_dir):
    store = Store(data_dir)
    for seconds, ml in ((1.0, 50.0), (2.0, 150.0)):  # 100 ml/s after 0.5 s
        store.save_calibration_run(Run(1, seconds, time.time(), 0.0, ml=ml))
    store.close()
    pumps = fast_pumps()
    pumps[1].update(capacity_ml=500.0, sim={"flow_ml_s": 100.0, "dead_s": 0.5})
    server = start(pumps)
    peer = peer_of(server)
    peer.send({"type": "set_level", "data": {"pump": 1, "ml": 300}})
    answer(peer)
    peer.send({"type": "blend", "data": {"cup_size": 0.01, "ratios": {"1": 1}}})
    peer.recv_until(is_type("status"))
    peer.send({"type": "stop"})
    stopped = peer.recv_until(is_type("stopped"))[-1]["data"]
    assert stopped["after"] < 0.5, stopped  # still starting up
    pump = ask_state(peer)["pumps"][1]
    assert (pump["level_ml"], pump["sim_poured_ml"]) == (300.0, 0.0)


def test_reset_calibration_needs_the_token_like_set_flow(start):
    server = start(server={"host": "127.0.0.1", "token": "s3cret-token"})
    peer = peer_of(server)
    peer.send({"type": "reset_calibration", "data": {"pump": 0}})
    reply = peer.recv()
    assert reply["type"] == "error" and "token" in reply["data"]["msg"], reply


def test_set_flow_while_that_pump_still_calibrates_is_refused(start):
    server = start()
    peer = peer_of(server)
    peer.send({"type": "calibrate", "data": {"pump": 4, "seconds": 2}})  # its first
    peer.recv_until(is_type("status"))
    reply = set_flow(peer, 4, 20.0)
    assert reply["type"] == "error" and "still calibrating" in reply["data"]["msg"], reply
    peer.send({"type": "stop"})
    peer.recv_until(is_type("stopped"))
    assert ask_state(peer)["pumps"][4]["points"] == []

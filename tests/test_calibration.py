"""Calibration: the fit of flow and start-up time from calibrate runs, and its bookkeeping.

The fit itself is pure (barmaid.calibration) and tested alone; the bookkeeping (which run
set_flow divides, what a cut run allows, the level a measured run leaves) goes through the
protocol, over a real WebSocket, against simulated pumps or the fake pigpio daemon.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pytest

import barmaid.drivers.pigpio as pigpio_driver
from barmaid.config import DEFAULT_GPIOS, load_config
from barmaid.drivers.pigpio import PigpioDriver
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.server import BarmaidServer
from barmaid.store import Store
from conftest import Peer, close_quickly, fast_pumps, is_final_status
from fake_pigpiod import FakePigpiod


def is_type(kind: str) -> Callable[[dict], bool]:
    return lambda message: message["type"] == kind


def answer(peer: Peer) -> dict[str, Any]:
    """The next state or error the peer gets (statuses before it are skipped)."""
    return peer.recv_until(lambda m: m["type"] in ("state", "error"))[-1]


def ask_state(peer: Peer) -> dict[str, Any]:
    peer.echo("before state")
    peer.send({"type": "state"})
    return peer.recv_until(is_type("state"))[-1]["data"]


def calibrate(peer: Peer, pump: int, seconds: float) -> None:
    peer.send({"type": "calibrate", "data": {"pump": pump, "seconds": seconds}})
    peer.recv_until(is_final_status)


def set_flow(peer: Peer, pump: int, ml: float) -> dict[str, Any]:
    peer.send({"type": "set_flow", "data": {"pump": pump, "ml": ml}})
    return answer(peer)


@pytest.fixture
def start(write_config, data_dir):
    """Starts a BarmaidServer from a pump list, on simulated pumps unless given other hardware."""
    servers: list[BarmaidServer] = []

    def make(pumps: list[dict[str, Any]] = None, hardware: Any = None, **extra: Any) -> BarmaidServer:
        raw = {"server": {"host": "127.0.0.1", "status_interval": 0.05}, "pumps": pumps or fast_pumps(), **extra}
        config = load_config(write_config(raw, name=f"cal{len(servers)}.yaml"))
        config = config.model_copy(update={"server": config.server.model_copy(update={"port": 0})})
        server = BarmaidServer(config, hardware or SimulatedDriver.for_config(config))
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        close_quickly(server)


def peer_of(server: BarmaidServer) -> Peer:
    peer = Peer(f"ws://127.0.0.1:{server.port}/")
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
    monkeypatch.setattr(pigpio_driver, "BACKOFF", (0.02, 0.1))
    monkeypatch.setattr(pigpio_driver, "HEARTBEAT", 0.02)
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

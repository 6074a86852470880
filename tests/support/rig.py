"""A server with simulated pumps on a free loopback port (`make_rig`), its WebSocket peers, and
readers of what they were told and what the pumps did.

`make_rig` is a fixture: a test module uses it by importing it (`from support.rig import make_rig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from conftest import Peer, close_quickly, fast_pumps, is_final_status, status_times

from barmaid.clock import FakeClock
from barmaid.config import load_config
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.server import BarmaidServer

#: What a GUI that speaks only the seed protocol may ever receive.
SEED_TYPES = {"status", "echo", "error"}


def is_type(kind: str) -> Callable[[dict], bool]:
    return lambda message: message["type"] == kind


def is_state(state: str) -> Callable[[dict], bool]:
    return lambda message: message["type"] == "state" and message["data"]["state"] == state


def pumps_with(
    flow: float = 400.0, capacity: Optional[dict[int, float]] = None, **per_pump: dict[str, Any]
) -> list[dict[str, Any]]:
    """fast_pumps(flow) with capacity_ml for some pumps and any other keys per pump (p3={...})."""
    pumps = fast_pumps(flow)
    for pump, ml in (capacity or {}).items():
        pumps[pump]["capacity_ml"] = ml
    for key, values in per_pump.items():
        pumps[int(key[1:])].update(values)
    return pumps


class SeedOnly:
    """A GUI of the seed protocol: it only ever sends echo, and keeps everything it receives."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.seen: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        """What arrived since the last drain (an echo round trip proves nothing else is queued)."""
        got = self.peer.echo(f"seed sync {len(self.seen)}")
        self.seen += got
        return got

    def assert_only_seed_types(self) -> None:
        self.drain()
        unexpected = [m for m in self.seen if m["type"] not in SEED_TYPES]
        assert not unexpected, f"a seed-only client got new message types: {unexpected}"


class Rig:
    """A running server with simulated pumps, and its clients."""

    def __init__(self, server: BarmaidServer, clock: Optional[FakeClock] = None) -> None:
        self.server = server
        self.clock = clock
        self.peers: list[Peer] = []
        self.closed = False

    @property
    def driver(self) -> SimulatedDriver:
        return self.server.controller.driver

    @property
    def controller(self):
        return self.server.controller

    def peer(self) -> Peer:
        peer = Peer(f"ws://127.0.0.1:{self.server.port}/")
        self.peers.append(peer)
        assert peer.echo("hello") == []  # registered with the server
        return peer

    def seed_only(self) -> SeedOnly:
        return SeedOnly(self.peer())

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.peers.clear()
        if not self.closed:
            self.closed = True
            close_quickly(self.server)


@pytest.fixture
def make_rig(write_config):
    """Starts a server on 127.0.0.1:<any port> from pumps / limits / data_dir, in fake time when
    given a FakeClock; closes it at teardown."""
    rigs: list[Rig] = []

    def make(
        pumps: Optional[list[dict[str, Any]]] = None,
        limits: Optional[dict[str, Any]] = None,
        data_dir: Optional[Path] = None,
        clock: Optional[FakeClock] = None,
    ) -> Rig:
        raw: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "status_interval": 0.05},
            "pumps": pumps or fast_pumps(),
        }
        if limits:
            raw["limits"] = limits
        if data_dir is not None:
            raw["data_dir"] = str(data_dir)
        config = load_config(write_config(raw, name=f"rig{len(rigs)}.yaml"))
        config = config.model_copy(update={"server": config.server.model_copy(update={"port": 0})})
        driver = SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds, clock)
        server = BarmaidServer(config, driver, clock=clock)
        server.start()
        rig = Rig(server, clock)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def ask_state(peer: Peer) -> dict[str, Any]:
    """The data of a fresh `state` reply (anything queued before is read and dropped)."""
    peer.echo("before state")
    peer.send({"type": "state"})
    return peer.recv_until(is_type("state"))[-1]["data"]


def levels(peer: Peer) -> list[Optional[float]]:
    return [pump["level_ml"] for pump in ask_state(peer)["pumps"]]


def runs(driver: SimulatedDriver) -> dict[int, list[tuple[float, float]]]:
    """pump -> [(on, off), ...] from the simulated timeline; fails if a pump is left on."""
    on: dict[int, float] = {}
    result: dict[int, list[tuple[float, float]]] = {}
    for switch in driver.timeline:
        if switch.on:
            on[switch.pump] = switch.t
        else:
            result.setdefault(switch.pump, []).append((on.pop(switch.pump), switch.t))
    assert not on, f"pumps left on: {sorted(on)}"
    return result


def on_times(driver: SimulatedDriver) -> dict[int, float]:
    """pump -> seconds of its last run."""
    return {pump: spans[-1][1] - spans[-1][0] for pump, spans in runs(driver).items()}


def most_on_at_once(driver: SimulatedDriver) -> int:
    on: set[int] = set()
    most = 0
    for switch in driver.timeline:
        (on.add if switch.on else on.discard)(switch.pump)
        most = max(most, len(on))
    return most


def pour(
    rig: Rig, peer: Peer, request: dict[str, Any], until: Callable[[dict], bool] = is_final_status
) -> list[dict[str, Any]]:
    """Sends a pour and, once it started, runs the rig's fake clock to its end; every message
    `peer` got up to the one `until` matches."""
    assert rig.clock is not None, "pour() runs the fake clock: make_rig(clock=FakeClock())"
    peer.send(request)
    started = peer.recv_until(is_type("status"))
    rig.clock.run()
    return started + (peer.recv_until(until) if not until(started[-1]) else [])


def set_level(peer: Peer, pump: int, ml: float) -> dict[str, Any]:
    """set_level; its sender now follows the state: the `state` it gets before the `done` answer."""
    peer.send({"type": "set_level", "data": {"pump": pump, "ml": ml}})
    messages = peer.recv_until(lambda m: m["type"] in ("done", "error"))
    return next((m for m in messages if m["type"] == "state"), messages[-1])


def one_final_status(messages: list[dict[str, Any]]) -> None:
    times = status_times(messages)
    assert times.count(0) == 1 and times[-1] == 0, times


# ---- stop ---------------------------------------------------------------------------------------


def blend(cup_size: float, ratios: dict[str, float]) -> dict[str, Any]:
    return {"type": "blend", "data": {"cup_size": cup_size, "ratios": ratios}}


def history(peer: Peer, **data: Any) -> list[dict[str, Any]]:
    peer.send({"type": "history", "data": data} if data else {"type": "history"})
    return peer.recv_until(is_type("history"))[-1]["data"]["pours"]

"""A server with simulated pumps on a free loopback port and its WebSocket peers (a `Rig`, made
by conftest's `make_rig`), and the exchanges tests have with it: state, levels, history, a pour
run to its end in fake time."""

from __future__ import annotations

from typing import Any, Callable, Optional

from barmaid.clock import FakeClock
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.server import BarmaidServer
from support.messages import SEED_TYPES, is_final_status, is_type
from support.peer import Peer
from support.servers import close_quickly


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
        peer = Peer.at(self.server.port)
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


def ask_state(peer: Peer) -> dict[str, Any]:
    """The data of a fresh `state` reply (anything queued before is read and dropped)."""
    peer.echo("before state")
    peer.send({"type": "state"})
    return peer.recv_until(is_type("state"))[-1]["data"]


def levels(peer: Peer) -> list[Optional[float]]:
    return [pump["level_ml"] for pump in ask_state(peer)["pumps"]]


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


def blend(cup_size: float, ratios: dict[str, float]) -> dict[str, Any]:
    """A blend request."""
    return {"type": "blend", "data": {"cup_size": cup_size, "ratios": ratios}}


def history(peer: Peer, **data: Any) -> list[dict[str, Any]]:
    """The pours of a fresh `history` reply, newest first."""
    peer.send({"type": "history", "data": data} if data else {"type": "history"})
    return peer.recv_until(is_type("history"))[-1]["data"]["pours"]

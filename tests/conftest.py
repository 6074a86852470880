"""The suite's fixtures; what they build lives in tests/support (tests import from there, never
from here nor from one another).

Pumps here are very fast (400 ml/s), so a 0.1 l blend lasts 0.25 s and the suite stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
import yaml
from support.badinput import BAD_INPUTS, BadInput
from support.broadcasts import Broadcasts
from support.factories import closing_all
from support.peer import Peer
from support.processes import Process, environment
from support.pumps import FAST_FLOW_ML_S, fast_pumps
from support.rig import Rig
from support.scripted import Scripted
from support.servers import close_quickly

import barmaid.drivers.daemon as daemon_driver
from barmaid.clock import Clock, FakeClock
from barmaid.config import Config, load_config
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.machine import Controller
from barmaid.server import BarmaidServer

#: Every child process of the suite imports the working tree's barmaid, not an installed copy, and
#: writes bytecode (support.processes says why).
os.environ.update(environment())


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than there are cores. A test spends much of its time waiting on
    a real pour, a process start or the browser, so one worker per core leaves a core idle; with
    two per core the CPU work is the same but the workers fight for the cores (measured on 2
    cores: 3 workers take as long as 4 and 15 % less CPU)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test, and every barmaid process it starts, keeps its barmaid.db in its own folder."""
    folder = tmp_path / "data"
    monkeypatch.setenv("BARMAID_DATA_DIR", str(folder))
    return folder


# ---- configuration ------------------------------------------------------------------------


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Writes a YAML config (a dict, or raw text) into tmp_path and returns its path."""

    def write(content: Union[dict, str], name: str = "barmaid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fast_config(write_config: Callable[..., Path]) -> Config:
    """8 fast pumps, loopback, status every 50 ms; port 0 so the OS picks a free one."""
    return load_config(
        write_config({"pumps": fast_pumps()}),
        {"server": {"host": "127.0.0.1", "port": 0, "status_interval": 0.05}},
    )


# ---- a controller with simulated pumps, no network ----------------------------------------


@pytest.fixture
def make_controller(write_config: Callable[..., Path]):
    """Builds Controller(config, SimulatedDriver, Broadcasts) from a pump list, both on `clock` (a
    FakeClock for fake time; default real); closes each at teardown."""
    made: list[Controller] = []

    def make(
        pumps: Optional[list[dict[str, Any]]] = None,
        flow_ml_s: float = FAST_FLOW_ML_S,
        prime_ml: Optional[float] = None,
        status_interval: float = 0.05,
        clock: Optional[Clock] = None,
    ) -> tuple[Controller, Broadcasts]:
        pumps = pumps or fast_pumps(flow_ml_s, prime_ml)
        config = load_config(write_config({"pumps": pumps}), {"server": {"status_interval": status_interval}})
        broadcasts = Broadcasts()
        driver = SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds, clock)
        controller = Controller(config, driver, broadcasts, clock=clock)
        made.append(controller)
        return controller, broadcasts

    yield make
    for controller in made:
        controller.close()


# ---- a running server and its clients -----------------------------------------------------


@pytest.fixture
def serve_config():
    """The suite's one server factory: `serve_config(config, driver=None, store=None, clock=None)`
    starts a BarmaidServer for the config on 127.0.0.1 and a free port, with simulated pumps
    (on `clock`, default real) unless given a driver; every server it started is closed at teardown."""

    def start(config: Config, driver: Any = None, store: Any = None, clock: Optional[Clock] = None) -> BarmaidServer:
        config = config.model_copy(update={"server": config.server.model_copy(update={"host": "127.0.0.1", "port": 0})})
        barmaid = BarmaidServer(config, driver or SimulatedDriver.for_config(config, clock), store=store, clock=clock)
        barmaid.start()
        return barmaid

    with closing_all(start, close_quickly) as make:
        yield make


@pytest.fixture
def server(fast_config: Config, serve_config: Callable[..., BarmaidServer]) -> BarmaidServer:
    """A BarmaidServer with simulated pumps, listening on 127.0.0.1:<server.port>."""
    return serve_config(fast_config)


@pytest.fixture
def server_with(fast_config: Config, serve_config: Callable[..., BarmaidServer]):
    """Starts a BarmaidServer like `server`, with other server settings (token, allowed_origins...)."""

    def start(**server_settings: Any) -> BarmaidServer:
        return serve_config(fast_config.model_copy(update={"server": fast_config.server.model_copy(update=server_settings)}))

    return start


@pytest.fixture
def connect(server: BarmaidServer) -> Callable[[], Peer]:
    """Opens a new WebSocket client to the running server; all are closed at teardown."""

    def open_peer() -> Peer:
        peer = Peer.at(server.port)
        # The server registers a client just after the handshake; an echo reply proves it is in.
        assert peer.echo("hello") == []
        return peer

    with closing_all(open_peer, Peer.close) as make:
        yield make


@pytest.fixture
def make_rig(write_config: Callable[..., Path], serve_config: Callable[..., BarmaidServer]):
    """Starts a server (a support.rig.Rig) on 127.0.0.1:<any port> from pumps / limits / data_dir,
    in fake time when given a FakeClock; closes its clients at teardown, serve_config the server."""
    made = iter(range(1000))

    def make(
        pumps: Optional[list[dict[str, Any]]] = None,
        limits: Optional[dict[str, Any]] = None,
        data_dir: Optional[Path] = None,
        clock: Optional[FakeClock] = None,
    ) -> Rig:
        raw: dict[str, Any] = {"server": {"status_interval": 0.05}, "pumps": pumps or fast_pumps()}
        if limits:
            raw["limits"] = limits
        if data_dir is not None:
            raw["data_dir"] = str(data_dir)
        config = load_config(write_config(raw, name=f"rig{next(made)}.yaml"))
        # Pumps without a `sim` truth: the state carries no sim_poured_ml to compare across restarts.
        driver = SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds, clock)
        return Rig(serve_config(config, driver, clock=clock), clock)

    with closing_all(make, Rig.close) as make_one:
        yield make_one


@pytest.fixture
def scripted():
    """Starts support.scripted.Scripted servers; closes them at teardown."""
    with closing_all(Scripted, Scripted.close) as make:
        yield make


# ---- real barmaid processes ---------------------------------------------------------------


@pytest.fixture
def barmaid_process(tmp_path: Path):
    """Starts real barmaid processes (support.processes.Process) from a config dict; kills
    whatever is left at teardown."""

    def start(config: dict[str, Any]) -> Process:
        path = tmp_path / "process.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return Process("--config", str(path))

    with closing_all(start, Process.kill) as make:
        yield make


# ---- the daemon drivers -------------------------------------------------------------------


@pytest.fixture
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeat and reconnect backoff of both daemon drivers in tens of milliseconds (a module
    that drives a fake daemon uses it for every test: `pytestmark = usefixtures(...)`)."""
    monkeypatch.setattr(daemon_driver, "BACKOFF", (0.02, 0.1))
    monkeypatch.setattr(daemon_driver, "HEARTBEAT", 0.02)


# ---- the bad-input table ------------------------------------------------------------------


@pytest.fixture(params=BAD_INPUTS)
def bad_input(request: pytest.FixtureRequest) -> BadInput:
    """One frame from support.badinput's table, with what its error message must say."""
    return request.param

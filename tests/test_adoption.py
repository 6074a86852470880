"""A barmaid that restarts mid-pour adopts the pour its daemon still plays, end to end: a real
`barmaid serve` process is SIGKILLed mid-blend and a new one, on the same data directory and
fake daemon (pigpiod or rgpiod, in this process), takes the pour over without cutting it.

Also the daemon lost right after the pour was sent: counted as the most it can have poured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.daemons import blend, daemon_config, sigkill_mid_pour
from support.fake_pigpiod import FakePigpiod
from support.fake_rgpiod import GWAVE, FakeRgpiod
from support.messages import is_final_status
from support.peer import Peer
from support.processes import serving
from support.timeline import status_times
from support.timing import TIME_FACTOR

import barmaid.drivers.daemon as daemon_driver
from barmaid.config import DEFAULT_GPIOS, load_config
from barmaid.drivers import make_driver
from barmaid.errors import PumpsUnavailable
from barmaid.server import BarmaidServer

#: ml per pump at FLOW ml/s: a pour long enough to outlive a restart of barmaid (2.5 s; longer
#: where BARMAID_TEST_TIME_FACTOR says the machine is slower, as a restart is then).
FLOW = 100.0
ML = 250.0 * TIME_FACTOR
SECONDS = ML / FLOW
CAPACITY = 1000.0
#: How far a pump's on-time on the daemon may be from the plan (the restart must not cut it).
TOLERANCE = 0.1

# Heartbeat and reconnect backoff of the daemon drivers in tens of milliseconds.
pytestmark = pytest.mark.usefixtures("quick_reconnects")


@pytest.fixture(params=["pigpio", "rgpio"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def daemon(kind):
    with (FakePigpiod() if kind == "pigpio" else FakeRgpiod()) as fake:
        yield fake


@pytest.fixture
def config_path(kind, daemon, write_config) -> Path:
    config = daemon_config(write_config, kind, daemon.port, flow=FLOW).model_dump(mode="json")
    for pump in config["pumps"]:
        pump["capacity_ml"] = CAPACITY
    return write_config(config, name="process.yaml")


def port_of(config_path: Path) -> int:
    return yaml.safe_load(config_path.read_text())["server"]["port"]


def request(client: Peer, message: dict[str, Any], answer: str) -> dict[str, Any]:
    client.send(message)
    return client.recv_until(lambda m: m["type"] in (answer, "error"))[-1]


def levels(client: Peer) -> list[Any]:
    return [p["level_ml"] for p in request(client, {"type": "state"}, "state")["data"]["pumps"][:2]]


def history(client: Peer) -> list[dict[str, Any]]:
    return request(client, {"type": "history"}, "history")["data"]["pours"]


@contextmanager
def killed_mid_blend(config_path: Path, ml: float = ML) -> Iterator[float]:
    """A barmaid process tracks levels, starts a blend of `ml` from pumps 0 and 1 and is SIGKILLed
    once it pours; yields when the pour started (no later than the real start)."""
    with serving(config_path) as first:
        client = Peer.at(port_of(config_path))
        for pump in (0, 1):
            assert request(client, {"type": "set_level", "data": {"pump": pump, "ml": CAPACITY}}, "state")
        before = time.monotonic()
        sigkill_mid_pour(first, port_of(config_path), ml)
        yield before


def test_a_restart_mid_pour_adopts_it_counts_down_the_true_time_and_charges_it_once(kind, daemon, config_path):
    with killed_mid_blend(config_path) as started, serving(config_path):
        restarted = time.monotonic()
        assert daemon.wave_busy(), "the pour ended before barmaid restarted: make it longer"
        client = Peer.at(port_of(config_path))
        client.send(blend(10))
        messages = client.recv_until(lambda m: m["type"] == "error")
        assert "Already blending ! Retry in" in messages[-1]["data"]["msg"]
        messages += client.recv_until(is_final_status, timeout=SECONDS + 3)
        times = status_times(messages)
        assert times[-1] == 0 and times.count(0) == 1, times
        assert times[0] <= SECONDS - (restarted - started) + 1, times
        assert all(later <= earlier for earlier, later in zip(times, times[1:])), times
        assert messages[-1]["data"].get("outcome") == "completed"
        for pump in (0, 1):
            assert daemon.on_durations(DEFAULT_GPIOS[pump]) == [pytest.approx(SECONDS, abs=TOLERANCE)]
        pours = history(client)
        assert [(p["action"], p["outcome"]) for p in pours] == [("blend", "completed")]
        assert levels(client) == [pytest.approx(CAPACITY - ML)] * 2
        client.send(blend(10))  # once the adopted pour has ended, the pumps are ours again
        assert client.recv_until(is_final_status)[-1]["data"].get("outcome") == "completed"
        assert levels(client) == [pytest.approx(CAPACITY - ML - 10)] * 2
    with serving(config_path):  # and a second restart charges nothing again
        client = Peer.at(port_of(config_path))
        assert levels(client) == [pytest.approx(CAPACITY - ML - 10)] * 2
        assert [p["outcome"] for p in history(client)] == ["completed", "completed"]


def test_a_pour_that_ended_before_the_restart_is_counted_to_its_end_never_more(kind, daemon, config_path):
    short = 30.0  # 0.3 s: over before the next barmaid is up
    with killed_mid_blend(config_path, short):
        assert daemon.wait_for(lambda: not daemon.wave_busy(), 3)
    with serving(config_path):
        client = Peer.at(port_of(config_path))
        (pour,) = history(client)
        assert pour["outcome"] == "interrupted"
        assert all(ml == pytest.approx(short) for ml in pour["poured_ml"].values()), pour
        assert levels(client) == [pytest.approx(CAPACITY - short)] * 2
        for pump in (0, 1):
            assert daemon.on_durations(DEFAULT_GPIOS[pump]) == [pytest.approx(short / FLOW, abs=TOLERANCE)]


#: The command that sends a pour to each daemon: pigpio's wave_send_once, rgpio's tx_wave.
SEND = {"pigpio": 51, "rgpio": GWAVE}


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_the_driver_says_a_pour_lost_after_its_send_may_have_started_in_plain_words(
    kind, daemon, config_path, fault, monkeypatch
):
    monkeypatch.setattr(daemon_driver, "COMMAND_TIMEOUT", 0.3)
    driver = make_driver(load_config(config_path))
    try:
        (daemon.hang_at if fault == "hang" else daemon.drop_at)(SEND[kind])
        with pytest.raises(PumpsUnavailable) as lost:
            driver.pour({0: 0.2})
        daemon.resume()
        assert lost.value.maybe_started
        message = str(lost.value)
        assert ("no answer within 0.3 s" if fault == "hang" else "closed the connection") in message, message
        for raw in ("unpack", "buffer", "timed out", "Errno", "struct"):
            assert raw not in message, message
    finally:
        driver.close()


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_a_daemon_lost_right_after_the_send_counts_the_pour_in_full_in_plain_words(
    kind, daemon, config_path, fault, monkeypatch
):
    monkeypatch.setattr(daemon_driver, "COMMAND_TIMEOUT", 0.3)
    config = load_config(config_path)
    server = BarmaidServer(config, make_driver(config))
    server.start()
    try:
        client = Peer.at(server.port)
        assert request(client, {"type": "set_level", "data": {"pump": 0, "ml": CAPACITY}}, "state")
        (daemon.hang_at if fault == "hang" else daemon.drop_at)(SEND[kind])
        client.send(blend(20, pumps=(0,)))
        error = client.recv_until(lambda m: m["type"] == "error")[-1]["data"]["msg"]
        daemon.resume()
        assert "lost" in error and "counted as poured in full" in error, error
        for raw in ("unpack", "buffer", "timed out", "Errno", "struct"):
            assert raw not in error, error
        (pour,) = history(client)
        assert pour["outcome"] == "lost" and pour["poured_ml"] == {"0": pytest.approx(20)}, pour
        assert levels(client)[0] == pytest.approx(CAPACITY - 20)
    finally:
        server.close()


def test_a_restart_that_cannot_reach_the_daemon_yet_counts_the_pour_in_full(write_config):
    with FakePigpiod() as daemon:  # its listener can close while its wave plays on
        unreachable_at_restart(daemon, write_config)


def unreachable_at_restart(daemon: FakePigpiod, write_config) -> None:
    config = daemon_config(write_config, "pigpio", daemon.port, flow=FLOW).model_dump(mode="json")
    for pump in config["pumps"]:
        pump["capacity_ml"] = CAPACITY
    config_path = write_config(config, name="process.yaml")
    with killed_mid_blend(config_path):
        daemon.drop_connections(keep_listening=False)  # unreachable; its wave plays on
        with serving(config_path):
            daemon.start()
            assert daemon.wait_for(lambda: not daemon.wave_busy(), SECONDS + 3)
            client = Peer.at(port_of(config_path))
            for pump in (0, 1):  # the wave was never cut: the pumps poured it all
                assert daemon.on_durations(DEFAULT_GPIOS[pump]) == [pytest.approx(SECONDS, abs=TOLERANCE)]
            (pour,) = history(client)
            assert all(ml == pytest.approx(ML) for ml in pour["poured_ml"].values()), pour
            assert levels(client) == [pytest.approx(CAPACITY - ML)] * 2

"""The pigpio driver and the server on it, against the fake daemon: connection, faults, signals.

The real `pigpio` client library talks to tests/support/fake_pigpiod.py over loopback, so its
quirks (no error when unreachable, no timeouts, a spinning thread on a dead socket) are all
exercised.
"""

from __future__ import annotations

import logging
import signal
import threading

import pigpio
import pytest
from support.daemons import blend, daemon_config, sigkill_mid_pour
from support.fake_pigpiod import CMD_BC1, CMD_BR1, CMD_BS1, CMD_WVBSY, CMD_WVHLT, PI_NOT_PERMITTED, FakePigpiod
from support.messages import is_final_status
from support.peer import Peer
from support.processes import serving
from support.servers import free_port
from support.timeline import assert_countdown, status_times
from support.timing import allowance
from support.waiting import eventually

import barmaid.drivers.daemon as daemon_driver
from barmaid.config import DEFAULT_GPIOS, DriverConfig
from barmaid.drivers.pigpio import PigpioDriver
from barmaid.errors import PourRejected, PumpsUnavailable
from barmaid.server import BarmaidServer

# Heartbeat and reconnect backoff of the daemon drivers in tens of milliseconds.
pytestmark = pytest.mark.usefixtures("quick_reconnects")


@pytest.fixture
def daemon():
    with FakePigpiod() as fake:
        yield fake


@pytest.fixture
def start_server(write_config, serve_config):
    """A server on the pigpio driver for the fake daemon on `port`."""

    def start(port: int, **kwargs) -> BarmaidServer:
        config = daemon_config(write_config, "pigpio", port, **kwargs)
        return serve_config(config, PigpioDriver(DEFAULT_GPIOS, config.limits.max_pump_seconds, config.driver))

    return start


def peer(server: BarmaidServer) -> Peer:
    return Peer.at(server.port)


def test_daemon_address_falls_back_to_pigpio_environment_variables(monkeypatch):
    monkeypatch.setenv("PIGPIO_ADDR", "pi.local")
    monkeypatch.setenv("PIGPIO_PORT", "7777")
    assert DriverConfig().daemon_address() == ("pi.local", 7777)
    assert DriverConfig(host="10.0.0.2", port=8889).daemon_address() == ("10.0.0.2", 8889)
    monkeypatch.delenv("PIGPIO_ADDR")
    monkeypatch.delenv("PIGPIO_PORT")
    assert DriverConfig().daemon_address() == ("localhost", 8888)


@pytest.mark.parametrize("active_low", [False, True])
def test_every_pump_pin_is_an_output_at_its_off_level_before_any_client(daemon, active_low):
    driver = PigpioDriver(DEFAULT_GPIOS, 120, DriverConfig(host="127.0.0.1", port=daemon.port, active_low=active_low))
    try:
        off = 1 if active_low else 0
        assert {g: daemon.modes()[g] for g in DEFAULT_GPIOS} == dict.fromkeys(DEFAULT_GPIOS, pigpio.OUTPUT)
        assert {g: daemon.level(g) for g in DEFAULT_GPIOS} == dict.fromkeys(DEFAULT_GPIOS, off)
    finally:
        driver.close()


def test_no_pigpio_notification_thread_is_left_to_spin_on_a_dead_daemon(daemon):
    def notifiers():
        return [t for t in threading.enumerate() if isinstance(t, pigpio._callback_thread) and t.is_alive()]

    driver = PigpioDriver(DEFAULT_GPIOS, 120, DriverConfig(host="127.0.0.1", port=daemon.port))
    try:
        assert driver.available and eventually(lambda: not notifiers()), notifiers()
        daemon.drop_connections()
        assert eventually(lambda: not driver.available)
        assert eventually(lambda: driver.available)  # reconnected, again without one
        assert eventually(lambda: not notifiers()), notifiers()
    finally:
        driver.close()


def test_a_pour_is_one_waveform_sent_once_to_the_daemon(daemon):
    driver = PigpioDriver(DEFAULT_GPIOS, 120, DriverConfig(host="127.0.0.1", port=daemon.port))
    try:
        driver.pour({0: 0.5, 1: 0.25, 2: 0.25})
        assert daemon.wave_busy()
        pulses = daemon.wave_pulses(daemon.current_wave())
        on = (1 << 5) | (1 << 6) | (1 << 13)
        assert [tuple(p) for p in pulses] == [(on, 0, 250000), (0, (1 << 6) | (1 << 13), 250000), (0, 1 << 5, 0)]
    finally:
        driver.close()
    assert not daemon.wave_busy()


def test_unreachable_daemon_refuses_pours_keeps_echo_and_connects_when_it_appears(start_server, caplog):
    port = free_port()
    caplog.set_level(logging.WARNING, logger="barmaid.drivers.pigpio")
    server = start_server(port)
    client = peer(server)
    client.send(blend(5))
    error = client.recv()
    assert error["type"] == "error"
    assert "unavailable" in error["data"]["msg"] and f"127.0.0.1:{port}" in error["data"]["msg"]
    assert "pigpiod" in error["data"]["msg"]
    client.echo({"still": "here"})
    assert server.controller.state == "idle"
    # Several retries have failed by now; the builder was told once.
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    with FakePigpiod(port=port) as daemon:
        assert eventually(lambda: server.controller.driver.available)
        assert all(daemon.modes()[g] == pigpio.OUTPUT and daemon.level(g) == 0 for g in DEFAULT_GPIOS)
        client.send(blend(10))
        assert_countdown(status_times(client.recv_until(is_final_status)), 10 / 400)
    client.close()


def test_daemon_lost_mid_pour_ends_the_action_tells_every_client_and_reconnects(daemon, start_server):
    server = start_server(daemon.port, active_low=True)
    a, b = peer(server), peer(server)
    a.send(blend(400))  # one second
    a.recv_until(lambda m: m["type"] == "status")
    daemon.drop_connections(keep_listening=True)
    for client in (a, b):
        messages = client.recv_until(is_final_status)
        errors = [m["data"]["msg"] for m in messages if m["type"] == "error"]
        assert len(errors) == 1 and "pigpio daemon" in errors[0] and "stopped" in errors[0]
    assert server.controller.state == "idle"
    # Reconnected, with the off levels written again before the next pour.
    assert eventually(lambda: server.controller.driver.available)
    a.send(blend(10))
    assert_countdown(status_times(a.recv_until(is_final_status)), 10 / 400)
    a.close()
    b.close()


def test_a_hung_daemon_times_out_instead_of_blocking_the_server(daemon, start_server, monkeypatch):
    monkeypatch.setattr(daemon_driver, "COMMAND_TIMEOUT", 0.2)
    server = start_server(daemon.port)
    client = peer(server)
    daemon.pause()
    try:
        assert eventually(lambda: not server.controller.driver.available)
        client.send(blend(5))
        assert "unavailable" in client.recv()["data"]["msg"]
    finally:
        daemon.resume()
    assert eventually(lambda: server.controller.driver.available)
    client.close()


def test_a_pour_over_max_pump_seconds_is_refused_before_anything_moves(daemon, write_config):
    driver = PigpioDriver(DEFAULT_GPIOS, 1.0, DriverConfig(host="127.0.0.1", port=daemon.port))
    daemon.clear_history()
    try:
        with pytest.raises(PourRejected, match="max_pump_seconds"):
            driver.pour({0: 1.5})
        assert daemon.history() == [] and not daemon.wave_busy()
    finally:
        driver.close()


# ---- the daemon failing between two commands ---------------------------------------------

PUMP_0, PUMP_1 = DEFAULT_GPIOS[:2]


def connected(daemon: FakePigpiod, active_low: bool = False, max_pump_seconds: float = 120) -> PigpioDriver:
    config = DriverConfig(host="127.0.0.1", port=daemon.port, active_low=active_low)
    return PigpioDriver(DEFAULT_GPIOS, max_pump_seconds, config)


@pytest.fixture
def driver(daemon):
    drivers = []

    def make(**kwargs) -> PigpioDriver:
        drivers.append(connected(daemon, **kwargs))
        return drivers[-1]

    yield make
    for d in drivers:
        d.close()


def pumping(daemon: FakePigpiod, driver: PigpioDriver, seconds: float = 5.0) -> None:
    """Starts a pour of pumps 0 and 1 that would run `seconds`, once both are on."""
    driver.pour({0: seconds, 1: seconds})
    on = 0 if driver.off_level else 1
    assert daemon.wait_for(lambda: daemon.level(PUMP_0) == on and daemon.level(PUMP_1) == on)


@pytest.mark.parametrize("active_low", [False, True])
def test_halt_writes_the_pumps_off_then_stops_the_wave_then_writes_off_again_and_reads_back(driver, daemon, active_low):
    d = driver(active_low=active_low)
    pumping(daemon, d)
    start = len(daemon.command_log())
    d.halt()
    off = CMD_BS1 if active_low else CMD_BC1
    commands = [c[1] for c in daemon.command_log()[start:] if c[1] != CMD_WVBSY]  # less heartbeats
    assert commands[:4] == [off, CMD_WVHLT, off, CMD_BR1]
    assert daemon.level(PUMP_0) == daemon.level(PUMP_1) == d.off_level


@pytest.mark.parametrize(
    "fault",
    [
        ("hang_after", CMD_WVHLT),
        ("hang_after", CMD_BC1),
        ("drop_between", CMD_WVHLT, CMD_BC1),
        ("drop_between", CMD_BC1, CMD_WVHLT),
    ],
    ids=["hang-after-wave-stop", "hang-after-off", "drop-after-wave-stop", "drop-before-wave-stop"],
)
def test_a_daemon_that_hangs_or_drops_during_halt_leaves_no_pump_on(driver, daemon, monkeypatch, fault):
    monkeypatch.setattr(daemon_driver, "COMMAND_TIMEOUT", 0.3)
    d = driver()
    pumping(daemon, d)
    getattr(daemon, fault[0])(*fault[1:])
    d.halt()
    # The pour ends at the stop, not at its planned end 5 s later.
    assert daemon.level(PUMP_0) == daemon.level(PUMP_1) == 0
    if fault[0] == "drop_between":  # reconnected at once, the orphaned wave is stopped
        assert eventually(lambda: d.available and not daemon.wave_busy(), 2.0)
    assert not daemon.wait_for(lambda: daemon.level(PUMP_0) or daemon.level(PUMP_1), 0.2)


def test_a_daemon_restarted_mid_pour_has_every_pump_switched_off_as_soon_as_it_answers(
    driver, daemon, monkeypatch, caplog
):
    monkeypatch.setattr(daemon_driver, "BACKOFF", (5.0, 10.0))  # the ordinary backoff would take 5 s
    caplog.set_level(logging.INFO, logger="barmaid.drivers.pigpio")
    d = driver()
    lost: list[str] = []
    d.on_lost = lost.append
    pumping(daemon, d)
    daemon.stop()  # the wave dies with the daemon; the pins keep their level (pumps on)
    assert eventually(lambda: lost, 2.0) and daemon.level(PUMP_0) == 1
    daemon.start()
    assert eventually(lambda: daemon.level(PUMP_0) == daemon.level(PUMP_1) == 0, 2.5)
    assert eventually(lambda: "unattended" in caplog.text, 1.0), caplog.text
    assert d.available


def test_an_error_answer_to_the_heartbeat_is_a_fault_and_supervision_goes_on(driver, daemon):
    d = driver()
    lost: list[str] = []
    d.on_lost = lost.append
    pumping(daemon, d)
    daemon.fail(CMD_WVBSY, PI_NOT_PERMITTED)
    assert daemon.wait_for(lambda: daemon.level(PUMP_0) == daemon.level(PUMP_1) == 0, 2.0)
    assert eventually(lambda: lost and d.available, 2.0)
    # Still supervised: a later loss is detected, and the daemon found again.
    daemon.stop()
    assert eventually(lambda: not d.available, 2.0)
    daemon.start()
    assert eventually(lambda: d.available, 2.0)


def test_connecting_leaves_a_pour_found_playing_alone_until_it_ends(driver, daemon):
    other = pigpio.pi("127.0.0.1", daemon.port, show_errors=False)
    try:
        other.set_mode(PUMP_0, pigpio.OUTPUT)
        other.wave_add_generic([pigpio.pulse(1 << PUMP_0, 0, 800_000), pigpio.pulse(0, 1 << PUMP_0, 0)])
        other.wave_send_once(other.wave_create())
    finally:
        other.stop()  # e.g. a barmaid that crashed mid-pour
    assert daemon.wait_for(lambda: daemon.level(PUMP_0) == 1)
    d = driver()
    assert daemon.wave_busy() and daemon.level(PUMP_0) == 1
    assert d.playing() and not d.available
    with pytest.raises(PumpsUnavailable, match="still playing"):
        d.pour({1: 0.1})
    d.halt()  # not ours to halt
    assert daemon.wave_busy()
    assert daemon.wait_for(lambda: not daemon.wave_busy(), 2.0)
    assert eventually(lambda: d.available and not d.playing(), 2.0)
    assert daemon.on_durations(PUMP_0) == [pytest.approx(0.8, abs=allowance(daemon.max_lateness()))]
    assert all(daemon.modes()[g] == pigpio.OUTPUT and daemon.level(g) == 0 for g in DEFAULT_GPIOS)


def test_a_pour_of_ours_is_playing_until_it_ends(driver, daemon):
    d = driver()
    assert not d.playing()
    d.pour({0: 0.1})
    assert d.playing()
    assert daemon.wait_for(lambda: not daemon.wave_busy(), 2.0)
    assert eventually(lambda: not d.playing(), 1.0)


# ---- a real barmaid process --------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_pour_switches_every_pump_off_and_exits_0(daemon, write_config, signum):
    config = daemon_config(write_config, "pigpio", daemon.port, flow=5.0)  # 20 ml at 5 ml/s: 4 s
    with serving(write_config(config.model_dump(mode="json"), name="process.yaml")) as process:
        client = Peer.at(config.server.port)
        client.send(blend(20))
        client.recv_until(lambda m: m["type"] == "status")
        assert daemon.wait_for(lambda: daemon.level(DEFAULT_GPIOS[0]) == 1, 1)
        status, took = process.stop(signum)
        assert status == 0
        assert took < 2
        assert not daemon.wave_busy()
        assert all(daemon.level(g) == 0 for g in DEFAULT_GPIOS)
        assert "every pump off" in process.log


def test_sigkill_mid_pour_cannot_stretch_it_the_daemon_stops_the_pumps_on_time(daemon, write_config):
    config = daemon_config(write_config, "pigpio", daemon.port, flow=100.0)  # 30 ml at 100 ml/s: 0.3 s
    with serving(write_config(config.model_dump(mode="json"), name="process.yaml")) as process:
        daemon.clear_history()
        sigkill_mid_pour(process, config.server.port, 30)
        assert daemon.wait_for(lambda: not daemon.wave_busy(), 3)
        for gpio in DEFAULT_GPIOS[:2]:
            assert daemon.on_durations(gpio) == [pytest.approx(0.3, abs=allowance(daemon.max_lateness()))]
        assert all(daemon.level(g) == 0 for g in DEFAULT_GPIOS)


def test_long_delays_are_split_so_dma_never_times_one_longer_than_a_minute(daemon):
    driver = PigpioDriver(DEFAULT_GPIOS, 1800, DriverConfig(host="127.0.0.1", port=daemon.port))
    try:
        pulses = driver._pulses({0: 150.0, 1: 0.5})
        assert [(p.gpio_on, p.gpio_off, p.delay) for p in pulses] == [
            ((1 << 5) | (1 << 6), 0, 500_000),
            (0, 1 << 6, 60_000_000),
            (0, 0, 60_000_000),
            (0, 0, 29_500_000),
            (0, 1 << 5, 0),
        ]
    finally:
        driver.close()

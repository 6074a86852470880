"""The rgpio driver and the server on it, against the fake rgpiod: connection, faults, crashes.

The real `rgpio` client talks to tests/support/fake_rgpiod.py over loopback, so its quirks (no
timeouts, a notification thread that spins on a dead socket, handles with the chip in their
high bits) are exercised together with the daemon's ownership and sharing rules.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import rgpio
from support.daemons import blend, daemon_config, sigkill_mid_pour
from support.fake_rgpiod import GBUSY, GGWX, GSGF, GSGOX, Board, FakeRgpiod
from support.messages import is_final_status
from support.peer import Peer
from support.processes import serving
from support.servers import free_port
from support.timeline import assert_countdown, status_times
from support.timing import TOLERANCE
from support.waiting import eventually

import barmaid.drivers.daemon as daemon_driver
import barmaid.drivers.rgpio as rgpio_driver
from barmaid.config import DEFAULT_GPIOS, DriverConfig
from barmaid.drivers.rgpio import SHARE_ID, RgpioDriver
from barmaid.errors import Busy, PumpsUnavailable

ALL_OFF = dict.fromkeys(DEFAULT_GPIOS, 0)

# Heartbeat and reconnect backoff of the daemon drivers in tens of milliseconds.
pytestmark = pytest.mark.usefixtures("quick_reconnects")


@pytest.fixture
def daemon():
    with FakeRgpiod() as fake:
        yield fake


@pytest.fixture
def drivers():
    """Makes RgpioDriver(DEFAULT_GPIOS) on a port; closes them all at the end."""
    made = []

    def make(port: int, active_low: bool = False, max_pump_seconds: float = 120) -> RgpioDriver:
        config = DriverConfig(kind="rgpio", host="127.0.0.1", port=port, active_low=active_low)
        made.append(RgpioDriver(DEFAULT_GPIOS, max_pump_seconds, config))
        return made[-1]

    yield make
    for driver in made:
        driver.close()


def levels(daemon: FakeRgpiod) -> dict[int, int]:
    return {g: daemon.level(g) for g in DEFAULT_GPIOS}


def held_by_barmaid(daemon: FakeRgpiod) -> bool:
    """Every pump line claimed by one chip handle shared under barmaid's share id."""
    holders = {daemon.claimed()[g] for g in DEFAULT_GPIOS if g in daemon.claimed()}
    return len(daemon.claimed()) == len(DEFAULT_GPIOS) and len(holders) == 1 and (
        daemon.handles()[holders.pop()][2] == SHARE_ID
    )


def crash(driver: RgpioDriver) -> None:
    """What SIGKILL does to a driver: its connection closes without a word, nothing halts."""
    driver._closed.set()
    driver._conn.close()


def test_daemon_address_falls_back_to_rgpio_environment_variables(monkeypatch):
    monkeypatch.setenv("LG_ADDR", "pi5.local")
    monkeypatch.setenv("LG_PORT", "7777")
    monkeypatch.setenv("PIGPIO_PORT", "1234")
    assert DriverConfig(kind="rgpio").daemon_address() == ("pi5.local", 7777)
    monkeypatch.delenv("LG_ADDR")
    monkeypatch.delenv("LG_PORT")
    assert DriverConfig(kind="rgpio").daemon_address() == ("localhost", 8889)
    assert DriverConfig(kind="pigpio").daemon_address() == ("localhost", 1234)


@pytest.mark.parametrize("active_low", [False, True])
def test_every_pump_line_is_one_shared_output_group_at_its_off_level(daemon, drivers, active_low):
    drivers(daemon.port, active_low=active_low)
    assert held_by_barmaid(daemon)
    assert levels(daemon) == {g: int(active_low) for g in DEFAULT_GPIOS}


def test_the_chip_is_found_by_its_label_and_shared_by_its_plain_handle(drivers):
    board = Board({0: ("gpio-brcmstb@107d508500", 32), 4: ("pinctrl-rp1", 54)})
    with FakeRgpiod(board=board) as daemon:
        drivers(daemon.port)
        assert daemon.claimed() == {} and len(daemon.board.levels) == len(DEFAULT_GPIOS)
        assert {line for chip, line in daemon.board.levels} == set(DEFAULT_GPIOS)
        assert {chip for chip, line in daemon.board.levels} == {4}
        assert [share for kind, _, share in daemon.handles().values() if kind == "chip"] == [SHARE_ID]


def test_a_board_without_a_raspberry_pi_gpio_chip_is_named_in_the_error(drivers):
    with FakeRgpiod(board=Board({0: ("gpio-mockup-A", 8)})) as daemon:
        driver = drivers(daemon.port)
        with pytest.raises(PumpsUnavailable, match=r"no GPIO chip labelled pinctrl-rp1 or .*Raspberry Pi"):
            driver.pour({0: 0.1})


def test_no_notification_thread_is_left_to_spin(daemon, drivers):
    def notifiers():
        return [t for t in threading.enumerate() if isinstance(t, rgpio._callback_thread) and t.is_alive()]

    driver = drivers(daemon.port)
    assert eventually(lambda: not notifiers()), notifiers()
    daemon.drop_connections()
    assert eventually(lambda: not driver.available) and eventually(lambda: driver.available)
    assert eventually(lambda: not notifiers()), notifiers()


def test_a_pour_is_one_wave_that_ends_with_every_pump_off_and_its_start_is_not_reported_early(daemon, drivers):
    driver = drivers(daemon.port)
    daemon.clear_history()
    t0 = driver.pour({0: 0.05, 1: 0.025, 2: 0.025})
    assert daemon.waves == [[(0b111, 0b111, 25_000), (0, 0b110, 25_000), (0, 0b001, 0)]]
    assert driver.playing()
    assert daemon.wait_for(lambda: not daemon.wave_busy())
    assert daemon.history()[0][0] <= t0  # a halt at t0 + 0.05 cannot cut pump 0 short
    assert levels(daemon) == ALL_OFF


def test_unreachable_daemon_refuses_pours_says_how_to_start_it_and_connects_when_it_appears(drivers, caplog):
    port = free_port()
    caplog.set_level(logging.WARNING, logger="barmaid.drivers.rgpio")
    driver = drivers(port)
    with pytest.raises(PumpsUnavailable, match=f"127.0.0.1:{port}.*sudo systemctl enable --now rgpiod"):
        driver.pour({0: 0.1})
    time.sleep(0.1)  # several retries
    assert len(caplog.records) == 1
    with FakeRgpiod(port=port) as daemon:
        assert eventually(lambda: driver.available)
        assert held_by_barmaid(daemon) and levels(daemon) == ALL_OFF


def test_a_crashed_barmaids_pour_is_left_to_end_on_time_then_every_pump_goes_off(daemon, drivers):
    first = drivers(daemon.port)
    daemon.clear_history()
    first.pour({0: 0.8, 1: 0.4})  # long enough to outlast a connect on a busy machine
    crash(first)
    second = drivers(daemon.port)
    assert second.playing() and daemon.wave_busy()
    with pytest.raises(Busy):
        second.pour({2: 0.1})
    second.halt()  # never halts a pour it found playing
    assert daemon.wait_for(lambda: not daemon.wave_busy(), 2)
    assert daemon.on_durations(5) == [pytest.approx(0.8, abs=1e-3)]
    assert daemon.on_durations(6) == [pytest.approx(0.4, abs=1e-3)]
    assert eventually(lambda: not second.playing())
    assert eventually(lambda: held_by_barmaid(daemon)) and levels(daemon) == ALL_OFF
    second.pour({2: 0.02})


def test_at_start_a_finished_pours_handle_is_closed_and_the_lines_claimed_again(daemon, drivers):
    first = drivers(daemon.port)
    crash(first)
    before = set(daemon.handles())
    drivers(daemon.port)
    assert held_by_barmaid(daemon) and not before & {h for h, v in daemon.handles().items() if v[0] == "chip"}


def test_daemon_dropped_mid_pour_reconnects_and_switches_every_pump_off_at_once(daemon, drivers):
    driver = drivers(daemon.port)
    lost = []
    driver.on_lost = lost.append
    driver.pour({0: 2.0, 1: 2.0})
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    daemon.drop_connections()
    assert eventually(lambda: lost) and "rgpiod at 127.0.0.1" in lost[0]
    assert eventually(lambda: driver.available)
    assert levels(daemon) == ALL_OFF and not daemon.wave_busy()
    assert all(t < 1.0 for t in daemon.on_durations(5))


def test_daemon_killed_mid_pour_leaves_levels_until_it_is_back_then_pumps_off_at_once(daemon, drivers):
    driver = drivers(daemon.port)
    driver.pour({0: 2.0})
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    daemon.kill()
    assert eventually(lambda: not driver.available)
    assert daemon.board.levels[0, 5] == 1  # no daemon: the line stays as it was
    with FakeRgpiod(port=daemon.port, board=daemon.board) as again:
        assert eventually(lambda: driver.available)
        assert levels(again) == ALL_OFF and held_by_barmaid(again)


def test_after_a_loss_mid_pour_it_reconnects_at_heartbeat_pace_not_with_backoff(daemon, drivers, monkeypatch):
    monkeypatch.setattr(daemon_driver, "BACKOFF", (5.0, 10.0))
    driver = drivers(daemon.port)
    driver.pour({0: 5.0})
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    daemon.kill()
    assert eventually(lambda: not driver.available)
    time.sleep(0.1)  # a few failed attempts
    with FakeRgpiod(port=daemon.port, board=daemon.board) as again:
        assert eventually(lambda: driver.available, 2.0), "waited out the backoff with a pump on"
        assert levels(again) == ALL_OFF


def test_a_hung_daemon_times_out_instead_of_blocking(daemon, drivers, monkeypatch):
    monkeypatch.setattr(daemon_driver, "COMMAND_TIMEOUT", 0.2)
    driver = drivers(daemon.port)
    daemon.pause()
    try:
        assert eventually(lambda: not driver.available)
        with pytest.raises(PumpsUnavailable):
            driver.pour({0: 0.1})
    finally:
        daemon.resume()
    assert eventually(lambda: driver.available)


def test_the_heartbeat_survives_an_error_answer(daemon, drivers):
    driver = drivers(daemon.port)
    session = driver._conn
    daemon.fail_at(GBUSY, -5)
    assert eventually(lambda: not daemon._faults)
    time.sleep(0.1)
    assert driver._conn is session


def test_heartbeat_errors_in_a_row_start_the_connection_again_with_every_pump_off(daemon, drivers):
    driver = drivers(daemon.port)
    session = driver._conn
    for _ in range(rgpio_driver.MAX_HEARTBEAT_ERRORS):
        daemon.fail_at(GBUSY, -5)
    assert eventually(lambda: driver._conn not in (None, session))
    assert held_by_barmaid(daemon) and levels(daemon) == ALL_OFF


@pytest.mark.parametrize("cmd", [GGWX, GSGF, GSGOX], ids=["write-off", "free", "claim"])
@pytest.mark.parametrize("fault", ["error", "drop", "hang"])
def test_a_fault_between_the_commands_of_halt_leaves_every_pump_off(daemon, drivers, monkeypatch, cmd, fault):
    monkeypatch.setattr(daemon_driver, "COMMAND_TIMEOUT", 0.2)
    driver = drivers(daemon.port)
    driver.pour({0: 2.0, 1: 2.0, 2: 2.0})
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    inject = {"error": lambda c: daemon.fail_at(c, -93), "drop": daemon.drop_after, "hang": daemon.hang_at}
    inject[fault](cmd)
    driver.halt()
    daemon.resume()
    assert levels(daemon) == ALL_OFF
    assert eventually(lambda: driver.available and held_by_barmaid(daemon))
    assert levels(daemon) == ALL_OFF and not daemon.wave_busy()
    assert all(t < 1.0 for t in daemon.on_durations(5))


def test_force_off_waits_for_a_playing_pour_then_switches_every_pump_off(daemon, drivers):
    driver = drivers(daemon.port)
    daemon.clear_history()
    driver.pour({0: 0.2})
    crash(driver)
    config = DriverConfig(kind="rgpio", host="127.0.0.1", port=daemon.port)
    assert "every pump off" in RgpioDriver.force_off(DEFAULT_GPIOS, config, wait_for_pour_s=2)
    assert daemon.on_durations(5) == [pytest.approx(0.2, abs=1e-3)]
    assert levels(daemon) == ALL_OFF and held_by_barmaid(daemon)


def test_force_off_without_waiting_cuts_a_playing_pour(daemon, drivers):
    driver = drivers(daemon.port, active_low=True)
    driver.pour({0: 5.0})
    crash(driver)
    config = DriverConfig(kind="rgpio", host="127.0.0.1", port=daemon.port, active_low=True)
    RgpioDriver.force_off(DEFAULT_GPIOS, config, wait_for_pour_s=0)
    assert levels(daemon) == dict.fromkeys(DEFAULT_GPIOS, 1) and not daemon.wave_busy()


def test_force_off_raises_when_the_daemon_cannot_be_reached(daemon):
    port = daemon.port
    daemon.kill()
    with pytest.raises(PumpsUnavailable, match=f"127.0.0.1:{port}"):
        RgpioDriver.force_off(DEFAULT_GPIOS, DriverConfig(kind="rgpio", host="127.0.0.1", port=port))


# ---- the server and a real barmaid process -----------------------------------------------


def test_the_server_pours_through_rgpiod_and_tells_every_client_when_it_is_lost(daemon, write_config, serve_config):
    config = daemon_config(write_config, "rgpio", daemon.port)
    server = serve_config(config, RgpioDriver(DEFAULT_GPIOS, 120, config.driver))
    client = Peer.at(server.port)
    client.send(blend(10))
    assert_countdown(status_times(client.recv_until(is_final_status)), 10 / 400)
    client.send(blend(400))  # one second
    client.recv_until(lambda m: m["type"] == "status")
    daemon.drop_connections()
    errors = [m["data"]["msg"] for m in client.recv_until(is_final_status) if m["type"] == "error"]
    assert len(errors) == 1 and "rgpiod" in errors[0]
    assert eventually(lambda: server.controller.driver.available)
    assert levels(daemon) == ALL_OFF
    client.close()


def test_the_server_starts_without_rgpiod_says_how_to_start_it_and_pours_once_it_is_up(write_config, serve_config):
    port = free_port()
    config = daemon_config(write_config, "rgpio", port)
    server = serve_config(config, RgpioDriver(DEFAULT_GPIOS, 120, config.driver))
    client = Peer.at(server.port)
    client.send(blend(5))
    error = client.recv()["data"]["msg"]
    assert "unavailable" in error and f"127.0.0.1:{port}" in error and "systemctl enable --now rgpiod" in error
    client.echo({"still": "here"})
    with FakeRgpiod(port=port) as daemon:
        assert eventually(lambda: server.controller.driver.available)
        assert levels(daemon) == ALL_OFF
        client.send(blend(10))
        assert_countdown(status_times(client.recv_until(is_final_status)), 10 / 400)
        assert daemon.on_durations(5) == [pytest.approx(10 / 400, abs=1e-3)]
    client.close()


def test_sigkill_mid_pour_cannot_stretch_it_rgpiod_stops_the_pumps_on_time(daemon, write_config):
    config = daemon_config(write_config, "rgpio", daemon.port, flow=100.0)  # 30 ml at 100 ml/s: 0.3 s
    path = write_config(config.model_dump(mode="json"), name="process.yaml")
    with serving(path, "--driver", "rgpio") as process:
        daemon.clear_history()
        sigkill_mid_pour(process, config.server.port, 30)
        assert daemon.wait_for(lambda: not daemon.wave_busy(), 3)
        for gpio in DEFAULT_GPIOS[:2]:
            assert daemon.on_durations(gpio) == [pytest.approx(0.3, abs=TOLERANCE)]
        assert levels(daemon) == ALL_OFF

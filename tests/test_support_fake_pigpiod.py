"""Tests of the fake pigpio daemon, driven only through the real pigpio client."""

import os
import signal
import socket
import struct
import subprocess
import sys
import threading

import pigpio
import pytest
from support.fake_pigpiod import CMD_BC1, CMD_READ, CMD_WRITE, CMD_WVBSY, PI_NOT_PERMITTED, FakePigpiod
from support.timing import allowance
from support.waiting import eventually

PUMP_A, PUMP_B, SENSOR = 17, 27, 22
DISCONNECTED = (struct.error, OSError)  # what the client raises on a dead daemon


def _allowance(fake):
    """The suite's tolerance plus how late the fake's wave player ran behind its deadlines."""
    return allowance(fake.max_lateness())


def _stop(pi):
    try:
        pi.stop()
    except OSError:
        pass  # the daemon went away first


@pytest.fixture
def fake():
    daemon = FakePigpiod().start()
    yield daemon
    daemon.stop()


@pytest.fixture
def connect(fake):
    clients = []

    def _connect():
        pi = pigpio.pi("127.0.0.1", fake.port, show_errors=False)
        clients.append(pi)
        return pi

    yield _connect
    for pi in clients:
        _stop(pi)


@pytest.fixture
def pi(connect):
    return connect()


def _make_wave(pi, pulses):
    pi.wave_add_new()
    pi.wave_add_generic([pigpio.pulse(*p) for p in pulses])
    return pi.wave_create()


def _outputs(pi, *gpios):
    for g in gpios:
        pi.set_mode(g, pigpio.OUTPUT)
        pi.write(g, 0)


def test_connect_and_identity(fake, pi):
    assert pi.connected
    assert pi.get_pigpio_version() == 79
    assert pi.get_hardware_revision() == fake.hw_revision
    assert fake.connection_count() == 2  # command socket + notification socket


def test_set_mode_write_read(fake, pi):
    pi.set_mode(PUMP_A, pigpio.OUTPUT)
    assert pi.get_mode(PUMP_A) == pigpio.OUTPUT
    pi.write(PUMP_A, 1)
    assert pi.read(PUMP_A) == 1
    assert fake.levels()[PUMP_A] == 1
    assert pi.read_bank_1() & (1 << PUMP_A)
    pi.write(PUMP_B, 1)  # write makes the pin an output, as gpioWrite does
    assert fake.modes()[PUMP_B] == pigpio.OUTPUT
    pi.write(PUMP_A, 0)
    assert pi.read(PUMP_A) == 0


def test_pull_up_down_on_input(fake, pi):
    pi.set_mode(SENSOR, pigpio.INPUT)
    pi.set_pull_up_down(SENSOR, pigpio.PUD_UP)
    assert pi.read(SENSOR) == 1
    pi.set_pull_up_down(SENSOR, pigpio.PUD_DOWN)
    assert pi.read(SENSOR) == 0
    fake.set_input(SENSOR, 1)
    assert pi.read(SENSOR) == 1


def test_errors_raise_pigpio_error(pi):
    with pytest.raises(pigpio.error, match="GPIO not 0-53"):
        pi.write(60, 1)
    with pytest.raises(pigpio.error, match="no permission"):
        pi.write(1, 1)  # outside pigpiod's default update mask (GPIO 2-27)
    with pytest.raises(pigpio.error, match="level not 0-1"):
        pi.write(PUMP_A, 2)
    with pytest.raises(pigpio.error, match="unknown command"):
        pi.set_PWM_dutycycle(PUMP_A, 128)  # not implemented by the fake
    assert pi.read(PUMP_A) == 0  # the connection is still usable


def test_history_records_changes_only(fake, pi):
    pi.write(PUMP_A, 1)
    pi.write(PUMP_A, 1)
    pi.write(PUMP_A, 0)
    hist = fake.history(PUMP_A)
    assert [(g, lvl) for _, g, lvl in hist] == [(PUMP_A, 1), (PUMP_A, 0)]
    assert hist[0][0] <= hist[1][0]
    assert fake.history(PUMP_B) == []


def test_wave_plays_on_time(fake, pi):
    _outputs(pi, PUMP_A, PUMP_B)
    fake.clear_history()
    wid = _make_wave(pi, [
        ((1 << PUMP_A) | (1 << PUMP_B), 0, 20000),
        (0, 1 << PUMP_A, 20000),
        (0, 1 << PUMP_B, 0),
    ])
    assert pi.wave_get_micros() == 40000
    assert pi.wave_get_pulses() == 3
    assert pi.wave_send_once(wid) == 6  # control blocks: 1 + 2 + 2 + 1
    assert pi.wave_tx_busy() == 1
    assert pi.wave_tx_at() == wid
    assert fake.wait_for(lambda: not fake.wave_busy(), timeout=1.0)
    assert pi.wave_tx_busy() == 0
    assert pi.wave_tx_at() == pigpio.NO_TX_WAVE
    (on_a,) = fake.on_durations(PUMP_A)
    (on_b,) = fake.on_durations(PUMP_B)
    assert on_a == pytest.approx(0.020, abs=_allowance(fake))
    assert on_b == pytest.approx(0.040, abs=_allowance(fake))
    t_on_a = fake.history(PUMP_A)[0][0]
    t_on_b = fake.history(PUMP_B)[0][0]
    assert t_on_a == t_on_b  # switched on by the same pulse


def test_waves_added_in_parts_are_merged(fake, pi):
    _outputs(pi, PUMP_A, PUMP_B)
    pi.wave_add_new()
    pi.wave_add_generic([pigpio.pulse(1 << PUMP_A, 0, 10000), pigpio.pulse(0, 1 << PUMP_A, 0)])
    pi.wave_add_generic([pigpio.pulse(1 << PUMP_B, 0, 5000), pigpio.pulse(0, 1 << PUMP_B, 0)])
    wid = pi.wave_create()
    assert fake.wave_pulses(wid) == [
        ((1 << PUMP_A) | (1 << PUMP_B), 0, 5000),
        (0, 1 << PUMP_B, 5000),
        (0, 1 << PUMP_A, 0),
    ]


def test_wave_tx_stop_halts_and_leaves_levels(fake, pi):
    _outputs(pi, PUMP_A)
    wid = _make_wave(pi, [(1 << PUMP_A, 0, 100000), (0, 1 << PUMP_A, 0)])
    pi.wave_send_once(wid)
    assert fake.wait_for(lambda: fake.level(PUMP_A) == 1)
    pi.wave_tx_stop()
    assert pi.wave_tx_busy() == 0
    # the off pulse never comes; the pin stays high as on the real daemon
    assert not fake.wait_for(lambda: fake.level(PUMP_A) == 0, timeout=0.15)
    pi.write(PUMP_A, 0)
    assert fake.level(PUMP_A) == 0


def test_new_send_cuts_current_wave(fake, pi):
    _outputs(pi, PUMP_A, PUMP_B)
    long_wave = _make_wave(pi, [(1 << PUMP_A, 0, 100000), (0, 1 << PUMP_A, 0)])
    short_wave = _make_wave(pi, [(1 << PUMP_B, 0, 10000), (0, 1 << PUMP_B, 0)])
    pi.wave_send_once(long_wave)
    assert fake.wait_for(lambda: fake.level(PUMP_A) == 1)
    pi.wave_send_once(short_wave)
    assert pi.wave_tx_at() == short_wave
    assert fake.wait_for(lambda: len(fake.on_durations(PUMP_B)) == 1)
    assert fake.on_durations(PUMP_B)[0] == pytest.approx(0.010, abs=_allowance(fake))
    assert not fake.wait_for(lambda: fake.level(PUMP_A) == 0, timeout=0.15)


def test_wave_send_repeat_until_stopped(fake, pi):
    _outputs(pi, PUMP_A)
    wid = _make_wave(pi, [(1 << PUMP_A, 0, 3000), (0, 1 << PUMP_A, 3000)])
    pi.wave_send_repeat(wid)
    assert fake.wait_for(lambda: len(fake.on_durations(PUMP_A)) >= 3)
    assert pi.wave_tx_busy() == 1
    pi.wave_tx_stop()
    assert pi.wave_tx_busy() == 0
    for width in fake.on_durations(PUMP_A):
        assert width == pytest.approx(0.003, abs=_allowance(fake))


def test_wave_keeps_playing_after_client_stops(fake, connect):
    pi = connect()
    _outputs(pi, PUMP_A)
    wid = _make_wave(pi, [(1 << PUMP_A, 0, 50000), (0, 1 << PUMP_A, 0)])
    pi.wave_send_once(wid)
    pi.stop()  # e.g. barmaid crashed mid-pour
    assert fake.wait_for(lambda: fake.connection_count() == 0)
    assert fake.wait_for(lambda: len(fake.on_durations(PUMP_A)) == 1, timeout=1.0)
    assert fake.on_durations(PUMP_A)[0] == pytest.approx(0.050, abs=_allowance(fake))
    assert not fake.wave_busy()


def test_wave_keeps_playing_after_client_process_is_killed(fake):
    code = (
        "import os, signal, pigpio\n"
        f"pi = pigpio.pi('127.0.0.1', {fake.port})\n"
        f"pi.set_mode({PUMP_A}, pigpio.OUTPUT)\n"
        f"pi.wave_add_generic([pigpio.pulse(1 << {PUMP_A}, 0, 80000),"
        f" pigpio.pulse(0, 1 << {PUMP_A}, 0)])\n"
        "pi.wave_send_once(pi.wave_create())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=20)
    assert proc.returncode == -signal.SIGKILL
    assert fake.wait_for(lambda: len(fake.on_durations(PUMP_A)) == 1, timeout=1.0)
    assert fake.on_durations(PUMP_A)[0] == pytest.approx(0.080, abs=_allowance(fake))
    assert fake.wait_for(lambda: fake.connection_count() == 0)


def test_too_many_pulses(fake, pi):
    chunk = [pigpio.pulse(1 << PUMP_A, 0, 1), pigpio.pulse(0, 1 << PUMP_A, 1)] * 2000
    pi.wave_add_new()
    assert pi.wave_add_generic(chunk) == 4000
    assert pi.wave_add_generic([pigpio.pulse(0, 0, 4000), *chunk]) == 8000
    with pytest.raises(pigpio.error, match="too many pulses"):
        pi.wave_add_generic([pigpio.pulse(0, 0, 8000), *chunk])  # would reach 12000
    assert pi.wave_get_pulses() == 8000  # the pending wave is unchanged


def test_oversized_request_closes_connection(fake, pi):
    # 5462 pulses make a 65544-byte extension; pigpiod drops such a connection
    with pytest.raises(DISCONNECTED):
        pi.wave_add_generic([pigpio.pulse(0, 0, 1)] * 5462)


def test_empty_wave_and_bad_wave_id(pi):
    pi.wave_clear()
    with pytest.raises(pigpio.error, match="empty waveform"):
        pi.wave_create()
    with pytest.raises(pigpio.error, match="non existent wave id"):
        pi.wave_send_once(3)


def test_control_block_limit(fake, pi):
    # each pulse sets or clears a pin and has a delay: 2 CBs, so 8001 per wave
    pulses = [(1 << PUMP_A, 0, 10), (0, 1 << PUMP_A, 10)] * 2000
    pi.wave_clear()
    first = _make_wave(pi, pulses)
    second = _make_wave(pi, pulses)
    assert (first, second) == (0, 1)
    with pytest.raises(pigpio.error, match="No more CBs"):
        _make_wave(pi, pulses)  # 24003 > 25016 - 1180 reserved
    pi.wave_delete(second)
    assert pi.wave_create() == 1  # pending pulses were kept; space freed


def test_wave_limits_reported(pi):
    assert pi.wave_get_max_micros() == 1800000000
    assert pi.wave_get_max_pulses() == 12000
    assert pi.wave_get_max_cbs() == 25016


def test_several_clients_share_state(connect):
    pi1, pi2 = connect(), connect()
    pi1.write(PUMP_A, 1)
    assert pi2.read(PUMP_A) == 1


def test_notification_callbacks(fake, connect):
    pi1, pi2 = connect(), connect()
    seen = []
    cb = pi1.callback(SENSOR, pigpio.EITHER_EDGE, lambda g, lvl, tick: seen.append((g, lvl)))
    pi2.write(SENSOR, 1)
    pi2.write(SENSOR, 0)
    assert eventually(lambda: len(seen) == 2)
    cb.cancel()
    assert seen == [(SENSOR, 1), (SENSOR, 0)]


def test_drop_connections_breaks_client(fake, pi):
    pi.write(PUMP_A, 1)
    assert fake.drop_connections() == 2
    with pytest.raises(DISCONNECTED):
        pi.read(PUMP_A)
    assert fake.level(PUMP_A) == 1  # pins keep their level, as on the real daemon


def test_restart_on_same_port(fake, pi):
    port = fake.port
    pi.write(PUMP_A, 1)
    fake.stop()
    assert not pigpio.pi("127.0.0.1", port, show_errors=False).connected
    fake.start()
    assert fake.port == port
    pi2 = pigpio.pi("127.0.0.1", port, show_errors=False)
    try:
        assert pi2.connected
        assert pi2.read(PUMP_A) == 1
    finally:
        _stop(pi2)


def test_refuse_connections_until_started_again(fake, pi):
    port = fake.port
    fake.drop_connections(keep_listening=False)
    with pytest.raises(DISCONNECTED):
        pi.read(PUMP_A)
    assert not pigpio.pi("127.0.0.1", port, show_errors=False).connected
    fake.start()
    pi2 = pigpio.pi("127.0.0.1", port, show_errors=False)
    try:
        assert pi2.connected
    finally:
        _stop(pi2)


def test_stop_joins_all_threads(fake, connect):
    pi = connect()
    pi.set_mode(PUMP_A, pigpio.OUTPUT)
    pi.wave_add_generic([pigpio.pulse(1 << PUMP_A, 0, 500000), pigpio.pulse(0, 1 << PUMP_A, 0)])
    pi.wave_send_once(pi.wave_create())
    assert fake.wait_for(lambda: fake.level(PUMP_A) == 1)
    prefix = f"fake-pigpiod-{fake.port}-"
    assert any(t.name.startswith(prefix) for t in threading.enumerate())
    fake.stop()
    assert not [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
    assert fake.level(PUMP_A) == 1  # the daemon exited mid-wave; the pin stays


def test_sync_send_waits_for_current_cycle(fake, pi):
    _outputs(pi, PUMP_A, PUMP_B)
    fake.clear_history()
    cycle = _make_wave(pi, [(1 << PUMP_A, 0, 5000), (0, 1 << PUMP_A, 5000)])
    follow = _make_wave(pi, [(1 << PUMP_B, 0, 5000), (0, 1 << PUMP_B, 0)])
    pi.wave_send_repeat(cycle)
    assert fake.wait_for(lambda: fake.level(PUMP_A) == 1)
    pi.wave_send_using_mode(follow, pigpio.WAVE_MODE_ONE_SHOT_SYNC)
    assert fake.wait_for(lambda: not fake.wave_busy())
    t_first_a = fake.history(PUMP_A)[0][0]
    t_b = fake.history(PUMP_B)[0][0]
    cycles = round((t_b - t_first_a) / 0.010)  # B starts at a cycle boundary of A
    assert cycles >= 1
    assert t_b - t_first_a == pytest.approx(cycles * 0.010, abs=_allowance(fake))
    assert fake.level(PUMP_A) == 0 and len(fake.on_durations(PUMP_B)) == 1


def test_hung_daemon_times_out_client(fake, pi):
    pi.sl.s.settimeout(0.1)
    fake.pause()
    with pytest.raises(socket.timeout):
        pi.read(PUMP_A)
    fake.resume()
    pi.sl.s.settimeout(None)
    assert pi.read(PUMP_A) == 0  # request was dropped, so the stream is in step


def test_runs_as_a_script():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "support.fake_pigpiod", "--port", str(port)],
                            cwd=os.path.dirname(os.path.abspath(__file__)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        clients = []

        def connected():
            pi = pigpio.pi("127.0.0.1", port, show_errors=False)
            clients.append(pi)
            return pi.connected

        assert eventually(connected, timeout=10.0)  # the interpreter has to start first
        pi = clients[-1]
        try:
            pi.write(PUMP_A, 1)
            assert pi.read(PUMP_A) == 1
        finally:
            _stop(pi)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- fault injection ------------------------------------------------------------------------

def test_hang_after_answers_that_command_then_nothing(fake, pi):
    fake.hang_after(CMD_WRITE)
    pi.write(PUMP_A, 1)  # answered
    pi.sl.s.settimeout(0.1)
    with pytest.raises(socket.timeout):
        pi.read(PUMP_A)
    assert fake.paused and fake.connection_count() == 2  # sockets stay open
    assert fake.level(PUMP_A) == 1


def test_drop_between_closes_before_the_second_command(fake, pi):
    fake.drop_between(CMD_WRITE, CMD_BC1)
    pi.write(PUMP_A, 1)
    pi.read(PUMP_A)  # not the pair: nothing happens
    pi.write(PUMP_A, 1)
    with pytest.raises(DISCONNECTED):
        pi.clear_bank_1(1 << PUMP_A)
    assert fake.level(PUMP_A) == 1  # the clear never ran
    assert CMD_BC1 not in [c[1] for c in fake.command_log()]


def test_fail_answers_one_command_with_an_error(fake, pi):
    fake.fail(CMD_WVBSY, PI_NOT_PERMITTED)
    with pytest.raises(pigpio.error, match="no permission"):
        pi.wave_tx_busy()
    assert pi.wave_tx_busy() == 0  # once only; the connection still works
    assert pi.read(PUMP_A) == 0 and fake.command_log()[-1][1] == CMD_READ


def test_levels_survive_a_restart_waves_do_not(fake, pi):
    _outputs(pi, PUMP_A)
    pi.wave_send_once(_make_wave(pi, [(1 << PUMP_A, 0, 500000), (0, 1 << PUMP_A, 0)]))
    assert fake.wait_for(lambda: fake.level(PUMP_A) == 1)
    fake.hang_after(CMD_WVBSY)
    fake.restart()
    assert not fake.wave_busy() and fake.level(PUMP_A) == 1 and not fake.paused
    pi2 = pigpio.pi("127.0.0.1", fake.port, show_errors=False)
    try:
        assert pi2.wave_tx_busy() == 0 and pi2.read(PUMP_A) == 1  # the fault was disarmed
    finally:
        _stop(pi2)

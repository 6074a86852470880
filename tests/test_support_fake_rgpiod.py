"""The fake rgpiod against the real rgpio client: what the daemon does that barmaid relies on.

Each test states one behaviour of lg v0.2.2's rgpiod (ownership, sharing, levels kept on release,
the wave thread's 20 ms pass, queued waves, error codes) and the fakes' faults.
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import struct
import time

import pytest
import rgpio
from support.fake_rgpiod import GBUSY, GGWX, Board, FakeRgpiod

LINES = [5, 6]


@pytest.fixture
def daemon():
    with FakeRgpiod() as fake:
        yield fake


@pytest.fixture
def connect(daemon):
    clients = []

    def open_client(port=None) -> rgpio.sbc:
        sbc = rgpio.sbc("127.0.0.1", port or daemon.port, show_errors=False)
        assert sbc.connected
        sbc.sl.s.settimeout(1.0)
        clients.append(sbc)
        return sbc

    yield open_client
    for sbc in clients:
        atexit.unregister(sbc.stop)
        if sbc._notify is not None:
            sbc._notify.go = False  # else it spins once the daemon is gone
            # A daemon that is already gone may have reset the socket: ENOTCONN, nothing to wake.
            with contextlib.suppress(OSError):
                sbc._notify.sl.s.shutdown(socket.SHUT_RDWR)
        if sbc.sl.s is not None:
            sbc.sl.s.close()


def pumps_on(sbc: rgpio.sbc, seconds: float = 2.0, share: int = 0) -> int:
    """The two lines claimed as a group, a wave started that holds them high `seconds`."""
    handle = sbc.gpiochip_open(0)
    sbc.group_claim_output(handle, LINES, [0, 0])
    if share:
        sbc.set_share_id(handle & 0xFFFF, share)
    sbc.tx_wave(handle, LINES[0], [rgpio.pulse(3, 3, round(seconds * 1e6)), rgpio.pulse(0, 3, 0)])
    return handle


def test_a_wave_starts_at_the_next_pass_of_the_timing_thread_and_keeps_exact_delays(daemon, connect):
    sbc = connect()
    daemon.clear_history()
    before = time.monotonic()
    handle = pumps_on(sbc, 0.05)
    after = time.monotonic()
    assert sbc.tx_busy(handle, LINES[0], rgpio.TX_WAVE) == 1
    assert daemon.wait_for(lambda: not daemon.wave_busy())
    start = daemon.history()[0][0]
    assert before - 0.001 <= start <= after + 0.020
    assert daemon.on_durations(5) == daemon.on_durations(6) == [pytest.approx(0.05, abs=1e-5)]


def test_waves_sent_while_one_plays_are_queued_behind_it(daemon, connect):
    sbc = connect()
    handle = pumps_on(sbc, 0.03)
    assert sbc.tx_wave(handle, 5, [rgpio.pulse(1, 1, 20_000), rgpio.pulse(0, 1, 0)]) == 8
    assert sbc.tx_room(handle, 5, rgpio.TX_WAVE) == 8
    assert daemon.wait_for(lambda: not daemon.wave_busy())
    assert daemon.on_durations(5) == [pytest.approx(0.03, abs=1e-5), pytest.approx(0.02, abs=1e-5)]
    ends = [t for t, line, level in daemon.history() if line == 5]
    assert ends[2] - ends[1] == pytest.approx(0.0, abs=1e-5)  # the second starts as the first ends


def test_a_closed_connection_frees_its_unshared_handle_stopping_the_wave_and_leaving_lines_high(daemon, connect):
    sbc = connect()
    pumps_on(sbc)
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    sbc.sl.s.close()  # what a SIGKILL does to the client
    assert daemon.wait_for(lambda: not daemon.handles().get(1))
    assert not daemon.wave_busy() and daemon.claimed() == {}
    assert daemon.level(5) == daemon.level(6) == 1  # the kernel keeps a released output's level


def test_a_shared_handle_outlives_its_client_and_is_used_again_with_its_share_id(daemon, connect):
    sbc = connect()
    handle = pumps_on(sbc, 0.2, share=77)
    sbc.sl.s.close()
    other = connect()
    with pytest.raises(rgpio.error, match="no permission"):
        other.tx_busy(handle, 5, rgpio.TX_WAVE)
    other.use_share_id(77)
    assert other.tx_busy(handle, 5, rgpio.TX_WAVE) == 1
    assert other.gpio_get_mode(handle, 5) & (2 << 8)  # lg's output bit: this handle holds the line
    with pytest.raises(rgpio.error, match="no permission"):
        other.set_share_id(handle, 0)  # only the owner may change the share
    assert daemon.wait_for(lambda: not daemon.wave_busy())
    assert daemon.on_durations(5) == [pytest.approx(0.2, abs=1e-5)]
    other.gpiochip_close(handle)  # a user of the share may close it
    assert daemon.handles() == {h: v for h, v in daemon.handles().items() if v[0] == "notify"}


def test_share_calls_need_the_plain_handle_not_the_one_gpiochip_open_returns(connect):
    board = Board({0: ("gpio-brcmstb@107d508500", 32), 4: ("pinctrl-rp1", 54)})
    with FakeRgpiod(board=board) as daemon:
        sbc = connect(daemon.port)
        handle = sbc.gpiochip_open(4)
        assert handle >> 16 == 4
        with pytest.raises(rgpio.error, match="unknown handle"):
            sbc.set_share_id(handle, 9)
        assert sbc.set_share_id(handle & 0xFFFF, 9) == 0
        assert sbc.gpio_get_chip_info(handle)[3] == "pinctrl-rp1"
        with pytest.raises(rgpio.error, match="can not open gpiochip"):
            sbc.gpiochip_open(1)


def test_freeing_a_group_stops_its_wave_keeps_levels_and_a_claimed_line_is_busy(daemon, connect):
    sbc = connect()
    handle = pumps_on(sbc)
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    with pytest.raises(rgpio.error, match="GPIO busy"):
        sbc.group_claim_output(sbc.gpiochip_open(0), [6], [0])
    with pytest.raises(rgpio.error, match="not the group leader"):
        sbc.group_free(handle, 6)
    sbc.group_free(handle, 5)
    assert not daemon.wave_busy() and daemon.level(5) == 1
    sbc.group_claim_output(handle, LINES, [0, 0])
    assert daemon.level(5) == daemon.level(6) == 0
    assert sbc.group_read(handle, 5) == [2, 0]


def test_chip_and_line_info_raise_attribute_error_when_the_daemon_answers_an_error(connect):
    sbc = connect()
    with pytest.raises(AttributeError):
        sbc.gpio_get_chip_info(500)
    with pytest.raises(rgpio.error, match="unknown handle"):
        sbc.gpio_get_mode(500, 5)


def test_stop_cannot_close_the_notification_handle_it_belongs_to_another_connection(daemon, connect):
    sbc = connect()
    notify = sbc._notify.handle
    sbc.stop()
    assert daemon.handles()[notify][0] == "notify"


def test_killing_the_daemon_frees_even_shared_handles_but_the_levels_stay(daemon, connect):
    board = daemon.board
    sbc = connect()
    pumps_on(sbc, share=5)
    assert daemon.wait_for(lambda: daemon.level(5) == 1)
    daemon.kill()
    with FakeRgpiod(port=daemon.port, board=board) as again:
        assert again.handles() == {} and again.level(5) == 1


def test_faults_error_answer_drop_after_and_hang(daemon, connect):
    sbc = connect()
    handle = pumps_on(sbc, 0.1)
    daemon.fail_at(GBUSY, -93)
    with pytest.raises(rgpio.error, match="no permission"):
        sbc.tx_busy(handle, 5, rgpio.TX_WAVE)
    assert sbc.tx_busy(handle, 5, rgpio.TX_WAVE) == 1  # one error, then answers again
    daemon.drop_after(GBUSY)
    assert sbc.tx_busy(handle, 5, rgpio.TX_WAVE) == 1
    with pytest.raises((OSError, struct.error)):
        sbc.tx_busy(handle, 5, rgpio.TX_WAVE)
    sbc = connect()
    handle = sbc.gpiochip_open(0)
    sbc.group_claim_output(handle, LINES, [1, 1])
    sbc.sl.s.settimeout(0.2)
    daemon.hang_at(GGWX)
    with pytest.raises(socket.timeout):
        sbc.group_write(handle, 5, 0)
    assert daemon.level(5) == 0  # executed, never answered
    daemon.resume()


def test_an_extension_of_64_kib_ends_the_connection(connect):
    sbc = connect()
    handle = sbc.gpiochip_open(0)
    with pytest.raises((OSError, struct.error)):
        sbc.tx_wave(handle, 5, [rgpio.pulse(1, 1, 10)] * 2731)

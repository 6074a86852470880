"""Real pumps through rgpiod, the lg library's daemon: every Pi, the Pi 5 and Raspberry Pi OS 13.

A pour is one wave (`tx_wave`) played by rgpiod's timing thread on one group of every pump
line: all its pumps on at one instant, each off at its own microsecond, every pump off at the
end. rgpiod frees the handles of a client whose connection closes, and a freed line keeps its
last level (a pump left on); so the chip handle is *shared* (`set_share_id`): it outlives a
crashed barmaid, its wave ends on time, and the next barmaid finds it again (`use_share_id`).

What the lg sources (v0.2.2) say and this module relies on (docs/dependencies.md has them all):
  - `gpiochip_open` returns `handle | chip << 16`; `set_share_id` needs `handle & 0xffff`.
  - A new wave starts at the timing thread's next pass, up to 20 ms after `tx_wave` returns;
    a wave sent while one plays is queued behind it. There is no cancel: freeing the group stops
    its wave, and the lines keep their levels until claimed again.
  - `gpio_get_chip_info` raises AttributeError when the daemon answers an error; the client's
    sockets have no timeout, and its notification thread spins on a dead socket.
"""

from __future__ import annotations

import atexit
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any, Optional

import rgpio

from ..config import DriverConfig
from ..errors import Busy, PourRejected, PumpsUnavailable
from . import daemon
from .base import Plan, spans, switches
from .daemon import LOST, DaemonDriver, TimedSockets, Unreachable, probe

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: Error answers in a row after which the connection is started again.
MAX_HEARTBEAT_ERRORS = 3
#: The share id of barmaid's chip handle ("bm").
SHARE_ID = 0x626D
#: A new wave starts at the timing thread's next pass, at most 20 ms after tx_wave returns; 5 ms
#: more for that thread's wake-up on a busy Pi. A pour's reported start is this much later.
START_TICK = 0.025
#: Pulses of one tx_wave command (its 64 KiB extension holds about 2,700).
MAX_PULSES = 2_700
#: Delays are C ints of microseconds.
MAX_DELAY_US = 2**31 - 1
#: Labels of the chip of the header's GPIOs: Pi 5, Pi 4, Pi 0-3.
CHIP_LABELS = ("pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835")
#: /dev/gpiochipN numbers tried (a Pi 5 has 0 and 10-13, older kernels put the RP1 at 4).
CHIP_NUMBERS = range(32)
#: Handle slots of the daemon: where a shared handle can be.
HANDLE_SLOTS = 1024
_MODE_KERNEL_USED = 1
_MODE_LG_OUTPUT = 2 << 8

rgpio.socket = TimedSockets()


class _Session:
    """One connection to rgpiod and barmaid's pump group on it (`handle`, led by gpios[0])."""

    def __init__(self, host: str, port: int, gpios: Sequence[int], off_level: int) -> None:
        self.gpios = tuple(gpios)
        self.leader = self.gpios[0]
        self.off = [off_level] * len(self.gpios)
        self.off_bits = sum(off_level << i for i in range(len(self.gpios)))
        probe(host, port)  # rgpio.sbc() hides why it cannot connect
        self.sbc = rgpio.sbc(host, port, show_errors=False)
        if not self.sbc.connected:
            raise Unreachable("the daemon did not answer")
        self._end_notifications()
        self.handle = -1
        self.label = ""

    def _end_notifications(self) -> None:
        """Ends the client's notification thread: barmaid needs no callbacks, and on a dead
        daemon's socket it spins; `sbc.stop()` cannot end it (the daemon refuses NO_PERMISSIONS)."""
        notify, self.sbc._notify = self.sbc._notify, None
        notify.go = False
        try:
            notify.sl.s.shutdown(socket.SHUT_RDWR)  # its recv returns: it ends and closes the socket
        except OSError:
            pass
        notify.join(daemon.COMMAND_TIMEOUT)

    def open_chip(self) -> None:
        """Opens the chip of the header's GPIOs, found by its label, and uses barmaid's share."""
        self.sbc.use_share_id(SHARE_ID)
        refused = set()
        for number in CHIP_NUMBERS:
            try:
                handle = self.sbc.gpiochip_open(number)
            except rgpio.error as exc:
                refused.add(str(exc).strip("'"))
                continue
            label = self.sbc.gpio_get_chip_info(handle)[3]
            if label in CHIP_LABELS:
                self.handle, self.label = handle & 0xFFFF, label
                return
            self.sbc.gpiochip_close(handle)
        refused.discard("can not open gpiochip")  # no such /dev/gpiochipN
        why = f"rgpiod said: {', '.join(sorted(refused))}" if refused else "is this a Raspberry Pi?"
        raise Unreachable(f"no GPIO chip labelled {' or '.join(CHIP_LABELS)} ({why})")

    def found(self) -> dict[int, Optional[int]]:
        """Other handles (a crashed barmaid's shared one) that hold pump lines -> the leader of
        the wave they still play, or None."""
        used = [g for g in self.gpios if self.sbc.gpio_get_mode(self.handle, g) & _MODE_KERNEL_USED]
        if not used:
            return {}
        holders: dict[int, Optional[int]] = {}
        for handle in range(HANDLE_SLOTS):
            if handle == self.handle:
                continue
            try:
                held = [g for g in used if self.sbc.gpio_get_mode(handle, g) & _MODE_LG_OUTPUT]
            except rgpio.error:
                continue  # not a chip handle, or not shared with us
            if held:
                holders[handle] = next((g for g in held if self.sbc.tx_busy(handle, g, rgpio.TX_WAVE) == 1), None)
        return holders

    def take_lines(self) -> None:
        """Every pump line claimed as one output group at its off level; the handle shared."""
        for handle in self.found():
            self.sbc.gpiochip_close(handle)  # stops its wave; the lines keep their levels
        self.claim()
        self.sbc.set_share_id(self.handle, SHARE_ID)
        self.check_off()

    def claim(self) -> None:
        try:
            self.sbc.group_claim_output(self.handle, list(self.gpios), self.off)
        except rgpio.error as exc:
            raise Unreachable(
                f"GPIO {', '.join(map(str, self.gpios))} cannot be claimed ({exc}): another program,"
                " or another barmaid, holds them"
            ) from None

    def busy(self, handle: Optional[int] = None, leader: Optional[int] = None) -> bool:
        handle = self.handle if handle is None else handle
        return self.sbc.tx_busy(handle, self.leader if leader is None else leader, rgpio.TX_WAVE) == 1

    def play(self, pulses: list[rgpio.pulse]) -> None:
        self.sbc.tx_wave(self.handle, self.leader, pulses)

    def all_off(self) -> list[str]:
        """Every pump off at once, then the wave stopped and the lines claimed again at their off
        levels, then checked. Each step is tried even if one before it was refused, so a daemon
        that errors leaves the pumps off; returns what the daemon refused."""
        refused = []
        steps = (
            ("write the pumps off", lambda: self.sbc.group_write(self.handle, self.leader, self.off_bits)),
            ("stop the wave", lambda: self.sbc.group_free(self.handle, self.leader)),
            ("claim the pump lines", self.claim),
        )
        for what, step in steps:
            try:
                step()
            except (rgpio.error, Unreachable) as exc:
                refused.append(f"{what}: {exc}")
        try:
            self.check_off()
        except (rgpio.error, Unreachable) as exc:
            refused.append(str(exc))
        return refused

    def check_off(self) -> None:
        _, bits = self.sbc.group_read(self.handle, self.leader)
        if bits != self.off_bits or self.busy():
            raise Unreachable(f"the pump lines read {bits:#x}, not off ({self.off_bits:#x})")

    def close(self) -> None:
        """Closes the connection without a word to the daemon (it may be gone): the daemon keeps
        the shared handle, with the pumps as they are."""
        atexit.unregister(self.sbc.stop)
        sock, self.sbc.sl.s = self.sbc.sl.s, None
        self.sbc.connected = False
        if sock is not None:
            sock.close()


class RgpioDriver(DaemonDriver):
    """Pumps on GPIOs of a Raspberry Pi, through rgpiod, reconnecting on its own."""

    DAEMON = "rgpiod"
    SERVICE = "rgpiod"
    ERROR = rgpio.error
    log = log

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float, config: DriverConfig) -> None:
        self._adopted: Optional[tuple[int, int]] = None  # (handle, leader) of a wave found playing
        self._may_adopt = True  # only at the first connection: later, a wave left is ours to end
        self._until = 0.0  # when our pour ends, on time.monotonic()
        self._errors = 0
        super().__init__(gpios, max_pump_seconds, config)

    @property
    def available(self) -> bool:
        return self._conn is not None

    def playing(self) -> bool:
        return self._adopted is not None or time.monotonic() < self._until

    def check(self, plan: Plan) -> None:
        super().check(plan)
        pulses = self._pulses(plan)
        if len(pulses) > MAX_PULSES:
            raise PourRejected(f"a pour of {len(plan)} pumps needs more than rgpiod's {MAX_PULSES} pulses")

    def pour(self, plan: Plan) -> float:
        self.check(plan)
        with self._lock:
            session = self._require()
            sent = False
            try:
                if session.busy():
                    self._off(session)  # a wave left playing would delay this one behind it
                sent = True
                session.play(self._pulses(plan))
            except rgpio.error as exc:
                self._off(session)
                raise PourRejected(f"rgpiod cannot play this pour: {exc}") from None
            except LOST as exc:
                raise self._lost_sending(exc, sent) from None
            # The wave starts at the daemon's next pass: report no earlier, so nothing ends it early.
            t0 = time.monotonic() + START_TICK
            self._until = t0 + max(span.stop for span in spans(plan).values())
        return t0

    def halt(self) -> None:
        with self._lock:
            self._until = 0.0
            if self._conn is not None and self._adopted is None:
                self._off(self._conn)

    @classmethod
    def _force_off(cls, session: _Session, gpios: Sequence[int], off_level: int, wait_for_pour_s: float) -> str:
        """A wave still playing (a crashed barmaid's pour) is given up to `wait_for_pour_s` to end
        by itself, then stopped."""
        deadline = time.monotonic() + wait_for_pour_s
        waited = False
        while time.monotonic() < deadline and any(w is not None for w in session.found().values()):
            waited = True
            time.sleep(min(daemon.HEARTBEAT, max(0.0, deadline - time.monotonic())))
        session.take_lines()
        waited_text = " after the pour that was playing" if waited else ""
        return f"every pump off{waited_text} (GPIO {', '.join(map(str, gpios))})"

    # ---- wave -----------------------------------------------------------------------------

    def _pulses(self, plan: Plan) -> list[rgpio.pulse]:
        """One pulse per instant at which pumps switch (bits and mask over the group's lines),
        then the delay to the next instant; the last leaves every pump off."""
        instants: dict[int, int] = {}
        bits: dict[int, int] = {}
        for at, pump, on in switches(plan):
            us = round(at * 1e6)
            instants[us] = instants.get(us, 0) | 1 << pump
            level = self.off_level ^ on
            bits[us] = bits.get(us, 0) & ~(1 << pump) | level << pump
        times = sorted(instants)
        pulses = [] if times[0] == 0 else [rgpio.pulse(0, 0, times[0])]
        for i, at in enumerate(times):
            delay = times[i + 1] - at if i + 1 < len(times) else 0
            if delay > MAX_DELAY_US:
                raise PourRejected(f"a delay of {delay / 1e6:.0f} s is longer than rgpiod can time")
            pulses.append(rgpio.pulse(bits[at], instants[at], delay))
        return pulses

    # ---- connection -----------------------------------------------------------------------

    @classmethod
    def _open(cls, host: str, port: int, gpios: Sequence[int], off_level: int) -> _Session:
        session = _Session(host, port, gpios, off_level)
        try:
            session.open_chip()
        except BaseException:
            session.close()
            raise
        return session

    @staticmethod
    def _close_conn(session: _Session) -> None:
        session.close()

    def _require(self) -> _Session:
        if self._conn is None:
            raise PumpsUnavailable(self._unavailable(self.host, self.port, self._why_not))
        if self._adopted is not None:
            raise Busy("the pumps are finishing a pour started before barmaid restarted; retry in a few seconds", 1)
        return self._conn

    def _attach(self, session: _Session) -> Optional[tuple[int, int]]:
        """Adopts what a crashed barmaid's shared handle still plays (first connection only), or
        takes the pump lines at their off levels; returns the adopted (handle, leader)."""
        playing = {h: g for h, g in session.found().items() if g is not None} if self._may_adopt else {}
        if not playing:
            session.take_lines()
            return None
        log.warning(
            "rgpiod still plays a pour on GPIO %s (barmaid was stopped mid-pour): leaving it to end",
            ", ".join(map(str, self.gpios)),
        )
        return next(iter(playing.items()))

    def _attached(self, session: _Session, adopted: Any, lost_at: Optional[float]) -> None:
        self._adopted, self._may_adopt, self._errors = adopted, False, 0
        log.info(
            "connected to rgpiod at %s:%d (chip %s); pumps %s on GPIO %s (%s)",
            self.host,
            self.port,
            session.label,
            "left to finish their pour" if adopted else "off",
            ", ".join(map(str, self.gpios)),
            "active-low" if self.off_level else "active-high",
        )

    def _beat(self, session: _Session) -> bool:
        """One heartbeat (and the end of an adopted pour); True if the daemon was lost mid-pour."""
        try:
            if self._adopted is not None:
                if not session.busy(*self._adopted):
                    log.info("the pour rgpiod was playing has ended; every pump off")
                    session.take_lines()
                    self._adopted = None
            else:
                session.busy()
            self._errors = 0
        except (rgpio.error, Unreachable) as exc:
            self._errors += 1
            log.error("rgpiod answered the heartbeat with an error (%s)", exc)
            if self._errors >= MAX_HEARTBEAT_ERRORS:
                self._drop(f"{self._errors} errors in a row: {exc}")
        except LOST as exc:
            mid_pour = self.playing()
            self._lose(exc)
            return mid_pour
        return False

    def _may_drive_pumps(self) -> bool:
        return self.playing()

    def _reset(self) -> None:
        self._until = 0.0
        self._adopted = None

    def _off(self, session: _Session) -> None:
        """Every pump off; a refusal is logged and the connection started again (which writes
        them off anew), a dead daemon is noted, not raised."""
        try:
            refused = session.all_off()
        except LOST as exc:
            self._lose(exc, pump_may_be_on=True)
            return
        if refused:
            log.error("rgpiod refused to switch the pumps off cleanly: %s; reconnecting", "; ".join(refused))
            self._drop("it refused to switch the pumps off: " + "; ".join(refused), pump_may_be_on=True)

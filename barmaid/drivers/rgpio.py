"""Real pumps through rgpiod, the lg library's daemon: every Pi, the Pi 5 and Raspberry Pi OS 13.

A pour is one wave (`tx_wave`) played by rgpiod's timing thread on one group of every pump
line: all its pumps on at one instant, each off at its own microsecond, every pump off at the
end. rgpiod frees the handles of a client whose connection closes, and a freed line keeps its
last level (a pump left on); so the chip handle is *shared* (`set_share_id`): it outlives a
crashed barmaid, its wave ends on time, and the next barmaid finds it again (`use_share_id`).

What the lg sources (v0.2.2) say and this module relies on:
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
import struct
import threading
import time
import types
from typing import Optional, Sequence

import rgpio

from ..config import DriverConfig
from ..errors import Busy, PourRejected, PumpsUnavailable
from .base import Driver, Plan, spans, switches

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: Bound on the connect and on every command (the client's sockets have none).
COMMAND_TIMEOUT = 2.0
#: How often the daemon is asked whether it is still there.
HEARTBEAT = 0.25
#: Reconnect backoff: from the first to the last, doubling. After a loss while a pump may be on,
#: reconnects come at heartbeat pace instead, to switch it off the moment the daemon is back.
BACKOFF = (0.5, 10.0)
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
#: What a lost daemon looks like through the client: no error of its own.
_LOST = (OSError, struct.error, AttributeError, TypeError)
_MODE_KERNEL_USED = 1
_MODE_LG_OUTPUT = 2 << 8

# The client's sockets, with a timeout on every connection it opens (its own have none).
rgpio.socket = types.SimpleNamespace(
    error=socket.error,
    IPPROTO_TCP=socket.IPPROTO_TCP,
    TCP_NODELAY=socket.TCP_NODELAY,
    create_connection=lambda address, timeout=None: socket.create_connection(address, COMMAND_TIMEOUT),
)


class _Unreachable(Exception):
    """The daemon cannot be used now; the message says why."""


class _Session:
    """One connection to rgpiod and barmaid's pump group on it (`handle`, led by gpios[0])."""

    def __init__(self, host: str, port: int, gpios: Sequence[int], off_level: int) -> None:
        self.gpios = tuple(gpios)
        self.leader = self.gpios[0]
        self.off = [off_level] * len(self.gpios)
        self.off_bits = sum(off_level << i for i in range(len(self.gpios)))
        try:
            # rgpio.sbc() hides why it cannot connect: probe first, to say so.
            socket.create_connection((host, port), timeout=COMMAND_TIMEOUT).close()
        except OSError as exc:
            raise _Unreachable(exc.strerror or str(exc)) from None
        self.sbc = rgpio.sbc(host, port, show_errors=False)
        if not self.sbc.connected:
            raise _Unreachable("the daemon did not answer")
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
        notify.join(COMMAND_TIMEOUT)

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
        raise _Unreachable(f"no GPIO chip labelled {' or '.join(CHIP_LABELS)} ({why})")

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
            raise _Unreachable(
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
            except (rgpio.error, _Unreachable) as exc:
                refused.append(f"{what}: {exc}")
        try:
            self.check_off()
        except (rgpio.error, _Unreachable) as exc:
            refused.append(str(exc))
        return refused

    def check_off(self) -> None:
        _, bits = self.sbc.group_read(self.handle, self.leader)
        if bits != self.off_bits or self.busy():
            raise _Unreachable(f"the pump lines read {bits:#x}, not off ({self.off_bits:#x})")

    def close(self) -> None:
        """Closes the connection without a word to the daemon (it may be gone): the daemon keeps
        the shared handle, with the pumps as they are."""
        atexit.unregister(self.sbc.stop)
        sock, self.sbc.sl.s = self.sbc.sl.s, None
        self.sbc.connected = False
        if sock is not None:
            sock.close()


class RgpioDriver(Driver):
    """Pumps on GPIOs of a Raspberry Pi, through rgpiod, reconnecting on its own."""

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float, config: DriverConfig) -> None:
        super().__init__(gpios, max_pump_seconds)
        self.host, self.port = config.daemon_address()
        self.off_level = 1 if config.active_low else 0
        self._lock = threading.RLock()
        self._session: Optional[_Session] = None
        self._adopted: Optional[tuple[int, int]] = None  # (handle, leader) of a wave found playing
        self._may_adopt = True  # only at the first connection: later, a wave left is ours to end
        self._until = 0.0  # when our pour ends, on time.monotonic()
        self._errors = 0
        self._pump_may_be_on = False  # lost while playing: reconnect at heartbeat pace
        self._why_not = "not connected yet"
        self._closed = threading.Event()
        self._connect()
        self._supervisor = threading.Thread(target=self._supervise, name="barmaid-rgpio", daemon=True)
        self._supervisor.start()

    @property
    def available(self) -> bool:
        return self._session is not None

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
            except _LOST as exc:
                self._lose(exc, pump_may_be_on=sent)
                raise PumpsUnavailable(
                    f"lost rgpiod at {self.host}:{self.port} while starting the pour ({self._why_not})",
                    maybe_started=sent,
                ) from None
            # The wave starts at the daemon's next pass: report no earlier, so nothing ends it early.
            t0 = time.monotonic() + START_TICK
            self._until = t0 + max(span.stop for span in spans(plan).values())
        return t0

    def halt(self) -> None:
        with self._lock:
            self._until = 0.0
            if self._session is not None and self._adopted is None:
                self._off(self._session)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self.halt()
            if self._session is not None:
                self._session.close()
                self._session = None
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=COMMAND_TIMEOUT + 1)

    @classmethod
    def force_off(cls, gpios: Sequence[int], driver_config: DriverConfig, wait_for_pour_s: float = 0.0) -> str:
        """Every pump off through rgpiod, from a process of its own (`barmaid off`).

        One connection attempt, bounded by COMMAND_TIMEOUT per command. A wave still playing (a
        crashed barmaid's pour) is given up to `wait_for_pour_s` to end by itself, then stopped.

        Returns:
            What was done, for the builder.
        Raises:
            PumpsUnavailable: rgpiod cannot be reached, or the pumps could not be switched off.
        """
        host, port = driver_config.daemon_address()
        off_level = 1 if driver_config.active_low else 0
        session = None
        try:
            session = _Session(host, port, gpios, off_level)
            session.open_chip()
            deadline = time.monotonic() + wait_for_pour_s
            waited = False
            while time.monotonic() < deadline and any(w is not None for w in session.found().values()):
                waited = True
                time.sleep(min(HEARTBEAT, max(0.0, deadline - time.monotonic())))
            session.take_lines()
        except _Unreachable as exc:
            raise PumpsUnavailable(_unavailable(host, port, str(exc))) from None
        except (rgpio.error, *_LOST) as exc:
            raise PumpsUnavailable(_unavailable(host, port, f"{exc.__class__.__name__}: {exc}")) from None
        finally:
            if session is not None:
                session.close()
        waited_text = " after the pour that was playing" if waited else ""
        return f"every pump off{waited_text} (GPIO {', '.join(map(str, gpios))}, rgpiod at {host}:{port})"

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

    def _require(self) -> _Session:
        if self._session is None:
            raise PumpsUnavailable(_unavailable(self.host, self.port, self._why_not))
        if self._adopted is not None:
            raise Busy("the pumps are finishing a pour started before barmaid restarted; retry in a few seconds", 1)
        return self._session

    def _connect(self) -> bool:
        """One attempt: connect, find the pump lines, adopt or end what plays, pumps off."""
        session = None
        try:
            session = _Session(self.host, self.port, self.gpios, self.off_level)
            session.open_chip()
            playing = {h: g for h, g in session.found().items() if g is not None} if self._may_adopt else {}
            if playing:
                adopted = next(iter(playing.items()))
                log.warning(
                    "rgpiod still plays a pour on GPIO %s (barmaid was stopped mid-pour): leaving it to end",
                    ", ".join(map(str, self.gpios)),
                )
            else:
                adopted = None
                session.take_lines()
        except _Unreachable as exc:
            if session is not None:
                session.close()
            return self._unreachable(str(exc))
        except (rgpio.error, *_LOST) as exc:
            if session is not None:
                session.close()
            return self._unreachable(f"setting the pump lines failed: {exc.__class__.__name__}: {exc}")
        with self._lock:
            self._session, self._adopted, self._may_adopt, self._errors = session, adopted, False, 0
            self._pump_may_be_on = False
        log.info(
            "connected to rgpiod at %s:%d (chip %s); pumps %s on GPIO %s (%s)",
            self.host,
            self.port,
            session.label,
            "left to finish their pour" if adopted else "off",
            ", ".join(map(str, self.gpios)),
            "active-low" if self.off_level else "active-high",
        )
        return True

    def _unreachable(self, why: str) -> bool:
        if why != self._why_not:
            log.warning(
                "rgpiod at %s:%d unreachable (%s): blends and refills are refused until it is up."
                " Start it with 'sudo systemctl enable --now rgpiod'; retrying in the background.",
                self.host,
                self.port,
                why,
            )
        self._why_not = why
        return False

    def _supervise(self) -> None:
        """Heartbeat while connected (and the end of an adopted pour); reconnect while not, at
        heartbeat pace while a pump may be on, else with backoff. Survives any exception: it is
        the only one watching the daemon."""
        delay = BACKOFF[0]
        while not self._closed.is_set():
            try:
                if self._session is not None:
                    self._closed.wait(HEARTBEAT)
                    self._heartbeat()
                elif self._connect():
                    delay = BACKOFF[0]
                elif self._pump_may_be_on:
                    self._closed.wait(HEARTBEAT)
                else:
                    self._closed.wait(delay)
                    delay = min(delay * 2, BACKOFF[1])
            except Exception as exc:  # a bug here must not end supervision
                log.exception("rgpio supervisor: unexpected error; treating it as a lost daemon")
                with self._lock:
                    self._drop(f"unexpected error: {exc}")
                self._closed.wait(HEARTBEAT)

    def _heartbeat(self) -> None:
        with self._lock:
            if self._session is None or self._closed.is_set():
                return
            lost_mid_pour = self._beat(self._session)
        # Outside our lock: the owner will call halt() from its own lock.
        if lost_mid_pour and self.on_lost is not None:
            self.on_lost(f"rgpiod at {self.host}:{self.port} went away ({self._why_not})")

    def _beat(self, session: _Session) -> bool:
        """One heartbeat; True if the daemon was lost mid-pour."""
        try:
            if self._adopted is not None:
                if not session.busy(*self._adopted):
                    log.info("the pour rgpiod was playing has ended; every pump off")
                    session.take_lines()
                    self._adopted = None
            else:
                session.busy()
            self._errors = 0
        except (rgpio.error, _Unreachable) as exc:
            self._errors += 1
            log.error("rgpiod answered the heartbeat with an error (%s)", exc)
            if self._errors >= MAX_HEARTBEAT_ERRORS:
                self._drop(f"{self._errors} errors in a row: {exc}")
        except _LOST as exc:
            mid_pour = self.playing()
            self._lose(exc)
            return mid_pour
        return False

    def _lose(self, exc: BaseException, pump_may_be_on: bool = False) -> None:
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or exc.__class__.__name__
        else:  # struct.error, AttributeError: the client read nothing from a closed socket
            reason = "the daemon closed the connection"
        log.error("lost rgpiod at %s:%d (%s); reconnecting", self.host, self.port, reason)
        self._drop(f"connection lost: {reason}", pump_may_be_on)

    def _drop(self, why: str, pump_may_be_on: bool = False) -> None:
        self._why_not = why
        self._pump_may_be_on = self._pump_may_be_on or pump_may_be_on or self.playing()
        self._until = 0.0
        self._adopted = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def _off(self, session: _Session) -> None:
        """Every pump off; a refusal is logged and the connection started again (which writes
        them off anew), a dead daemon is noted, not raised."""
        try:
            refused = session.all_off()
        except _LOST as exc:
            self._lose(exc, pump_may_be_on=True)
            return
        if refused:
            log.error("rgpiod refused to switch the pumps off cleanly: %s; reconnecting", "; ".join(refused))
            self._drop("it refused to switch the pumps off: " + "; ".join(refused), pump_may_be_on=True)


def _unavailable(host: str, port: int, why: str) -> str:
    return (
        f"the pumps are unavailable: rgpiod at {host}:{port} cannot be reached ({why});"
        " start it with 'sudo systemctl enable --now rgpiod'"
    )

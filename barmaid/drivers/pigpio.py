"""Real pumps through the pigpio daemon, with every pour timed by the daemon itself.

A pour is one waveform played by DMA inside pigpiod: all its pumps on at one instant, each off at
its own microsecond. If barmaid crashes mid-pour, the pumps still stop on time (GPIO levels set
through pigpiod outlive the client, so sleeps in this process would leave them running).

What the pigpio client and daemon (client 1.78, daemon v79) do that this module works around
(docs/dependencies.md has them all):
  - `pigpio.pi()` does not raise when the daemon is unreachable: it sets `connected = False` and
    the next call fails with AttributeError. We probe the port first, to say why.
  - Its sockets have no timeout (bounded in barmaid/drivers/daemon.py, with the heartbeat and
    reconnect supervisor both daemon drivers share).
  - A dead daemon shows up as struct.error, BrokenPipeError or AttributeError, never as
    pigpio.error, and `connected` stays True; pigpio's notification thread then spins at 100 % CPU,
    so we end it at once (barmaid needs no GPIO callbacks).
  - An error answer (pigpio.error) is not a lost connection, but it means the daemon did not do
    what we asked: barmaid treats it as a fault (every pump off, reconnect).
  - Levels persist: a pin stays at its last level after the client, or the daemon itself, is gone.
    A daemon that dies mid-pour leaves its pumps ON (its wave dies with it); a dropped connection
    leaves the wave playing (it still ends the pour on time).
  - Only one wave plays at a time and a new send cuts the current one: all pumps of a pour share
    one waveform. `wave_tx_stop` stops it where it stands and leaves the pins as they are, so the
    pins must be written off as well. At most 12,000 pulses and 30 min per wave; DMA may cut a
    single delay of more than ~268 s short, so long delays are split.
  - GPSET/GPCLR (the bank writes) set a pin's output latch even while it is an input; making it
    an output afterwards drives the latched level, so a pump never twitches on at connect.

Safety rules built on those facts:
  - Halt writes every pump off (one bank write) BEFORE stopping the wave, stops it, writes off
    again (a later-starting pump the wave switched on in between), then reads the bank back.
    A daemon that hangs or drops between two of these leaves the pins off, or a wave that still
    ends the pour by itself and that the reconnect stops.
  - After a loss while a pump may be on, the supervisor reconnects at heartbeat pace (not the
    backoff), stops any wave and switches every pump off the moment the daemon answers, and logs
    how long a pump may have run unattended.
  - The first connection never halts, nor writes the pins of, a wave found playing (another
    process started it, or a barmaid that crashed mid-pour): the driver stays unavailable and
    `playing()` True until it ends by itself, then switches every pump off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Optional

import pigpio

from ..config import DriverConfig
from ..errors import PourRejected, PumpsUnavailable
from . import daemon
from .base import Plan, spans, switches
from .daemon import LOST, DaemonDriver, TimedSockets, Unreachable, probe

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: How often `force_off` asks whether a pour it waits for still plays.
POLL = 0.05
#: Longest delay in one pulse: DMA may cut a single delay of more than ~268 s short.
MAX_DELAY_US = 60_000_000

# pigpio.pi() opens two sockets and waits for the daemon's answers without a timeout.
pigpio.socket = TimedSockets()


class _NotOff(Exception):
    """The bank read back after switching off shows a pump still on."""


def _bank_off(pi: pigpio.pi, mask: int, off_level: int) -> None:
    """Every pin of the mask to its off level, at one instant."""
    (pi.set_bank_1 if off_level else pi.clear_bank_1)(mask)


def _switch_off(pi: pigpio.pi, gpios: Sequence[int], off_level: int, *, outputs: bool) -> None:
    """Pumps off, wave stopped, pumps off again, read back.

    With `outputs`, also makes every pin an output (after its latch holds the off level).

    Raises:
        _NotOff: the read-back shows a pump on; pigpio.error or a LOST error from the client.
    """
    mask = sum(1 << gpio for gpio in gpios)
    _bank_off(pi, mask, off_level)
    pi.wave_tx_stop()
    _bank_off(pi, mask, off_level)
    if outputs:
        for gpio in gpios:
            pi.set_mode(gpio, pigpio.OUTPUT)
    levels = pi.read_bank_1() & mask
    if levels != (mask if off_level else 0):
        on = [g for g in gpios if bool(levels >> g & 1) != bool(off_level)]
        raise _NotOff(f"GPIO {', '.join(map(str, on))} still read on after being switched off")
    pi.wave_clear()


def _on_pins(pi: pigpio.pi, gpios: Sequence[int], off_level: int) -> list[int]:
    """The pump pins that read on now (outputs at the on level, or inputs read so)."""
    bank = pi.read_bank_1()
    return [g for g in gpios if (bank >> g & 1) != off_level]


class PigpioDriver(DaemonDriver):
    """Pumps on GPIOs of a Raspberry Pi, through pigpiod, reconnecting on its own."""

    DAEMON = "the pigpio daemon"
    SERVICE = "pigpiod"
    ERROR = pigpio.error
    FAULTS = (_NotOff,)
    log = log

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float, config: DriverConfig) -> None:
        self._limits = (0, 0)  # (max pulses, max micros) of the connected daemon
        #: A wave we sent may still drive pumps: set by pour, cleared by a confirmed halt.
        self._ours = False
        #: Our wave still plays (as of the last pour, halt or heartbeat).
        self._playing = False
        #: A wave found playing at connect: not ours to halt; no pours until it ends.
        self._found = False
        super().__init__(gpios, max_pump_seconds, config)

    @property
    def available(self) -> bool:
        return self._conn is not None and not self._found

    def playing(self) -> bool:
        return self._found or self._playing

    def check(self, plan: Plan) -> None:
        super().check(plan)
        max_pulses, max_micros = self._limits
        if not max_pulses:
            return  # not connected: pour() will say so before anything moves
        if len(self._pulses(plan)) > max_pulses:
            raise PourRejected(f"a pour of {len(plan)} pumps needs more than the daemon's {max_pulses} pulses")
        longest = round(max(span.stop for span in spans(plan).values()) * 1e6)
        if longest > max_micros:
            raise PourRejected(
                f"a pour of {longest / 1e6:.1f} s is longer than the daemon's longest wave ({max_micros / 1e6:.0f} s)"
            )

    def pour(self, plan: Plan) -> float:
        self.check(plan)
        with self._lock:
            pi = self._require()
            try:
                pi.wave_tx_stop()
                pi.wave_clear()
                pi.wave_add_generic(self._pulses(plan))
                wave = pi.wave_create()
                self._ours = True  # from here on the pins may move
                # pigpio.error: the daemon refused the wave (pulses, control blocks): nothing moved.
                pi.wave_send_once(wave)
            except pigpio.error as exc:
                self._safe_off(pi)
                raise PourRejected(f"the pigpio daemon cannot play this pour: {exc}") from None
            except LOST as exc:
                raise self._lost_sending(exc, sent=self._ours) from None
            # Taken after the send: the wave started no later, so nothing ends it early.
            t0 = time.monotonic()
            self._playing = True
        return t0

    def halt(self) -> None:
        with self._lock:
            if self._found:
                return  # a pour found playing at connect is not ours to cut
            if self._conn is not None:
                self._safe_off(self._conn)

    @classmethod
    def _force_off(cls, pi: pigpio.pi, gpios: Sequence[int], off_level: int, wait_for_pour_s: float) -> str:
        start = time.monotonic()
        busy = waited = bool(pi.wave_tx_busy()) and wait_for_pour_s > 0
        while busy and time.monotonic() - start < wait_for_pour_s:
            time.sleep(POLL)
            busy = bool(pi.wave_tx_busy())
        cut = bool(pi.wave_tx_busy())
        on = _on_pins(pi, gpios, off_level)
        _switch_off(pi, gpios, off_level, outputs=True)
        what = [f"every pump off on GPIO {', '.join(map(str, gpios))} ({'active-low' if off_level else 'active-high'})"]
        if waited:
            what.append(f"after waiting {time.monotonic() - start:.1f} s for a pour to end")
        if cut:
            what.append("a pour still playing was stopped")
        if on:
            what.append(f"GPIO {', '.join(map(str, on))} had been on")
        return "; ".join(what)

    # ---- waveform -------------------------------------------------------------------------

    def _levels(self, pumps: Sequence[int], on: bool) -> tuple[int, int]:
        """(set mask, clear mask) that switch these pumps on or off."""
        mask = sum(1 << self.gpios[p] for p in pumps)
        high = on != bool(self.off_level)
        return (mask, 0) if high else (0, mask)

    def _pulses(self, plan: Plan) -> list[pigpio.pulse]:
        """One pulse per instant at which pumps switch, then the delay to the next instant."""
        instants: dict[int, tuple[list[int], list[int]]] = {}
        for at, pump, on in switches(plan):
            instants.setdefault(round(at * 1e6), ([], []))[0 if on else 1].append(pump)
        times = sorted(instants)
        pulses = [] if times[0] == 0 else [pigpio.pulse(0, 0, times[0])]
        for i, at in enumerate(times):
            ons, offs = instants[at]
            on_set, on_clear = self._levels(ons, True)
            off_set, off_clear = self._levels(offs, False)
            delay = times[i + 1] - at if i + 1 < len(times) else 0
            pulses += self._wait((on_set | off_set, on_clear | off_clear), delay)
        return pulses

    @staticmethod
    def _wait(levels: tuple[int, int], delay: int) -> list[pigpio.pulse]:
        """A level change followed by `delay` µs, split into pulses of at most MAX_DELAY_US."""
        pulses = [pigpio.pulse(*levels, min(delay, MAX_DELAY_US))]
        delay -= MAX_DELAY_US
        while delay > 0:
            pulses.append(pigpio.pulse(0, 0, min(delay, MAX_DELAY_US)))
            delay -= MAX_DELAY_US
        return pulses

    # ---- connection -----------------------------------------------------------------------

    @classmethod
    def _open(cls, host: str, port: int, gpios: Sequence[int], off_level: int) -> pigpio.pi:
        """One bounded connection attempt, without pigpio's notification thread."""
        probe(host, port)  # pigpio.pi() never raises: probe first, to say why it cannot connect
        pi = pigpio.pi(host, port, show_errors=False)
        if not pi.connected:
            raise Unreachable("the daemon did not answer")
        notify, pi._notify = pi._notify, None
        notify.stop()
        notify.join(daemon.COMMAND_TIMEOUT)
        return pi

    @staticmethod
    def _close_conn(pi: pigpio.pi) -> None:
        """Closes a pigpio client, even one whose daemon is gone."""
        try:
            pi.stop()
        except LOST:
            pass

    def _require(self) -> pigpio.pi:
        if self._found:
            raise PumpsUnavailable(
                "the pumps are unavailable: a pour started before barmaid connected (by another process,"
                " or a barmaid that stopped mid-pour) is still playing; retry when it ends"
            )
        if self._conn is None:
            raise PumpsUnavailable(self._unavailable(self.host, self.port, self._why_not))
        return self._conn

    def _attach(self, pi: pigpio.pi) -> tuple[bool, bool, list[int], tuple[int, int], object]:
        """Every pump off (unless a found pour plays); reads the daemon's limits."""
        # A found wave is left alone, unless we lost the daemon during a pour of ours: then
        # barmaid has already ended that action and the wave (if it lives) is ours to stop.
        busy = bool(pi.wave_tx_busy())
        found = busy and self._lost_at is None
        on = [] if self._lost_at is None else _on_pins(pi, self.gpios, self.off_level)
        if not found:
            _switch_off(pi, self.gpios, self.off_level, outputs=True)
        limits = (pi.wave_get_max_pulses(), pi.wave_get_max_micros())
        return busy, found, on, limits, pi.get_pigpio_version()

    def _attached(self, pi: pigpio.pi, state: Any, lost_at: Optional[float]) -> None:
        busy, self._found, on, self._limits, version = state
        self._ours = self._playing = False
        log.info(
            "connected to pigpio daemon v%s at %s:%d; %s on GPIO %s (%s)",
            version,
            self.host,
            self.port,
            "a pour found playing is left to end by itself, pumps untouched" if self._found else "pumps off",
            ", ".join(map(str, self.gpios)),
            "active-low" if self.off_level else "active-high",
        )
        if lost_at is not None:
            self._report_unattended(time.monotonic() - lost_at, on, busy)

    def _report_unattended(self, seconds: float, on: list[int], wave: bool) -> None:
        if on:
            log.error(
                "GPIO %s found ON %.1f s after the pigpio daemon was lost mid-pour (%s): those pumps"
                " may have run unattended up to that long; switched every pump off",
                ", ".join(map(str, on)),
                seconds,
                "its wave was still timing them, now stopped" if wave else "no wave was timing them",
            )
        else:
            log.warning(
                "every pump found off %.1f s after the pigpio daemon was lost mid-pour (its wave ended"
                " the pour, or nothing was on): no pump ran unattended",
                seconds,
            )

    def _beat(self, pi: pigpio.pi) -> bool:
        """Asks whether the wave still plays; a missing or wrong answer is a fault."""
        try:
            busy = bool(pi.wave_tx_busy())
        except pigpio.error as exc:
            log.error("the pigpio daemon answered the heartbeat with an error (%s): switching off", exc)
            lost_mid_pour = self._playing
            if not self._found:  # a found pour is never ours to cut, not even now
                self._safe_off(pi)
            if self._conn is not None:
                self._lose(exc)
            return lost_mid_pour
        except LOST as exc:
            lost_mid_pour = self._playing
            self._lose(exc)
            return lost_mid_pour
        self._playing = self._playing and busy
        if self._found and not busy:
            self._end_found(pi)
        return False

    def _end_found(self, pi: pigpio.pi) -> None:
        """The pour found playing at connect has ended by itself: now every pump off."""
        try:
            _switch_off(pi, self.gpios, self.off_level, outputs=True)
        except (pigpio.error, _NotOff, *LOST) as exc:
            self._lose(exc)
            return
        self._found = False
        log.info("the pour found playing at connect has ended; pumps off, ready to pour")

    def _may_drive_pumps(self) -> bool:
        return self._ours

    def _reset(self) -> None:
        self._playing = self._found = False

    def _safe_off(self, pi: pigpio.pi) -> None:
        """Every pump off, the wave stopped, off again, read back. Any failure is a fault: the
        connection is dropped and the supervisor switches the pumps off when it reconnects."""
        try:
            _switch_off(pi, self.gpios, self.off_level, outputs=False)
        except (pigpio.error, _NotOff) as exc:
            log.error("the pigpio daemon did not switch the pumps off (%s); reconnecting to retry", exc)
            self._lose(exc)
        except LOST as exc:
            self._lose(exc)
        else:
            self._ours = self._playing = False

"""Real pumps through the pigpio daemon, with every pour timed by the daemon itself.

A pour is one waveform played by DMA inside pigpiod: all its pumps on at one instant, each off at
its own microsecond. If barmaid crashes mid-pour, the pumps still stop on time (GPIO levels set
through pigpiod outlive the client, so sleeps in this process would leave them running).

What the pigpio client and daemon (client 1.78, daemon v79) do that this module works around:
  - `pigpio.pi()` does not raise when the daemon is unreachable: it sets `connected = False` and
    the next call fails with AttributeError. We probe the port first, to say why.
  - Its sockets have no timeout: a hung daemon blocks the caller for ever. Every socket pigpio
    opens here gets COMMAND_TIMEOUT (see `_TimedSockets`); a timeout counts as a lost daemon.
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
import socket
import struct
import threading
import time
from typing import Optional, Sequence

import pigpio

from ..config import DriverConfig
from ..errors import PourRejected, PumpsUnavailable
from .base import Driver, Plan, spans, switches

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

#: pigpio's sockets have no timeout; ours bound every command and the connect.
COMMAND_TIMEOUT = 2.0
#: How often the daemon is asked whether it is still there (and, after a loss with a pump
#: possibly on, how often a reconnect is tried).
HEARTBEAT = 0.25
#: Reconnect backoff when no pump can be on: from the first to the last, doubling.
BACKOFF = (0.5, 10.0)
#: How often `force_off` asks whether a pour it waits for still plays.
POLL = 0.05
#: Longest delay in one pulse: DMA may cut a single delay of more than ~268 s short.
MAX_DELAY_US = 60_000_000
#: What a lost daemon looks like through the pigpio client: no error of its own.
_LOST = (OSError, struct.error, AttributeError, TypeError)


class _TimedSockets:
    """The socket module as pigpio sees it, with a timeout on every connection it opens.

    pigpio.pi() opens two sockets and waits for the daemon's answers without a timeout: a hung
    daemon would hold the reconnect for ever. Only pigpio's own module sees this.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)

    @staticmethod
    def create_connection(address: tuple[str, int], timeout: object = None) -> socket.socket:
        return socket.create_connection(address, COMMAND_TIMEOUT)


pigpio.socket = _TimedSockets()


class _NotOff(Exception):
    """The bank read back after switching off shows a pump still on."""


class _Unreachable(Exception):
    """No pigpio daemon answers; the message says why."""


def _open(host: str, port: int) -> pigpio.pi:
    """One bounded connection attempt, without pigpio's notification thread.

    Raises:
        _Unreachable: saying why.
    """
    try:
        # pigpio.pi() never raises: probe first, to say why it cannot connect.
        socket.create_connection((host, port), timeout=COMMAND_TIMEOUT).close()
    except OSError as exc:
        raise _Unreachable(exc.strerror or str(exc)) from None
    pi = pigpio.pi(host, port, show_errors=False)
    if not pi.connected:
        raise _Unreachable("the daemon did not answer")
    notify, pi._notify = pi._notify, None
    notify.stop()
    notify.join(COMMAND_TIMEOUT)
    return pi


def _discard(pi: pigpio.pi) -> None:
    """Closes a pigpio client, even one whose daemon is gone."""
    try:
        pi.stop()
    except _LOST:
        pass


def _bank_off(pi: pigpio.pi, mask: int, off_level: int) -> None:
    """Every pin of the mask to its off level, at one instant."""
    (pi.set_bank_1 if off_level else pi.clear_bank_1)(mask)


def _switch_off(pi: pigpio.pi, gpios: Sequence[int], off_level: int, *, outputs: bool) -> None:
    """Pumps off, wave stopped, pumps off again, read back.

    With `outputs`, also makes every pin an output (after its latch holds the off level).

    Raises:
        _NotOff: the read-back shows a pump on; pigpio.error or a _LOST error from the client.
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


class PigpioDriver(Driver):
    """Pumps on GPIOs of a Raspberry Pi, through pigpiod, reconnecting on its own."""

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float, config: DriverConfig) -> None:
        super().__init__(gpios, max_pump_seconds)
        self.host, self.port = config.daemon_address()
        self.off_level = 1 if config.active_low else 0
        self._lock = threading.RLock()
        self._pi: Optional[pigpio.pi] = None
        self._limits = (0, 0)  # (max pulses, max micros) of the connected daemon
        #: A wave we sent may still drive pumps: set by pour, cleared by a confirmed halt.
        self._ours = False
        #: Our wave still plays (as of the last pour, halt or heartbeat).
        self._playing = False
        #: A wave found playing at connect: not ours to halt; no pours until it ends.
        self._found = False
        #: When the daemon was lost while a pump may have been on; None otherwise.
        self._lost_at: Optional[float] = None
        self._why_not = "not connected yet"
        self._closed = threading.Event()
        self._connect()
        self._supervisor = threading.Thread(target=self._supervise, name="barmaid-pigpio", daemon=True)
        self._supervisor.start()

    @classmethod
    def force_off(cls, gpios: Sequence[int], driver_config: DriverConfig, wait_for_pour_s: float) -> str:
        """`barmaid off`: one connection; waits up to `wait_for_pour_s` for a playing wave to end
        by itself, then stops any wave, writes every pump off and reads it back.

        Returns:
            One line saying what was done.
        Raises:
            PumpsUnavailable: the daemon cannot be reached, or did not switch the pumps off.
        """
        host, port = driver_config.daemon_address()
        off_level = 1 if driver_config.active_low else 0
        try:
            pi = _open(host, port)
        except _Unreachable as exc:
            raise PumpsUnavailable(
                f"the pigpio daemon at {host}:{port} cannot be reached ({exc});"
                " start it with 'sudo systemctl enable --now pigpiod'"
            ) from None
        try:
            start = time.monotonic()
            busy = waited = bool(pi.wave_tx_busy()) and wait_for_pour_s > 0
            while busy and time.monotonic() - start < wait_for_pour_s:
                time.sleep(POLL)
                busy = bool(pi.wave_tx_busy())
            cut = bool(pi.wave_tx_busy())
            on = _on_pins(pi, gpios, off_level)
            _switch_off(pi, gpios, off_level, outputs=True)
        except (pigpio.error, _NotOff, *_LOST) as exc:
            raise PumpsUnavailable(f"the pigpio daemon at {host}:{port} did not switch the pumps off: {exc}") from None
        finally:
            _discard(pi)
        what = [f"every pump off on GPIO {', '.join(map(str, gpios))} ({'active-low' if off_level else 'active-high'})"]
        if waited:
            what.append(f"after waiting {time.monotonic() - start:.1f} s for a pour to end")
        if cut:
            what.append("a pour still playing was stopped")
        if on:
            what.append(f"GPIO {', '.join(map(str, on))} had been on")
        return f"pigpio daemon at {host}:{port}: " + "; ".join(what)

    @property
    def available(self) -> bool:
        return self._pi is not None and not self._found

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
            except _LOST as exc:
                self._lose(exc)
                raise PumpsUnavailable(
                    f"lost the pigpio daemon while starting the pour ({exc})", maybe_started=True
                ) from None
            # Taken after the send: the wave started no later, so nothing ends it early.
            t0 = time.monotonic()
            self._playing = True
        return t0

    def halt(self) -> None:
        with self._lock:
            if self._found:
                return  # a pour found playing at connect is not ours to cut
            if self._pi is not None:
                self._safe_off(self._pi)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self.halt()
            if self._pi is not None:
                _discard(self._pi)
                self._pi = None
            if self._lost_at is not None:
                log.error(
                    "closing without the pigpio daemon at %s:%d: a pump may still be on;"
                    " switch them off with 'barmaid off'",
                    self.host,
                    self.port,
                )
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=COMMAND_TIMEOUT + 1)

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

    def _require(self) -> pigpio.pi:
        if self._found:
            raise PumpsUnavailable(
                "the pumps are unavailable: a pour started before barmaid connected (by another process,"
                " or a barmaid that stopped mid-pour) is still playing; retry when it ends"
            )
        if self._pi is None:
            raise PumpsUnavailable(
                f"the pumps are unavailable: the pigpio daemon at {self.host}:{self.port} cannot be reached"
                f" ({self._why_not}); start it with 'sudo systemctl start pigpiod'"
            )
        return self._pi

    def _connect(self) -> bool:
        """One attempt: connect, every pump off (unless a found pour plays), read the limits."""
        try:
            pi = _open(self.host, self.port)
        except _Unreachable as exc:
            return self._unreachable(str(exc))
        try:
            # A found wave is left alone, unless we lost the daemon during a pour of ours: then
            # barmaid has already ended that action and the wave (if it lives) is ours to stop.
            busy = bool(pi.wave_tx_busy())
            found = busy and self._lost_at is None
            on = [] if self._lost_at is None else _on_pins(pi, self.gpios, self.off_level)
            if not found:
                _switch_off(pi, self.gpios, self.off_level, outputs=True)
            limits = (pi.wave_get_max_pulses(), pi.wave_get_max_micros())
            version = pi.get_pigpio_version()
        except (pigpio.error, _NotOff, *_LOST) as exc:
            _discard(pi)
            return self._unreachable(f"setting the pump pins failed: {exc}")
        with self._lock:
            if self._closed.is_set():  # closed while connecting: this client is not wanted
                _discard(pi)
                return False
            self._pi, self._limits, self._found = pi, limits, found
            self._ours = self._playing = False
            lost_at, self._lost_at = self._lost_at, None
        log.info(
            "connected to pigpio daemon v%s at %s:%d; %s on GPIO %s (%s)",
            version,
            self.host,
            self.port,
            "a pour found playing is left to end by itself, pumps untouched" if found else "pumps off",
            ", ".join(map(str, self.gpios)),
            "active-low" if self.off_level else "active-high",
        )
        if lost_at is not None:
            self._report_unattended(time.monotonic() - lost_at, on, busy)
        return True

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

    def _unreachable(self, why: str) -> bool:
        if why != self._why_not:
            log.warning(
                "pigpio daemon at %s:%d unreachable (%s): blends and refills are refused until it is up."
                " Start it with 'sudo systemctl enable --now pigpiod'; retrying in the background.",
                self.host,
                self.port,
                why,
            )
        self._why_not = why
        return False

    def _supervise(self) -> None:
        """Heartbeat while connected; reconnect while not: at heartbeat pace while a pump may be
        on, else with backoff. Survives any exception (it is the only one watching the daemon)."""
        delay = BACKOFF[0]
        while not self._closed.is_set():
            try:
                if self._pi is not None:
                    self._closed.wait(HEARTBEAT)
                    self._beat()
                elif self._connect():
                    delay = BACKOFF[0]
                elif self._lost_at is not None:
                    self._closed.wait(HEARTBEAT)
                else:
                    self._closed.wait(delay)
                    delay = min(delay * 2, BACKOFF[1])
            except Exception as exc:  # a bug here must not end supervision
                log.exception("pigpio supervisor: unexpected error; treating it as a lost daemon")
                with self._lock:
                    self._lose(exc)
                self._closed.wait(HEARTBEAT)

    def _beat(self) -> None:
        """Asks whether the wave still plays; a missing or wrong answer is a fault."""
        lost_mid_pour = False
        with self._lock:
            pi = self._pi
            if pi is None or self._closed.is_set():
                return
            try:
                busy = bool(pi.wave_tx_busy())
            except pigpio.error as exc:
                log.error("the pigpio daemon answered the heartbeat with an error (%s): switching off", exc)
                lost_mid_pour = self._playing
                if not self._found:  # a found pour is never ours to cut, not even now
                    self._safe_off(pi)
                if self._pi is not None:
                    self._lose(exc)
            except _LOST as exc:
                lost_mid_pour = self._playing
                self._lose(exc)
            else:
                self._playing = self._playing and busy
                if self._found and not busy:
                    self._end_found(pi)
        # Outside our lock: the owner will call halt() from its own lock.
        if lost_mid_pour and self.on_lost is not None:
            self.on_lost(f"the pigpio daemon at {self.host}:{self.port} went away ({self._why_not})")

    def _end_found(self, pi: pigpio.pi) -> None:
        """The pour found playing at connect has ended by itself: now every pump off."""
        try:
            _switch_off(pi, self.gpios, self.off_level, outputs=True)
        except (pigpio.error, _NotOff, *_LOST) as exc:
            self._lose(exc)
            return
        self._found = False
        log.info("the pour found playing at connect has ended; pumps off, ready to pour")

    def _lose(self, exc: BaseException) -> None:
        """Drops the connection; if a pump may be on, reconnect at heartbeat pace to switch it off."""
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or exc.__class__.__name__
        elif isinstance(exc, (struct.error, AttributeError)):  # read nothing from a closed socket
            reason = "the daemon closed the connection"
        else:
            reason = str(exc) or exc.__class__.__name__
        if self._ours and self._lost_at is None:
            self._lost_at = time.monotonic()
        log.error(
            "lost the pigpio daemon at %s:%d (%s); reconnecting%s",
            self.host,
            self.port,
            reason,
            " at once to switch every pump off" if self._lost_at is not None else "",
        )
        self._why_not = f"connection lost: {reason}"
        self._playing = self._found = False
        if self._pi is not None:
            _discard(self._pi)
            self._pi = None

    def _safe_off(self, pi: pigpio.pi) -> None:
        """Every pump off, the wave stopped, off again, read back. Any failure is a fault: the
        connection is dropped and the supervisor switches the pumps off when it reconnects."""
        try:
            _switch_off(pi, self.gpios, self.off_level, outputs=False)
        except (pigpio.error, _NotOff) as exc:
            log.error("the pigpio daemon did not switch the pumps off (%s); reconnecting to retry", exc)
            self._lose(exc)
        except _LOST as exc:
            self._lose(exc)
        else:
            self._ours = self._playing = False

"""Real pumps through the pigpio daemon, with every pour timed by the daemon itself.

A pour is one waveform played by DMA inside pigpiod: all its pumps on at one instant, each off at
its own microsecond. If barmaid crashes mid-pour, the pumps still stop on time (GPIO levels set
through pigpiod outlive the client, so sleeps in this process would leave them running).
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

#: pigpio's sockets have no timeout (P2); ours bound every command and the connect.
COMMAND_TIMEOUT = 2.0
#: How often the daemon is asked whether it is still there.
HEARTBEAT = 0.25
#: Reconnect backoff: from the first to the last, doubling.
BACKOFF = (0.5, 10.0)
#: Longest delay in one pulse: DMA may cut a single delay of more than ~268 s short.
MAX_DELAY_US = 60_000_000
#: What a lost daemon looks like through the pigpio client (P3): no error of its own.
_LOST = (OSError, struct.error, AttributeError, TypeError)


class _TimedSockets:
    """The socket module as pigpio sees it, with a timeout on every connection it opens.

    pigpio.pi() opens two sockets and waits for the daemon's answers without a timeout (P2): a
    hung daemon would hold the reconnect for ever. Only pigpio's own module sees this.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)

    @staticmethod
    def create_connection(address: tuple[str, int], timeout: object = None) -> socket.socket:
        return socket.create_connection(address, COMMAND_TIMEOUT)


pigpio.socket = _TimedSockets()


class PigpioDriver(Driver):
    """Pumps on GPIOs of a Raspberry Pi, through pigpiod, reconnecting on its own."""

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float, config: DriverConfig) -> None:
        super().__init__(gpios, max_pump_seconds)
        self.host, self.port = config.daemon_address()
        self.off_level = 1 if config.active_low else 0
        self._lock = threading.RLock()
        self._pi: Optional[pigpio.pi] = None
        self._limits = (0, 0)  # (max pulses, max micros) of the connected daemon
        self._pouring = False
        self._why_not = "not connected yet"
        self._closed = threading.Event()
        self._connect()
        self._supervisor = threading.Thread(target=self._supervise, name="barmaid-pigpio", daemon=True)
        self._supervisor.start()

    @property
    def available(self) -> bool:
        return self._pi is not None

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
                # pigpio.error: the daemon refused the wave (pulses, control blocks): nothing moved.
                pi.wave_send_once(wave)
            except pigpio.error as exc:
                self._safe_off(pi)
                raise PourRejected(f"the pigpio daemon cannot play this pour: {exc}") from None
            except _LOST as exc:
                self._lose(exc)
                raise PumpsUnavailable(f"lost the pigpio daemon while starting the pour ({exc})") from None
            # Taken after the send: the wave started no later, so nothing ends it early.
            t0 = time.monotonic()
            self._pouring = True
        return t0

    def halt(self) -> None:
        with self._lock:
            self._pouring = False
            if self._pi is not None:
                self._safe_off(self._pi)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self.halt()
            if self._pi is not None:
                self._discard(self._pi)
                self._pi = None
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
        if self._pi is None:
            raise PumpsUnavailable(
                f"the pumps are unavailable: the pigpio daemon at {self.host}:{self.port} cannot be reached"
                f" ({self._why_not}); start it with 'sudo systemctl start pigpiod'"
            )
        return self._pi

    def _connect(self) -> bool:
        """One attempt: connect, every pump off, read the daemon's limits. True on success."""
        try:
            # pigpio.pi() never raises (P1): probe first, to say why it cannot connect.
            socket.create_connection((self.host, self.port), timeout=COMMAND_TIMEOUT).close()
        except OSError as exc:
            return self._unreachable(exc.strerror or str(exc))
        pi = pigpio.pi(self.host, self.port, show_errors=False)
        if not pi.connected:
            return self._unreachable("the daemon did not answer")
        try:
            self._end_notifications(pi)
            pi.wave_tx_stop()
            for gpio in self.gpios:
                # Level first, then mode: the pin never drives the "on" level, even briefly.
                pi.write(gpio, self.off_level)
                pi.set_mode(gpio, pigpio.OUTPUT)
                pi.write(gpio, self.off_level)
            pi.wave_clear()
            limits = (pi.wave_get_max_pulses(), pi.wave_get_max_micros())
            version = pi.get_pigpio_version()
        except (pigpio.error, *_LOST) as exc:
            self._discard(pi)
            return self._unreachable(f"setting the pump pins failed: {exc}")
        with self._lock:
            self._pi, self._limits = pi, limits
        log.info(
            "connected to pigpio daemon v%s at %s:%d; pumps off on GPIO %s (%s)",
            version,
            self.host,
            self.port,
            ", ".join(map(str, self.gpios)),
            "active-low" if self.off_level else "active-high",
        )
        return True

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
        """Heartbeat while connected; reconnect with backoff while not."""
        delay = BACKOFF[0]
        while not self._closed.is_set():
            if self._pi is None:
                if self._connect():
                    delay = BACKOFF[0]
                    continue
                self._closed.wait(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            self._closed.wait(HEARTBEAT)
            lost_mid_pour = None
            with self._lock:
                pi = self._pi
                if pi is None or self._closed.is_set():
                    continue
                try:
                    pi.wave_tx_busy()
                except _LOST as exc:
                    lost_mid_pour = self._pouring
                    self._lose(exc)
            # Outside our lock: the owner will call halt() from its own lock.
            if lost_mid_pour and self.on_lost is not None:
                self.on_lost(f"the pigpio daemon at {self.host}:{self.port} went away ({self._why_not})")

    def _lose(self, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or exc.__class__.__name__
        else:  # struct.error, AttributeError: the client read nothing from a closed socket
            reason = "the daemon closed the connection"
        log.error("lost the pigpio daemon at %s:%d (%s); reconnecting", self.host, self.port, reason)
        self._why_not = f"connection lost: {reason}"
        self._pouring = False
        if self._pi is not None:
            self._discard(self._pi)
            self._pi = None

    def _safe_off(self, pi: pigpio.pi) -> None:
        """Stops the wave and writes every pump off at one instant; a dead daemon is noted, not raised."""
        mask = sum(1 << gpio for gpio in self.gpios)
        try:
            pi.wave_tx_stop()
            (pi.set_bank_1 if self.off_level else pi.clear_bank_1)(mask)
            pi.wave_clear()
        except pigpio.error as exc:
            log.error("the pigpio daemon refused to switch the pumps off: %s", exc)
        except _LOST as exc:
            self._lose(exc)

    @staticmethod
    def _end_notifications(pi: pigpio.pi) -> None:
        """Ends pigpio's notification thread: barmaid needs no GPIO callbacks, and on a dead
        daemon's socket that thread spins at 100 % CPU (P3)."""
        notify, pi._notify = pi._notify, None
        notify.stop()
        notify.join(COMMAND_TIMEOUT)

    @staticmethod
    def _discard(pi: pigpio.pi) -> None:
        """Closes a pigpio client, even one whose daemon is gone."""
        try:
            pi.stop()
        except _LOST:
            pass

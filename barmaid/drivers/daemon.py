"""What the pigpio and rgpio drivers share: pumps timed by a GPIO daemon barmaid talks to over TCP.

Both daemons (pigpiod, rgpiod) play a whole pour by themselves, so it ends on time even if barmaid
dies; and both clients (pigpio, rgpio) fail the same ways, which this module handles once:
  - their sockets have no timeout, so a hung daemon would block barmaid for ever: every socket the
    client opens gets COMMAND_TIMEOUT (`TimedSockets`), and a timeout counts as a lost daemon;
  - a lost daemon shows up as OSError, struct.error, AttributeError or TypeError (`LOST`), never
    as the client's own error class, and the client does not notice: a supervisor thread asks the
    daemon every HEARTBEAT whether it is still there;
  - GPIO levels outlive the client and the daemon: after a loss while a pump may be on, the
    supervisor reconnects at heartbeat pace (not the backoff) to switch it off the moment the
    daemon answers, and the drivers log how long it may have run unattended.

`DaemonDriver` is that supervisor and its connection bookkeeping; each subclass brings the
daemon's own commands (how to connect, switch every pump off, play a pour, beat).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Optional

from ..config import DriverConfig
from ..errors import PumpsUnavailable
from .base import Driver

#: Bound on the connect and on every command (the clients' sockets have none).
COMMAND_TIMEOUT = 2.0
#: How often the daemon is asked whether it is still there (and, after a loss with a pump
#: possibly on, how often a reconnect is tried).
HEARTBEAT = 0.25
#: Reconnect backoff when no pump can be on: from the first to the last, doubling.
BACKOFF = (0.5, 10.0)
#: What a lost daemon looks like through either client: no error of its own.
LOST = (OSError, struct.error, AttributeError, TypeError)


class TimedSockets:
    """The socket module as a daemon client sees it (`client.socket = TimedSockets()`), with
    COMMAND_TIMEOUT on every connection it opens. Only the client's own module sees this."""

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)

    @staticmethod
    def create_connection(address: tuple[str, int], timeout: object = None) -> socket.socket:
        return socket.create_connection(address, COMMAND_TIMEOUT)


class Unreachable(Exception):
    """The daemon cannot be used now; the message says why."""


def probe(host: str, port: int) -> None:
    """One bounded TCP connect: the clients hide why they cannot connect, this says it.

    Raises:
        Unreachable: with the reason (refused, timed out, no such host).
    """
    try:
        socket.create_connection((host, port), timeout=COMMAND_TIMEOUT).close()
    except OSError as exc:
        raise Unreachable(exc.strerror or str(exc)) from None


def loss_reason(exc: BaseException) -> str:
    """Why the connection is gone, in words (the clients read nothing from a closed socket)."""
    if isinstance(exc, socket.timeout):
        return f"no answer within {COMMAND_TIMEOUT:g} s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or exc.__class__.__name__
    if isinstance(exc, (struct.error, AttributeError)):
        return "the daemon closed the connection"
    return str(exc) or exc.__class__.__name__


class DaemonDriver(Driver):
    """A driver whose pours a GPIO daemon plays: connects, beats, reconnects on its own.

    State shared with subclasses, all under `_lock`: `_conn` (the live connection or None),
    `_lost_at` (when the daemon was lost while a pump may have been on), `_why_not`.
    """

    #: How messages name the daemon, and its systemd unit.
    DAEMON: ClassVar[str]
    SERVICE: ClassVar[str]
    #: The client's error class: the daemon answered, but refused.
    ERROR: ClassVar[type[Exception]]
    #: Errors of the subclass's own that mean "the pumps did not go off".
    FAULTS: ClassVar[tuple[type[Exception], ...]] = ()

    @classmethod
    def _faults(cls) -> tuple[type[BaseException], ...]:
        """Everything a daemon's answer (or its absence) can raise: an error reply, a fault, a loss."""
        return (cls.ERROR, *cls.FAULTS, *LOST)
    log: ClassVar[logging.Logger]

    def __init__(self, gpios: Sequence[int], max_pump_seconds: float, config: DriverConfig) -> None:
        super().__init__(gpios, max_pump_seconds)
        self.host, self.port = config.daemon_address()
        self.off_level = 1 if config.active_low else 0
        self._lock = threading.RLock()
        self._conn: Optional[Any] = None
        self._lost_at: Optional[float] = None
        self._why_not = "not connected yet"
        self._closed = threading.Event()
        self._connect()
        self._supervisor = threading.Thread(target=self._supervise, name=f"barmaid-{self.SERVICE}", daemon=True)
        self._supervisor.start()

    # ---- what each daemon does its own way ------------------------------------------------

    @classmethod
    @abstractmethod
    def _open(cls, host: str, port: int, gpios: Sequence[int], off_level: int) -> Any:
        """One bounded connection attempt; raises Unreachable."""

    @staticmethod
    @abstractmethod
    def _close_conn(conn: Any) -> None:
        """Closes a connection, even one whose daemon is gone."""

    @abstractmethod
    def _attach(self, conn: Any) -> Any:
        """On a new connection: pumps off (or a found pour left alone); returns what `_attached`
        needs. Raises ERROR, FAULTS, LOST or Unreachable."""

    @abstractmethod
    def _attached(self, conn: Any, state: Any, lost_at: Optional[float]) -> None:
        """`_attach`'s result made current (under the lock), then logged; `lost_at` as it was."""

    @abstractmethod
    def _beat(self, conn: Any) -> bool:
        """One heartbeat, under the lock; True if the daemon was lost mid-pour."""

    @abstractmethod
    def _may_drive_pumps(self) -> bool:
        """A pour of ours may still drive a pump (so a loss now must be chased)."""

    @abstractmethod
    def _reset(self) -> None:
        """Forgets what plays: the connection is being dropped."""

    @classmethod
    @abstractmethod
    def _force_off(cls, conn: Any, gpios: Sequence[int], off_level: int, wait_for_pour_s: float) -> str:
        """`force_off`'s work on an open connection; returns what was done, for the builder."""

    # ---- barmaid off ----------------------------------------------------------------------

    @classmethod
    def force_off(cls, gpios: Sequence[int], driver_config: DriverConfig, wait_for_pour_s: float = 0.0) -> str:
        """`barmaid off`: one connection; waits up to `wait_for_pour_s` for a playing pour to end
        by itself, then stops any pour, writes every pump off and reads it back.

        Returns:
            One line saying what was done.
        Raises:
            PumpsUnavailable: the daemon cannot be reached, or did not switch the pumps off.
        """
        host, port = driver_config.daemon_address()
        off_level = 1 if driver_config.active_low else 0
        conn = None
        try:
            conn = cls._open(host, port, gpios, off_level)
            return f"{cls.DAEMON} at {host}:{port}: " + cls._force_off(conn, gpios, off_level, wait_for_pour_s)
        except Unreachable as exc:
            raise PumpsUnavailable(cls._unavailable(host, port, str(exc))) from None
        except cls._faults() as exc:
            raise PumpsUnavailable(
                f"{cls.DAEMON} at {host}:{port} did not switch the pumps off: {exc.__class__.__name__}: {exc}"
            ) from None
        finally:
            if conn is not None:
                cls._close_conn(conn)

    @classmethod
    def _unavailable(cls, host: str, port: int, why: str) -> str:
        return (
            f"the pumps are unavailable: {cls.DAEMON} at {host}:{port} cannot be reached ({why});"
            f" start it with 'sudo systemctl enable --now {cls.SERVICE}'"
        )

    # ---- the driver -----------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self.halt()
            self._disconnect()
            if self._lost_at is not None:
                self.log.error(
                    "closing without %s at %s:%d: a pump may still be on; switch them off with 'barmaid off'",
                    self.DAEMON,
                    self.host,
                    self.port,
                )
        if threading.current_thread() is not self._supervisor:
            self._supervisor.join(timeout=COMMAND_TIMEOUT + 1)

    # ---- connection -----------------------------------------------------------------------

    def _connect(self) -> bool:
        """One attempt: connect, then `_attach`; False (and logged once) if it failed."""
        conn = None
        try:
            conn = self._open(self.host, self.port, self.gpios, self.off_level)
            state = self._attach(conn)
        except Unreachable as exc:
            if conn is not None:
                self._close_conn(conn)
            return self._unreachable(str(exc))
        except self._faults() as exc:
            if conn is not None:
                self._close_conn(conn)
            return self._unreachable(f"setting the pump pins failed: {exc.__class__.__name__}: {exc}")
        with self._lock:
            if self._closed.is_set():  # closed while connecting: this client is not wanted
                self._close_conn(conn)
                return False
            self._conn = conn
            lost_at, self._lost_at = self._lost_at, None
            self._attached(conn, state, lost_at)
        return True

    def _unreachable(self, why: str) -> bool:
        if why != self._why_not:
            self.log.warning(
                "%s at %s:%d unreachable (%s): blends and refills are refused until it is up."
                " Start it with 'sudo systemctl enable --now %s'; retrying in the background.",
                self.DAEMON,
                self.host,
                self.port,
                why,
                self.SERVICE,
            )
        self._why_not = why
        return False

    def _supervise(self) -> None:
        """Heartbeat while connected; reconnect while not: at heartbeat pace while a pump may be
        on, else with backoff. Survives any exception (it is the only one watching the daemon)."""
        delay = BACKOFF[0]
        while not self._closed.is_set():
            try:
                if self._conn is not None:
                    self._closed.wait(HEARTBEAT)
                    self._heartbeat()
                elif self._connect():
                    delay = BACKOFF[0]
                elif self._lost_at is not None:
                    self._closed.wait(HEARTBEAT)
                else:
                    self._closed.wait(delay)
                    delay = min(delay * 2, BACKOFF[1])
            except Exception as exc:  # a bug here must not end supervision
                self.log.exception("%s supervisor: unexpected error; treating it as a lost daemon", self.SERVICE)
                with self._lock:
                    self._lose(exc)
                self._closed.wait(HEARTBEAT)

    def _heartbeat(self) -> None:
        with self._lock:
            if self._conn is None or self._closed.is_set():
                return
            lost_mid_pour = self._beat(self._conn)
        # Outside our lock: the owner will call halt() from its own lock.
        if lost_mid_pour and self.on_lost is not None:
            self.on_lost(f"{self.DAEMON} at {self.host}:{self.port} went away ({self._why_not})")

    def _lose(self, exc: BaseException, pump_may_be_on: bool = False) -> None:
        """The connection is gone: drop it; if a pump may be on, reconnect at heartbeat pace."""
        reason = loss_reason(exc)
        self._mark_lost(pump_may_be_on)
        self.log.error(
            "lost %s at %s:%d (%s); reconnecting%s",
            self.DAEMON,
            self.host,
            self.port,
            reason,
            " at once to switch every pump off" if self._lost_at is not None else "",
        )
        self._drop(f"connection lost: {reason}")

    def _lost_sending(self, exc: BaseException, sent: bool = True) -> PumpsUnavailable:
        """The connection went while a pour was being started: dropped (chased at heartbeat pace
        when `sent`), and the error to raise, in words; `maybe_started` when the pour was sent."""
        self._lose(exc, pump_may_be_on=sent)
        return PumpsUnavailable(
            f"lost {self.DAEMON} at {self.host}:{self.port} while starting the pour ({loss_reason(exc)})",
            maybe_started=sent,
        )

    def _drop(self, why: str, pump_may_be_on: bool = False) -> None:
        """Drops the connection (the supervisor connects again, which switches every pump off)."""
        self._mark_lost(pump_may_be_on)
        self._why_not = why
        self._reset()
        self._disconnect()

    def _mark_lost(self, pump_may_be_on: bool) -> None:
        if (pump_may_be_on or self._may_drive_pumps()) and self._lost_at is None:
            self._lost_at = time.monotonic()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._close_conn(self._conn)
            self._conn = None

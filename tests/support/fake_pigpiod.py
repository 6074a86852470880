"""A fake pigpio daemon (pigpiod) that speaks the real socket protocol.

Why it exists: barmaid drives its pumps through the unmodified ``pigpio``
client library (1.78), which talks to pigpiod over TCP. Tests need that
exact client code path (its blocking sockets, its error mapping, its
notification thread) without a Raspberry Pi, and they need to see *when*
pins changed level. This fake listens on loopback, answers the commands
barmaid uses with the daemon's own return values and error codes, keeps
per-GPIO modes and levels, records every level change with a
``time.monotonic()`` timestamp, and plays waveforms on the clock in a
background thread that does not belong to any client connection, so a
wave keeps running when the client that started it disconnects or dies
(as DMA does on the real daemon).

Protocol (pigpio.c ``pthSocketThreadHandler``): each request is 16 bytes
``<IIII`` (cmd, p1, p2, p3) followed by p3 bytes of extension; each answer
is 16 bytes (cmd, p1, p2, res), res being a signed result sent as uint32.
An extension of 64 KiB or more makes the daemon close the connection. A
connection that sends NOIB becomes a notification socket: the answer
carries the handle, then 12-byte reports ``<HHII`` (seq, flags, tick,
levels of GPIO 0-31) follow whenever a GPIO selected by NB changes.

Numbers taken from pigpio.c/pigpio.h v79: at most 12000 pulses per wave
(the merge rejects a wave that reaches 12000, so 11999 fit), max micros
1800000000, max control blocks 4 * 53 * 118 = 25016. Control blocks (CB)
per wave, as in ``waveCBsOOLs``: 1 at the start, 1 per pulse that switches
any GPIO, 1 per non-zero delay (default DMA channel; a "lite" channel would
need more for long delays); waves share a pool of 25016 - 1180 CBs (1180
reserved for wave chains), checked at WVCRE -> PI_TOO_MANY_CBS.
By default only GPIO 2-27 may be changed (the daemon's mask on a Pi 3B/4B):
WRITE/MODES/PUD on others -> PI_NOT_PERMITTED, pulses touching them are
masked and WVAG answers PI_SOME_PERMITTED.

Deliberate simplifications: no PWM/servo/I2C/SPI/serial/scripts/wave
chains/serial waves (answered with PI_UNKNOWN_COMMAND); WVCRE refuses a
251st wave with PI_NO_WAVEFORM_ID (the real daemon does not check);
the maximum wave length is reported but not enforced (the real daemon
does not enforce it either). ``stop()`` behaves like the daemon exiting:
the running wave is halted and created waves are forgotten, but pin
modes and levels persist (they live in the hardware); ``restart()`` is
``stop()`` then ``start()`` on the same port.

Faults, each armed once and consumed when it fires (``stop()`` disarms
them): ``hang_after(cmd)`` executes and answers the next ``cmd``, then
stops answering anything while keeping every socket open (as ``pause()``);
``hang_at(cmd)`` executes the next ``cmd`` and answers neither it nor
anything after it (until ``resume()``); ``drop_at(cmd)`` executes the next
``cmd`` and closes its connection before the answer;
``drop_between(first, second)`` closes the connection, without executing
it, when a ``second`` request follows a ``first`` on that connection;
``fail(cmd, code)`` answers the next ``cmd`` with an error code without
executing it.

Run ``cd tests && python -m support.fake_pigpiod --port 8888`` to use it by hand.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from support.loopback import accept_each, listen

log = logging.getLogger(__name__)

# --- command numbers (pigpio.py _PI_CMD_*) -----------------------------------
CMD_MODES = 0
CMD_MODEG = 1
CMD_PUD = 2
CMD_READ = 3
CMD_WRITE = 4
CMD_BR1 = 10
CMD_BR2 = 11
CMD_BC1 = 12
CMD_BS1 = 14
CMD_TICK = 16
CMD_HWVER = 17
CMD_NB = 19
CMD_NP = 20
CMD_NC = 21
CMD_PIGPV = 26
CMD_WVCLR = 27
CMD_WVAG = 28
CMD_WVBSY = 32
CMD_WVHLT = 33
CMD_WVSM = 34
CMD_WVSP = 35
CMD_WVSC = 36
CMD_WVCRE = 49
CMD_WVDEL = 50
CMD_WVTX = 51
CMD_WVTXR = 52
CMD_WVNEW = 53
CMD_NOIB = 99
CMD_WVTXM = 100
CMD_WVTAT = 101

# --- error codes (pigpio.h) --------------------------------------------------
PI_BAD_GPIO = -3
PI_BAD_MODE = -4
PI_BAD_LEVEL = -5
PI_BAD_PUD = -6
PI_NO_HANDLE = -24
PI_BAD_HANDLE = -25
PI_BAD_WAVE_MODE = -33
PI_TOO_MANY_PULSES = -36
PI_NOT_PERMITTED = -41
PI_SOME_PERMITTED = -42
PI_BAD_WVSC_COMMND = -43
PI_BAD_WVSM_COMMND = -44
PI_BAD_WVSP_COMMND = -45
PI_BAD_WAVE_ID = -66
PI_TOO_MANY_CBS = -67
PI_TOO_MANY_OOL = -68
PI_EMPTY_WAVEFORM = -69
PI_NO_WAVEFORM_ID = -70
PI_UNKNOWN_COMMAND = -88

PI_WAVE_NOT_FOUND = 9998  # WVTAT: the wave being sent was deleted
PI_NO_TX_WAVE = 9999  # WVTAT: nothing is being sent

# --- constants ---------------------------------------------------------------
INPUT, OUTPUT = 0, 1
PUD_OFF, PUD_DOWN, PUD_UP = 0, 1, 2
MAX_GPIO = 53
NUM_GPIO = MAX_GPIO + 1
_ALL_GPIO = (1 << NUM_GPIO) - 1
_BANK1 = 0xFFFFFFFF

PIGPIO_VERSION = 79
DEFAULT_HW_REVISION = 0xA02082  # Raspberry Pi 3 Model B
DEFAULT_UPDATE_MASK = 0x0FFFFFFC  # GPIO 2-27, pigpiod's default on Pi 3B/4B

WAVE_MODE_ONE_SHOT, WAVE_MODE_REPEAT = 0, 1
WAVE_MODE_ONE_SHOT_SYNC, WAVE_MODE_REPEAT_SYNC = 2, 3

WAVE_MAX_PULSES = 12000
WAVE_MAX_MICROS = 30 * 60 * 1000000
_CBS_PER_OPAGE = 118
_OOL_PER_OPAGE = 79
_DMAO_PAGES = 4 * 53  # PI_WAVE_BLOCKS * PAGES_PER_BLOCK
WAVE_MAX_CBS = _DMAO_PAGES * _CBS_PER_OPAGE  # 25016
_NUM_WAVE_OOL = _DMAO_PAGES * _OOL_PER_OPAGE  # 16748
_WAVE_FIRST_CB = 10 * _CBS_PER_OPAGE  # PI_WAVE_COUNT_PAGES reserved for chains
_WAVE_FIRST_OOL = 10 * _OOL_PER_OPAGE
MAX_WAVES = 250
CMD_MAX_EXTENSION = 1 << 16
NOTIFY_SLOTS = 32

_REQ = struct.Struct("<IIII")
_REPORT = struct.Struct("<HHII")
_JOIN_TIMEOUT = 2.0

Pulse = tuple[int, int, int]  # (gpio_on mask, gpio_off mask, delay in us)


def _delay_cbs(delay: int) -> int:
    # waveDelayCBs() with the default (non-lite) secondary DMA channel
    return 1 if delay else 0


def wave_resources(pulses: list[Pulse]) -> tuple[int, int]:
    """(control blocks, on/off words) a created wave needs, as waveCBsOOLs()."""
    cbs, ools = 1, 0  # one delay CB at the start of the DMA chain
    for on, off, delay in pulses:
        ools += bool(on) + bool(off)
        cbs += (1 if (on or off) else 0) + _delay_cbs(delay)
    return cbs, ools


def merge_pulses(in1: list[Pulse], in2: list[Pulse]) -> tuple[list[Pulse], int, int]:
    """Interleave two pulse lists in time, as rawWaveAddGeneric() does.

    Returns (merged pulses, total micros, control blocks excluding the
    start CB); pulses due at the same time are ORed into one.
    """
    none = 1 << 64
    out: list[list[int]] = []
    streams = (in1, in2)
    taken = [0, 0]  # pulses of each stream merged so far
    due = [0 if stream else none for stream in streams]  # when each stream's next pulse starts
    t_now = t_max = 0
    cbs = 0
    while due != [none, none] and len(out) < WAVE_MAX_PULSES:
        first = min(due)
        if t_now < first:
            out[-1][2] += first - t_now
            t_now = first
        on = off = 0
        for k, stream in enumerate(streams):
            if due[k] == first:  # both streams at once: their pulses ORed into one
                pulse_on, pulse_off, d = stream[taken[k]]
                on, off = on | pulse_on, off | pulse_off
                due[k] = t_now + d
                taken[k] += 1
                t_max = max(t_max, due[k])
        delay, t_now = min(due) - t_now, min(due)
        out.append([on, off, delay])
        cbs += _delay_cbs(delay) + (1 if (on or off) else 0)
        for k, stream in enumerate(streams):
            if taken[k] >= len(stream):
                due[k] = none
    if t_now < t_max:
        out[-1][2] += t_max - t_now
        t_now = t_max
    return [(a, b, c) for a, b, c in out], t_now, cbs


@dataclass
class _Wave:
    pulses: list[Pulse]
    num_cb: int
    num_bool: int
    bot_cb: int
    bot_ool: int
    top_ool: int
    deleted: bool = False


@dataclass
class _Tx:
    """The wave being sent; replaced (never reused) on every new send."""

    wave_id: int
    pulses: list[Pulse]
    repeat: bool
    stop: threading.Event = field(default_factory=threading.Event)
    next: Optional[tuple[int, list[Pulse], bool]] = None  # queued by a SYNC send


@dataclass
class _Notify:
    conn: _Conn
    bits: int = 0
    running: bool = False
    seq: int = 0


@dataclass
class _Faults:
    """Armed faults: each fires once. See the module docstring."""

    hang_after: list[int] = field(default_factory=list)
    hang_at: list[int] = field(default_factory=list)
    drop_at: list[int] = field(default_factory=list)
    drop_between: list[tuple[int, int]] = field(default_factory=list)
    fail: list[tuple[int, int]] = field(default_factory=list)


class _Conn:
    """One client socket: a reader thread (commands) and a writer thread."""

    def __init__(self, cid: int, sock: socket.socket, port: int) -> None:
        self.id = cid
        self.sock = sock
        self.last_cmd: Optional[int] = None
        self.out: queue.SimpleQueue[Optional[bytes]] = queue.SimpleQueue()
        self.reader: Optional[threading.Thread] = None
        self.writer = threading.Thread(
            target=self._write_loop, name=f"fake-pigpiod-{port}-send-{cid}", daemon=True
        )

    def send(self, data: bytes) -> None:
        self.out.put(data)

    def _write_loop(self) -> None:
        while True:
            data = self.out.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                return  # peer gone; the reader notices and cleans up

    def abort(self) -> None:
        # wakes the reader's recv() and sends FIN, like a dying daemon
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FakePigpiod:
    """Fake pigpiod on loopback; see the module docstring."""

    SPIN_S = 0.001  # the player sleeps until this long before a deadline, then spins

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        hw_revision: int = DEFAULT_HW_REVISION,
        update_mask: int = DEFAULT_UPDATE_MASK,
        hang: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.hw_revision = hw_revision
        self.update_mask = update_mask & _ALL_GPIO
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._hang = threading.Event()
        if hang:
            self._hang.set()
        self._faults = _Faults()
        self._t0 = time.monotonic()
        # GPIO state as bitmasks; level = latch on outputs, input level otherwise
        self._modes = [INPUT] * NUM_GPIO
        self._outputs = 0
        self._latch = 0
        self._inputs = 0
        self._history: list[tuple[float, int, int]] = []
        self._max_lateness = 0.0
        self._commands: list[tuple[float, int, int, int, int]] = []
        # waves
        self._tx: Optional[_Tx] = None
        self._players: list[threading.Thread] = []
        self._player_seq = 0
        self._reset_waves()
        # network
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._conns: dict[int, _Conn] = {}
        self._conn_seq = 0
        self._notify: dict[int, _Notify] = {}
        self._handlers: dict[int, Callable[[_Conn, int, int, bytes], int]] = {
            CMD_MODES: self._cmd_modes,
            CMD_MODEG: self._cmd_modeg,
            CMD_PUD: self._cmd_pud,
            CMD_READ: self._cmd_read,
            CMD_WRITE: self._cmd_write,
            CMD_BR1: lambda c, a, b, e: self._level_bits() & _BANK1,
            CMD_BR2: lambda c, a, b, e: self._level_bits() >> 32,
            CMD_BC1: self._cmd_bc1,
            CMD_BS1: self._cmd_bs1,
            CMD_TICK: lambda c, a, b, e: self._tick(),
            CMD_HWVER: lambda c, a, b, e: self.hw_revision,
            CMD_PIGPV: lambda c, a, b, e: PIGPIO_VERSION,
            CMD_NOIB: self._cmd_noib,
            CMD_NB: self._cmd_nb,
            CMD_NP: self._cmd_np,
            CMD_NC: self._cmd_nc,
            CMD_WVCLR: self._cmd_wvclr,
            CMD_WVNEW: self._cmd_wvnew,
            CMD_WVAG: self._cmd_wvag,
            CMD_WVCRE: self._cmd_wvcre,
            CMD_WVDEL: self._cmd_wvdel,
            CMD_WVTX: lambda c, a, b, e: self._cmd_send(a, WAVE_MODE_ONE_SHOT),
            CMD_WVTXR: lambda c, a, b, e: self._cmd_send(a, WAVE_MODE_REPEAT),
            CMD_WVTXM: lambda c, a, b, e: self._cmd_send(a, b),
            CMD_WVBSY: lambda c, a, b, e: int(self._tx is not None),
            CMD_WVHLT: self._cmd_wvhlt,
            CMD_WVTAT: self._cmd_wvtat,
            CMD_WVSM: self._cmd_wvsm,
            CMD_WVSP: self._cmd_wvsp,
            CMD_WVSC: self._cmd_wvsc,
        }

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> FakePigpiod:
        """Listen (again) on host:port; port 0 picks a free one, kept for restarts."""
        with self._lock:
            if self._listener is not None:
                raise RuntimeError("FakePigpiod is already listening")
            lsock = listen(self.host, self.port)
            self.port = lsock.getsockname()[1]
            self._listener = lsock
            self._accept_thread = threading.Thread(
                target=accept_each, args=(lsock, lambda sock: self._admit(lsock, sock)),
                name=f"fake-pigpiod-{self.port}-accept", daemon=True,
            )
            self._accept_thread.start()
        log.info("fake pigpiod listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop like the daemon exiting: close everything, halt and forget waves."""
        self._close_listener()
        self._hang.clear()  # a hung daemon that exits no longer holds its sockets
        self.drop_connections()
        with self._lock:
            self._faults = _Faults()
            self._halt_locked()
            self._reset_waves()
        self._join_players()
        log.info("fake pigpiod on port %d stopped", self.port)

    def restart(self) -> None:
        """The daemon exits and comes back on the same port: waves are gone, levels stay."""
        self.stop()
        self.start()

    def __enter__(self) -> FakePigpiod:
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- fault injection -----------------------------------------------------

    def drop_connections(self, keep_listening: bool = True) -> int:
        """Close every client socket abruptly; returns how many were open.

        Waves and pin state are untouched. With keep_listening=False new
        connections are refused until start() is called again.
        """
        if not keep_listening:
            self._close_listener()
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.abort()
        for conn in conns:
            if conn.reader is not None and conn.reader is not threading.current_thread():
                conn.reader.join(_JOIN_TIMEOUT)
                if conn.reader.is_alive():
                    log.warning("connection thread %s did not end", conn.reader.name)
        return len(conns)

    def pause(self) -> None:
        """Hang: requests are still read but neither executed nor answered.

        Waves keep playing. The pigpio client has no socket timeout, so a
        call made now blocks until its socket gets one (pi.sl.s.settimeout)
        or the connection drops; pigpio.pi() itself blocks while paused.
        """
        self._hang.set()

    def resume(self) -> None:
        """Answer requests again (those read while paused stay unanswered)."""
        self._hang.clear()

    @property
    def paused(self) -> bool:
        return self._hang.is_set()

    def hang_after(self, cmd: int) -> None:
        """Execute and answer the next `cmd`, then answer nothing more (sockets stay open)."""
        with self._lock:
            self._faults.hang_after.append(cmd)

    def hang_at(self, cmd: int) -> None:
        """Execute the next `cmd` but never answer it, nor anything after it (until resume)."""
        with self._lock:
            self._faults.hang_at.append(cmd)

    def drop_at(self, cmd: int) -> None:
        """Execute the next `cmd`, then close its connection before the answer."""
        with self._lock:
            self._faults.drop_at.append(cmd)

    def drop_between(self, first: int, second: int) -> None:
        """Close a connection, without executing it, when `second` follows `first` on it."""
        with self._lock:
            self._faults.drop_between.append((first, second))

    def fail(self, cmd: int, code: int) -> None:
        """Answer the next `cmd` with the (negative) error `code`, without executing it."""
        with self._lock:
            self._faults.fail.append((cmd, code))

    def _take(self, armed: list, match: object) -> bool:
        with self._lock:
            if match in armed:
                armed.remove(match)
                return True
            return False

    def _failure(self, cmd: int) -> Optional[int]:
        with self._lock:
            for armed in self._faults.fail:
                if armed[0] == cmd:
                    self._faults.fail.remove(armed)
                    self._commands.append((time.monotonic(), cmd, 0, 0, armed[1]))
                    return armed[1]
            return None

    # --- inspection helpers for tests ----------------------------------------

    def levels(self) -> dict[int, int]:
        """Current level of every GPIO 0-53."""
        bits = self._level_bits()
        return {g: (bits >> g) & 1 for g in range(NUM_GPIO)}

    def level(self, gpio: int) -> int:
        return (self._level_bits() >> gpio) & 1

    def modes(self) -> dict[int, int]:
        with self._lock:
            return dict(enumerate(self._modes))

    def history(self, gpio: Optional[int] = None) -> list[tuple[float, int, int]]:
        """Level changes as (time.monotonic(), gpio, new level), oldest first."""
        with self._lock:
            if gpio is None:
                return list(self._history)
            return [h for h in self._history if h[1] == gpio]

    def clear_history(self) -> None:
        """Forget recorded level changes and the wave player's lateness."""
        with self._lock:
            self._history.clear()
            self._max_lateness = 0.0

    def max_lateness(self) -> float:
        """Worst delay (s) of a wave pulse behind its deadline since clear_history().

        Normally well under 0.1 ms; it grows only when the machine is too
        busy to run the player thread on time. Timing assertions can add it
        to their tolerance to stay meaningful on an overloaded machine.
        """
        with self._lock:
            return self._max_lateness

    def on_durations(self, gpio: int) -> list[float]:
        """Seconds each completed high period of gpio lasted, from history."""
        out, t_on = [], None
        for t, _, lvl in self.history(gpio):
            if lvl:
                t_on = t
            elif t_on is not None:
                out.append(t - t_on)
                t_on = None
        return out

    def set_input(self, gpio: int, level: int) -> None:
        """Drive the level an input (non-output) pin reads, e.g. a switch."""
        with self._lock:
            before = self._level_bits()
            self._inputs = (self._inputs | (1 << gpio)) if level else (self._inputs & ~(1 << gpio))
            self._commit(before)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
        """Wait until predicate() is true; re-checked on every state change.

        The predicate runs with the state lock held (it may call levels(),
        history() etc.). Returns the last result of predicate().
        """
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout))

    def wave_busy(self) -> bool:
        with self._lock:
            return self._tx is not None

    def current_wave(self) -> Optional[int]:
        """Id of the wave being sent, or None."""
        with self._lock:
            return None if self._tx is None else self._tx.wave_id

    def wave_pulses(self, wave_id: int) -> list[Pulse]:
        """Pulses of a created wave (after merging), as sent by the client."""
        with self._lock:
            return list(self._waves[wave_id].pulses)

    def pending_pulses(self) -> list[Pulse]:
        """Pulses added since the last WVCRE/WVNEW/WVCLR."""
        with self._lock:
            return list(self._pending)

    def command_log(self) -> list[tuple[float, int, int, int, int]]:
        """Executed requests as (time, cmd, p1, p2, result)."""
        with self._lock:
            return list(self._commands)

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # --- network -------------------------------------------------------------

    def _close_listener(self) -> None:
        with self._lock:
            lsock, self._listener = self._listener, None
            thread, self._accept_thread = self._accept_thread, None
        if lsock is not None:
            try:
                lsock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            except OSError:
                pass
            lsock.close()
        if thread is not None:
            thread.join(_JOIN_TIMEOUT)

    def _admit(self, lsock: socket.socket, sock: socket.socket) -> bool:
        with self._lock:
            if self._listener is not lsock:
                sock.close()
                return False
            self._conn_seq += 1
            conn = _Conn(self._conn_seq, sock, self.port)
            conn.reader = threading.Thread(
                target=self._serve, args=(conn,),
                name=f"fake-pigpiod-{self.port}-conn-{conn.id}", daemon=True,
            )
            self._conns[conn.id] = conn
            conn.writer.start()
            conn.reader.start()
            self._cond.notify_all()
        log.debug("connection %d", conn.id)
        return True

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _serve(self, conn: _Conn) -> None:
        try:
            while True:
                hdr = self._recv_exact(conn.sock, 16)
                if hdr is None:
                    break
                cmd, p1, p2, p3 = _REQ.unpack(hdr)
                ext = b""
                if p3:
                    if p3 >= CMD_MAX_EXTENSION:
                        # pigpiod: "ext too large", closes the socket
                        log.warning("conn %d: cmd %d extension %d bytes too large, closing",
                                    conn.id, cmd, p3)
                        break
                    ext = self._recv_exact(conn.sock, p3)
                    if ext is None:
                        break
                if self._hang.is_set():
                    log.debug("conn %d: paused, dropping cmd %d", conn.id, cmd)
                    continue
                if self._take(self._faults.drop_between, (conn.last_cmd, cmd)):
                    log.info("conn %d: dropping the connection before cmd %d", conn.id, cmd)
                    break
                res = self._failure(cmd)
                if res is None:
                    res = self._execute(conn, cmd, p1, p2, ext)
                if self._take(self._faults.drop_at, cmd):
                    log.info("conn %d: dropping the connection before answering cmd %d", conn.id, cmd)
                    break
                if self._take(self._faults.hang_at, cmd):
                    log.info("hanging at cmd %d, unanswered", cmd)
                    self._hang.set()
                    continue
                conn.send(_REQ.pack(cmd, p1, p2, res & 0xFFFFFFFF))
                conn.last_cmd = cmd
                if self._take(self._faults.hang_after, cmd):
                    log.info("hanging after cmd %d", cmd)
                    self._hang.set()
        finally:
            self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.pop(conn.id, None)
            for handle in [h for h, n in self._notify.items() if n.conn is conn]:
                del self._notify[handle]
            self._cond.notify_all()
        conn.out.put(None)
        conn.abort()
        conn.writer.join(_JOIN_TIMEOUT)
        conn.sock.close()
        log.debug("connection %d closed", conn.id)

    def _execute(self, conn: _Conn, cmd: int, p1: int, p2: int, ext: bytes) -> int:
        handler = self._handlers.get(cmd)
        with self._lock:
            res = PI_UNKNOWN_COMMAND if handler is None else handler(conn, p1, p2, ext)
            self._commands.append((time.monotonic(), cmd, p1, p2, res))
        if handler is None:
            log.warning("conn %d: unknown command %d", conn.id, cmd)
        else:
            log.debug("conn %d: cmd %d(%d, %d) -> %d", conn.id, cmd, p1, p2, res)
        return res

    # --- GPIO state (callers hold the lock) ----------------------------------

    def _tick(self) -> int:
        return int((time.monotonic() - self._t0) * 1e6) & 0xFFFFFFFF

    def _level_bits(self) -> int:
        with self._lock:
            return (self._latch & self._outputs) | (self._inputs & ~self._outputs & _ALL_GPIO)

    def _commit(self, before: int, now: Optional[float] = None) -> None:
        """Record changes since `before` (at time `now`), send reports, wake waiters."""
        after = self._level_bits()
        diff = before ^ after
        if diff:
            if now is None:
                now = time.monotonic()
            for g in range(NUM_GPIO):
                if (diff >> g) & 1:
                    self._history.append((now, g, (after >> g) & 1))
            if diff & _BANK1:
                self._report(diff & _BANK1, after & _BANK1)
        self._cond.notify_all()

    def _report(self, changed: int, levels: int) -> None:
        tick = self._tick()
        for n in self._notify.values():
            if n.running and (n.bits & changed):
                n.conn.send(_REPORT.pack(n.seq, 0, tick, levels))
                n.seq = (n.seq + 1) & 0xFFFF

    def _permit(self, gpio: int) -> bool:
        # myPermit(): numbers > 53 pass here and fail later with PI_BAD_GPIO
        return gpio > MAX_GPIO or bool((self.update_mask >> gpio) & 1)

    def _set_mode(self, gpio: int, mode: int) -> None:
        self._modes[gpio] = mode
        if mode == OUTPUT:
            self._outputs |= 1 << gpio
        else:
            self._outputs &= ~(1 << gpio)

    # --- commands (run with the lock held) -----------------------------------

    def _cmd_modes(self, conn: _Conn, gpio: int, mode: int, ext: bytes) -> int:
        if not self._permit(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        if mode > 7:
            return PI_BAD_MODE
        before = self._level_bits()
        self._set_mode(gpio, mode)
        self._commit(before)
        return 0

    def _cmd_modeg(self, conn: _Conn, gpio: int, _: int, ext: bytes) -> int:
        return PI_BAD_GPIO if gpio > MAX_GPIO else self._modes[gpio]

    def _cmd_pud(self, conn: _Conn, gpio: int, pud: int, ext: bytes) -> int:
        if not self._permit(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        if pud > PUD_UP:
            return PI_BAD_PUD
        before = self._level_bits()
        if pud == PUD_UP:
            self._inputs |= 1 << gpio
        elif pud == PUD_DOWN:
            self._inputs &= ~(1 << gpio)
        self._commit(before)
        return 0

    def _cmd_read(self, conn: _Conn, gpio: int, _: int, ext: bytes) -> int:
        return PI_BAD_GPIO if gpio > MAX_GPIO else (self._level_bits() >> gpio) & 1

    def _cmd_write(self, conn: _Conn, gpio: int, level: int, ext: bytes) -> int:
        if not self._permit(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        if level > 1:
            return PI_BAD_LEVEL
        before = self._level_bits()
        self._latch = (self._latch | (1 << gpio)) if level else (self._latch & ~(1 << gpio))
        self._set_mode(gpio, OUTPUT)  # gpioWrite() makes the pin an output
        self._commit(before)
        return 0

    def _cmd_bc1(self, conn: _Conn, bits: int, _: int, ext: bytes) -> int:
        mask = self.update_mask & _BANK1
        before = self._level_bits()
        self._latch &= ~(bits & mask)
        self._commit(before)
        return PI_SOME_PERMITTED if bits & ~mask else 0

    def _cmd_bs1(self, conn: _Conn, bits: int, _: int, ext: bytes) -> int:
        mask = self.update_mask & _BANK1
        before = self._level_bits()
        self._latch |= bits & mask
        self._commit(before)
        return PI_SOME_PERMITTED if bits & ~mask else 0

    def _cmd_noib(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        for handle in range(NOTIFY_SLOTS):
            if handle not in self._notify:
                self._notify[handle] = _Notify(conn)
                return handle
        return PI_NO_HANDLE

    def _cmd_nb(self, conn: _Conn, handle: int, bits: int, ext: bytes) -> int:
        n = self._notify.get(handle)
        if n is None:
            return PI_BAD_HANDLE
        n.bits, n.running = bits, True
        return 0

    def _cmd_np(self, conn: _Conn, handle: int, _: int, ext: bytes) -> int:
        n = self._notify.get(handle)
        if n is None:
            return PI_BAD_HANDLE
        n.running = False
        return 0

    def _cmd_nc(self, conn: _Conn, handle: int, _: int, ext: bytes) -> int:
        return 0 if self._notify.pop(handle, None) is not None else PI_BAD_HANDLE

    # --- waves ---------------------------------------------------------------

    def _reset_waves(self) -> None:
        # gpioWaveClear(), without stopping a wave being sent (as the daemon)
        self._pending: list[Pulse] = []
        self._waves: list[_Wave] = []
        self._next_cb = _WAVE_FIRST_CB
        self._next_ool = _WAVE_FIRST_OOL
        self._top_ool = _NUM_WAVE_OOL
        self._stats = {"micros": 0, "pulses": 0, "cbs": 0}
        self._high = {"micros": 0, "pulses": 0, "cbs": 0}

    def _cmd_wvclr(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        high = self._high
        self._reset_waves()
        self._high = high
        return 0

    def _cmd_wvnew(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        self._pending = []
        self._stats = {"micros": 0, "pulses": 0, "cbs": 0}
        return 0

    def _cmd_wvag(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        n = len(ext) // 12
        if n > WAVE_MAX_PULSES:
            return PI_TOO_MANY_PULSES
        mask = self.update_mask & _BANK1
        masked = False
        pulses = []
        for on, off, delay in struct.iter_unpack("<III", ext[: n * 12]):
            if (on | off) & ~mask:
                masked = True
            pulses.append((on & mask, off & mask, delay))
        merged, micros, cbs = merge_pulses(pulses, self._pending)
        if len(merged) >= WAVE_MAX_PULSES:
            return PI_TOO_MANY_PULSES  # pending wave unchanged, as the daemon
        self._pending = merged
        self._stats = {"micros": micros, "pulses": len(merged), "cbs": cbs}
        for k, v in self._stats.items():
            self._high[k] = max(self._high[k], v)
        return PI_SOME_PERMITTED if masked else len(merged)

    def _cmd_wvcre(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        if not self._pending:
            return PI_EMPTY_WAVEFORM
        num_cb, num_bool = wave_resources(self._pending)
        wid = next((i for i, w in enumerate(self._waves)
                    if w.deleted and w.num_cb == num_cb and w.num_bool == num_bool), None)
        if wid is None:
            if self._next_cb + num_cb > WAVE_MAX_CBS:
                return PI_TOO_MANY_CBS
            if self._next_ool + num_bool > self._top_ool:
                return PI_TOO_MANY_OOL
            if len(self._waves) >= MAX_WAVES:
                return PI_NO_WAVEFORM_ID
            wid = len(self._waves)
            self._waves.append(_Wave([], num_cb, num_bool, self._next_cb,
                                     self._next_ool, self._top_ool))
            self._next_cb += num_cb
            self._next_ool += num_bool
        w = self._waves[wid]
        w.pulses, w.deleted = self._pending, False
        self._pending = []  # consumed; the stats are left as they are
        return wid

    def _cmd_wvdel(self, conn: _Conn, wid: int, _: int, ext: bytes) -> int:
        if wid >= len(self._waves) or self._waves[wid].deleted:
            return PI_BAD_WAVE_ID
        self._waves[wid].deleted = True
        if wid == len(self._waves) - 1:
            # top wave deleted: free it and any deleted waves below it
            while wid > 0 and self._waves[wid - 1].deleted:
                wid -= 1
            w = self._waves[wid]
            self._next_cb, self._next_ool, self._top_ool = w.bot_cb, w.bot_ool, w.top_ool
            del self._waves[wid:]
        return 0

    def _cmd_send(self, wid: int, mode: int) -> int:
        if wid >= len(self._waves) or self._waves[wid].deleted:
            return PI_BAD_WAVE_ID
        if mode > WAVE_MODE_REPEAT_SYNC:
            return PI_BAD_WAVE_MODE
        w = self._waves[wid]
        repeat = bool(mode & 1)
        if mode >= WAVE_MODE_ONE_SHOT_SYNC and self._tx is not None:
            # SYNC: start when the current wave (or its current cycle) ends
            self._tx.next = (wid, list(w.pulses), repeat)
        else:
            self._halt_locked()  # a new send cuts the current wave
            self._start_player(_Tx(wid, list(w.pulses), repeat))
        return w.num_cb

    def _cmd_wvhlt(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        self._halt_locked()  # levels stay as they are, as on the daemon
        return 0

    def _cmd_wvtat(self, conn: _Conn, p1: int, p2: int, ext: bytes) -> int:
        if self._tx is None:
            return PI_NO_TX_WAVE
        wid = self._tx.wave_id
        if wid < len(self._waves) and not self._waves[wid].deleted:
            return wid
        return PI_WAVE_NOT_FOUND

    def _wave_stat(self, key: int, name: str, maximum: int, bad: int) -> int:
        if key == 0:
            return self._stats[name]
        if key == 1:
            return self._high[name]
        if key == 2:
            return maximum
        return bad

    def _cmd_wvsm(self, conn: _Conn, key: int, _: int, ext: bytes) -> int:
        return self._wave_stat(key, "micros", WAVE_MAX_MICROS, PI_BAD_WVSM_COMMND)

    def _cmd_wvsp(self, conn: _Conn, key: int, _: int, ext: bytes) -> int:
        return self._wave_stat(key, "pulses", WAVE_MAX_PULSES, PI_BAD_WVSP_COMMND)

    def _cmd_wvsc(self, conn: _Conn, key: int, _: int, ext: bytes) -> int:
        return self._wave_stat(key, "cbs", WAVE_MAX_CBS, PI_BAD_WVSC_COMMND)

    # --- wave player ---------------------------------------------------------

    def _halt_locked(self) -> None:
        if self._tx is not None:
            self._tx.stop.set()
            self._tx = None
            self._cond.notify_all()

    def _start_player(self, tx: _Tx) -> None:
        self._player_seq += 1
        self._players = [t for t in self._players if t.is_alive()]
        thread = threading.Thread(
            target=self._play, args=(tx,),
            name=f"fake-pigpiod-{self.port}-wave-{self._player_seq}", daemon=True,
        )
        self._tx = tx
        self._players.append(thread)
        thread.start()
        self._cond.notify_all()

    def _join_players(self) -> None:
        with self._lock:
            players, self._players = self._players, []
        for thread in players:
            thread.join(_JOIN_TIMEOUT)

    @staticmethod
    def _sleep_until(deadline: float, stop: threading.Event) -> bool:
        """Wait for a monotonic deadline: Event.wait to ~1 ms before, then spin."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return not stop.is_set()
            if remaining > 2 * FakePigpiod.SPIN_S:
                if stop.wait(remaining - FakePigpiod.SPIN_S):
                    return False
            elif stop.is_set():
                return False
            else:
                time.sleep(0)  # let other threads run while spinning

    def _play(self, tx: _Tx) -> None:
        pulses, repeat = tx.pulses, tx.repeat
        start: Optional[float] = None  # set when the first pulse goes out
        while True:
            offset_us = 0  # deadlines are computed from the cycle start
            for on, off, delay in pulses:
                if start is not None and not self._sleep_until(start + offset_us / 1e6, tx.stop):
                    return
                with self._lock:
                    if self._tx is not tx:
                        return
                    now = time.monotonic()
                    if start is None:
                        start = now
                    late = now - (start + offset_us / 1e6)
                    self._max_lateness = max(self._max_lateness, late)
                    before = self._level_bits()
                    self._latch = (self._latch | on) & ~off  # GPSET then GPCLR
                    self._commit(before, now)
                offset_us += delay
            if start is None:
                start = time.monotonic()  # a wave without pulses
            end = start + offset_us / 1e6
            if not self._sleep_until(end, tx.stop):
                return
            with self._lock:
                if self._tx is not tx:
                    return
                if tx.next is not None:
                    tx.wave_id, pulses, repeat = tx.next
                    tx.next = None
                    self._cond.notify_all()
                    start = end
                    continue
                if not repeat:
                    self._tx = None
                    self._cond.notify_all()
                    return
            if offset_us == 0:
                # zero-length repeating wave: replaying it shows nothing new
                if not self._sleep_until(time.monotonic() + 0.001, tx.stop):
                    return
                end = time.monotonic()
            start = end


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Fake pigpio daemon for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--all-gpios", action="store_true",
                        help="allow updating every GPIO (default: 2-27 like pigpiod)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(threadName)s %(levelname)s %(message)s")
    mask = _ALL_GPIO if args.all_gpios else DEFAULT_UPDATE_MASK
    fake = FakePigpiod(args.host, args.port, update_mask=mask).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

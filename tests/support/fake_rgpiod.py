"""A fake rgpiod (the lg library's daemon) that speaks its real socket protocol on loopback.

Why it exists: barmaid drives the pumps of a Pi 5 through the unmodified ``rgpio`` client
(0.2.2), which talks to rgpiod over TCP. Tests need that client's code path and need to see
*when* lines changed level, also after the client died. Semantics taken from lg v0.2.2:

- Protocol (the daemon's socket thread): a request is a 16-byte header ``<IIHHHH`` (magic, size of the
  extension, cmd, count of 64-bit, 32-bit and 16-bit arguments) and ``size`` bytes of extension;
  the answer is the same header with the signed status in place of the magic and the size of
  the data that follows. An extension of 64 KiB or more makes the daemon close the connection.
- Handles (lg's handle table): 1024 slots, the first free one is used. Each connection is an owner; when
  it closes, every handle it owns that is not shared is freed (lgHdlPurgeByOwner), and so is
  FREE. A non-owner may use a handle only if its share id is non-zero and equals the
  connection's use_share_id (same user): else NO_PERMISSIONS. SHRS only by the owner.
- Lines (lg's GPIO layer): a group is claimed at given levels, its leader (first line) names it;
  freeing a group or closing its chip stops its wave and releases the lines, which keep their
  last level (the kernel's). Claiming a claimed line is GPIO_BUSY. GMODE answers the kernel
  flags plus lg's mode << 8 (output 512, group 2048).
- Waves (lg's TX thread): one timing thread; every pass plays the next pulse of each wave that is
  due and sleeps until the next one is (at most 20 ms). A new wave starts at the thread's next
  pass; a wave sent while one plays on the group is queued (10 entries). Modelled in virtual
  microseconds, so recorded edges carry the times the real thread aims at.

The board (levels, history) outlives the daemon, as the hardware does: ``kill()`` ends the daemon
(every handle freed, shared or not, waves stopped, levels kept) and ``start()`` begins anew.
Faults: ``hang_at``, ``drop_after``, ``drop_at``, ``fail_at`` (see there), ``pause``/``drop_connections``.
Not modelled: inputs, alerts, PWM, I2C/SPI/serial, files, scripts, permits (-x): UNKNOWN_COMMAND.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from support.loopback import accept_each, listen
from support.waiting import eventually

MAGIC = 0x6C67646D
HEADER = struct.Struct("<IIHHHH")
MAX_EXTENSION = 1 << 16
SLOTS = 1024
TX_BUF = 10
TICK_US = 20_000
TX_WAVE = 1

OKAY = 0
BAD_HANDLE = -5
NOT_PERMITTED = -7
BAD_TX_TYPE = -10
UNKNOWN_COMMAND = -47
BAD_GPIO_NUMBER = -73
BAD_GROUP_SIZE = -74
CANNOT_OPEN_CHIP = -78
GPIO_BUSY = -79
GPIO_NOT_ALLOCATED = -80
NOT_GROUP_LEADER = -87
NO_PERMISSIONS = -93
TX_QUEUE_FULL = -96
GPIO_NOT_AN_OUTPUT = -104

# commands (lgCmd.h)
GO, GC, GSGOX, GSGF, GGR, GGWX, GWAVE, GBUSY, GROOM, GIC, GMODE = 10, 11, 17, 18, 21, 22, 26, 27, 28, 31, 33
NC, NOIB, SBC, FREE, SHRU, SHRS, LGV = 71, 117, 120, 121, 134, 135, 140

IS_KERNEL, IS_OUTPUT = 1, 2
MODE_OUTPUT, MODE_GROUP = 1 << 1, 1 << 3

#: A Raspberry Pi 5 as Raspberry Pi OS 13 shows it: the header's GPIOs are on the RP1's chip.
PI5_CHIPS = {0: ("pinctrl-rp1", 54), 10: ("gpio-brcmstb@107d508500", 32), 11: ("gpio-brcmstb@107d517c00", 15)}


class Board:
    """The hardware: line levels per (chip, line) and their history, surviving the daemon."""

    def __init__(self, chips: Optional[dict[int, tuple[str, int]]] = None) -> None:
        self.chips = dict(chips or PI5_CHIPS)
        self.lock = threading.Lock()
        self.levels: dict[tuple[int, int], int] = {}
        self.events: list[tuple[float, int, int, int]] = []  # (t, chip, line, level)

    def write(self, chip: int, line: int, level: int, t: float) -> None:
        if self.levels.get((chip, line), 0) != level:
            self.events.append((t, chip, line, level))
        self.levels[chip, line] = level


@dataclass
class _Chip:
    number: int
    owner: int
    user: str = "default"
    share: int = 0
    #: leader line -> its group's lines, in order
    groups: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class _Notify:
    owner: int
    user: str = "default"
    share: int = 0


@dataclass
class _Wave:
    handle: int
    leader: int
    queue: list[list[tuple[int, int, int]]]
    pos: int = 0
    due: int = 0
    active: bool = True


class _Conn:
    def __init__(self, owner: int, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        self.use_share = 0
        self.user = "default"


class FakeRgpiod:
    """rgpiod on 127.0.0.1 (port 0: any free one), with a recorded board."""

    def __init__(self, port: int = 0, board: Optional[Board] = None) -> None:
        self.board = board or Board()
        self.port = port
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._conns: dict[int, _Conn] = {}
        self._handles: list[Optional[object]] = [None] * SLOTS
        self._claims: dict[tuple[int, int], int] = {}  # (chip, line) -> handle
        self._waves: list[_Wave] = []
        self._owners = 0
        self._running = False
        self._listener: Optional[socket.socket] = None
        self._t0 = time.monotonic()
        self._next_pass = 0
        self._resumed = threading.Event()
        self._resumed.set()
        self._faults: list[tuple[str, int, int]] = []  # (kind, cmd, code)
        self.commands: list[tuple[int, int]] = []  # (owner, cmd) of every command executed
        self.waves: list[list[tuple[int, int, int]]] = []  # the pulses of every wave accepted

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeRgpiod:
        listener = listen("127.0.0.1", self.port)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener, self._running = listener, True
            self._next_pass = self._now_us() + TICK_US
        threading.Thread(target=accept_each, args=(listener, self._admit), name="fake-rgpiod", daemon=True).start()
        threading.Thread(target=self._timing, name="fake-rgpiod-tx", daemon=True).start()
        return self

    def kill(self) -> None:
        """The daemon dies: connections close, every handle goes, waves stop, levels stay."""
        with self._lock:
            self._advance()
            self._running = False
            if self._listener is not None:
                _abort(self._listener)  # shutdown wakes the accept() blocked on it
                self._listener = None
            self._handles = [None] * SLOTS
            self._claims.clear()
            self._waves.clear()
            conns, self._conns = list(self._conns.values()), {}
            self._changed.notify_all()
        self._resumed.set()
        for conn in conns:
            _abort(conn.sock)

    stop = kill

    def __enter__(self) -> FakeRgpiod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # ---- faults ----------------------------------------------------------------------------

    def hang_at(self, cmd: int) -> None:
        """The next `cmd` is executed but never answered; the daemon answers nothing more
        until `resume()` (a daemon stuck in a command)."""
        self._faults.append(("hang", cmd, 0))

    def drop_after(self, cmd: int) -> None:
        """The connection that sends the next `cmd` is closed right after its answer."""
        self._faults.append(("drop", cmd, 0))

    def drop_at(self, cmd: int) -> None:
        """The next `cmd` is executed, then its connection closed before the answer (a network
        that drops between a command and its answer)."""
        self._faults.append(("lost", cmd, 0))

    def fail_at(self, cmd: int, code: int) -> None:
        """The next `cmd` is answered with error `code`, not executed."""
        self._faults.append(("fail", cmd, code))

    def pause(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    def drop_connections(self) -> None:
        """Every client connection closes (as if the network dropped); the daemon lives on."""
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            _abort(conn.sock)

    # ---- what tests look at ----------------------------------------------------------------

    def chip_of(self, label: str) -> int:
        return next(n for n, (name, _) in self.board.chips.items() if name == label)

    def level(self, line: int, chip: Optional[int] = None) -> int:
        with self._lock:
            self._advance()
            return self.board.levels.get((self._chip(chip), line), 0)

    def history(self, chip: Optional[int] = None) -> list[tuple[float, int, int]]:
        """(time.monotonic(), line, level) of every change on the chip so far."""
        with self._lock:
            self._advance()
            number = self._chip(chip)
            return [(t, line, level) for t, c, line, level in self.board.events if c == number]

    def clear_history(self) -> None:
        with self._lock:
            self._advance()
            self.board.events.clear()

    def max_lateness(self) -> float:
        """Always 0: waves play in virtual microseconds, each level change at its exact instant."""
        return 0.0

    def on_durations(self, line: int, chip: Optional[int] = None) -> list[float]:
        """Seconds of every completed high period of the line."""
        out, since = [], None
        for t, g, level in self.history(chip):
            if g == line:
                if level and since is None:
                    since = t
                elif not level and since is not None:
                    out.append(t - since)
                    since = None
        return out

    def wave_busy(self) -> bool:
        with self._lock:
            self._advance()
            return any(w.active for w in self._waves)

    def handles(self) -> dict[int, tuple[str, int, int]]:
        """handle -> (kind, owner, share) of every open handle."""
        with self._lock:
            kinds = {_Chip: "chip", _Notify: "notify"}
            return {h: (kinds[type(o)], o.owner, o.share) for h, o in enumerate(self._handles) if o}

    def claimed(self) -> dict[int, int]:
        """line of the RP1 chip -> handle that claims it."""
        with self._lock:
            return {line: h for (c, line), h in self._claims.items() if c == self._chip(None)}

    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
        return eventually(predicate, timeout)

    def _chip(self, chip: Optional[int]) -> int:
        return chip if chip is not None else next(iter(self.board.chips))

    # ---- the socket ------------------------------------------------------------------------

    def _admit(self, sock: socket.socket) -> bool:
        with self._lock:
            if not self._running:
                _abort(sock)
                return False
            self._owners += 1
            conn = _Conn(self._owners, sock)
            self._conns[conn.owner] = conn
        threading.Thread(target=self._serve, args=(conn,), name=f"fake-rgpiod-{conn.owner}", daemon=True).start()
        return True

    def _serve(self, conn: _Conn) -> None:
        try:
            while True:
                header = _recv_exact(conn.sock, HEADER.size)
                if header is None:
                    break
                _, size, cmd, q, lo, hi = HEADER.unpack(header)
                if size >= MAX_EXTENSION - HEADER.size:
                    break  # "message too large": the daemon ends the connection
                ext = _recv_exact(conn.sock, size) if size else b""
                if ext is None:
                    break
                self._resumed.wait()
                fault = self._take_fault(cmd)
                if fault and fault[0] == "fail":
                    status, data = fault[2], b""
                else:
                    with self._lock:
                        if conn.owner not in self._conns:
                            break
                        self._advance()
                        status, data = self._execute(conn, cmd, ext)
                        self.commands.append((conn.owner, cmd))
                        self._changed.notify_all()
                if fault and fault[0] == "hang":
                    self._resumed.clear()
                    self._resumed.wait()
                    continue
                if fault and fault[0] == "lost":
                    break
                conn.sock.sendall(HEADER.pack(status & 0xFFFFFFFF, len(data), cmd, q, lo, hi) + data)
                if fault and fault[0] == "drop":
                    break
        except OSError:
            pass
        finally:
            self._close(conn)

    def _take_fault(self, cmd: int) -> Optional[tuple[str, int, int]]:
        with self._lock:
            for fault in self._faults:
                if fault[1] == cmd:
                    self._faults.remove(fault)
                    return fault
        return None

    def _close(self, conn: _Conn) -> None:
        _abort(conn.sock)
        with self._lock:
            if self._conns.pop(conn.owner, None) is not None:
                self._advance()
                self._purge(conn.owner)
                self._changed.notify_all()

    # ---- commands (lgExecCmd) ---------------------------------------------------------------

    def _execute(self, conn: _Conn, cmd: int, ext: bytes) -> tuple[int, bytes]:
        n = len(ext) // 4
        args = struct.unpack(f"<{n}I", ext[: n * 4])
        if cmd == GO:
            return self._open_chip(conn, args[0]), b""
        if cmd == NOIB:
            return self._alloc(_Notify(conn.owner, conn.user)), b""
        if cmd == FREE:
            self._purge(conn.owner)
            return OKAY, b""
        if cmd == SHRU:
            conn.use_share = args[0]
            return OKAY, b""
        if cmd == LGV:
            return 0x00020200, b""
        if cmd == SBC:
            return 9, b"fakeboard"
        if cmd == SHRS:
            return self._set_share(conn, args[0], args[1]), b""
        if cmd == NC:
            status, _ = self._get(conn, args[0], _Notify)
            if status == OKAY:
                self._handles[args[0]] = None
            return status, b""
        if cmd == GWAVE:
            count = (len(ext) - 8) // 24
            pulses = [struct.unpack_from("<QQQ", ext, 24 * i) for i in range(count)]
            handle, leader = struct.unpack_from("<II", ext, 24 * count)
            return self._chip_cmd(conn, handle, lambda chip: self._wave(chip, handle, leader, pulses))
        if cmd == GGWX:
            bits, mask, handle, leader = struct.unpack("<QQII", ext)
            return self._chip_cmd(conn, handle, lambda chip: self._group_write(chip, leader, bits, mask))
        handlers: dict[int, Callable[[_Chip], tuple[int, bytes]]] = {
            GC: lambda chip: self._close_chip(args[0]),
            GIC: lambda chip: self._chip_info(chip),
            GMODE: lambda chip: (self._mode(args[0], chip, args[1]), b""),
            GSGOX: lambda chip: self._claim(args[0], chip, args[2 : 2 + (n - 2) // 2], args[2 + (n - 2) // 2 :]),
            GSGF: lambda chip: self._free_group(chip, args[1]),
            GGR: lambda chip: self._group_read(chip, args[1]),
            GBUSY: lambda chip: self._busy(args[0], chip, args[1], args[2], busy=True),
            GROOM: lambda chip: self._busy(args[0], chip, args[1], args[2], busy=False),
        }
        if cmd not in handlers:
            return UNKNOWN_COMMAND, b""
        return self._chip_cmd(conn, args[0], handlers[cmd])

    def _alloc(self, obj: object) -> int:
        for handle, slot in enumerate(self._handles):
            if slot is None:
                self._handles[handle] = obj
                return handle
        return -4  # NO_HANDLE

    def _get(self, conn: _Conn, handle: int, kind: type) -> tuple[int, object]:
        """lgHdlGetLockedObj: the object, if this connection may use it."""
        obj = self._handles[handle] if 0 <= handle < SLOTS else None
        if not isinstance(obj, kind):
            return BAD_HANDLE, None
        if obj.owner != conn.owner and (not obj.share or obj.share != conn.use_share or obj.user != conn.user):
            return NO_PERMISSIONS, None
        return OKAY, obj

    def _chip_cmd(self, conn: _Conn, handle: int, run: Callable[[_Chip], tuple[int, bytes]]) -> tuple[int, bytes]:
        status, chip = self._get(conn, handle, _Chip)
        return run(chip) if status == OKAY else (status, b"")

    def _set_share(self, conn: _Conn, handle: int, share: int) -> int:
        obj = self._handles[handle] if 0 <= handle < SLOTS else None
        if obj is None:
            return BAD_HANDLE
        if obj.owner != conn.owner:
            return NO_PERMISSIONS
        obj.share = share
        return OKAY

    def _open_chip(self, conn: _Conn, number: int) -> int:
        if number not in self.board.chips:
            return CANNOT_OPEN_CHIP
        return self._alloc(_Chip(number, conn.owner, conn.user))

    def _close_chip(self, handle: int) -> tuple[int, bytes]:
        chip = self._handles[handle]
        for leader in list(chip.groups):
            self._release(chip, leader)
        self._handles[handle] = None
        return OKAY, b""

    def _purge(self, owner: int) -> None:
        for handle, obj in enumerate(self._handles):
            if obj is not None and obj.owner == owner and not obj.share:
                if isinstance(obj, _Chip):
                    self._close_chip(handle)
                else:
                    self._handles[handle] = None

    def _chip_info(self, chip: _Chip) -> tuple[int, bytes]:
        label, lines = self.board.chips[chip.number]
        data = struct.pack("<I32s32s", lines, f"gpiochip{chip.number}".encode(), label.encode())
        return len(data), data

    def _mode(self, handle: int, chip: _Chip, line: int) -> int:
        if line >= self.board.chips[chip.number][1]:
            return BAD_GPIO_NUMBER
        if self._claims.get((chip.number, line)) is None:
            return 65536  # a free line reads as a kernel input
        lg = MODE_OUTPUT
        if any(line in g and len(g) > 1 for g in chip.groups.values()):
            lg |= MODE_GROUP
        mine = self._claims[chip.number, line] == handle
        return IS_KERNEL | IS_OUTPUT | ((lg << 8) if mine else 0)

    def _claim(self, handle: int, chip: _Chip, lines: tuple[int, ...], levels: tuple[int, ...]) -> tuple[int, bytes]:
        count = self.board.chips[chip.number][1]
        if not lines or len(lines) > 64:
            return BAD_GROUP_SIZE, b""
        if any(line > count for line in lines):
            return NOT_PERMITTED, b""
        if any((chip.number, line) in self._claims for line in lines) or len(set(lines)) < len(lines):
            return GPIO_BUSY, b""
        chip.groups[lines[0]] = list(lines)
        now = self._time(self._now_us())
        for line, level in zip(lines, levels):
            self._claims[chip.number, line] = handle
            self.board.write(chip.number, line, 1 if level else 0, now)
        return OKAY, b""

    def _group(self, chip: _Chip, leader: int) -> tuple[int, list[int]]:
        if leader >= self.board.chips[chip.number][1]:
            return BAD_GPIO_NUMBER, []
        if leader in chip.groups:
            return OKAY, chip.groups[leader]
        if any(leader in g for g in chip.groups.values()):
            return NOT_GROUP_LEADER, []
        return GPIO_NOT_ALLOCATED, []

    def _free_group(self, chip: _Chip, leader: int) -> tuple[int, bytes]:
        status, _ = self._group(chip, leader)
        if status == OKAY:
            self._release(chip, leader)
        return status, b""

    def _release(self, chip: _Chip, leader: int) -> None:
        """Stops the group's wave and releases its lines; they keep their levels."""
        for wave in self._waves:
            if wave.leader == leader and self._handles[wave.handle] is chip:
                wave.active = False
        for line in chip.groups.pop(leader):
            self._claims.pop((chip.number, line), None)

    def _group_read(self, chip: _Chip, leader: int) -> tuple[int, bytes]:
        status, lines = self._group(chip, leader)
        if status != OKAY:
            return status, b""
        bits = sum(self.board.levels.get((chip.number, line), 0) << i for i, line in enumerate(lines))
        return 12, struct.pack("<QI", bits, len(lines))

    def _group_write(self, chip: _Chip, leader: int, bits: int, mask: int) -> tuple[int, bytes]:
        status, lines = self._group(chip, leader)
        if status != OKAY:
            return status, b""
        self._write(chip, lines, bits, mask, self._now_us())
        return len(lines), b""

    def _write(self, chip: _Chip, lines: list[int], bits: int, mask: int, at_us: int) -> None:
        for i, line in enumerate(lines):
            if mask >> i & 1:
                self.board.write(chip.number, line, bits >> i & 1, self._time(at_us))

    def _wave(self, chip: _Chip, handle: int, leader: int, pulses: list[tuple[int, int, int]]) -> tuple[int, bytes]:
        status, _ = self._group(chip, leader)
        if status != OKAY:
            return (GPIO_NOT_AN_OUTPUT if status == GPIO_NOT_ALLOCATED else status), b""
        for wave in self._waves:
            if wave.active and wave.leader == leader and wave.handle == handle:
                if len(wave.queue) >= TX_BUF:
                    return TX_QUEUE_FULL, b""
                wave.queue.append(pulses)
                self.waves.append(pulses)
                return TX_BUF - len(wave.queue), b""
        # lgGroupCreateWaveRec: next_micros = the thread's current delay, i.e. its next pass
        self._waves.append(_Wave(handle, leader, [pulses], due=self._next_pass))
        self.waves.append(pulses)
        return TX_BUF - 1, b""

    def _busy(self, handle: int, chip: _Chip, leader: int, kind: int, busy: bool) -> tuple[int, bytes]:
        if kind > TX_WAVE:
            return BAD_TX_TYPE, b""
        wave = next((w for w in self._waves if w.active and w.leader == leader and w.handle == handle), None)
        if kind != TX_WAVE or wave is None:
            return (0 if busy else TX_BUF), b""
        return (1 if busy else TX_BUF - len(wave.queue)), b""

    # ---- the timing thread (lgPthTx), in virtual microseconds -------------------------------

    def _now_us(self) -> int:
        return int((time.monotonic() - self._t0) * 1e6)

    def _time(self, us: int) -> float:
        return self._t0 + us / 1e6

    def _advance(self) -> None:
        """Plays every pass of the timing thread due by now."""
        now = self._now_us()
        while self._running and self._next_pass <= now:
            at, delay = self._next_pass, TICK_US
            for wave in list(self._waves):
                if not wave.active:
                    self._waves.remove(wave)
                    continue
                if wave.due <= at:
                    if wave.pos >= len(wave.queue[0]) and len(wave.queue) > 1:
                        wave.queue.pop(0)
                        wave.pos = 0
                    if wave.pos < len(wave.queue[0]):
                        bits, mask, micros = wave.queue[0][wave.pos]
                        chip = self._handles[wave.handle]
                        self._write(chip, chip.groups[wave.leader], bits, mask, at)
                        wave.due = at + micros
                        wave.pos += 1
                    else:
                        wave.active = False
                if wave.active:
                    delay = min(delay, wave.due - at)
            self._next_pass = at + delay

    def _timing(self) -> None:
        with self._lock:
            while self._running:
                self._advance()
                self._changed.wait(max(0.0, (self._next_pass - self._now_us()) / 1e6))


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _abort(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="a fake rgpiod on loopback")
    parser.add_argument("--port", type=int, default=8889)
    daemon = FakeRgpiod(port=parser.parse_args().port).start()
    print(f"fake rgpiod on 127.0.0.1:{daemon.port}; Ctrl-C ends it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        daemon.kill()

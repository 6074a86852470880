"""Issue 5, section 1: the transport's hardening, one test per gap of websocket-server 0.6.4.

Raw sockets on loopback, where a WebSocket client library would hide the problem; each test's
docstring says what the bare library does wrong (../shared/DEPENDENCIES.md, W2-W10).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import struct
import sys
import threading
import time
from base64 import b64encode
from hashlib import sha1
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import pytest

from barmaid import server as server_module
from barmaid import transport
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.server import BarmaidServer
from barmaid.transport import Transport
from conftest import RECV_TIMEOUT, assert_countdown, close_quickly, eventually, is_final_status, status_times

# An exception that escapes a server thread is a failure here, not a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The echo payload of the big-frame tests: under max_message_bytes (64 KiB) once framed as JSON.
BIG = "x" * 60_000


# ---- a WebSocket client by hand ----------------------------------------------------------


def xor(key: bytes, data: bytes) -> bytes:
    """RFC 6455 masking (one big-integer XOR: a flood of 60 KB frames stays cheap)."""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def frame_bytes(
    opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True, length: Optional[int] = None, rsv: int = 0
) -> bytes:
    """A client frame as RFC 6455 lays it out; `length` announces a size other than the payload's."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + xor(key, payload)


def text_frame(message: Any) -> bytes:
    return frame_bytes(TEXT, json.dumps(message).encode())


class Frame(NamedTuple):
    fin: bool
    opcode: int
    payload: bytes


class RawClient:
    """One WebSocket client written out by hand: the handshake and every frame are plain bytes."""

    def __init__(
        self, port: int, rcvbuf: Optional[int] = None, read_size: int = 65536, read_pause: float = 0.0
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect: the window is negotiated at the SYN.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(RECV_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.read_size, self.read_pause = read_size, read_pause
        self._buffer = b""

    def handshake(self, path: str = "/") -> "RawClient":
        key = b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = self.read_http_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b64encode(sha1(key.encode() + _GUID).digest()) in head, head
        return self

    def read_http_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        return head

    def send_frame(self, opcode: int, payload: bytes = b"", **options: Any) -> None:
        self.sock.sendall(frame_bytes(opcode, payload, **options))

    def send_json(self, message: Any) -> None:
        self.sock.sendall(text_frame(message))

    def recv_frame(self) -> Frame:
        b1, b2 = self._take(2)
        assert not b2 & 0x80, "a server must not mask its frames"
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return Frame(bool(b1 & 0x80), b1 & 0x0F, self._take(n))

    def recv_json(self) -> Any:
        frame = self.recv_frame()
        assert frame.fin and frame.opcode == TEXT, f"expected a text frame, got {frame}"
        return json.loads(frame.payload)

    def recv_until(self, predicate: Callable[[Any], bool] = is_final_status) -> list[Any]:
        """Every message up to and including the first one `predicate` accepts."""
        messages = [self.recv_json()]
        while not predicate(messages[-1]):
            messages.append(self.recv_json())
        return messages

    def echo(self, data: Any = "sync") -> list[Any]:
        """Round-trips an echo; returns what came before its reply."""
        expected = {"type": "echo", "data": data}
        self.send_json(expected)
        return self.recv_until(lambda message: message == expected)[:-1]

    def expect_close(self) -> int:
        """The code of the close frame that must come next; the connection must end right after it."""
        frame = self.recv_frame()
        assert frame.opcode == CLOSE, f"expected a close frame, got {frame}"
        assert self.expect_eof() == b"", "data after the close frame"
        return struct.unpack("!H", frame.payload[:2])[0]

    def expect_eof(self) -> bytes:
        """Everything the server sends until it ends the connection (FIN, or a reset after it)."""
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            rest, self._buffer = self._buffer, b""
            return rest

    def close(self, abrupt: bool = False) -> None:
        if abrupt:  # a reset instead of a FIN: the peer vanished
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _take(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(self.read_size)
        except socket.timeout:
            pytest.fail(f"nothing from the server within {RECV_TIMEOUT} s; have {self._buffer[:200]!r}")
        if not chunk:
            raise EOFError("the server ended the connection")
        self._buffer += chunk
        if self.read_pause:
            time.sleep(self.read_pause)


# ---- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def raw() -> Callable[..., RawClient]:
    """Opens RawClients (handshake done unless handshake=False); all closed at teardown."""
    opened: list[RawClient] = []

    def open_client(port: int, handshake: bool = True, **options: Any) -> RawClient:
        client = RawClient(port, **options)
        opened.append(client)
        return client.handshake() if handshake else client

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture
def make_server(fast_config):
    """Starts a BarmaidServer with simulated pumps and the given server.* settings."""
    made: list[BarmaidServer] = []

    def make(**server_settings: Any) -> BarmaidServer:
        config = fast_config.model_copy(update={"server": fast_config.server.model_copy(update=server_settings)})
        driver = SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds)
        made.append(BarmaidServer(config, driver))
        made[-1].start()
        return made[-1]

    yield make
    for server in made:
        close_quickly(server)


@pytest.fixture
def start_transport():
    """Starts a bare Transport on loopback; on_message echoes the text back unless given."""
    started: list[Transport] = []

    def start(on_message: Optional[Callable] = None, **options: Any) -> Transport:
        started.append(Transport("127.0.0.1", 0, on_message or (lambda client, text: client.send(text)), **options))
        started[-1].start()
        return started[-1]

    yield start
    for started_transport in started:
        close_quickly(started_transport)


@pytest.fixture
def frequent_thread_switches():
    """Threads switch every 10 µs instead of every 5 ms, so that a race shows up within one test."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def rss_bytes() -> int:
    """Resident memory of this process (server and test share it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def largest_send_buffer() -> int:
    """The most the kernel may buffer for one sending socket (Linux grows it up to tcp_wmem's max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 2**20


def wait_until(condition: Callable[[], bool], what: str, timeout: float = RECV_TIMEOUT) -> None:
    if not eventually(condition, timeout):
        pytest.fail(f"not within {timeout} s: {what}")


def settle(threads: int) -> None:
    """Waits until the server's connection threads have ended: `threads` threads left."""
    wait_until(
        lambda: threading.active_count() <= threads,
        f"threads back to {threads}: {[t.name for t in threading.enumerate()]}",
    )


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


# ---- frame size -------------------------------------------------------------------------


@pytest.mark.parametrize("announced", ["2^63", "limit+1"])
def test_a_frame_over_max_message_bytes_is_refused_with_1009_before_its_payload_is_read(server, raw, announced):
    """The library reads whatever length a header announces: 2^63 raises in its thread, limit+1 waits for it."""
    length = 2**63 if announced == "2^63" else server.config.server.max_message_bytes + 1
    bystander = raw(server.port)
    assert bystander.echo() == []
    memory_before, started = rss_bytes(), time.monotonic()
    client = raw(server.port)
    client.send_frame(TEXT, b"", length=length)  # header and mask: the payload never comes
    assert client.expect_close() == 1009
    assert time.monotonic() - started < 1.0
    assert rss_bytes() - memory_before < 10 * 2**20
    assert bystander.echo({"after": announced}) == []
    assert raw(server.port).echo() == []


# ---- whole frames -----------------------------------------------------------------------


def test_every_frame_goes_out_whole_when_the_kernel_takes_part_of_a_write(server, raw, monkeypatch):
    """The library writes each frame with one socket.send and drops whatever the kernel did not take."""
    real_send = socket.socket.send
    # A send timeout or a signal makes the kernel take part of a write; here every send is short.
    monkeypatch.setattr(socket.socket, "send", lambda sock, data, flags=0: real_send(sock, data[:1000], flags))
    reader = raw(server.port, rcvbuf=4096, read_size=1024, read_pause=0.001)
    data = "🍸" + BIG
    reader.send_json({"type": "echo", "data": data})
    assert reader.recv_json() == {"type": "echo", "data": data}
    assert reader.echo() == []


# ---- a client that stops reading ----------------------------------------------------------


def test_a_client_that_stops_reading_holds_up_no_status_nor_the_pour_and_is_dropped(server, raw, monkeypatch, caplog):
    """The library sends from the broadcasting thread: one full socket blocks the pour timer's statuses for ever."""
    caplog.set_level(logging.INFO, logger="barmaid.transport")
    # Enough 60 KB replies to fill the largest send buffer the kernel may grow, and then some.
    in_flight = largest_send_buffer() // len(BIG) + 20
    # The stuck client must outlive the pour below; it is dropped only once its queue overflows.
    monkeypatch.setattr(transport, "SEND_QUEUE", max(transport.SEND_QUEUE, 2 * in_flight + 64))
    stuck, watcher = raw(server.port, rcvbuf=4096), raw(server.port)
    flood = text_frame({"type": "echo", "data": BIG})
    for _ in range(in_flight):
        stuck.sock.sendall(flood)
    pouring = threading.Event()

    def keep_flooding() -> None:
        while not pouring.wait(0.005):
            stuck.sock.sendall(flood)

    flooder = threading.Thread(target=keep_flooding, name="test-flooder")
    flooder.start()
    try:
        sent = time.monotonic()
        watcher.send_json({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}})  # 0.25 s
        statuses = watcher.recv_until()
        took = time.monotonic() - sent
    finally:
        pouring.set()
        flooder.join()
    assert_countdown(status_times(statuses), 0.25)
    assert 0.25 <= took < 0.6, f"final status after {took:.3f} s"
    assert [(s.pump, s.on) for s in server.controller.driver.timeline] == [(0, True), (0, False)]
    assert len(server.transport.clients()) == 2, "the stuck client was dropped before its queue was full"

    try:
        for _ in range(transport.SEND_QUEUE + 8):
            stuck.sock.sendall(flood)
    except OSError:
        pass  # dropped before the last of them
    wait_until(lambda: len(server.transport.clients()) == 1, "the stuck client dropped")
    assert any("stopped reading" in record.getMessage() for record in caplog.records)
    assert watcher.echo() == []
    assert server.controller.state == "idle"


def test_shutdown_is_not_held_up_by_a_client_that_stopped_reading(start_transport, raw):
    """The library's shutdown sends each close frame with a blocking send: a full socket holds it for ever."""
    served = start_transport()
    stuck = raw(served.port, rcvbuf=4096)
    assert stuck.echo() == []
    served.broadcast("x" * (largest_send_buffer() + 2**20))  # more than every buffer on the way
    stuck.sock.recv(1, socket.MSG_PEEK)  # its sender took the frame and is stuck in it
    for _ in range(transport.SEND_QUEUE - 1):  # every place of the queue but one
        served.broadcast("tick")
    closer = threading.Thread(target=close_quickly, args=(served,), name="test-transport-close", daemon=True)
    closer.start()
    closer.join(transport.CLOSE_GRACE + 2.0)
    assert not closer.is_alive(), "shutdown blocked by a client that does not read"
    wait_until(lambda: served.clients() == [], "the stuck client closed")


# ---- handshake junk ---------------------------------------------------------------------

_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#: Request bytes, then whether an HTTP 4xx answer is due (else the server just hangs up).
HANDSHAKE_JUNK = {
    "plain-http-get": (b"GET / HTTP/1.1\r\nHost: barmaid\r\n\r\n", True),
    "post": (b"POST / HTTP/1.1\r\nHost: barmaid\r\n" + _UPGRADE + _KEY + b"Content-Length: 0\r\n\r\n", True),
    "no-upgrade": (b"GET / HTTP/1.1\r\nHost: barmaid\r\nConnection: Upgrade\r\n" + _KEY + b"\r\n", True),
    "no-key": (b"GET / HTTP/1.1\r\nHost: barmaid\r\n" + _UPGRADE + b"\r\n", True),
    "header-without-colon": (b"GET / HTTP/1.1\r\nHost barmaid\r\n" + _UPGRADE + _KEY + b"\r\n", True),
    "empty-connection": (b"", False),
    "half-open": (None, False),
    "half-open-few-bytes": (b"GET / HTTP/1.1\r\nUpgr", False),
}


@pytest.mark.parametrize("junk", list(HANDSHAKE_JUNK))
def test_handshake_junk_is_closed_with_one_log_line_and_no_traceback(server, raw, monkeypatch, capfd, caplog, junk):
    """The library raises KeyError/ValueError/AssertionError (traceback, no HTTP answer) or waits for ever."""
    caplog.set_level(logging.INFO, logger="barmaid.transport")
    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 0.3)
    request, answered = HANDSHAKE_JUNK[junk]
    threads = threading.active_count()
    client = raw(server.port, handshake=False)
    if request is not None:
        client.sock.sendall(request)
    if request == b"":
        client.sock.shutdown(socket.SHUT_WR)
    answer = client.expect_eof()
    if answered:
        assert answer.startswith(b"HTTP/1.1 4"), answer
    else:
        assert answer == b""
    settle(threads)
    assert "Traceback" not in capfd.readouterr().err
    lines = [record for record in caplog.records if record.name == "barmaid.transport"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [line.getMessage() for line in lines]
    assert raw(server.port).echo({"after": junk}) == []


# ---- frames we do not take ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(frame_bytes(TEXT, b'{"type": "echo", "data": "\xff\xfe"}'), 1007, id="invalid-utf8"),
        pytest.param(frame_bytes(BINARY, b"\x00\x81\x82"), 1003, id="binary"),
        pytest.param(frame_bytes(CONTINUATION, b"more"), 1003, id="continuation"),
        pytest.param(frame_bytes(TEXT, b'{"type": "ec', fin=False), 1003, id="fragmented-text"),
        pytest.param(frame_bytes(TEXT, b'{"type": "echo"}', masked=False), 1002, id="unmasked"),
        pytest.param(frame_bytes(0x3, b"?"), 1002, id="reserved-opcode"),
        pytest.param(frame_bytes(TEXT, b'{"type": "echo"}', rsv=0x40), 1002, id="rsv1-without-extension"),
    ],
)
def test_a_frame_we_do_not_take_is_answered_with_its_close_code(server, raw, capfd, caplog, frame, code):
    """The library raises on bad UTF-8, skips binary frames unread, merges fragments, drops unmasked ones codeless."""
    bystander = raw(server.port)
    assert bystander.echo() == []  # admitted: its threads count in the baseline
    threads = threading.active_count()
    client = raw(server.port)
    client.sock.sendall(frame + text_frame({"type": "echo", "data": "after the bad frame"}))
    assert client.expect_close() == code
    settle(threads)
    assert "Traceback" not in capfd.readouterr().err
    assert errors_in(caplog) == []
    assert bystander.echo() == []


def test_ping_is_answered_with_a_pong_of_the_same_payload(server, raw):
    """The library decodes the ping payload as UTF-8 (binary payloads raise) and pongs it re-encoded."""
    client = raw(server.port)
    client.send_frame(PING, b"\xff\x00 ping \x80")
    assert client.recv_frame() == Frame(True, PONG, b"\xff\x00 ping \x80")
    assert client.echo() == []


def test_close_is_answered_with_a_close(server, raw):
    """The library drops the connection on a close frame without answering it."""
    client = raw(server.port)
    client.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    assert client.expect_close() == 1000
    wait_until(lambda: server.transport.clients() == [], "the client gone from the registry")


# ---- exceptions in handlers ---------------------------------------------------------------

BLEND = '{"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}}'


@pytest.mark.parametrize("where", ["parse", "controller"])
def test_an_exception_in_the_handler_is_logged_with_context_and_answered_with_one_error(
    server, raw, monkeypatch, caplog, where
):
    """The library lets a callback's exception end the connection, its traceback on stderr, not in the log."""

    def fail(*args: Any) -> Any:
        raise RuntimeError("simulated fault")

    if where == "parse":
        build = server_module.build

        def build_failing_on_blend(model: Any, message: Any, limits: Any) -> Any:
            return fail() if model.type == "blend" else build(model, message, limits)

        monkeypatch.setattr(server_module, "build", build_failing_on_blend)
    else:
        monkeypatch.setattr(server.controller, "submit", fail)
    client = raw(server.port)
    client.send_frame(TEXT, BLEND.encode())
    reply = client.recv_json()
    assert reply["type"] == "error" and "internal error" in reply["data"]["msg"], reply
    assert client.echo() == [], "more than one answer"
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info and record.exc_info[1].args == ("simulated fault",)
    assert "blend" in record.getMessage() and "client" in record.getMessage(), record.getMessage()
    assert server.controller.driver.timeline == []
    assert server.controller.state == "idle"


def test_an_exception_escaping_on_message_is_logged_and_the_connection_goes_on(start_transport, raw, caplog):
    """With the library, an exception in message_received ends the connection's thread and the connection."""

    def on_message(client: transport.Client, text: str) -> None:
        if "boom" in text:
            raise RuntimeError("on_message failed")
        client.send(text)

    served = start_transport(on_message)
    client = raw(served.port)
    client.send_json({"type": "echo", "data": "boom"})
    assert client.echo("still there") == []
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info and "boom" in record.getMessage() and "client" in record.getMessage()


# ---- the registry -----------------------------------------------------------------------


def test_one_client_over_max_clients_is_refused_with_1013_and_admitted_once_one_leaves(make_server, raw):
    """The library has no limit: every connection gets a thread and a place in its client list."""
    server = make_server(max_clients=3)
    first, second, third = (raw(server.port) for _ in range(3))
    for client in (first, second, third):
        assert client.echo() == []
    assert raw(server.port).expect_close() == 1013
    for client in (first, second, third):
        assert client.echo({"after": "refusal"}) == []
    first.send_frame(CLOSE, struct.pack("!H", 1000))
    assert first.expect_close() == 1000
    wait_until(lambda: len(server.transport.clients()) == 2, "the first client gone from the registry")
    assert raw(server.port).echo() == []


def test_shutdown_sends_every_client_a_close_1001(server, raw):
    """The library's shutdown removes clients from the list it iterates: every other client stays open."""
    clients = [raw(server.port) for _ in range(10)]
    for client in clients:
        assert client.echo() == []
    close_quickly(server)
    assert [client.expect_close() for client in clients] == [1001] * 10


def test_a_handshake_finished_during_shutdown_is_not_served(server, raw):
    """The library's shutdown leaves handler threads running: a handshake finished a moment later is served."""
    threads = threading.active_count()
    late = raw(server.port, handshake=False)
    late.sock.sendall(b"GET / HTTP/1.1\r\nHost: barmaid\r\n" + _UPGRADE + _KEY)  # all but the blank line
    wait_until(lambda: threading.active_count() > threads, "the server's thread for the late client")
    close_quickly(server)
    late.sock.sendall(b"\r\n" + text_frame({"type": "echo", "data": "served?"}))
    assert late.read_http_head().startswith(b"HTTP/1.1 101 ")
    assert late.expect_close() == 1001


def test_the_registry_survives_clients_coming_and_going_during_broadcasts(
    start_transport, raw, caplog, frequent_thread_switches
):
    """The library changes its client list unlocked while broadcasts iterate it; a dead peer's error stops them."""
    served = start_transport()
    stayers = [raw(served.port) for _ in range(6)]
    for client in stayers:
        assert client.echo() == []
    received: list[list[Any]] = [[] for _ in stayers]
    progress = threading.Condition()
    failures: list[BaseException] = []

    def guarded(work: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                work(*args)
            except BaseException as exc:  # pytest.fail raises a BaseException
                failures.append(exc)
                with progress:
                    progress.notify_all()

        return run

    @guarded
    def read(number: int) -> None:
        while True:
            message = stayers[number].recv_json()
            with progress:
                received[number].append(message)
                progress.notify_all()
            if message == "end":
                return

    @guarded
    def churn(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(25):
            client = RawClient(served.port).handshake()
            if rng.random() < 0.5:
                client.send_frame(CLOSE, struct.pack("!H", 1000))
            client.close(abrupt=rng.random() < 0.5)

    readers = [threading.Thread(target=read, args=(n,), name=f"test-reader-{n}") for n in range(len(stayers))]
    churners = [threading.Thread(target=churn, args=(n,), name=f"test-churn-{n}") for n in range(4)]
    for thread in readers + churners:
        thread.start()
    sent = 0
    while (any(thread.is_alive() for thread in churners) or sent < 200) and not failures:
        with progress:
            # Stay well inside SEND_QUEUE: a stayer that falls behind would be dropped, not lose frames.
            if not progress.wait_for(
                lambda least=sent - 64: failures or min(map(len, received)) >= least, RECV_TIMEOUT
            ):
                pytest.fail(f"stayers stopped receiving at {[len(r) for r in received]} of {sent}")
        served.broadcast(json.dumps(sent))
        sent += 1
    served.broadcast(json.dumps("end"))
    for thread in churners + readers:
        thread.join(RECV_TIMEOUT)
    assert failures == []
    assert all(messages == [*range(sent), "end"] for messages in received), [len(r) for r in received]
    assert errors_in(caplog) == []
    wait_until(lambda: len(served.clients()) == len(stayers), "only the stayers left in the registry")


def test_connections_have_tcp_keepalive_so_a_vanished_peer_frees_its_slot(start_transport, raw):
    """The library sets no keepalive: a GUI whose Wi-Fi drops keeps its thread and slot for ever."""
    transport = start_transport()
    raw(transport.port)
    wait_until(lambda: len(transport.clients()) == 1, "the client to be admitted")
    sock = transport.clients()[0]._sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) * sock.getsockopt(
        socket.IPPROTO_TCP, socket.TCP_KEEPCNT
    )
    assert probes == 30

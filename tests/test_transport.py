"""The transport's hardening, one test per gap of websocket-server 0.6.4 (docs/dependencies.md).

Raw sockets on loopback, where a WebSocket client library would hide the problem; each test's
docstring says what the bare library does wrong. Frames are built and read with barmaid.frames.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from support.factories import closing_all
from support.rawws import BIG, RawClient, frame_bytes, rss_bytes, text_frame
from support.servers import close_quickly
from support.timeline import assert_countdown, status_times
from support.waiting import RECV_TIMEOUT, wait_until

from barmaid import frames, transport
from barmaid import server as server_module
from barmaid.frames import Frame, Opcode
from barmaid.transport import Transport

# An exception that escapes a server thread is a failure here, not a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = (
    Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY, Opcode.CLOSE, Opcode.PING, Opcode.PONG
)


# ---- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def raw() -> Callable[..., RawClient]:
    """Opens RawClients (handshake done unless handshake=False); all closed at teardown."""
    with closing_all(RawClient, RawClient.close) as connect:

        def open_client(port: int, handshake: bool = True, **options: Any) -> RawClient:
            client = connect(port, **options)
            return client.handshake() if handshake else client

        yield open_client


@pytest.fixture
def start_transport():
    """Starts a bare Transport on loopback; on_message echoes the text back unless given."""

    def start(on_message: Optional[Callable] = None, host: str = "127.0.0.1", **options: Any) -> Transport:
        transport = Transport(host, 0, on_message or (lambda client, text: client.send(text)), **options)
        transport.start()
        return transport

    with closing_all(start, close_quickly) as make:
        yield make


@pytest.fixture
def frequent_thread_switches():
    """Threads switch every 10 µs instead of every 5 ms, so that a race shows up within one test."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def largest_send_buffer() -> int:
    """The most the kernel may buffer for one sending socket (Linux grows it up to tcp_wmem's max)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 2**20


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
    client.sock.sendall(frames.encode_header(TEXT, length, mask=os.urandom(4)))  # the payload never comes
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
    # Dropped for its queue, not for a socket that took nothing for SEND_TIMEOUT (a busy machine).
    monkeypatch.setattr(transport, "SEND_TIMEOUT", 60.0)
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
    "plain-http-get": (b"GET /ws HTTP/1.1\r\nHost: barmaid\r\n\r\n", True),
    "post": (b"POST / HTTP/1.1\r\nHost: barmaid\r\n" + _UPGRADE + _KEY + b"Content-Length: 0\r\n\r\n", True),
    "no-upgrade": (b"GET /ws HTTP/1.1\r\nHost: barmaid\r\nConnection: Upgrade\r\n" + _KEY + b"\r\n", True),
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


def test_a_drip_fed_handshake_is_closed_at_its_deadline(server, raw, monkeypatch):
    """The timeout bounded each recv, not the handshake: one byte per 50 ms kept a thread for ever."""
    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 0.3)
    client = raw(server.port, handshake=False)
    client.sock.sendall(b"GET / HTTP/1.1\r\nX-Drip: ")
    client.sock.settimeout(0.05)
    started = time.monotonic()
    while time.monotonic() - started < RECV_TIMEOUT:
        try:
            client.sock.sendall(b"x")
            if client.sock.recv(1) == b"":
                break
        except socket.timeout:
            continue
        except OSError:  # reset: closed as well
            break
    else:
        pytest.fail(f"a handshake drip-fed for {RECV_TIMEOUT} s is still open (deadline 0.3 s)")
    assert raw(server.port).echo() == []


def test_connections_in_handshake_are_capped_by_closing_the_oldest(server, raw, monkeypatch, caplog):
    """Every half-open connection held a thread (and a descriptor) until its peer gave up."""
    monkeypatch.setattr(transport, "MAX_HANDSHAKES", 4)
    established = raw(server.port)
    assert established.echo() == []
    threads = threading.active_count()
    waiting = [raw(server.port, handshake=False) for _ in range(30)]
    for client in waiting:
        client.sock.sendall(b"GET / HTTP/1.1\r\n")
    settle(threads + 4)
    assert waiting[0].expect_eof() == b"", "the oldest handshake is still open"
    assert raw(server.port).echo({"after": "30 half-open"}) == []
    assert established.echo() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "handshake" in r.getMessage()]
    assert len(warnings) == 1, warnings


# ---- frames we do not take ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(frame_bytes(TEXT, b'{"type": "echo", "data": "\xff\xfe"}'), 1007, id="invalid-utf8"),
        pytest.param(frame_bytes(BINARY, b"\x00\x81\x82"), 1003, id="binary"),
        pytest.param(frame_bytes(CONTINUATION, b"more"), 1002, id="continuation-without-a-start"),
        pytest.param(frame_bytes(TEXT, b'{"type": "ec', fin=False) + frame_bytes(TEXT, b"x"), 1002, id="text-in-text"),
        pytest.param(frame_bytes(BINARY, b"\x00", fin=False), 1003, id="fragmented-binary"),
        pytest.param(frame_bytes(TEXT, b"[", fin=False) + frame_bytes(BINARY, b"\x00"), 1002, id="binary-in-text"),
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


def test_a_fragmented_text_message_is_joined_and_control_frames_between_its_fragments_are_answered(server, raw):
    """RFC 6455 5.4: a message may come in fragments, pings between them; the library merges or refuses them."""
    message = {"type": "echo", "data": "🍸 " + "x" * 5000}
    data = json.dumps(message, ensure_ascii=False).encode()
    cut = data.index("🍸".encode()) + 2  # inside the character: fragments split bytes, not characters
    client = raw(server.port)
    client.sock.sendall(
        frame_bytes(TEXT, data[:cut], fin=False)
        + frame_bytes(PING, b"between")
        + frame_bytes(CONTINUATION, data[cut:3000], fin=False)
        + frame_bytes(CONTINUATION, b"", fin=False)
        + frame_bytes(CONTINUATION, data[3000:])
    )
    assert client.recv_frame() == Frame(PONG, b"between")
    assert client.recv_json() == message
    assert client.echo() == []


def test_a_fragmented_message_over_max_message_bytes_is_refused_with_1009_before_the_excess_is_read(server, raw):
    """The limit is on the message: fragments each under it, together over it, are refused at the header."""
    limit = server.config.server.max_message_bytes
    client = raw(server.port)
    client.sock.sendall(frame_bytes(TEXT, b'"' + b"x" * (limit - 100), fin=False))
    client.sock.sendall(frames.encode_header(CONTINUATION, 101, mask=os.urandom(4)))  # its payload never comes
    assert client.expect_close() == 1009
    assert raw(server.port).echo() == []


def test_ping_is_answered_with_a_pong_of_the_same_payload(server, raw):
    """The library decodes the ping payload as UTF-8 (binary payloads raise) and pongs it re-encoded."""
    client = raw(server.port)
    client.send_frame(PING, b"\xff\x00 ping \x80")
    assert client.recv_frame() == Frame(PONG, b"\xff\x00 ping \x80")
    assert client.echo() == []


def test_close_is_answered_with_a_close(server, raw):
    """The library drops the connection on a close frame without answering it."""
    client = raw(server.port)
    client.send_frame(CLOSE, frames.close_payload(1000) + b"bye")
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
        monkeypatch.setattr(server.controller, "pour", fail)
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


def test_one_client_over_max_clients_is_refused_with_1013_and_admitted_once_one_leaves(server_with, raw):
    """The library has no limit: every connection gets a thread and a place in its client list."""
    server = server_with(max_clients=3)
    first, second, third = (raw(server.port) for _ in range(3))
    for client in (first, second, third):
        assert client.echo() == []
    assert raw(server.port).expect_close() == 1013
    for client in (first, second, third):
        assert client.echo({"after": "refusal"}) == []
    first.send_frame(CLOSE, frames.close_payload(1000))
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
                client.send_frame(CLOSE, frames.close_payload(1000))
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


# ---- addresses ----------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


@needs_ipv6
def test_an_ipv6_host_is_served_on_the_free_port_that_port_0_bound(start_transport, raw):
    """The library's TCPServer is IPv4 only: host "::1" failed to bind."""
    served = start_transport(host="::1")
    assert served.port > 0
    assert raw(served.port, host="::1").echo("over IPv6") == []


@needs_ipv6
def test_the_ipv6_any_address_serves_ipv4_and_ipv6_clients(start_transport, raw):
    served = start_transport(host="::")
    assert raw(served.port, host="::1").echo("v6") == []
    assert raw(served.port, host="127.0.0.1").echo("v4") == []


# ---- plain HTTP on the same port ----------------------------------------------------------

PAGE = b"<!doctype html><title>barmaid</title>"


def panel(target: str) -> Optional[transport.HttpResponse]:
    """A stand-in for the service panel: one page, one missing file, and not ours for the rest."""
    if target == "/":
        return transport.HttpResponse(200, "text/html; charset=utf-8", PAGE)
    if target == "/missing.js":  # a plain (status, type, body) tuple does as well
        return 404, "text/plain; charset=utf-8", b"no such file\n"  # type: ignore[return-value]
    if target == "/boom":
        raise RuntimeError("panel failed")
    return None


def http(port: int, request: str) -> tuple[str, dict[str, str], bytes]:
    """Sends one HTTP request; the status line, the headers and the body, read until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def test_a_plain_get_is_answered_by_the_http_handler_with_strict_headers(start_transport, raw):
    served = start_transport(http_handler=panel)
    status, headers, body = http(served.port, "GET / HTTP/1.1\r\nHost: barmaid\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and body == PAGE
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Length"] == str(len(PAGE))
    assert headers["Connection"] == "close"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self' ws: wss:" in policy, policy
    assert "unsafe" not in policy and "frame-ancestors 'none'" in policy, policy
    status, headers, body = http(served.port, "HEAD / HTTP/1.1\r\nHost: barmaid\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and body == b"" and headers["Content-Length"] == str(len(PAGE))
    status, _, body = http(served.port, "GET /missing.js HTTP/1.1\r\nHost: barmaid\r\n\r\n")
    assert status == "HTTP/1.1 404 Not Found" and body == b"no such file\n"
    assert raw(served.port).echo("the WebSocket on the same port") == []


@pytest.mark.parametrize("handler", [None, panel], ids=["no-handler", "handler-says-none"])
def test_a_plain_get_the_handler_does_not_take_keeps_the_426_answer(start_transport, handler):
    served = start_transport(http_handler=handler)
    status, headers, body = http(served.port, "GET /ws HTTP/1.1\r\nHost: barmaid\r\n\r\n")
    assert status == "HTTP/1.1 426 Upgrade Required", status
    assert b"WebSocket" in body and headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = http(served.port, "HEAD /ws HTTP/1.1\r\nHost: barmaid\r\n\r\n")
    assert status == "HTTP/1.1 426 Upgrade Required" and body == b""


def test_a_failing_http_handler_is_a_500_and_one_logged_traceback(start_transport, raw, caplog, capfd):
    served = start_transport(http_handler=panel)
    status, _, _ = http(served.port, "GET /boom HTTP/1.1\r\nHost: barmaid\r\n\r\n")
    assert status == "HTTP/1.1 500 Internal Server Error"
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert record.exc_info and "/boom" in record.getMessage()
    assert "Traceback" not in capfd.readouterr().err
    assert raw(served.port).echo() == []


# ---- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        ("http://kiosk.local", True),
        ("http://127.0.0.1:{port}", True),
        ("https://127.0.0.1:{port}", True),
        ("HTTP://127.0.0.1:{port}/", True),
        ("http://127.0.0.1:1", False),
        ("http://127.0.0.1:{port}.evil.example", False),
        ("http://evil.example", False),
    ],
)
def test_the_servers_own_origin_is_always_allowed(start_transport, raw, origin, admitted):
    """A page served by barmaid itself (its panel) comes from http://<Host>; allowed_origins need not name it."""
    served = start_transport(allowed_origins=["http://kiosk.local"])
    client = raw(served.port, handshake=False)
    origin = origin.format(port=served.port)
    if admitted:
        client.handshake(host=f"127.0.0.1:{served.port}", origin=origin)
        assert client.echo() == []
    else:
        client.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\nOrigin: {origin}\r\n".encode() + _UPGRADE + _KEY + b"\r\n"
        )
        assert client.read_http_head().startswith(b"HTTP/1.1 403 ")


# ---- a server under a file limit ----------------------------------------------------------

#: barmaid with simulated pumps in a process of its own, whose file limit is lowered once it
#: listens to leave it argv[2] more descriptors: what LimitNOFILE does to a service.
_LIMITED_SERVER = """
import logging, os, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
from barmaid.config import load_config
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.server import BarmaidServer
config = load_config(sys.argv[1], {"server": {"host": "127.0.0.1"}})
config = config.model_copy(update={"server": config.server.model_copy(update={"port": 0})})
server = BarmaidServer(config, SimulatedDriver([pump.gpio for pump in config.pumps]))
server.start()
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(server.port, flush=True)
sys.stdin.read()
os._exit(0)  # the log is written; a graceful close is tested elsewhere
"""


class LimitedServer:
    """The server above; `log` is its stderr, read once it has ended."""

    def __init__(self, config: Path, spare_descriptors: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LIMITED_SERVER, str(config), str(spare_descriptors)],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.proc.stdout.readline() or 0)
        if not self.port:
            pytest.fail(f"the limited server did not start: {self.stop()}")

    def status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc/{self.proc.pid}/status")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        """Ends the server; its log."""
        try:
            _, self.log = self.proc.communicate("", timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.log = self.proc.communicate()
        return self.log


@pytest.fixture
def limited_server(write_config):
    started: list[LimitedServer] = []

    def start(spare_descriptors: int, flow_ml_s: float = 400.0) -> LimitedServer:
        from support.pumps import fast_pumps

        started.append(LimitedServer(write_config({"pumps": fast_pumps(flow_ml_s)}), spare_descriptors))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


def drip_feeders(port: int, count: int) -> list[socket.socket]:
    """Up to `count` connections that begin a handshake and never finish it (fewer if the server stops accepting)."""
    opened = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=RECV_TIMEOUT)
        except OSError:
            break  # the backlog stays full: the server no longer accepts
        opened.append(sock)
        time.sleep(0.001)  # a full backlog drops a SYN for a second; this test is about holding, not bursts
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: barmaid\r\nX-Drip: ")
        except OSError:
            pass  # already closed by the server to make room
    return opened


def new_client_echoes(port: int, what: str) -> None:
    try:
        client = RawClient(port).handshake()
    except (OSError, EOFError) as exc:
        pytest.fail(f"a new client cannot connect {what}: {exc!r}")
    try:
        assert client.echo(what) == []
    finally:
        client.close()


def test_drip_fed_handshakes_leave_descriptors_and_threads_for_clients_and_for_stop(limited_server):
    """300 slow handshakes held 303 threads; under a file limit no client could connect, not even to stop."""
    served = limited_server(spare_descriptors=100, flow_ml_s=20.0)
    pouring = RawClient(served.port).handshake()
    try:
        pouring.send_json({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}})  # 5 s
        assert pouring.recv_json()["type"] == "status"
        attackers = drip_feeders(served.port, 300)
        try:
            new_client_echoes(served.port, f"after {len(attackers)} drip-fed handshakes")
            threads = served.status("Threads")
            pouring.send_json({"type": "stop"})
            statuses = pouring.recv_until()
        finally:
            for sock in attackers:
                sock.close()
    finally:
        pouring.close()
    assert len(attackers) == 300, f"the server stopped accepting after {len(attackers)} connections"
    assert status_times(statuses)[-1] + 1 > 0 and statuses[-1]["data"]["remaining_time"] == 0
    assert threads <= transport.MAX_HANDSHAKES + 16, f"{threads} threads in the server"
    log = served.stop()
    assert "Traceback" not in log, log


def test_out_of_descriptors_the_accept_loop_does_not_spin_and_recovers(limited_server):
    """On EMFILE socketserver's loop retried accept at once, for ever: 100 % CPU, and nothing served."""
    served = limited_server(spare_descriptors=4)
    established = RawClient(served.port).handshake()
    try:
        assert established.echo() == []
        attackers = drip_feeders(served.port, 40)  # more than the spare descriptors; all fit in the backlog
        try:
            time.sleep(0.2)  # the server takes what it can
            before = served.cpu_seconds()
            time.sleep(1.0)
            spent = served.cpu_seconds() - before
            assert established.echo({"while": "out of descriptors"}) == []
            new_client_echoes(served.port, "while out of descriptors (the oldest handshake gives way)")
        finally:
            for sock in attackers:
                sock.close()
        new_client_echoes(served.port, "once the attackers are gone")
        assert established.echo({"after": "out of descriptors"}) == []
    finally:
        established.close()
    assert spent < 0.2, f"the server spent {spent:.2f} s of CPU in 1 s doing nothing"
    log = served.stop()
    assert log.count("cannot accept a connection") == 1, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("host", ["evil.example:{port}", "pi.example.com:{port}"])
def test_a_page_whose_own_name_was_rebound_to_barmaid_is_not_its_own_origin(start_transport, raw, host):
    """DNS rebinding: a page from evil.example, its name pointed at the Pi, sends Host and Origin of
    evil.example, matching each other; only an IP address, localhost or a .local name proves the page
    is barmaid's own."""
    served = start_transport(allowed_origins=["http://kiosk.local"])
    client = raw(served.port, handshake=False)
    host = host.format(port=served.port)
    client.sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n".encode() + _UPGRADE + _KEY + b"\r\n")
    assert client.read_http_head().startswith(b"HTTP/1.1 403 ")


def test_a_local_name_is_its_own_origin(start_transport, raw):
    served = start_transport(allowed_origins=["http://kiosk.local"])
    client = raw(served.port, handshake=False)
    client.handshake(host=f"barmaid.local:{served.port}", origin=f"http://barmaid.local:{served.port}")
    assert client.echo() == []


def test_close_does_not_wait_for_the_accept_loops_poll(monkeypatch):
    """socketserver looks at its stop flag once per poll; with a poll of 30 s a close that waited
    for it would take 30 s: the accept loop is woken instead, and nothing is accepted on the way."""
    serve_forever = transport._Server.serve_forever
    monkeypatch.setattr(transport._Server, "serve_forever", lambda self, poll_interval=0.5: serve_forever(self, 30))
    served = transport.Transport("127.0.0.1", 0, lambda client, text: None)
    served.start()
    wait_until(lambda: served._thread is not None and served._thread.is_alive(), "the accept loop runs")
    started = time.monotonic()
    served.close()
    assert time.monotonic() - started < 10
    assert not served._thread.is_alive() and served.clients() == []

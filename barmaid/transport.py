"""The WebSocket transport: `websocket-server` with its known gaps closed, in one place.

The library accepts any frame size, writes with `send` (short writes corrupt the stream), lets one
slow client block every broadcast, and raises on handshake junk (../shared/DEPENDENCIES.md, W1-W11).
We keep its server loop and replace the connection handler and the client registry.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import struct
import threading
import time
from base64 import b64encode
from hashlib import sha1
from typing import Callable, Optional, Sequence

from websocket_server import WebsocketServer
from websocket_server.websocket_server import WebSocketHandler

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_UNSUPPORTED = 1000, 1001, 1002, 1003
CLOSE_BAD_DATA, CLOSE_TOO_BIG, CLOSE_TRY_LATER = 1007, 1009, 1013
#: A half-open handshake may hold a thread this long at most.
HANDSHAKE_TIMEOUT = 10.0
#: A client whose socket takes no data for this long is dropped; others are never held up.
SEND_TIMEOUT = 5.0
#: Frames waiting for one client; a client this far behind has stopped reading and is dropped.
SEND_QUEUE = 256
#: At shutdown, clients get this long, together, to take their close frame.
CLOSE_GRACE = 1.0
_MAX_HEADER_LINE = 8192
_MAX_HEADERS = 64


class _Refused(Exception):
    """The handshake cannot go on; `args[0]` is the HTTP status line, `args[1]` the reason."""


class _Closed(Exception):
    """The connection is over; `args[0]` says why (for the log)."""


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (the server never masks or fragments)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(_CLOSE, struct.pack("!H", code) + reason.encode()[:120])


def _unmask(mask: bytes, payload: bytes) -> bytes:
    # One big-integer XOR instead of the library's Python loop over every byte.
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Client:
    """One connected peer. `send` never blocks: what the socket does not take at once, a sender
    thread writes whole, in order, while the caller goes on."""

    def __init__(self, number: int, handler: "_Handler") -> None:
        self.id = number
        self.address = handler.client_address
        self.path = handler.path
        self._sock: socket.socket = handler.request
        self._limit = SEND_QUEUE
        # Two places over the limit, for the close frame and the end mark: closing never waits.
        self._queue: "queue.Queue[Optional[bytes]]" = queue.Queue(SEND_QUEUE + 2)
        # Frames are queued under this lock, so none follows the close frame.
        self._lock = threading.Lock()
        #: Frames queued or being written by the sender; 0: the socket may be written directly.
        self._pending = 0
        self._closing = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name=f"barmaid-ws-send-{number}", daemon=True)
        self._sender.start()

    def __repr__(self) -> str:
        return f"client {self.id} ({self.address[0]}:{self.address[1]})"

    def send(self, text: str) -> None:
        self.send_raw(frame(_TEXT, text.encode()))

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            if self._closing.is_set():
                return
            if not self._pending:
                # Nothing ahead of this frame: write what the socket takes now, without blocking
                # (a hand-off to the sender thread costs more than the whole echo).
                try:
                    data = data[self._sock.send(data, socket.MSG_DONTWAIT) :]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    log.info("%r: send failed (%s); dropping it", self, exc)
                    self._closing.set()
                    self._shutdown()
                    return
                if not data:
                    return
            if self._queue.qsize() < self._limit:
                self._pending += 1
                self._queue.put_nowait(data)
                return
        log.warning("%r stopped reading (%d frames waiting); dropping it", self, self._limit)
        self.abort()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Sends what is queued, then the close frame, then ends the connection."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            self._pending += 1
            self._queue.put_nowait(close_frame(code, reason))
            self._queue.put_nowait(None)

    def abort(self) -> None:
        """Ends the connection now, dropping whatever is queued."""
        self._closing.set()
        self._shutdown()

    def join(self, timeout: float) -> bool:
        """Waits for the connection to end; True if it did."""
        self._sender.join(timeout)
        return not self._sender.is_alive()

    def _send_loop(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                break
            try:
                self._sock.sendall(data)
            except OSError as exc:
                log.info("%r: send failed (%s); dropping it", self, exc)
                self._closing.set()
                break
            with self._lock:
                self._pending -= 1
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # Unblock the sender if it still waits for frames.
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass


class _Handler(WebSocketHandler):
    """Reads one connection: a strict handshake, then frames, each checked before it is read."""

    server: "_Server"
    path = "/"

    def setup(self) -> None:
        super().setup()
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Send timeout only (reads may wait for ever on an idle GUI): see SEND_TIMEOUT.
        seconds = int(SEND_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))
        # A peer that vanished without a FIN (Wi-Fi gone) frees its slot after about 90 s.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):  # Linux; other systems keep their defaults
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        self.client: Optional[Client] = None

    def handle(self) -> None:
        try:
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            self._handshake()
            self.request.settimeout(None)
            self.client = self.server.transport._admit(self)
            if self.client is None:
                return
            while True:
                self._read_frame()
        except _Refused as exc:
            log.info("refused a handshake from %s: %s", self.client_address[0], exc.args[1])
            self._raw_send(
                f"HTTP/1.1 {exc.args[0]}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                f"Content-Length: {len(exc.args[1]) + 1}\r\n\r\n{exc.args[1]}\n".encode()
            )
        except _Closed as exc:
            log.info("%s closed: %s", self.client or self.client_address[0], exc.args[0])
        except (OSError, EOFError) as exc:
            log.info("%s gone: %s", self.client or self.client_address[0], exc)

    def finish(self) -> None:
        if self.client is not None:
            self.server.transport._leave(self.client)
        try:
            super(WebSocketHandler, self).finish()
        except OSError:
            pass

    # ---- handshake ------------------------------------------------------------------------

    def _handshake(self) -> None:
        request_line = self.rfile.readline(_MAX_HEADER_LINE).decode("latin-1").strip()
        if not request_line:
            raise _Closed("connection closed before the handshake")
        parts = request_line.split()
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self.rfile.readline(_MAX_HEADER_LINE).decode("latin-1").strip()
            if not line:
                break
            name, colon, value = line.partition(":")
            if not colon:
                raise _Refused("400 Bad Request", f"header line without a colon: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _Refused("431 Request Header Fields Too Large", f"more than {_MAX_HEADERS} headers")
        if len(parts) != 3 or parts[0] != "GET":
            raise _Refused("405 Method Not Allowed", "this is a WebSocket endpoint: open it with GET and Upgrade")
        if headers.get("upgrade", "").lower() != "websocket" or "sec-websocket-key" not in headers:
            raise _Refused(
                "426 Upgrade Required", "this is barmaid's WebSocket endpoint: connect with a WebSocket client"
            )
        refusal = self.server.transport.check_handshake(parts[1], headers)
        if refusal:
            raise _Refused("403 Forbidden", refusal)
        self.path = parts[1]
        accept = b64encode(sha1(headers["sec-websocket-key"].encode() + _GUID).digest()).decode()
        self._raw_send(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )

    def _raw_send(self, data: bytes) -> None:
        try:
            self.request.sendall(data)
        except OSError:
            pass

    # ---- frames ---------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise _Closed("peer closed the connection")
        return data

    def _read_frame(self) -> None:
        b1, b2 = self._read(2)
        fin, opcode, masked, length = b1 & 0x80, b1 & 0x0F, b2 & 0x80, b2 & 0x7F
        if b1 & 0x70:
            self._fail(CLOSE_PROTOCOL, "reserved bits set (no extension was agreed)")
        if not masked:
            self._fail(CLOSE_PROTOCOL, "client frames must be masked")
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        if opcode >= 0x8 and (length > 125 or not fin):
            self._fail(CLOSE_PROTOCOL, "control frames must be whole and at most 125 bytes")
        limit = self.server.transport.max_message_bytes
        if length > limit:
            self._fail(CLOSE_TOO_BIG, f"frame of {length} bytes, over the limit of {limit}")
        if opcode in (_BINARY, _CONTINUATION) or (opcode == _TEXT and not fin):
            self._fail(CLOSE_UNSUPPORTED, "only whole text frames are supported")
        if opcode not in (_TEXT, _CLOSE, _PING, _PONG):
            self._fail(CLOSE_PROTOCOL, f"unknown opcode {opcode:#x}")
        mask = self._read(4)
        payload = _unmask(mask, self._read(length))
        if opcode == _CLOSE:
            self.client.close(CLOSE_NORMAL)
            raise _Closed("peer sent close")
        if opcode == _PING:
            self.client.send_raw(frame(_PONG, payload))
            return
        if opcode == _PONG:
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(CLOSE_BAD_DATA, "text frame is not valid UTF-8")
        self.server.transport._deliver(self.client, text)

    def _fail(self, code: int, reason: str) -> None:
        self.client.close(code, reason)
        raise _Closed(f"{reason} (close {code})")


class _Server(WebsocketServer):
    request_queue_size = 64  # the library's 5 drops connections under a burst
    transport: "Transport"


class Transport:
    """Serves WebSocket clients and hands each text frame to `on_message(client, text)`."""

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[Client, str], None],
        max_message_bytes: int = 64 * 1024,
        max_clients: int = 32,
        allowed_origins: Optional[Sequence[str]] = None,
        on_leave: Callable[[Client], None] = lambda client: None,
    ) -> None:
        self.on_message = on_message
        self.on_leave = on_leave
        self.max_message_bytes = max_message_bytes
        self.max_clients = max_clients
        self.allowed_origins = None if allowed_origins is None else {o.rstrip("/") for o in allowed_origins}
        self._clients: dict[int, Client] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server = _Server(host=host, port=port)
        self._server.RequestHandlerClass = _Handler
        self._server.transport = self
        self._thread: Optional[threading.Thread] = None
        self.port: int = self._server.port
        self.host = host

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="barmaid-ws-accept", daemon=True)
        self._thread.start()

    def clients(self) -> list[Client]:
        with self._lock:
            return list(self._clients.values())

    def broadcast(self, text: str) -> None:
        data = frame(_TEXT, text.encode())
        for client in self.clients():
            client.send_raw(data)

    def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        """Stops accepting, then closes every client (all of them, unlike the library's)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2)
        self._server.server_close()
        with self._lock:
            # A handshake still under way is refused from now on (see _admit).
            self._closed = True
            clients = list(self._clients.values())
        for client in clients:
            client.close(code, reason)
        # One grace period for all; a client that stopped reading does not hold up the shutdown.
        deadline = time.monotonic() + CLOSE_GRACE
        for client in clients:
            if not client.join(max(0.0, deadline - time.monotonic())):
                client.abort()

    def check_handshake(self, path: str, headers: dict[str, str]) -> Optional[str]:
        """Why this handshake is refused, or None to accept it."""
        if self.allowed_origins is not None:
            origin = headers.get("origin", "").rstrip("/")
            if origin not in self.allowed_origins:
                return f"origin {origin or '(none)'} is not in server.allowed_origins"
        return None

    def _admit(self, handler: _Handler) -> Optional[Client]:
        client = Client(next(self._ids), handler)
        with self._lock:
            if self._closed:
                refusal: Optional[tuple[int, str]] = (CLOSE_GOING_AWAY, "server shutting down")
            elif len(self._clients) >= self.max_clients:
                refusal = (CLOSE_TRY_LATER, f"too many clients (server.max_clients {self.max_clients}), try later")
            else:
                refusal = None
                self._clients[client.id] = client
        if refusal is None:
            log.info("%r connected", client)
            return client
        log.warning("refused %r: %s", client, refusal[1])
        client.close(*refusal)
        client.join(timeout=1)
        return None

    def _leave(self, client: Client) -> None:
        with self._lock:
            known = self._clients.pop(client.id, None) is not None
        client.close(CLOSE_NORMAL)
        client.join(timeout=1)
        if known:
            log.info("%r left", client)
            self.on_leave(client)

    def _deliver(self, client: Client, text: str) -> None:
        try:
            self.on_message(client, text)
        except Exception:
            log.exception("handler failed on a message from %r: %.200r", client, text)

"""The WebSocket transport: `websocket-server`'s accept loop, with our own connection handling.

websocket-server 0.6.4 gets these wrong (docs/dependencies.md, "websocket-server"): it reads any frame
size, writes with `send`, lets one slow client block every broadcast, raises on handshake junk,
skips binary and continuation frames unread, and gives every connection a thread with no bound
on how many or for how long. We keep its `socketserver` loop and replace the connection handler
(a strict, deadline-bound handshake, then frames through `barmaid.frames`), the client registry
and the send path. The same port answers plain HTTP GETs through an optional `http_handler`.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import queue
import socket
import struct
import threading
import time
from base64 import b64encode
from collections.abc import Sequence
from hashlib import sha1
from http import HTTPStatus
from typing import Any, Callable, NamedTuple, Optional

from websocket_server import WebsocketServer
from websocket_server.websocket_server import WebSocketHandler

from .frames import Assembler, CloseCode, FrameError, Opcode, close_payload, encode, read_header, read_payload

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The whole handshake (request head in, answer out) must be over within this many seconds.
HANDSHAKE_TIMEOUT = 10.0
#: Connections still in their handshake; one more closes the oldest of them (a real client's
#: handshake takes milliseconds, so it is the drip-feeders that get closed).
MAX_HANDSHAKES = 16
#: When accept finds no free descriptor, it waits this long (or until a connection ends) to retry.
ACCEPT_BACKOFF = 0.1
#: A client whose socket takes no data for this long is dropped; others are never held up.
SEND_TIMEOUT = 5.0
#: Frames waiting for one client; a client this far behind has stopped reading and is dropped.
SEND_QUEUE = 256
#: At shutdown, clients get this long, together, to take their close frame.
CLOSE_GRACE = 1.0
_MAX_HEAD = 32 * 1024
_MAX_HEADERS = 64
#: accept() errors that mean "no descriptor or buffer free now", not "this connection failed".
_STARVED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: Every HTTP answer: no caching, no sniffing, no framing, scripts and sockets from this server only.
_HTTP_HEADERS = (
    "Connection: close\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"
    "Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "frame-ancestors 'none'\r\n"
)


class HttpResponse(NamedTuple):
    """What `http_handler` answers to a plain GET or HEAD (HEAD gets the headers only)."""

    status: int
    content_type: str
    body: bytes


#: Gets the request target of a plain GET or HEAD (as sent, query included); None: not ours (426).
HttpHandler = Callable[[str], Optional[HttpResponse]]


def _unrebindable(host: str) -> bool:
    """True for a Host header a hostile page cannot make its own by DNS rebinding: an IP address,
    localhost or an mDNS name (.local). A page from evil.example whose name was rebound to the Pi
    sends Origin and Host of evil.example, which match each other, so a name is no proof."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost" or name.endswith(".local"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Refused(Exception):
    """The handshake cannot go on: answer `status` with `reason` and hang up."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Closed(Exception):
    """The connection is over; `args[0]` says why (for the log)."""


def _address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    """IPv6 for an IPv6 address or a name with IPv6 addresses only; IPv4 otherwise (as before)."""
    try:
        infos = socket.getaddrinfo(host or None, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return socket.AF_INET  # bind then says what is wrong with the host
    families = {info[0] for info in infos}
    return socket.AF_INET if socket.AF_INET in families or not families else socket.AF_INET6


def http_response(status: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    """One HTTP/1.1 answer with the headers every answer of this server carries."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"{_HTTP_HEADERS}\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


class _Rare:
    """Logs a recurring warning at most once per `interval` seconds, with how many it left out."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -interval
        self._skipped = 0

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._skipped += 1
            return
        if self._skipped:
            message, args = message + " (and %d more since the last such line)", (*args, self._skipped)
        log.warning(message, *args)
        self._last, self._skipped = now, 0


class Client:
    """One connected peer. `send` never blocks: what the socket does not take at once, a sender
    thread writes whole, in order, while the caller goes on."""

    def __init__(self, number: int, handler: _Handler) -> None:
        self.id = number
        self.address = handler.client_address
        self.path = handler.path
        self._sock: socket.socket = handler.request
        self._limit = SEND_QUEUE
        # Two places over the limit, for the close frame and the end mark: closing never waits.
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(SEND_QUEUE + 2)
        # Frames are queued under this lock, so none follows the close frame.
        self._lock = threading.Lock()
        #: Frames queued or being written by the sender; 0: the socket may be written directly.
        self._pending = 0
        self._closing = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name=f"barmaid-ws-send-{number}", daemon=True)
        self._sender.start()

    def __repr__(self) -> str:
        return f"client {self.id} ({_address(self.address)})"

    def send(self, text: str) -> None:
        self.send_raw(encode(Opcode.TEXT, text.encode()))

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

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Sends what is queued, then the close frame, then ends the connection."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            self._pending += 1
            self._queue.put_nowait(encode(Opcode.CLOSE, close_payload(code, reason)))
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
    """Reads one connection: a strict handshake under one deadline, then frames, each checked
    before its payload is read."""

    server: _Server
    path = "/"

    def setup(self) -> None:
        super().setup()
        self._deadline = time.monotonic() + HANDSHAKE_TIMEOUT
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
        #: Bytes that came after the request head (a client may send frames before our 101).
        self._early = b""
        #: A HEAD request: answers carry no body.
        self._head = False

    def handle(self) -> None:
        transport = self.server.transport
        try:
            try:
                upgraded = self._handshake()
            finally:
                transport._handshake_over(self.request)
            if not upgraded:
                return
            self.request.settimeout(None)
            self.client = transport._admit(self)
            if self.client is not None:
                self._serve(self.client)
        except _Refused as exc:
            log.info("refused a handshake from %s: %s", self.client_address[0], exc.reason)
            body = f"{exc.reason}\n".encode()
            self._raw_send(http_response(exc.status, "text/plain; charset=utf-8", body, head_only=self._head))
        except FrameError as exc:
            if self.client is not None:  # frames are read only once the client is admitted
                self.client.close(exc.code, exc.reason)
            log.info("%r closed: %s", self.client, exc)
        except _Closed as exc:
            log.info("%s closed: %s", self.client or self.client_address[0], exc.args[0])
        except (OSError, EOFError) as exc:
            log.info("%s gone: %s", self.client or self.client_address[0], exc or "peer closed the connection")

    def finish(self) -> None:
        if self.client is not None:
            self.server.transport._leave(self.client)
        try:
            super(WebSocketHandler, self).finish()
        except OSError:
            pass

    # ---- handshake ------------------------------------------------------------------------

    def _read_head(self) -> bytes:
        """The request head up to the blank line, read under the handshake's deadline."""
        sock, buffer, searched = self.request, bytearray(), 0
        while True:
            end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0:
                self._early = bytes(buffer[end + 4 :])
                return bytes(buffer[:end])
            if len(buffer) > _MAX_HEAD:
                raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head over {_MAX_HEAD} bytes")
            searched = len(buffer)
            left = self._deadline - time.monotonic()
            try:
                if left <= 0:
                    raise socket.timeout
                sock.settimeout(left)
                chunk = sock.recv(4096)
            except socket.timeout:
                raise _Closed(f"handshake not finished within {HANDSHAKE_TIMEOUT} s") from None
            if not chunk:
                raise _Closed("connection ended " + ("during" if buffer else "before") + " the handshake")
            buffer += chunk

    def _handshake(self) -> bool:
        """True once upgraded to a WebSocket; False when answered as plain HTTP."""
        lines = self._read_head().decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(lines) > _MAX_HEADERS + 1:
            raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {_MAX_HEADERS} headers")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise _Refused(HTTPStatus.BAD_REQUEST, f"header line without a colon: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            raise _Refused(HTTPStatus.METHOD_NOT_ALLOWED, "this is a WebSocket endpoint: open it with GET and Upgrade")
        method, target = parts[0], parts[1]
        self._head = method == "HEAD"
        if headers.get("upgrade", "").lower() != "websocket" or self._head:
            self._answer_http(target)
            return False
        if "sec-websocket-key" not in headers:
            raise _Refused(HTTPStatus.BAD_REQUEST, "Sec-WebSocket-Key missing: connect with a WebSocket client")
        refusal = self.server.transport.check_handshake(target, headers)
        if refusal:
            raise _Refused(HTTPStatus.FORBIDDEN, refusal)
        self.path = target
        accept = b64encode(sha1(headers["sec-websocket-key"].encode() + _GUID).digest()).decode()
        self._raw_send(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        return True

    def _answer_http(self, target: str) -> None:
        handler = self.server.transport.http_handler
        try:
            response = handler(target) if handler is not None else None
        except Exception:
            log.exception("http_handler failed on %.200r from %s", target, self.client_address[0])
            response = HttpResponse(500, "text/plain; charset=utf-8", b"internal error (logged on the server)\n")
        if response is None:
            raise _Refused(
                HTTPStatus.UPGRADE_REQUIRED, "this is barmaid's WebSocket endpoint: connect with a WebSocket client"
            )
        status, content_type, body = response  # an HttpResponse, or any (status, type, body) triple
        log.info("%s %s: %d", self.client_address[0], target[:200], status)
        self._raw_send(http_response(status, content_type, body, head_only=self._head))

    def _raw_send(self, data: bytes) -> None:
        try:
            self.request.sendall(data)
        except OSError:
            pass

    # ---- frames ---------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        if self._early:
            data, self._early = self._early[:n], self._early[n:]
            if len(data) < n:
                data += self.rfile.read(n - len(data))
        else:
            data = self.rfile.read(n)
        if len(data) < n:
            raise EOFError("peer closed the connection")
        return data

    def _serve(self, client: Client) -> None:
        read = self._read
        assembler = Assembler(self.server.transport.max_message_bytes)
        while True:
            header = read_header(read)
            if header.mask is None:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
            if header.opcode < 0x8:  # data, not control
                text = assembler.take(header, read)
                if text is not None:
                    self.server.transport._deliver(client, text)
                continue
            payload = read_payload(read, header)
            if header.opcode is Opcode.CLOSE:
                client.close(CloseCode.NORMAL)
                raise _Closed("peer sent close")
            if header.opcode is Opcode.PING:
                client.send_raw(encode(Opcode.PONG, payload))


class _Server(WebsocketServer):
    """The library's accept loop, with bounds on connections and on running out of descriptors."""

    request_queue_size = 64  # the library's 5 drops connections under a burst
    transport: Transport

    def __init__(self, host: str, port: int) -> None:
        self.address_family = _family(host)
        super().__init__(host=host, port=port)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # "::" serves IPv4 clients too, whatever the system's default (net.ipv6.bindv6only).
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _STARVED:
                self.transport._starved(exc)
            raise  # socketserver skips this round

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self.transport._connecting(request):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError as exc:  # no thread could be started
            log.warning("cannot serve %s: %s", client_address[0], exc)
            self.transport._disconnected(request)
            self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            # Before the socket closes: eviction must never touch a closed (and reused) descriptor.
            self.transport._disconnected(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address[0])

    def shutdown(self) -> None:
        """Ends the accept loop now, not at its next poll (socketserver looks at its stop flag only
        every poll_interval, 0.5 s): the flag is set first, then a connection to the listening
        socket wakes the loop's select; the loop sees the flag before it accepts anything."""
        self._BaseServer__shutdown_request = True  # socketserver's own flag, set as its shutdown() sets it
        try:
            socket.create_connection(self.server_address[:2], timeout=0.5).close()
        except OSError:
            pass  # the loop still ends at its next poll
        super().shutdown()


class Transport:
    """Serves WebSocket clients and hands each text message to `on_message(client, text)`.

    Args:
        host: an IPv4 or IPv6 address or a name; "::" serves IPv4 and IPv6.
        port: 0 binds a free port; `port` then says which.
        max_message_bytes: the most a message may hold, all its fragments together (close 1009).
        max_clients: connections past their handshake; one more is refused with close 1013.
        allowed_origins: None admits any Origin; else only these and the server's own origin
            (`http://` or `https://` plus the request's Host header: a page this server served).
        http_handler: answers plain GET/HEAD requests (no Upgrade) on the same port.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[Client, str], None],
        max_message_bytes: int = 64 * 1024,
        max_clients: int = 32,
        allowed_origins: Optional[Sequence[str]] = None,
        on_leave: Callable[[Client], None] = lambda client: None,
        http_handler: Optional[HttpHandler] = None,
    ) -> None:
        self.on_message = on_message
        self.on_leave = on_leave
        self.http_handler = http_handler
        self.max_message_bytes = max_message_bytes
        self.max_clients = max_clients
        self.allowed_origins = None if allowed_origins is None else {o.rstrip("/") for o in allowed_origins}
        self._clients: dict[int, Client] = {}
        self._closed = False
        self._lock = threading.Lock()
        #: Notified whenever a connection ends (a descriptor and a thread are free again).
        self._ended = threading.Condition(self._lock)
        #: Sockets still in their handshake, oldest first.
        self._handshaking: dict[socket.socket, None] = {}
        #: Connections with a thread (in handshake, served, or ending).
        self._connections = 0
        self._evictions, self._overflows, self._starvations = _Rare(), _Rare(), _Rare()
        self._ids = itertools.count(1)
        self._server = _Server(host, port)
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
        data = encode(Opcode.TEXT, text.encode())
        for client in self.clients():
            client.send_raw(data)

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
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
        if self.allowed_origins is None:
            return None
        origin = headers.get("origin", "").rstrip("/")
        host = headers.get("host", "").lower()
        if origin in self.allowed_origins:
            return None
        if _unrebindable(host) and origin.lower() in (f"http://{host}", f"https://{host}"):
            return None  # the page barmaid itself serves (the panel)
        return f"origin {origin or '(none)'} is not in server.allowed_origins"

    # ---- connections (accept thread and handler threads) ------------------------------------

    def _connecting(self, sock: socket.socket) -> bool:
        """Counts a new connection in; False if it must be closed at once (too many threads)."""
        with self._lock:
            if self._connections >= self.max_clients + MAX_HANDSHAKES:
                self._overflows.warn("%d connections open: closing a new one at once", self._connections)
                return False
            if len(self._handshaking) >= MAX_HANDSHAKES:
                self._evictions.warn("%d connections in handshake: closing the oldest", len(self._handshaking))
                self._evict_oldest()
            self._handshaking[sock] = None
            self._connections += 1
            return True

    def _evict_oldest(self) -> None:
        # Under self._lock: a socket still listed here is still open (see _Server.process_request_thread).
        if self._handshaking:
            sock = next(iter(self._handshaking))
            del self._handshaking[sock]
            try:
                sock.shutdown(socket.SHUT_RDWR)  # its handler's recv returns at once
            except OSError:
                pass

    def _handshake_over(self, sock: socket.socket) -> None:
        with self._lock:
            self._handshaking.pop(sock, None)

    def _disconnected(self, sock: socket.socket) -> None:
        with self._lock:
            self._handshaking.pop(sock, None)
            self._connections -= 1
            self._ended.notify_all()

    def _starved(self, exc: OSError) -> None:
        """accept() found no free descriptor: free one from a handshake, wait, and do not spin."""
        with self._lock:
            self._starvations.warn(
                "cannot accept a connection: %s (%d open, %d in handshake); closing the oldest handshake"
                " and retrying; raise the file limit (LimitNOFILE in the service) if this recurs",
                exc.strerror,
                self._connections,
                len(self._handshaking),
            )
            self._evict_oldest()
            self._ended.wait(ACCEPT_BACKOFF)

    def _admit(self, handler: _Handler) -> Optional[Client]:
        client = Client(next(self._ids), handler)
        with self._lock:
            if self._closed:
                refusal: Optional[tuple[int, str]] = (CloseCode.GOING_AWAY, "server shutting down")
            elif len(self._clients) >= self.max_clients:
                too_many = f"too many clients (server.max_clients {self.max_clients}), try later"
                refusal = (CloseCode.TRY_AGAIN_LATER, too_many)
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
        client.close(CloseCode.NORMAL)
        client.join(timeout=1)
        if known:
            log.info("%r left", client)
            self.on_leave(client)

    def _deliver(self, client: Client, text: str) -> None:
        try:
            self.on_message(client, text)
        except Exception:
            log.exception("handler failed on a message from %r: %.200r", client, text)

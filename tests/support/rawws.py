"""A WebSocket client written out by hand, for tests that send what no library would: the
handshake and every frame as plain bytes, read back frame by frame with barmaid.frames.

(support.peer is the other client: the real library, for everything a GUI would do.)"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from base64 import b64encode
from hashlib import sha1
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from barmaid import frames
from barmaid.frames import Frame, Opcode
from support.messages import is_final_status
from support.waiting import RECV_TIMEOUT

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The echo payload of the big-frame tests: under max_message_bytes (64 KiB) once framed as JSON.
BIG = "x" * 60_000


def frame_bytes(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame, masked with a fresh key unless told otherwise."""
    return frames.encode(opcode, payload, fin, os.urandom(4) if masked else None, rsv)


def text_frame(message: Any) -> bytes:
    return frame_bytes(Opcode.TEXT, json.dumps(message).encode())


class RawClient:
    """One WebSocket client written out by hand: the handshake and every frame are plain bytes."""

    def __init__(
        self,
        port: int,
        rcvbuf: Optional[int] = None,
        read_size: int = 65536,
        read_pause: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect: the window is negotiated at the SYN.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(RECV_TIMEOUT)
        self.sock.connect((host, port))
        self.read_size, self.read_pause = read_size, read_pause
        self._buffer = b""

    def handshake(self, path: str = "/", host: str = "127.0.0.1", origin: Optional[str] = None) -> RawClient:
        key = b64encode(os.urandom(16)).decode()
        origin_line = "" if origin is None else f"Origin: {origin}\r\n"
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin_line}Upgrade: websocket\r\nConnection: Upgrade\r\n"
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
        header = frames.read_header(self._take)
        assert header.mask is None, "a server must not mask its frames"
        return Frame(header.opcode, frames.read_payload(self._take, header), header.fin)

    def recv_json(self) -> Any:
        frame = self.recv_frame()
        assert frame.fin and frame.opcode == Opcode.TEXT, f"expected a text frame, got {frame}"
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
        assert frame.opcode == Opcode.CLOSE, f"expected a close frame, got {frame}"
        assert self.expect_eof() == b"", "data after the close frame"
        code, _ = frames.parse_close(frame.payload)
        return code

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


def rss_bytes() -> int:
    """Resident memory of this process (server and test share it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")

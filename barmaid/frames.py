"""The WebSocket frame codec (RFC 6455, section 5): bytes in, frames out, and back; no sockets.

One codec for the server, the tests and the bench. Decoding reads through a `read(n)` callable
(exactly n bytes or EOFError), so a socket, a buffer or a test's bytes all fit, and the header is
checked before a single payload byte is read: a peer announcing 2^63 bytes is refused by its
header. `Assembler` joins a fragmented text message (section 5.4) under a total size limit.
"""

from __future__ import annotations

import enum
import struct
from typing import Callable, NamedTuple, Optional, Union

#: Reads exactly n bytes, or raises EOFError.
Reader = Callable[[int], bytes]
Buffer = Union[bytes, bytearray, memoryview]

#: Control frames carry at most this many payload bytes and are never fragmented (section 5.5).
MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        return self >= 0x8


_OPCODES = {int(opcode): opcode for opcode in Opcode}
_TEXT = Opcode.TEXT


class CloseCode(enum.IntEnum):
    """The close codes barmaid sends (section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013


class FrameError(ValueError):
    """The peer broke the protocol; close the connection with `code`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{reason} (close {int(code)})")
        self.code = code
        self.reason = reason


class Header(NamedTuple):
    fin: bool
    opcode: Opcode
    #: The 4-byte masking key; None for an unmasked frame (every frame a server sends).
    mask: Optional[bytes]
    length: int


#: Header's fields in order, without the generated __new__ (a third of the header's cost).
_new_header = tuple.__new__


class Frame(NamedTuple):
    opcode: Opcode
    payload: bytes = b""
    fin: bool = True


def apply_mask(key: bytes, data: bytes) -> bytes:
    """Masks or unmasks (the same XOR) with one big-integer operation instead of a loop per byte."""
    n = len(data)
    if not n:
        return data
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def encode_header(opcode: int, length: int, fin: bool = True, mask: Optional[bytes] = None, rsv: int = 0) -> bytes:
    """The header of a frame of `length` payload bytes, masking key included.

    `rsv` (bits 0x70) and any opcode are taken as given, so tests can build frames a peer must refuse.
    """
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    return header if mask is None else header + mask


def encode(opcode: int, payload: bytes = b"", fin: bool = True, mask: Optional[bytes] = None, rsv: int = 0) -> bytes:
    """One frame; a client passes a fresh 4-byte `mask` (os.urandom(4)), a server none."""
    header = encode_header(opcode, len(payload), fin, mask, rsv)
    return header + (payload if mask is None else apply_mask(mask, payload))


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then a reason cut to fit a control frame."""
    return struct.pack("!H", code) + reason.encode()[: MAX_CONTROL_PAYLOAD - 2]


def parse_close(payload: bytes) -> tuple[Optional[int], str]:
    """The code (None if the peer gave none) and the reason of a close frame."""
    if len(payload) < 2:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


def read_header(read: Reader) -> Header:
    """Reads one frame header and checks what does not depend on the connection's policy.

    Raises:
        FrameError: reserved bits set, an unknown opcode, or a control frame fragmented or over 125 bytes.
        EOFError: the reader ran out.
    """
    b1, b2 = read(2)
    length = b2 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read(8))
    if b1 & 0x70:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
    opcode = _OPCODES.get(b1 & 0x0F)  # a lookup: Opcode(n) costs more than the rest of the header
    if opcode is None:
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {b1 & 0x0F:#x}")
    fin = b1 & 0x80 == 0x80
    if b1 & 0x08 and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise FrameError(CloseCode.PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes")
    return _new_header(Header, (fin, opcode, read(4) if b2 & 0x80 else None, length))


def read_payload(read: Reader, header: Header) -> bytes:
    """The payload the header announced, unmasked."""
    payload = read(header.length) if header.length else b""
    return payload if header.mask is None else apply_mask(header.mask, payload)


def decode(read: Reader) -> Frame:
    """One whole frame, header and payload."""
    header = read_header(read)
    return Frame(header.opcode, read_payload(read, header), header.fin)


def parse(data: Buffer) -> Optional[tuple[Frame, int]]:
    """The first frame in `data` and how many bytes it took, or None while it is incomplete."""
    offset = 0

    def read(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(data):
            raise EOFError
        offset += n
        return bytes(data[offset - n : offset])

    try:
        return decode(read), offset
    except EOFError:
        return None


class Assembler:
    """Joins the data frames of one connection into text messages of at most `max_bytes` in total.

    `take` checks each data frame's header before it reads the payload, so an oversized message
    is refused before its excess is read. Control frames may come between fragments and never
    pass through here.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._open = False

    def take(self, header: Header, read: Reader) -> Optional[str]:
        """Reads the data frame `header` announced; the whole message once its last fragment came.

        Raises:
            FrameError: binary data (1003), a fragment out of sequence (1002), a message over
                `max_bytes` (1009, nothing of the frame read), text that is not UTF-8 (1007).
        """
        fin, opcode, mask, length = header
        if fin and opcode is _TEXT and length <= self.max_bytes and not self._open:
            # The usual case, kept lean (it is most of an echo's decoding): one whole frame.
            payload = read(length) if length else b""
            return _text(payload if mask is None else apply_mask(mask, payload))
        self._check(header)
        self._parts.append(read_payload(read, header))
        self._size += header.length
        self._open = not header.fin
        if self._open:
            return None
        message = b"".join(self._parts)
        self._parts, self._size = [], 0
        return _text(message)

    def _check(self, header: Header) -> None:
        if (header.opcode is Opcode.CONTINUATION) != self._open:
            raise FrameError(
                CloseCode.PROTOCOL_ERROR,
                f"new {header.opcode.name.lower()} frame before the fragmented message ended"
                if self._open
                else "continuation frame without a message to continue",
            )
        if header.opcode is Opcode.BINARY:
            raise FrameError(CloseCode.UNSUPPORTED_DATA, "only text messages are supported")
        size = self._size + header.length
        if size > self.max_bytes:
            raise FrameError(
                CloseCode.MESSAGE_TOO_BIG,
                f"message of {size}{'+' if not header.fin else ''} bytes, over the limit of {self.max_bytes}",
            )


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None

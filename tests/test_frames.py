"""barmaid.frames alone: bytes in, frames out (RFC 6455 section 5), no socket anywhere."""

from __future__ import annotations

import struct

import pytest

from barmaid.frames import (
    Assembler,
    CloseCode,
    Frame,
    FrameError,
    Header,
    Opcode,
    apply_mask,
    close_payload,
    decode,
    encode,
    encode_header,
    parse,
    parse_close,
    read_header,
)

MASK = b"\x37\xfa\x21\x3d"


def reader(data: bytes):
    """A read(n) over bytes that counts what was taken, as a socket would give it."""
    taken = 0

    def read(n: int) -> bytes:
        nonlocal taken
        if taken + n > len(data):
            raise EOFError
        taken += n
        return data[taken - n : taken]

    read.taken = lambda: taken  # type: ignore[attr-defined]
    return read


# ---- encoding -----------------------------------------------------------------------------


def test_the_rfc_examples_encode_byte_for_byte():
    """RFC 6455 section 5.7: "Hello" unmasked, masked with 37 fa 21 3d, and an unmasked ping."""
    assert encode(Opcode.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert encode(Opcode.TEXT, b"Hello", mask=MASK) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode(Opcode.PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert encode(Opcode.TEXT, b"Hel", fin=False) == bytes.fromhex("010348656c")
    assert encode(Opcode.CONTINUATION, b"lo") == bytes.fromhex("80026c6f")


@pytest.mark.parametrize(
    ("length", "header"),
    [(125, "817d"), (126, "817e007e"), (65535, "817effff"), (65536, "817f0000000000010000")],
)
def test_each_length_takes_its_shortest_form(length, header):
    assert encode_header(Opcode.TEXT, length) == bytes.fromhex(header)


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65535, 65536, 70_000])
@pytest.mark.parametrize("mask", [None, MASK], ids=["unmasked", "masked"])
def test_decode_reads_back_what_encode_wrote(size, mask):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    data = encode(Opcode.TEXT, payload, mask=mask) + b"next"
    read = reader(data)
    assert decode(read) == Frame(Opcode.TEXT, payload)
    assert read.taken() == len(data) - 4, "read past its frame"


def test_masking_twice_gives_the_data_back():
    data = bytes(range(200))
    assert apply_mask(MASK, data) != data
    assert apply_mask(MASK, apply_mask(MASK, data)) == data
    assert apply_mask(MASK, b"") == b""


def test_a_close_payload_carries_the_code_and_a_reason_cut_to_fit_a_control_frame():
    payload = close_payload(CloseCode.MESSAGE_TOO_BIG, "x" * 300)
    assert len(payload) == 125
    assert parse_close(payload) == (1009, "x" * 123)
    assert parse_close(b"") == (None, "")
    assert len(encode(Opcode.CLOSE, payload)) == 127


# ---- decoding: the header is checked before the payload -------------------------------------


def test_a_header_announcing_2_to_the_63_bytes_is_read_without_its_payload():
    read = reader(encode_header(Opcode.TEXT, 2**63, mask=MASK))
    assert read_header(read) == Header(True, Opcode.TEXT, MASK, 2**63)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        pytest.param(encode(Opcode.TEXT, b"x", rsv=0x40), "reserved bits", id="rsv1"),
        pytest.param(encode(0x3, b"?"), "unknown opcode 0x3", id="opcode-3"),
        pytest.param(encode(0xB, b"?"), "unknown opcode 0xb", id="opcode-b"),
        pytest.param(encode(Opcode.PING, b"x" * 126), "control frames", id="long-ping"),
        pytest.param(encode(Opcode.CLOSE, b"\x03\xe8", fin=False), "control frames", id="fragmented-close"),
    ],
)
def test_a_header_the_protocol_forbids_is_a_1002(data, says):
    with pytest.raises(FrameError) as refused:
        read_header(reader(data))
    assert refused.value.code is CloseCode.PROTOCOL_ERROR
    assert says in refused.value.reason


def test_parse_finds_whole_frames_in_a_buffer_and_waits_for_the_rest():
    data = encode(Opcode.TEXT, b"one") + encode(Opcode.TEXT, b"x" * 300)
    first = parse(data)
    assert first == (Frame(Opcode.TEXT, b"one"), 5)
    assert parse(data[5:]) == (Frame(Opcode.TEXT, b"x" * 300), 304)
    for cut in range(1, 304):
        assert parse(bytearray(data[5 : 5 + cut])) is None, cut
    assert parse(b"") is None


# ---- messages from fragments (section 5.4) --------------------------------------------------


def feed(assembler: Assembler, *data: bytes) -> list[str]:
    """Passes the data frames of `data` through `assembler` as the transport does; the messages out."""
    messages = []
    read = reader(b"".join(data))
    for _ in data:
        message = assembler.take(read_header(read), read)
        if message is not None:
            messages.append(message)
    return messages


def test_fragments_are_joined_into_one_message():
    parts = (
        encode(Opcode.TEXT, b'{"type": ', fin=False),
        encode(Opcode.CONTINUATION, b'"echo", ', fin=False),
        encode(Opcode.CONTINUATION, b'"data": 1}'),
        encode(Opcode.TEXT, b"whole"),
    )
    assert feed(Assembler(100), *parts) == ['{"type": "echo", "data": 1}', "whole"]


def test_a_character_split_between_fragments_is_one_character():
    cocktail = "🍸".encode()
    parts = (encode(Opcode.TEXT, cocktail[:1], fin=False), encode(Opcode.CONTINUATION, cocktail[1:]))
    assert feed(Assembler(100), *parts) == ["🍸"]


def test_the_limit_is_on_the_whole_message_and_refused_before_the_excess_is_read():
    assembler = Assembler(10)
    assert feed(assembler, encode(Opcode.TEXT, b"123456", fin=False)) == []
    announced = reader(encode_header(Opcode.CONTINUATION, 5))  # and no payload: reading it would raise EOFError
    with pytest.raises(FrameError) as refused:
        assembler.take(read_header(announced), announced)
    assert refused.value.code is CloseCode.MESSAGE_TOO_BIG
    assert "11+" not in refused.value.reason and "11 bytes" in refused.value.reason
    assert feed(Assembler(10), encode(Opcode.TEXT, b"123456", fin=False), encode(Opcode.CONTINUATION, b"7890")) == [
        "1234567890"
    ]


def test_the_limit_counts_from_zero_after_each_message():
    assembler = Assembler(4)
    for _ in range(3):
        assert feed(assembler, encode(Opcode.TEXT, b"ab", fin=False), encode(Opcode.CONTINUATION, b"cd")) == ["abcd"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param((encode(Opcode.CONTINUATION, b"x"),), CloseCode.PROTOCOL_ERROR, id="continuation-first"),
        pytest.param(
            (encode(Opcode.TEXT, b"a", fin=False), encode(Opcode.TEXT, b"b")),
            CloseCode.PROTOCOL_ERROR,
            id="text-inside-text",
        ),
        pytest.param((encode(Opcode.BINARY, b"\x00"),), CloseCode.UNSUPPORTED_DATA, id="binary"),
        pytest.param((encode(Opcode.BINARY, b"\x00", fin=False),), CloseCode.UNSUPPORTED_DATA, id="binary-fragment"),
        pytest.param((encode(Opcode.TEXT, b"\xff\xfe"),), CloseCode.INVALID_DATA, id="bad-utf8"),
        pytest.param(
            (encode(Opcode.TEXT, b"ok", fin=False), encode(Opcode.CONTINUATION, b"\xc3")),
            CloseCode.INVALID_DATA,
            id="bad-utf8-at-the-end",
        ),
        pytest.param((encode(Opcode.TEXT, b"x" * 11),), CloseCode.MESSAGE_TOO_BIG, id="one-frame-too-big"),
    ],
)
def test_a_message_the_server_cannot_take_gets_its_close_code(data, code):
    with pytest.raises(FrameError) as refused:
        feed(Assembler(10), *data)
    assert refused.value.code is code


def test_opcodes_and_close_codes_are_the_rfc_numbers():
    assert [int(op) for op in Opcode] == [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]
    assert [op.is_control for op in Opcode] == [False, False, False, True, True, True]
    assert struct.unpack("!H", close_payload(CloseCode.TRY_AGAIN_LATER))[0] == 1013


def test_a_binary_frame_inside_a_text_message_is_a_protocol_error_not_unsupported_data():
    with pytest.raises(FrameError) as refused:
        feed(Assembler(10), encode(Opcode.TEXT, b"a", fin=False), encode(Opcode.BINARY, b"b"))
    assert refused.value.code is CloseCode.PROTOCOL_ERROR
    assert "new binary frame" in refused.value.reason

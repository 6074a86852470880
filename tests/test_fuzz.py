"""Hostile input by the thousand, and a storm of connections.

hypothesis sends any JSON, any message shape and any field type to one running server: each frame
gets exactly one answer, no invalid one moves a pump, and the connection goes on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.messages import is_final_status
from support.peer import Peer
from support.pumps import fast_pumps
from support.rawws import RawClient, rss_bytes
from support.servers import close_quickly
from support.waiting import wait_until

from barmaid import transport
from barmaid.config import Config
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.protocol import REQUESTS, Echo, parse, read_frame
from barmaid.server import BarmaidServer

#: Examples per fuzz test: 60 keeps the suite quick; a deeper run sets BARMAID_FUZZ_EXAMPLES=1000.
EXAMPLES = int(os.environ.get("BARMAID_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Every type the protocol knows, near misses, and any text.
message_types = st.sampled_from(sorted(REQUESTS)) | st.sampled_from(["status", "Echo", "blend ", ""]) | st.text()
#: Any JSON, and values close to what a field takes: limits, pump numbers, numbers as strings.
field_values = (
    json_values
    | st.floats(min_value=-0.05, max_value=0.05)
    | st.integers(min_value=-2, max_value=9)
    | st.sampled_from([0, 1, -0.0, 1e-300, 5e-324, 0.02, 0.0201, 1e308, 10**400, "0", "7", "8", "-1", "1.5", "", "٣"])
)
#: Request ids: valid ones, and near misses (too long, too large, booleans, fractions).
ids = st.text(min_size=1, max_size=64) | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1) | st.sampled_from(
    ["", "x" * 65, 2**53, True, 1.5, 3.0, None]
)
pump_keys = st.sampled_from(["0", "1", "7"])
ratios = (
    st.dictionaries(pump_keys, st.floats(min_value=0, max_value=0.4), min_size=1, max_size=3)
    | st.dictionaries(
        pump_keys | st.sampled_from(["8", "-1", "x", "", "00", " 1"]) | st.text(max_size=3),
        field_values | st.floats(min_value=0, max_value=1),
        max_size=4,
    )
    | json_values
)
cup_sizes = st.floats(min_value=1e-6, max_value=0.02) | st.floats(min_value=-0.01, max_value=0.03) | field_values
blend_data = st.fixed_dictionaries({"cup_size": cup_sizes, "ratios": ratios}, optional={"extra": json_values})
blend_data |= st.fixed_dictionaries({}, optional={"cup_size": cup_sizes, "ratios": ratios})
refill_data = st.fixed_dictionaries({"pump": field_values}, optional={"extra": json_values})
refill_data |= st.fixed_dictionaries({}, optional={"pump": field_values})


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """One server and one client for every example; no pour may last over 50 ms."""
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path_factory.mktemp("fuzz-data")),
            "server": {"host": "127.0.0.1", "status_interval": 0.05},
            "limits": {"max_cup_size": 0.02, "max_pump_seconds": 0.05},
            "pumps": fast_pumps(flow_ml_s=1000.0, prime_ml=2.0),
        }
    )
    config = config.model_copy(update={"server": config.server.model_copy(update={"port": 0})})
    server = BarmaidServer(config, SimulatedDriver([pump.gpio for pump in config.pumps]))
    server.start()
    peer = Peer.at(server.port)
    yield server, peer
    peer.close()
    close_quickly(server)


def exchange(fuzzed: tuple[BarmaidServer, Peer], text: str) -> None:
    """Sends one frame: an invalid one gets exactly one error and moves nothing; a valid one is carried out."""
    server, peer = fuzzed
    switches = len(server.controller.driver.timeline)
    try:
        request = parse(text, server.limits)
    except Exception:
        request = None
    # Anything but a valid seed request may make its sender a client of the extended protocol
    # (state subscribes it; a new type or an id brings acks and error codes): a new client sends it.
    sender = peer if request is not None and request.seed and "\"id\"" not in text else Peer.at(server.port)
    sender.send(text)
    reply = sender.recv()
    event(f"{'valid' if request else 'invalid'}, answered {reply['type']}")  # --hypothesis-show-statistics
    if isinstance(request, Echo):
        request_id = read_frame(text).id
        assert reply == {"type": "echo", "data": request.data, **({} if request_id is None else {"id": request_id})}
    elif reply["type"] == "error":
        assert list(reply["data"]) == ["msg"] if sender is peer else set(reply["data"]) <= {"msg", "code", "retry_in"}, reply
        assert len(server.controller.driver.timeline) == switches, "a pump moved for a message answered with an error"
    else:
        assert request is not None, f"an invalid message was answered with {reply}"
        if reply["type"] in ("status", "started") and not is_final_status(reply):
            peer.recv_until(is_final_status)  # statuses go to every client
    if sender is not peer:
        sender.close()
    assert peer.echo({"after": text[:50]}) == [], "more than one answer"
    assert server.controller.state == "idle"


@FUZZ
@given(value=json_values)
def test_any_json_value_as_a_frame_gets_one_answer(fuzzed, value):
    exchange(fuzzed, json.dumps(value))


@FUZZ
@given(text=st.text(max_size=40))
def test_any_text_as_a_frame_gets_one_answer(fuzzed, text):
    exchange(fuzzed, text)


@FUZZ
@given(
    message=st.fixed_dictionaries(
        {"type": message_types}, optional={"data": json_values, "extra": json_values, "id": ids | json_values}
    )
)
def test_any_message_shape_gets_one_answer(fuzzed, message):
    exchange(fuzzed, json.dumps(message))


@FUZZ
@given(message=st.fixed_dictionaries({"type": st.just("blend"), "data": blend_data | json_values}))
def test_blend_with_any_field_types_gets_one_answer(fuzzed, message):
    exchange(fuzzed, json.dumps(message))


@FUZZ
@given(message=st.fixed_dictionaries({"type": st.just("refill"), "data": refill_data | json_values}))
def test_refill_with_any_field_types_gets_one_answer(fuzzed, message):
    exchange(fuzzed, json.dumps(message))


# ---- a storm of connections -----------------------------------------------------------------

HALF_HANDSHAKE = b"GET / HTTP/1.1\r\nHost: barmaid\r\nUpgr"


def handshake_then_reset(port: int) -> None:
    RawClient(port).handshake().close(abrupt=True)


def half_handshake_then_close(port: int) -> None:
    client = RawClient(port)
    client.sock.sendall(HALF_HANDSHAKE)
    client.close()


def half_handshake_then_reset(port: int) -> None:
    client = RawClient(port)
    client.sock.sendall(HALF_HANDSHAKE[:5])
    client.close(abrupt=True)


def connect_and_close(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_storm_of_200_connections_leaves_the_server_answering_with_bounded_memory_and_threads(server, monkeypatch):
    """Handshakes reset, half-open ones dropped or left hanging, bare connects: nothing may pile up."""
    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 0.5)
    threads, memory = threading.active_count(), rss_bytes()
    # Ten half-open handshakes stay open: the server must hang up on them by itself.
    hanging = [RawClient(server.port) for _ in range(10)]
    for client in hanging:
        client.sock.sendall(HALF_HANDSHAKE)
    kinds = [handshake_then_reset, half_handshake_then_close, half_handshake_then_reset, connect_and_close]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="test-storm") as pool:
        for done in [pool.submit(kinds[n % len(kinds)], server.port) for n in range(190)]:
            done.result()
    assert time.monotonic() - started < 10.0
    peer = Peer.at(server.port)
    assert peer.echo({"after": "the storm"}) == []
    peer.close()
    for client in hanging:
        assert client.expect_eof() == b""
        client.close()
    wait_until(lambda: threading.active_count() <= threads, f"threads back to {threads}", timeout=5.0)
    assert rss_bytes() - memory < 20 * 2**20
    assert server.transport.clients() == []
    assert server.controller.driver.timeline == []

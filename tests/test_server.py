"""End to end: real WebSocket clients on loopback against a BarmaidServer with simulated pumps.

Pumps run at 400 ml/s: a 0.1 l blend lasts 0.25 s, a full 1 l cup 2.5 s (ended by teardown).
Last, fault drills: a client that vanishes mid-pour or never finishes its handshake, a data
directory that fills up.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys

import pytest
from support.messages import is_final_status
from support.peer import Peer
from support.processes import PROCESS_TIMEOUT, Process, environment
from support.pumps import fast_pumps
from support.timeline import assert_countdown, on_times, status_times
from support.timing import TOLERANCE
from support.waiting import eventually

from barmaid import __version__, protocol
from barmaid.drivers.simulated import SimulatedDriver

#: A blend that outlasts any test that does not wait for it: 1 l at 400 ml/s is 2.5 s.
LONG_BLEND = {"type": "blend", "data": {"cup_size": 1.0, "ratios": {"0": 1}}}


def is_error(message: dict) -> bool:
    return message["type"] == "error"


@pytest.mark.parametrize(
    "data",
    [{"msg": "toaster"}, [1, "two", None, {"deep": [0.1]}], "anything", "🍸 mojito", 42, 0.1, None, True, {}, []],
)
def test_echo_replies_the_data_exactly_as_sent(connect, data):
    peer = connect()
    peer.send({"type": "echo", "data": data})
    assert peer.recv() == {"type": "echo", "data": data}


def test_echo_without_data_replies_data_null(connect):
    peer = connect()
    peer.send('{"type": "echo"}')
    assert peer.recv() == {"type": "echo", "data": None}


def test_echo_is_answered_during_a_blend_before_the_blend_ends(server, connect):
    peer = connect()
    peer.send(LONG_BLEND)
    assert peer.recv() == {"type": "status", "data": {"remaining_time": 3, "action": "blend", "initial_time": 3}}
    before_reply = peer.echo({"msg": "still there?"})
    assert all(m["type"] == "status" and m["data"]["remaining_time"] > 0 for m in before_reply), before_reply
    assert server.controller.state == "blending"


def test_two_clients_both_get_the_statuses_and_the_final_0(server, connect):
    sender, watcher = connect(), connect()
    sender.send({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.5, "1": 0.5}}})
    seen_by_sender, seen_by_watcher = sender.recv_until(), watcher.recv_until()
    assert_countdown(status_times(seen_by_sender), 0.125)
    assert seen_by_watcher == seen_by_sender
    # Exactly one 0: nothing else is sent after it.
    assert sender.echo() == [] and watcher.echo() == []
    assert server.controller.state == "idle"


def test_blend_with_ratio_keys_as_strings_as_the_gui_sends(server, connect):
    peer = connect()
    peer.send('{"type": "blend", "data": {"cup_size": 0.04, "ratios": {"1": 0.2, "2": 0.1, "5": 0.7}}}')
    assert_countdown(status_times(peer.recv_until()), 0.07)
    assert on_times(server.controller.driver) == pytest.approx({1: 0.02, 2: 0.01, 5: 0.07}, abs=TOLERANCE)


def test_refill_with_pump_as_a_string_runs_that_pump_for_its_prime_time(server, connect):
    peer = connect()
    peer.send('{"type": "refill", "data": {"pump": "0"}}')
    assert_countdown(status_times(peer.recv_until()), 0.05)
    assert on_times(server.controller.driver) == pytest.approx({0: 0.05}, abs=TOLERANCE)  # prime_ml 20 at 400 ml/s


@pytest.mark.parametrize(
    ("second", "answer"),
    [
        ({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"1": 1}}}, "Already blending ! Retry in 3 sec"),
        ({"type": "refill", "data": {"pump": "1"}}, "Already blending ! Retry in 3 sec"),
    ],
    ids=["blend", "refill"],
)
def test_pour_while_blending_answers_already_blending_to_the_sender_only(server, connect, second, answer):
    first, other = connect(), connect()
    first.send(LONG_BLEND)
    other.recv_until(lambda m: m["type"] == "status")
    other.send(second)
    errors = [m for m in other.recv_until(is_error) if is_error(m)]
    assert errors == [{"type": "error", "data": {"msg": answer}}]
    assert not any(map(is_error, first.echo())), "the busy error reached a client that did not ask"
    assert server.controller.state == "blending"
    assert [(s.pump, s.on) for s in server.controller.driver.timeline] == [(0, True)]


def test_refill_while_refilling_answers_already_refilling(server, connect):
    peer = connect()
    peer.send({"type": "refill", "data": {"pump": 7}})  # prime_ml 90 at 400 ml/s: 0.225 s
    peer.send({"type": "refill", "data": {"pump": 6}})
    errors = [m for m in peer.recv_until(is_error) if is_error(m)]
    assert errors == [{"type": "error", "data": {"msg": "Already refilling ! Retry in 1 sec"}}]
    peer.recv_until()
    assert on_times(server.controller.driver) == pytest.approx({7: 0.225}, abs=TOLERANCE)


def test_bad_input_answers_one_error_to_the_sender_and_changes_nothing(server, connect, bad_input):
    peer = connect()
    peer.send(bad_input.frame)
    reply = peer.recv()
    assert reply["type"] == "error" and set(reply["data"]) <= {"msg", "code"}, reply
    assert reply["data"].get("code", "invalid") == "invalid" and "id" not in reply
    for fragment in bad_input.says:
        assert fragment in reply["data"]["msg"]
    assert peer.echo({"after": "bad input"}) == [], "more than one answer, or the connection broke"
    assert server.controller.driver.timeline == []
    assert server.controller.state == "idle"


def test_server_close_mid_blend_sends_0_then_closes_every_client(server, connect):
    sender, watcher = connect(), connect()
    sender.send(LONG_BLEND)
    watcher.recv_until(lambda m: m["type"] == "status")
    server.close()
    assert not any(server.controller.driver.is_on(pump) for pump in range(8))
    for peer in (sender, watcher):
        peer.recv_until()  # fails unless remaining_time 0 arrives
        assert peer.ws.recv() == "", "expected the close frame right after the final status"


# ---- the extended protocol: ids, codes, acknowledgements, hello --------------------------

SHORT_BLEND = {"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}}
SEED_KEYS = {"status": {"remaining_time", "action", "initial_time", "outcome"}, "echo": None, "error": {"msg"}}


def test_a_seed_only_client_sees_only_seed_frames_with_the_seed_keys(server, connect):
    """Busy, bad input, echo, another client's stop, its own blend: status, echo and error only,
    errors with msg only, no id, no ack."""
    seed, other = connect(), connect()
    other.send(LONG_BLEND)
    messages = seed.recv_until(lambda m: m["type"] == "status")
    seed.send(SHORT_BLEND)
    seed.send('{"type": "blend", "data": {"cup_size": NaN, "ratios": {"0": 1}}}')
    messages += [*seed.echo(1e+308), {"type": "echo", "data": 1e+308}]
    other.send({"type": "stop"})
    messages += seed.recv_until(is_final_status)
    seed.send(SHORT_BLEND)
    messages += seed.recv_until(is_final_status)
    for message in messages:
        assert set(message) == {"type", "data"}, message
        assert message["type"] in SEED_KEYS, message
        keys = SEED_KEYS[message["type"]]
        assert keys is None or set(message["data"]) <= keys, message
    errors = [m["data"]["msg"] for m in messages if is_error(m)]
    assert errors[0] == "Already blending ! Retry in 3 sec" and "NaN is not JSON" in errors[1]
    assert len(errors) == 2


def test_every_reply_carries_the_request_id_and_broadcasts_do_not(server, connect):
    peer, other = connect(), connect()
    peer.send({"type": "echo", "data": "x", "id": "e1"})
    assert peer.recv() == {"type": "echo", "data": "x", "id": "e1"}
    peer.send({"type": "state", "id": 2})
    assert peer.recv()["id"] == 2
    peer.send({"type": "history", "data": {"limit": 1}, "id": "h"})
    assert peer.recv()["id"] == "h"
    peer.send({"type": "hello", "id": "w"})
    assert peer.recv()["id"] == "w"
    peer.send({**SHORT_BLEND, "id": "b1"})
    messages = peer.recv_until()
    started = [m for m in messages if m["type"] == "started"]
    assert started == [{"type": "started", "data": {"action": "blend", "seconds": 0.25}, "id": "b1"}]
    assert all("id" not in m for m in messages if m["type"] != "started")
    assert all("id" not in m for m in other.recv_until()), "a broadcast carried the sender's id"
    peer.send({**LONG_BLEND, "id": 9})
    peer.recv_until(lambda m: m["type"] == "status")
    peer.send({"type": "stop", "id": "s"})
    stopped = peer.recv_until(lambda m: m["type"] == "stopped")[-1]
    assert stopped["id"] == "s" and stopped["data"]["action"] == "blend"


def test_the_started_ack_comes_before_the_first_status_and_only_to_its_sender(server, connect):
    peer, other = connect(), connect()
    peer.send({"type": "refill", "data": {"pump": 0}, "id": 1})
    assert [m["type"] for m in peer.recv_until()][:2] == ["started", "status"]
    assert [m["type"] for m in other.recv_until()] == ["status", "status"]


def test_a_client_that_sent_a_new_type_gets_acks_without_ids(server, connect):
    peer = connect()
    peer.send({"type": "state"})
    peer.recv()
    peer.send(SHORT_BLEND)
    started = peer.recv_until()[0]
    assert started == {"type": "started", "data": {"action": "blend", "seconds": 0.25}}


def test_errors_to_an_extended_client_carry_the_code_and_the_id(server, connect):
    peer, other = connect(), connect()
    other.send(LONG_BLEND)
    peer.recv_until(lambda m: m["type"] == "status")
    peer.send({**SHORT_BLEND, "id": "again"})
    busy = peer.recv_until(is_error)[-1]
    assert busy == {
        "type": "error",
        "data": {"msg": "Already blending ! Retry in 3 sec", "code": "busy", "retry_in": 3},
        "id": "again",
    }
    peer.send({"type": "refill", "data": {"pump": 8}, "id": 4})
    invalid = peer.recv_until(is_error)[-1]
    assert invalid["data"]["code"] == "invalid" and invalid["id"] == 4 and "retry_in" not in invalid["data"]


def test_a_bad_id_gets_an_error_without_an_id_and_nothing_runs(server, connect):
    peer = connect()
    peer.send({**SHORT_BLEND, "id": True})
    reply = peer.recv()
    assert reply["type"] == "error" and "id" not in reply and '"id" must be' in reply["data"]["msg"]
    assert peer.echo() == []
    assert server.controller.driver.timeline == []


def test_a_clean_with_a_typo_runs_no_pump(server, connect):
    peer = connect()
    peer.send('{"type": "clean", "data": {"seconds": 0.5, "pump": [3]}}')
    reply = peer.recv()
    assert reply["data"]["code"] == "invalid" and 'unknown key "pump"' in reply["data"]["msg"]
    assert server.controller.driver.timeline == [] and server.controller.state == "idle"


def test_an_echo_of_1e400_is_refused_and_no_reply_holds_infinity(server, connect):
    peer = connect()
    peer.ws.send('{"type": "echo", "data": 1e400}')
    raw = peer.ws.recv()
    assert "Infinity" not in raw and "too large" in json.loads(raw)["data"]["msg"]


def test_set_level_and_set_flow_answer_done_with_the_pumps_new_state(server, connect):
    peer = connect()
    peer.send({"type": "set_level", "data": {"pump": 2, "ml": 650}, "id": "lvl"})
    done = peer.recv_until(lambda m: m["type"] == "done")[-1]
    assert done["id"] == "lvl" and done["data"]["request"] == "set_level"
    assert done["data"]["pump"]["pump"] == 2 and done["data"]["pump"]["level_ml"] == 650
    peer.send({"type": "calibrate", "data": {"pump": 1, "seconds": 0.1}})
    peer.recv_until()
    peer.send({"type": "set_flow", "data": {"pump": 1, "ml": 20}, "id": 5})
    done = peer.recv_until(lambda m: m["type"] == "done")[-1]
    assert done["id"] == 5 and done["data"]["pump"]["flow_ml_s"] == pytest.approx(200, rel=0.2)


def test_hello_without_a_token_answers_welcome_saying_what_the_server_is(server, connect):
    peer = connect()
    peer.send({"type": "hello", "id": 1})
    welcome = peer.recv()
    assert welcome["type"] == "welcome" and welcome["id"] == 1
    data = welcome["data"]
    assert data["server"] == __version__ and data["protocol"] == protocol.PROTOCOL_VERSION
    assert data["types"] == list(protocol.REQUESTS)
    assert data["token_required"] is False and data["may_pour"] is True and data["hardware"] is True
    assert data["limits"] == {
        "pumps": 8, "max_cup_size": 1.0, "max_pump_seconds": 120.0, "max_parallel_pumps": None, "max_message_bytes": 65536,
        "max_depth": 32, "max_id_length": 64, "status_interval": 0.05,
    }
    assert [p["pump"] for p in data["pumps"]] == list(range(8)) and "gpio" not in data["pumps"][0]


def test_state_says_whether_the_pump_hardware_is_reachable(server, connect, monkeypatch):
    peer = connect()
    peer.send({"type": "state"})
    assert peer.recv()["data"]["hardware"] is True
    monkeypatch.setattr(type(server.controller.driver), "available", property(lambda self: False))
    peer.send({"type": "state"})
    assert peer.recv()["data"]["hardware"] is False
    peer.send({"type": "hello"})
    assert peer.recv()["data"]["hardware"] is False


def test_pump_names_from_the_config_show_in_state_and_welcome(fast_config, serve_config):
    pumps = tuple(p.model_copy(update={"name": "rum" if i == 0 else None}) for i, p in enumerate(fast_config.pumps))
    config = fast_config.model_copy(update={"pumps": pumps})
    barmaid = serve_config(config, SimulatedDriver([p.gpio for p in pumps]))
    peer = Peer.at(barmaid.port)
    peer.send({"type": "state"})
    assert [p["name"] for p in peer.recv()["data"]["pumps"]][:2] == ["rum", None]
    peer.send({"type": "hello"})
    assert peer.recv()["data"]["pumps"][0]["name"] == "rum"
    peer.close()


def test_every_refused_request_is_logged_with_the_client_and_the_reason(server, connect, caplog):
    caplog.set_level(logging.INFO, logger="barmaid")
    peer, other = connect(), connect()
    other.send(LONG_BLEND)
    peer.recv_until(lambda m: m["type"] == "status")
    peer.send(SHORT_BLEND)
    peer.send({"type": "refill", "data": {"pump": 9}})
    peer.recv_until(is_error)
    peer.recv_until(is_error)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refusals) == 2, refusals
    assert "(busy)" in refusals[0] and "(invalid)" in refusals[1]
    assert all("client" in line for line in refusals)


def test_set_level_is_logged_with_the_client(server, connect, caplog):
    caplog.set_level(logging.INFO, logger="barmaid")
    peer = connect()
    peer.send({"type": "set_level", "data": {"pump": 1, "ml": 300}})
    peer.recv_until(lambda m: m["type"] == "done")
    assert any("set_level" in r.getMessage() and "client" in r.getMessage() for r in caplog.records)


def test_serve_with_port_0_listens_on_a_free_port_and_logs_it(tmp_path):
    """`barmaid serve --port 0` in a subprocess: the log line names the port the system chose."""
    process = Process("--host", "127.0.0.1", "--port", "0", cwd=tmp_path)
    try:
        assert process.port != 0
        peer = Peer.at(process.port)
        assert peer.echo("port 0") == []
        peer.close()
        assert process.stop(signal.SIGTERM)[0] == 0
    finally:
        process.kill()


# ---- faults: a client that vanishes, a data directory that fills up ------------------------
# (Signals mid-pour and a pump daemon lost and back are drilled in test_pigpio.py and test_rgpio.py.)

HALF_AND_HALF = {"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.5, "1": 0.5}}}  # 50 ml at 400 ml/s


def test_a_client_gone_mid_pour_changes_nothing_for_the_pour_or_the_others(server, connect):
    watcher, leaver = connect(), connect()
    leaver.send(HALF_AND_HALF)
    leaver.recv_until(lambda m: m["type"] == "status")
    # Vanish without a close frame: the socket is reset under the server's feet.
    leaver.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    leaver.ws.sock.close()
    assert_countdown(status_times(watcher.recv_until(is_final_status)), 0.125)
    assert on_times(server.controller.driver) == {0: pytest.approx(0.125, abs=TOLERANCE), 1: pytest.approx(0.125, abs=TOLERANCE)}
    assert eventually(lambda: len(server.transport.clients()) == 1)
    assert server.controller.state == "idle"
    watcher.echo("still here")


def fill_up(store) -> None:
    """The database may not grow by a single page: what a full SD card looks like to SQLite."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_data_directory_refuses_the_pour_before_anything_moves(server, connect):
    store = server.controller.store
    client = connect()
    for _ in range(3):  # fill the pages the history already has
        client.send(HALF_AND_HALF)
        client.recv_until(is_final_status)
    fill_up(store)
    big = {"type": "blend", "data": {"cup_size": 0.1, "ratios": {str(p): 0.125 for p in range(8)}}}
    refused = 0
    for _ in range(200):  # until the pages run out
        client.send(big)
        reply = client.recv_until(lambda m: m["type"] == "error" or is_final_status(m))[-1]
        if reply["type"] == "error":
            refused += 1
            break
    assert refused, "the database never filled up"
    assert "cannot write" in reply["data"]["msg"] and "barmaid.db" in reply["data"]["msg"]
    assert "full" in reply["data"]["msg"]
    assert server.controller.state == "idle"
    timeline = server.controller.driver.timeline
    assert len(timeline) % 2 == 0 and not any(server.controller.driver.is_on(p) for p in range(8))
    assert store._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    # Room again (the card was cleaned up): the next pour goes through.
    store._db.execute("PRAGMA max_page_count = 1073741823")
    client.send(HALF_AND_HALF)
    assert status_times(client.recv_until(is_final_status))[-1] == 0


def test_a_pour_that_cannot_be_recorded_at_its_end_still_ends_with_every_pump_off(server, connect, caplog):
    store = server.controller.store
    client = connect()
    client.send(HALF_AND_HALF)
    client.recv_until(lambda m: m["type"] == "status")
    # The disk goes away between the start record and the end record.
    store._db.execute("PRAGMA query_only = 1")
    caplog.set_level(logging.ERROR, logger="barmaid.machine")
    try:
        assert_countdown(status_times(client.recv_until(is_final_status)), 0.125)
        assert server.controller.state == "idle"
        assert not any(server.controller.driver.is_on(p) for p in range(8))
        assert any("could not be recorded" in r.getMessage() for r in caplog.records)
    finally:
        store._db.execute("PRAGMA query_only = 0")
    assert store._db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    client.echo("served")


def test_a_client_that_never_finishes_its_handshake_does_not_hold_up_a_pour(server, connect):
    half_open = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    half_open.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    try:
        client = connect()
        client.send(HALF_AND_HALF)
        assert_countdown(status_times(client.recv_until(is_final_status)), 0.125)
    finally:
        half_open.close()




def test_every_request_model_is_built_before_the_server_listens(write_config, tmp_path):
    """pydantic builds a deferred model at its first use, ~35 ms for the first one: a server that
    left that to the first frame would make a GUI's first stop wait for it before the pumps go off.
    In a process of its own: in this one, earlier tests have built the models already."""
    config = write_config({"pumps": fast_pumps(), "server": {"host": "127.0.0.1", "port": 0}})
    script = (
        "import sys\n"
        "from barmaid import protocol\n"
        "from barmaid.config import load_config\n"
        "from barmaid.drivers.simulated import SimulatedDriver\n"
        "from barmaid.server import BarmaidServer\n"
        "config = load_config(sys.argv[1])\n"
        "server = BarmaidServer(config, SimulatedDriver.for_config(config))\n"
        "server.start()\n"
        "print(sorted(t for t, m in protocol.REQUESTS.items() if not m.__pydantic_complete__))\n"
        "server.close()\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
        env=environment(), cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"

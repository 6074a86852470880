"""barmaid.client end to end: against a real in-process server, and against a scripted server that
speaks the protocol with request ids (replies out of order, pushes of the same type, codes)."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from support.pumps import FAST_FLOW_ML_S
from support.servers import close_quickly, free_port
from support.timeline import assert_countdown

from barmaid.client import CannotConnect, Client, ConnectionLost, Refused
from barmaid.server import BarmaidServer

TOKEN = "s3cret-party-token"


def url(server: BarmaidServer) -> str:
    return f"ws://127.0.0.1:{server.port}/"


def free_port_url() -> str:
    return f"ws://127.0.0.1:{free_port()}/"


@pytest.fixture
def client(server: BarmaidServer):
    with Client.connect(url(server)) as connected:
        yield connected


def test_the_client_comes_with_barmaid_itself_not_with_the_test_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text("utf-8"))["project"]
    names = {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
    assert {"websocket-client", "rich"} <= names


# ---- requests and replies -------------------------------------------------------------------


def test_state_gives_every_pump_with_its_flow(client):
    state = client.state()
    assert state["state"] == "idle"
    assert [pump["pump"] for pump in state["pumps"]] == list(range(8))
    assert {pump["flow_ml_s"] for pump in state["pumps"]} == {FAST_FLOW_ML_S}


def test_a_reply_is_the_one_for_its_request_not_a_pushed_frame_of_another_type(client, connect):
    client.state()  # from now on this client also gets state pushes and statuses
    other = connect()
    other.send({"type": "blend", "data": {"cup_size": 0.02, "ratios": {"0": 1}}})
    other.recv_until()
    history = client.history(limit=1)
    assert history[0]["action"] == "blend"
    assert client.request("echo", {"n": 7}).data == {"n": 7}


def test_a_refused_request_raises_with_the_servers_message_and_the_connection_stays(client):
    with pytest.raises(Refused) as refused:
        client.request("blend", {"cup_size": 2, "ratios": {"0": 1}})
    assert "cup_size" in refused.value.msg
    assert client.request("echo", "still here").data == "still here"


def test_busy_is_told_apart_with_the_seconds_to_retry_in(client):
    long = client.start("clean", {"seconds": 30, "pumps": [0]})
    long.wait_started()
    with pytest.raises(Refused) as refused:
        client.run("blend", {"cup_size": 0.02, "ratios": {"1": 1}})
    assert refused.value.code == "busy" and 20 <= refused.value.retry_in <= 30
    assert client.stop().data["action"] == "clean"
    assert long.follow().remaining == 0


# ---- actions ----------------------------------------------------------------------------------


def test_an_action_is_followed_through_its_statuses_to_the_final_0(client):
    action = client.run("blend", {"cup_size": 0.1, "ratios": {"0": 0.5, "3": 0.5}})  # 0.125 s
    assert_countdown([status.remaining for status in action.statuses], 0.125)
    assert action.initial_time == 1
    assert action.outcome in (None, "completed")
    assert client.history(limit=1)[0]["outcome"] == "completed"


def test_stop_from_the_same_client_ends_the_action_and_says_stopped(client):
    action = client.start("clean", {"seconds": 30})
    action.wait_started()
    stopped = client.stop()
    assert stopped.type == "stopped" and stopped.data["action"] == "clean"
    final = action.follow()
    assert final.remaining == 0 and action.outcome == "stopped"
    assert client.state()["state"] == "idle"


def test_another_clients_statuses_are_not_taken_for_this_actions(client, connect):
    other = connect()
    other.send({"type": "blend", "data": {"cup_size": 0.02, "ratios": {"0": 1}}})
    other.recv_until()  # its statuses, 1 then 0, now wait in this client's inbox too
    action = client.run("refill", {"pump": 2})  # 40 ml at 400 ml/s
    assert [status.data["action"] for status in action.statuses] == ["refill"] * len(action.statuses)


def test_watch_gives_the_state_then_what_the_server_pushes(client, connect):
    seen = []
    feed = client.watch(seen.append)
    assert next(feed).type == "state"
    other = connect()
    other.send({"type": "blend", "data": {"cup_size": 0.02, "ratios": {"0": 1}}})
    for message in feed:
        if message.remaining == 0:
            break
    kinds = [message.type for message in seen]
    assert "status" in kinds and kinds.count("state") >= 2
    assert [m.data["state"] for m in seen if m.type == "state"][1] == "blending"


def test_messages_end_when_the_server_goes_away(server):
    client = Client.connect(url(server))
    client.state()
    closing = threading.Thread(target=close_quickly, args=(server,))
    closing.start()
    list(client.messages(timeout=5))
    closing.join()
    with pytest.raises(ConnectionLost):
        client.request("echo", "anyone?")
    client.close()


# ---- connecting -----------------------------------------------------------------------------


def test_nothing_listening_is_cannot_connect_naming_the_url():
    target = free_port_url()
    with pytest.raises(CannotConnect) as failed:
        Client.connect(target, timeout=2)
    assert target in str(failed.value) and "refused" in str(failed.value)


def test_a_server_with_no_room_is_cannot_connect_with_its_reason(server_with):
    server = server_with(max_clients=1)
    with Client.connect(url(server)), pytest.raises(CannotConnect) as refused:
        Client.connect(url(server))
    assert "close 1013" in str(refused.value) and "too many clients" in str(refused.value)


def test_the_token_is_presented_once_and_then_pours_are_allowed(server_with):
    server = server_with(token=TOKEN)
    with Client.connect(url(server)) as anonymous:
        with pytest.raises(Refused) as refused:
            anonymous.run("refill", {"pump": 0})
        assert "token" in refused.value.msg
        assert anonymous.state()["state"] == "idle"  # state stays open
    with Client.connect(url(server), token=TOKEN) as trusted:
        assert trusted.run("refill", {"pump": 0}).statuses[-1].remaining == 0


def test_a_wrong_token_is_refused_at_connect(server_with):
    server = server_with(token=TOKEN)
    with pytest.raises(Refused) as refused:
        Client.connect(url(server), token="not-the-token")
    assert "wrong token" in refused.value.msg


def test_an_origin_not_allowed_is_cannot_connect_and_the_allowed_one_connects(server_with):
    server = server_with(allowed_origins=("http://kiosk.local",))
    with pytest.raises(CannotConnect) as refused:
        Client.connect(url(server), origin="http://evil.example")
    assert "403" in str(refused.value) and "--origin" in str(refused.value)
    with Client.connect(url(server), origin="http://kiosk.local") as allowed:
        assert allowed.state()["state"] == "idle"


# ---- a server that copies request ids (the protocol's extension) ---------------------------


def _with_ids(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Answers like the extended protocol: ids copied, codes on errors, `started` before statuses."""
    rid, kind = request["id"], request["type"]
    pushed_state = {"type": "state", "data": {"state": "idle", "pumps": []}}
    if kind == "hello":
        return [{"type": "welcome", "id": rid, "data": {"protocol": 2, "token_required": False}}]
    if kind == "state":  # a push of the same type comes first: the reply is the one with the id
        return [pushed_state, {"type": "state", "id": rid, "data": {"state": "idle", "pumps": [{"pump": 0, "dead_s": 0.2}]}}]
    if kind == "blend":
        return [{"type": "error", "id": rid, "data": {"msg": "Already cleaning ! Retry in 4 sec", "code": "busy", "retry_in": 4}}]
    if kind == "prime":
        return [
            {"type": "status", "data": {"remaining_time": 0, "action": "clean", "outcome": "completed"}},
            {"type": "status", "data": {"remaining_time": 2, "action": "prime", "initial_time": 2}},
            {"type": "started", "id": rid, "data": {"action": "prime"}},
            {"type": "error", "data": {"msg": "a pushed error, not this request's", "code": "unavailable"}},
            {"type": "status", "data": {"remaining_time": 1, "action": "prime", "initial_time": 2}},
            {"type": "status", "data": {"remaining_time": 0, "action": "prime", "initial_time": 2, "outcome": "lost"}},
        ]
    return [{"type": "error", "id": rid, "data": {"msg": f"unknown type {kind}", "code": "invalid"}}]


def test_with_ids_the_reply_carrying_the_requests_id_wins_over_a_push_of_the_same_type(scripted):
    server = scripted(_with_ids)
    with Client.connect(server.url) as client:
        assert client.welcome == {"protocol": 2, "token_required": False} and client.echoes_ids
        assert client.state()["pumps"] == [{"pump": 0, "dead_s": 0.2}]
        assert [m.type for m in client.messages(timeout=0.2)] == ["state"]  # the push is still there
    assert all(isinstance(request["id"], int) for request in server.requests)
    assert len({request["id"] for request in server.requests}) == len(server.requests)


def test_a_server_that_never_answers_is_cannot_connect_not_a_hang(scripted):
    with pytest.raises(CannotConnect) as silent:
        Client.connect(scripted(lambda request: []).url, timeout=0.3)
    assert "no answer" in str(silent.value) and "is barmaid serving there?" in str(silent.value)


def test_with_codes_the_error_carries_code_and_retry_in(scripted):
    with Client.connect(scripted(_with_ids).url) as client, pytest.raises(Refused) as refused:
        client.run("blend", {"cup_size": 0.1, "ratios": {"0": 1}})
    assert (refused.value.code, refused.value.retry_in) == ("busy", 4)


def test_with_started_the_action_skips_an_earlier_end_and_reports_the_outcome(scripted):
    with Client.connect(scripted(_with_ids).url) as client:
        action = client.run("prime", {"pump": 0})
    assert [s.remaining for s in action.statuses] == [2, 1, 0]
    assert action.outcome == "lost"
    assert [e.data["code"] for e in action.errors] == ["unavailable"]


def test_an_unknown_request_raises_refused_with_its_code(scripted):
    with Client.connect(scripted(_with_ids).url) as client, pytest.raises(Refused) as refused:
        client.request("reset_calibration", {"pump": 0})
    assert refused.value.code == "invalid"

"""Who may pour: server.allowed_origins at the handshake, server.token before any pumping message."""

from __future__ import annotations

import pytest
import websocket
from support.messages import is_final_status
from support.peer import Peer

from barmaid.server import BarmaidServer

TOKEN = "s3cret-party-token"
BLEND = {"type": "blend", "data": {"cup_size": 0.01, "ratios": {"0": 1}}}


@pytest.fixture
def start(server_with):
    """A server with these server settings (token, allowed_origins)."""
    return server_with


def url(server: BarmaidServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/{query}"


def test_a_page_from_an_origin_not_allowed_is_refused_at_the_handshake(start):
    server = start(allowed_origins=("http://kiosk.local",))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url(server), timeout=5, origin="http://evil.example")
    assert refused.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(url(server), timeout=5, suppress_origin=True)
    allowed = Peer(url(server), origin="http://kiosk.local")
    allowed.echo("welcome")
    allowed.close()


def test_any_origin_is_accepted_by_default(start):
    server = start()
    ws = websocket.create_connection(url(server), timeout=5, origin="file://")
    ws.close()


def test_without_the_token_pumping_messages_are_refused_and_nothing_moves(start):
    server = start(token=TOKEN)
    client = Peer(url(server))
    for message in (
        BLEND,
        {"type": "refill", "data": {"pump": 0}},
        {"type": "calibrate", "data": {"pump": 0, "seconds": 0.1}},
        {"type": "clean", "data": {"seconds": 0.1}},
        {"type": "set_level", "data": {"pump": 0, "ml": 5}},
        {"type": "set_flow", "data": {"pump": 0, "ml": 5}},
    ):
        client.send(message)
        reply = client.recv()
        assert reply["type"] == "error" and "token" in reply["data"]["msg"], reply
    client.echo("still served")
    assert server.controller.driver.timeline == []
    assert server.controller.state == "idle"
    client.close()


def test_echo_state_history_and_stop_need_no_token(start):
    server = start(token=TOKEN)
    client = Peer(url(server))
    client.echo({"any": "one"})
    for kind in ("state", "history", "stop"):
        client.send({"type": kind})
        assert client.recv()["type"] == {"state": "state", "history": "history", "stop": "stopped"}[kind]
    client.close()


def test_the_token_in_the_query_string_lets_a_seed_gui_pour(start):
    server = start(token=TOKEN)
    client = Peer(url(server, f"?token={TOKEN}"))
    client.send(BLEND)
    messages = client.recv_until(is_final_status)
    assert [m["type"] for m in messages] and all(m["type"] == "status" for m in messages)
    client.close()


def test_a_wrong_token_in_the_query_string_pours_nothing(start):
    server = start(token=TOKEN)
    client = Peer(url(server, "?token=guess"))
    client.send(BLEND)
    assert "token" in client.recv()["data"]["msg"]
    assert server.controller.driver.timeline == []
    client.close()


def test_hello_with_the_token_opens_this_connection_only(start):
    server = start(token=TOKEN)
    trusted, other = Peer(url(server)), Peer(url(server))
    trusted.send({"type": "hello", "data": {"token": TOKEN}})
    assert trusted.recv()["type"] == "welcome"
    other.send(BLEND)
    assert "token" in other.recv()["data"]["msg"]
    trusted.send(BLEND)
    trusted.recv_until(is_final_status)
    trusted.close()
    other.close()


def test_hello_with_a_wrong_token_is_an_error(start):
    server = start(token=TOKEN)
    client = Peer(url(server))
    client.send({"type": "hello", "data": {"token": "guess"}})
    reply = client.recv()
    assert reply["type"] == "error" and "wrong token" in reply["data"]["msg"]
    client.send(BLEND)
    assert "token" in client.recv()["data"]["msg"]
    client.close()


def test_without_a_configured_token_hello_is_welcomed_and_blends_need_nothing(start):
    server = start()
    client = Peer(url(server))
    client.send({"type": "hello", "data": {"token": "anything-at-all"}})
    assert client.recv()["type"] == "welcome"
    client.send(BLEND)
    client.recv_until(is_final_status)
    client.close()


def test_hello_without_a_token_on_a_guarded_machine_says_a_token_is_needed(start):
    server = start(token=TOKEN)
    client = Peer(url(server))
    client.send({"type": "hello", "id": 1})
    welcome = client.recv()
    assert welcome["type"] == "welcome" and welcome["id"] == 1
    assert welcome["data"]["token_required"] is True and welcome["data"]["may_pour"] is False
    client.send({**BLEND, "id": 2})
    refused = client.recv()
    assert refused["data"]["code"] == "token" and refused["id"] == 2
    client.send({"type": "hello", "data": {"token": "guess"}, "id": 3})
    wrong = client.recv()
    assert wrong["type"] == "error" and wrong["data"]["code"] == "token" and wrong["id"] == 3
    client.send({"type": "hello", "data": {"token": TOKEN}})
    assert client.recv()["data"]["may_pour"] is True
    client.close()


def test_the_token_in_the_url_shows_as_may_pour_in_welcome(start):
    server = start(token=TOKEN)
    client = Peer(url(server, f"?token={TOKEN}"))
    client.send({"type": "hello"})
    assert client.recv()["data"]["may_pour"] is True
    client.close()


def test_a_refused_token_is_logged_with_the_client(start, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="barmaid")
    server = start(token=TOKEN)
    client = Peer(url(server))
    client.send(BLEND)
    client.recv()
    assert any(r.getMessage().startswith("refused client") and "(token)" in r.getMessage() for r in caplog.records)
    client.close()

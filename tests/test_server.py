"""End to end: real WebSocket clients on loopback against a BarmaidServer with simulated pumps.

Pumps run at 400 ml/s: a 0.1 l blend lasts 0.25 s, a full 1 l cup 2.5 s (ended by teardown).
"""

from __future__ import annotations

import pytest

from conftest import assert_countdown, status_times

#: A blend that outlasts any test that does not wait for it: 1 l at 400 ml/s is 2.5 s.
LONG_BLEND = {"type": "blend", "data": {"cup_size": 1.0, "ratios": {"0": 1}}}


def is_error(message: dict) -> bool:
    return message["type"] == "error"


def pump_runs(server) -> dict[int, float]:
    """pump -> seconds it ran, from the simulated driver's timeline (every pump switched off)."""
    ons: dict[int, float] = {}
    runs: dict[int, float] = {}
    for switch in server.controller.driver.timeline:
        if switch.on:
            ons[switch.pump] = switch.t
        else:
            runs[switch.pump] = switch.t - ons.pop(switch.pump)
    assert not ons, f"pumps left on: {sorted(ons)}"
    return runs


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
    assert pump_runs(server) == pytest.approx({1: 0.02, 2: 0.01, 5: 0.07}, abs=0.005)


def test_refill_with_pump_as_a_string_runs_that_pump_for_its_prime_time(server, connect):
    peer = connect()
    peer.send('{"type": "refill", "data": {"pump": "0"}}')
    assert_countdown(status_times(peer.recv_until()), 0.05)
    assert pump_runs(server) == pytest.approx({0: 0.05}, abs=0.005)  # prime_ml 20 at 400 ml/s


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
    assert pump_runs(server) == pytest.approx({7: 0.225}, abs=0.005)


def test_bad_input_answers_one_error_to_the_sender_and_changes_nothing(server, connect, bad_input):
    peer = connect()
    peer.send(bad_input.frame)
    reply = peer.recv()
    assert reply["type"] == "error" and list(reply["data"]) == ["msg"], reply
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

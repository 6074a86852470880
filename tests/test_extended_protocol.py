"""End to end: stop, live state, bottle levels, calibration, cleaning and grouped pours over WebSocket.

Each test runs a BarmaidServer with simulated pumps on loopback. Where a test asserts how long
something ran, server and pumps share a FakeClock the test advances (see `pour`): the timeline is
exact. The others run in real time (the driver's timeline and the client share time.monotonic),
with generous bounds. Wherever a seed-only GUI is connected too, it must see nothing but seed
message types: the new protocol is for clients that asked for it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.messages import is_final_status, is_state, is_type
from support.pumps import pumps_with
from support.rig import ask_state, levels, pour, set_level
from support.timeline import assert_countdown, most_on_at_once, on_times, one_final_status, runs, status_times

from barmaid.clock import FakeClock
from barmaid.planning import schedule
from barmaid.protocol import REPLIES, REQUESTS


def test_stop_mid_blend_switches_every_pump_off_and_tells_everyone(make_rig):
    rig = make_rig(clock=FakeClock())
    sender, other, follower, seed = rig.peer(), rig.peer(), rig.peer(), rig.seed_only()
    assert ask_state(follower)["state"] == "idle"
    sender.send({"type": "blend", "data": {"cup_size": 1.0, "ratios": {"0": 0.3, "1": 0.3, "2": 0.4}}})
    sender.recv_until(is_type("status"))
    assert all(rig.driver.is_on(p) for p in (0, 1, 2))

    rig.clock.advance(0.25)
    sender.send({"type": "stop"})
    to_sender = sender.recv_until(is_type("stopped"))

    offs = [switch for switch in rig.driver.timeline if not switch.on]
    assert sorted(switch.pump for switch in offs) == [0, 1, 2]
    assert {switch.t for switch in offs} == {rig.clock.now()}, "a pump went off later than the stop"
    assert not any(rig.driver.is_on(p) for p in range(8))
    assert rig.controller.state == "idle"

    stopped = to_sender[-1]["data"]
    assert stopped["action"] == "blend" and "blend" in stopped["msg"]
    assert stopped["after"] == 0.25
    one_final_status(to_sender[:-1] + sender.echo())
    one_final_status(other.recv_until() + other.echo())
    seen_by_follower = follower.recv_until(is_state("idle"))
    one_final_status(seen_by_follower + follower.echo())
    assert [m["data"]["state"] for m in seen_by_follower if m["type"] == "state"] == ["blending", "idle"]
    one_final_status(seed.drain())
    seed.assert_only_seed_types()


def test_hardware_lost_mid_pour_is_one_error_to_everyone_with_code_unavailable_for_the_extended(make_rig):
    rig = make_rig(clock=FakeClock())
    extended, seed = rig.peer(), rig.seed_only()
    extended.send({"type": "hello"})
    extended.recv_until(is_type("welcome"))
    extended.send({"type": "blend", "data": {"cup_size": 1.0, "ratios": {"0": 1}}})
    extended.recv_until(is_type("status"))
    rig.driver.on_lost("the daemon went away")  # what a daemon driver calls when its connection drops
    errors = [m["data"] for m in extended.recv_until(is_final_status) if m["type"] == "error"]
    assert errors == [{"msg": "pump hardware lost: the daemon went away; the blend was stopped", "code": "unavailable"}]
    seen = [m for m in seed.drain() if m["type"] == "error"]
    assert [m["data"] for m in seen] == [{"msg": "pump hardware lost: the daemon went away; the blend was stopped"}]
    assert rig.controller.state == "idle" and not rig.driver.is_on(0)
    seed.assert_only_seed_types()


def test_stop_when_idle_replies_that_nothing_was_running_and_sends_no_status(make_rig):
    rig = make_rig()
    sender, other, seed = rig.peer(), rig.peer(), rig.seed_only()
    sender.send({"type": "stop"})
    reply = sender.recv()
    assert reply["type"] == "stopped"
    assert "nothing was running" in reply["data"]["msg"] and "action" not in reply["data"]
    assert sender.echo() == [] and other.echo() == [] and seed.drain() == []
    assert rig.driver.timeline == [] and rig.controller.state == "idle"
    seed.assert_only_seed_types()


@pytest.mark.parametrize(
    "request_, state, pumps_moved",
    [
        ({"type": "refill", "data": {"pump": 3}}, "refilling", [3]),
        ({"type": "calibrate", "data": {"pump": 2, "seconds": 2}}, "calibrating", [2]),
        ({"type": "clean", "data": {"seconds": 2, "pumps": [0, 5]}}, "cleaning", [0, 5]),
    ],
    ids=["refill", "calibrate", "clean"],
)
def test_stop_during_refill_calibrate_or_clean_ends_it_and_tells_everyone(make_rig, request_, state, pumps_moved):
    # refill of pump 3: 800 ml at 400 ml/s, 2 s
    rig = make_rig(pumps_with(p3={"prime_ml": 800.0}), clock=FakeClock())
    sender, other, seed = rig.peer(), rig.peer(), rig.seed_only()
    sender.send(request_)
    first = sender.recv_until(is_type("status"))[-1]["data"]
    assert first["remaining_time"] == 2 and first["action"] == request_["type"]
    assert rig.controller.state == state
    assert all(rig.driver.is_on(p) for p in pumps_moved)

    rig.clock.advance(0.5)
    sender.send({"type": "stop"})
    to_sender = sender.recv_until(is_type("stopped"))
    offs = [switch for switch in rig.driver.timeline if not switch.on]
    assert {switch.t for switch in offs} == {rig.clock.now()}, "a pump went off later than the stop"
    assert sorted(runs(rig.driver)) == pumps_moved
    assert to_sender[-1]["data"]["action"] == request_["type"]
    assert rig.controller.state == "idle"
    one_final_status(to_sender[:-1] + sender.echo())
    one_final_status(other.recv_until() + other.echo())
    one_final_status(seed.drain())
    seed.assert_only_seed_types()


# ---- live state ---------------------------------------------------------------------------------


def test_state_reply_has_the_machine_state_and_every_pump(make_rig):
    rig = make_rig(pumps_with(capacity={0: 750.0, 6: 1500.0}, p2={"flow_ml_s": 12.5}))
    peer, seed = rig.peer(), rig.seed_only()
    peer.send({"type": "state"})
    reply = peer.recv()
    assert reply["type"] == "state"
    data = reply["data"]
    assert (data["state"], data["action"], data["remaining_time"]) == ("idle", None, 0)
    assert [pump["pump"] for pump in data["pumps"]] == list(range(8))
    for number, pump in enumerate(data["pumps"]):
        assert pump["flow_ml_s"] == (12.5 if number == 2 else 400.0)
        assert pump["prime_ml"] == 20.0 + 10 * number
        assert pump["level_ml"] is None  # never refilled nor set: not tracked
        assert pump["capacity_ml"] == {0: 750.0, 6: 1500.0}.get(number)
    seed.assert_only_seed_types()


def test_state_during_a_blend_names_the_action_and_the_seconds_left(make_rig):
    rig = make_rig()
    peer = rig.peer()
    peer.send({"type": "blend", "data": {"cup_size": 1.0, "ratios": {"0": 1}}})  # 2.5 s
    peer.recv_until(is_type("status"))
    data = ask_state(peer)
    assert (data["state"], data["action"]) == ("blending", "blend")
    assert data["remaining_time"] in (2, 3)
    peer.send({"type": "stop"})
    peer.recv_until(is_type("stopped"))


def test_a_client_that_asked_for_the_state_gets_it_on_every_transition_and_others_get_none(make_rig):
    rig = make_rig()
    follower, orderer, seed = rig.peer(), rig.peer(), rig.seed_only()
    assert ask_state(follower)["state"] == "idle"

    orderer.send({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}})  # 0.25 s
    seen_by_orderer = orderer.recv_until()
    orderer.send({"type": "refill", "data": {"pump": 1}})  # 30 ml: 0.075 s
    seen_by_orderer += orderer.recv_until()

    states = [m["data"] for m in follower.recv_until(is_state("idle")) + follower.recv_until(is_state("idle"))
              if m["type"] == "state"]
    assert [(s["state"], s["action"]) for s in states] == [
        ("blending", "blend"), ("idle", None), ("refilling", "refill"), ("idle", None)
    ]
    assert states[0]["remaining_time"] == 1 and states[1]["remaining_time"] == 0
    assert follower.echo() == []  # nothing more: one state per transition

    seen_by_orderer += orderer.echo()
    assert {m["type"] for m in seen_by_orderer} == {"status"}, seen_by_orderer
    seed.assert_only_seed_types()
    assert status_times(seed.seen) == status_times(seen_by_orderer)


# ---- bottle levels ------------------------------------------------------------------------------


def test_refill_sets_the_level_to_capacity_less_what_priming_used(make_rig):
    rig = make_rig(pumps_with(capacity={1: 1000.0}))
    peer, seed = rig.peer(), rig.seed_only()
    assert levels(peer)[1] is None
    peer.send({"type": "refill", "data": {"pump": 1}})  # prime_ml 30
    peer.recv_until()
    assert levels(peer)[1] == pytest.approx(970.0)
    seed.assert_only_seed_types()


def test_set_level_sets_one_pump_and_its_sender_then_follows_the_state(make_rig):
    rig = make_rig(pumps_with(capacity={0: 1000.0}))
    peer, other, seed = rig.peer(), rig.peer(), rig.seed_only()
    reply = set_level(peer, 0, 250)
    assert reply["type"] == "state" and reply["data"]["pumps"][0]["level_ml"] == 250
    assert [pump["level_ml"] for pump in reply["data"]["pumps"][1:]] == [None] * 7
    # A pump without capacity_ml may be tracked by hand too; every follower sees the change.
    assert set_level(other, 4, 99.5)["data"]["pumps"][4]["level_ml"] == 99.5
    assert peer.recv()["data"]["pumps"][4]["level_ml"] == 99.5
    assert levels(peer)[:5] == [250, None, None, None, 99.5]
    seed.assert_only_seed_types()


@pytest.mark.parametrize(
    "data, says",
    [
        ({"pump": 0, "ml": 1000.5}, ("pump 0", "1000 ml", "1000.5")),
        ({"pump": 8, "ml": 10}, ("pump 8", "not a configured pump")),
        ({"pump": True, "ml": 10}, ("pump", "got true")),
        ({"pump": "x", "ml": 10}, ("pump", 'got "x"')),
        ({"ml": 10}, ('missing "pump"',)),
        ({"pump": 0, "ml": -1}, ("ml", "got -1")),
        ({"pump": 0, "ml": "10"}, ("ml", 'got "10"')),
        ({"pump": 0, "ml": None}, ("ml", "got null")),
        ({"pump": 0}, ('missing "ml"',)),
    ],
    ids=["over-capacity", "pump-8", "pump-bool", "pump-x", "pump-missing", "ml-negative", "ml-string", "ml-null",
         "ml-missing"],
)
def test_set_level_refuses_more_than_the_bottle_holds_and_a_bad_pump_or_ml(make_rig, data, says):
    rig = make_rig(pumps_with(capacity={0: 1000.0}))
    peer = rig.peer()
    assert set_level(peer, 0, 400)["type"] == "state"
    peer.send({"type": "set_level", "data": data})
    reply = peer.recv()
    assert reply["type"] == "error"
    assert all(fragment in reply["data"]["msg"] for fragment in says), reply
    assert levels(peer)[0] == 400


def test_blend_needing_more_than_a_bottle_holds_is_refused_before_anything_moves(make_rig):
    rig = make_rig(pumps_with(capacity={0: 1000.0, 1: 1000.0}))
    peer, other, seed = rig.peer(), rig.peer(), rig.seed_only()
    set_level(peer, 0, 50)
    set_level(peer, 1, 500)
    peer.echo()
    peer.send({"type": "blend", "data": {"cup_size": 0.2, "ratios": {"0": 0.5, "1": 0.5}}})
    reply = peer.recv()
    assert reply["type"] == "error"
    msg = reply["data"]["msg"]
    assert "pump 0" in msg and "100" in msg and "50" in msg, msg
    assert "pump 1" not in msg, msg  # pump 1 has enough
    assert rig.driver.timeline == []
    assert rig.controller.state == "idle"
    assert levels(peer)[:2] == [50, 500]
    assert other.echo() == [] and seed.drain() == []  # no status: nothing started
    seed.assert_only_seed_types()


def test_levels_drop_by_what_was_poured_and_untracked_levels_stay_null(make_rig):
    rig = make_rig(pumps_with(capacity={0: 1000.0, 1: 1000.0}))
    peer, seed = rig.peer(), rig.seed_only()
    set_level(peer, 0, 500)
    set_level(peer, 1, 400)
    peer.echo()
    peer.send({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.3, "1": 0.5, "2": 0.2}}})
    peer.recv_until()
    assert levels(peer)[:3] == [pytest.approx(470), pytest.approx(350), None]
    peer.send({"type": "blend", "data": {"cup_size": 0.05, "ratios": {"1": 1}}})
    peer.recv_until()
    assert levels(peer) == [pytest.approx(470), pytest.approx(300)] + [None] * 6
    seed.assert_only_seed_types()


def test_a_stopped_pour_counts_only_the_part_it_poured(make_rig):
    rig = make_rig(pumps_with(flow=100.0, capacity={0: 1000.0}), clock=FakeClock())
    peer, seed = rig.peer(), rig.seed_only()
    set_level(peer, 0, 1000)
    peer.send({"type": "blend", "data": {"cup_size": 0.5, "ratios": {"0": 1}}})  # 5 s at 100 ml/s
    peer.recv_until(is_type("status"))
    rig.clock.advance(0.25)
    peer.send({"type": "stop"})
    stopped = peer.recv_until(is_type("stopped"))[-1]["data"]
    assert on_times(rig.driver) == {0: 0.25}
    assert stopped["after"] == 0.25
    assert levels(peer)[0] == 975.0
    seed.assert_only_seed_types()


def test_a_stopped_grouped_blend_counts_nothing_for_pumps_whose_turn_had_not_come(make_rig):
    rig = make_rig(
        pumps_with(capacity={0: 1000.0, 1: 1000.0, 2: 1000.0}), limits={"max_parallel_pumps": 2}, clock=FakeClock()
    )
    peer = rig.peer()
    for pump in (0, 1, 2):
        set_level(peer, pump, 1000)
    # Pumps 0 and 1 run 1 s each first, pump 2 (0.5 s) after them.
    peer.send({"type": "blend", "data": {"cup_size": 1.0, "ratios": {"0": 0.4, "1": 0.4, "2": 0.2}}})
    peer.recv_until(is_type("status"))
    rig.clock.advance(0.25)
    peer.send({"type": "stop"})
    peer.recv_until(is_type("stopped"))
    assert on_times(rig.driver) == {0: 0.25, 1: 0.25}  # pump 2 never started
    assert levels(peer)[:3] == [900.0, 900.0, 1000]
    peer.send({"type": "history"})
    (pour,) = peer.recv_until(is_type("history"))[-1]["data"]["pours"]
    assert pour["outcome"] == "stopped" and pour["poured_ml"]["2"] == 0


def test_cleaning_leaves_levels_unchanged(make_rig):
    rig = make_rig(pumps_with(capacity={0: 1000.0}))
    peer, seed = rig.peer(), rig.seed_only()
    set_level(peer, 0, 300)
    peer.send({"type": "clean", "data": {"seconds": 0.1, "pumps": [0, 1]}})
    peer.recv_until()
    assert sorted(runs(rig.driver)) == [0, 1]  # it did run them
    assert levels(peer)[:2] == [300, None]
    seed.assert_only_seed_types()


# ---- calibration --------------------------------------------------------------------------------


def test_calibrate_runs_one_pump_exactly_s_seconds_in_state_calibrating(make_rig):
    rig = make_rig(clock=FakeClock())
    peer, seed = rig.peer(), rig.seed_only()
    assert ask_state(peer)["pumps"][2]["calibration_seconds"] is None
    seen = pour(rig, peer, {"type": "calibrate", "data": {"pump": 2, "seconds": 0.3}}, is_state("idle"))
    states = [(m["data"]["state"], m["data"]["action"]) for m in seen if m["type"] == "state"]
    assert states == [("calibrating", "calibrate"), ("idle", None)]
    assert_countdown(status_times(seen), 0.3)
    assert {m["data"]["action"] for m in seen if m["type"] == "status"} == {"calibrate"}
    assert on_times(rig.driver) == {2: pytest.approx(0.3)}
    assert ask_state(peer)["pumps"][2]["calibration_seconds"] == pytest.approx(0.3)
    seed.assert_only_seed_types()


@pytest.mark.parametrize(
    "second",
    [
        {"type": "blend", "data": {"cup_size": 0.1, "ratios": {"1": 1}}},
        {"type": "refill", "data": {"pump": 1}},
        {"type": "calibrate", "data": {"pump": 1, "seconds": 1}},
        {"type": "clean", "data": {"seconds": 1}},
    ],
    ids=["blend", "refill", "calibrate", "clean"],
)
def test_anything_blocking_while_calibrating_answers_already_calibrating_retry_in_n_sec(make_rig, second):
    rig = make_rig()
    peer, other, seed = rig.peer(), rig.peer(), rig.seed_only()
    peer.send({"type": "calibrate", "data": {"pump": 0, "seconds": 1.5}})
    peer.recv_until(is_type("status"))
    other.send(second)
    reply = other.recv_until(lambda m: m["type"] != "status")[-1]
    assert reply["type"] == "error"
    match = re.fullmatch(r"Already calibrating ! Retry in (\d+) sec", reply["data"]["msg"])
    assert match and int(match.group(1)) in (1, 2), reply
    assert rig.controller.state == "calibrating"
    assert [switch.pump for switch in rig.driver.timeline] == [0]  # only the calibration moved
    peer.send({"type": "stop"})
    peer.recv_until(is_type("stopped"))
    seed.assert_only_seed_types()


def test_set_flow_before_any_calibration_is_refused(make_rig):
    rig = make_rig()
    peer = rig.peer()
    peer.send({"type": "set_flow", "data": {"pump": 3, "ml": 10}})
    reply = peer.recv_until(is_type("error"))[-1]
    assert "pump 3" in reply["data"]["msg"] and "calibrate" in reply["data"]["msg"], reply
    assert ask_state(peer)["pumps"][3]["flow_ml_s"] == 400.0


@pytest.mark.parametrize("ml, says", [(0, "got 0"), (-5, "got -5"), ("12", 'got "12"'), (True, "got true")])
def test_set_flow_refuses_an_ml_that_is_not_a_positive_number(make_rig, ml, says):
    rig = make_rig()
    peer = rig.peer()
    peer.send({"type": "calibrate", "data": {"pump": 0, "seconds": 0.05}})
    peer.recv_until()
    peer.send({"type": "set_flow", "data": {"pump": 0, "ml": ml}})
    reply = peer.recv()
    assert reply["type"] == "error" and "ml" in reply["data"]["msg"] and says in reply["data"]["msg"], reply
    assert ask_state(peer)["pumps"][0]["flow_ml_s"] == 400.0


def test_set_flow_after_calibrate_sets_ml_per_second_and_the_next_blend_uses_it(make_rig):
    rig = make_rig(clock=FakeClock())
    peer, seed = rig.peer(), rig.seed_only()
    pour(rig, peer, {"type": "calibrate", "data": {"pump": 1, "seconds": 0.2}})
    peer.send({"type": "set_flow", "data": {"pump": 1, "ml": 40}})
    reply = peer.recv_until(lambda m: m["type"] in ("state", "error"))[-1]
    assert reply["type"] == "state", reply
    assert reply["data"]["pumps"][1]["flow_ml_s"] == pytest.approx(200.0)
    assert reply["data"]["pumps"][0]["flow_ml_s"] == 400.0

    pour(rig, peer, {"type": "blend", "data": {"cup_size": 0.04, "ratios": {"1": 0.5, "0": 0.5}}}, is_state("idle"))
    assert on_times(rig.driver) == pytest.approx({1: 0.1, 0: 0.05})  # pump 1: 20 ml at 200 ml/s, not 400
    seed.assert_only_seed_types()


def test_set_flow_refuses_a_flow_no_pump_has_and_keeps_the_old_one(make_rig):
    rig = make_rig()
    peer = rig.peer()
    peer.send({"type": "calibrate", "data": {"pump": 2, "seconds": 0.05}})
    peer.recv_until(is_final_status)
    peer.send({"type": "set_flow", "data": {"pump": 2, "ml": 500}})  # 10 l/s
    error = peer.recv_until(is_type("error"))[-1]
    assert "calibrate for longer" in error["data"]["msg"]
    assert ask_state(peer)["pumps"][2]["flow_ml_s"] == 400.0


def test_set_flow_after_a_stopped_calibration_divides_by_the_seconds_actually_run(make_rig):
    rig = make_rig(clock=FakeClock())
    peer = rig.peer()
    peer.send({"type": "calibrate", "data": {"pump": 4, "seconds": 5}})
    peer.recv_until(is_type("status"))
    rig.clock.advance(0.25)
    peer.send({"type": "stop"})
    assert peer.recv_until(is_type("stopped"))[-1]["data"]["action"] == "calibrate"
    assert on_times(rig.driver) == {4: 0.25}
    assert ask_state(peer)["pumps"][4]["calibration_seconds"] == 0.25
    peer.send({"type": "set_flow", "data": {"pump": 4, "ml": 30}})
    state = peer.recv_until(is_type("state"))[-1]["data"]
    assert state["pumps"][4]["flow_ml_s"] == pytest.approx(120.0)


# ---- cleaning and max_parallel_pumps ------------------------------------------------------------


def test_clean_runs_each_listed_pump_for_its_seconds(make_rig):
    rig = make_rig(clock=FakeClock())
    peer, seed = rig.peer(), rig.seed_only()
    assert ask_state(peer)["state"] == "idle"
    seen = pour(rig, peer, {"type": "clean", "data": {"seconds": 0.1, "pumps": [1, "3"]}}, is_state("idle"))
    assert [m["data"]["state"] for m in seen if m["type"] == "state"] == ["cleaning", "idle"]
    assert_countdown(status_times(seen), 0.1)
    assert on_times(rig.driver) == pytest.approx({1: 0.1, 3: 0.1})
    seed.assert_only_seed_types()


def test_clean_without_pumps_runs_all_8_together(make_rig):
    rig = make_rig(clock=FakeClock())
    peer = rig.peer()
    pour(rig, peer, {"type": "clean", "data": {"seconds": 0.1}})
    assert on_times(rig.driver) == pytest.approx(dict.fromkeys(range(8), 0.1))
    assert most_on_at_once(rig.driver) == 8


@pytest.mark.parametrize(
    "data, says",
    [
        ({"seconds": 0}, ("seconds", "got 0")),
        ({"seconds": 121}, ("max_pump_seconds",)),
        ({"seconds": 1, "pumps": []}, ("pumps", "non-empty")),
        ({"seconds": 1, "pumps": [8]}, ("pumps item", "not a configured pump")),
        ({"seconds": 1, "pumps": [1, 1]}, ("pumps", "twice")),
        ({"pumps": [1]}, ('missing "seconds"',)),
    ],
    ids=["seconds-0", "over-max-pump-seconds", "pumps-empty", "pump-8", "pump-twice", "seconds-missing"],
)
def test_clean_refuses_bad_seconds_or_pumps_before_anything_moves(make_rig, data, says):
    rig = make_rig()
    peer = rig.peer()
    peer.send({"type": "clean", "data": data})
    reply = peer.recv()
    assert reply["type"] == "error" and all(f in reply["data"]["msg"] for f in says), reply
    assert rig.driver.timeline == [] and rig.controller.state == "idle"


def test_clean_with_max_parallel_pumps_2_never_runs_more_than_2_and_counts_the_whole(make_rig):
    rig = make_rig(limits={"max_parallel_pumps": 2}, clock=FakeClock())
    peer, seed = rig.peer(), rig.seed_only()
    seen = pour(rig, peer, {"type": "clean", "data": {"seconds": 0.3}})
    assert most_on_at_once(rig.driver) == 2
    assert on_times(rig.driver) == pytest.approx(dict.fromkeys(range(8), 0.3))
    assert all(len(spans) == 1 for spans in runs(rig.driver).values())
    assert rig.driver.timeline[-1].t - rig.driver.timeline[0].t == pytest.approx(1.2)
    assert_countdown(status_times(seen), 1.2)  # first remaining_time 2, not ceil(0.3) = 1
    assert {m["data"]["initial_time"] for m in seen if m["type"] == "status"} == {2}
    seed.assert_only_seed_types()


def test_blend_with_5_pumps_and_max_parallel_pumps_2_runs_in_groups_within_one_pour(make_rig):
    rig = make_rig(limits={"max_parallel_pumps": 2}, clock=FakeClock())
    peer, seed = rig.peer(), rig.seed_only()
    assert ask_state(peer)["state"] == "idle"
    ratios = {"0": 0.1, "1": 0.15, "2": 0.2, "3": 0.25, "4": 0.3}
    blend = {"type": "blend", "data": {"cup_size": 0.8, "ratios": ratios}}  # 0.2 to 0.6 s each
    seen = pour(rig, peer, blend, is_state("idle"))

    seconds = {int(p): 0.8 * 1000 * r / 400.0 for p, r in ratios.items()}
    planned = schedule(seconds, 2)  # longest first, into the lane that frees first
    assert {p: s.start for p, s in planned.items()} == pytest.approx({4: 0, 3: 0, 2: 0.5, 1: 0.6, 0: 0.9})
    assert most_on_at_once(rig.driver) == 2
    assert on_times(rig.driver) == pytest.approx(seconds)
    t0 = rig.driver.timeline[0].t
    starts = {pump: spans[0][0] - t0 for pump, spans in runs(rig.driver).items()}
    assert starts == pytest.approx({pump: span.start for pump, span in planned.items()})
    # One pour: one blending state, one countdown over the whole 1.1 s, one history entry.
    assert [m["data"]["state"] for m in seen if m["type"] == "state"] == ["blending", "idle"]
    assert_countdown(status_times(seen), 1.1)
    peer.send({"type": "history"})
    pours = peer.recv_until(is_type("history"))[-1]["data"]["pours"]
    assert [(p["action"], p["outcome"]) for p in pours] == [("blend", "completed")]
    seed.assert_only_seed_types()

# ---- protocol reference -------------------------------------------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _section(text: str, title: str) -> str:
    """The text of the `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/protocol.md has no '## {title}' section"
    return match.group(1)


@pytest.mark.parametrize(
    "title, models",
    [("From the client", list(REQUESTS.values())), ("From the server", list(REPLIES))],
    ids=["requests", "replies"],
)
def test_protocol_md_names_every_message_type_as_seed_or_new(title, models):
    section = _section(PROTOCOL_MD.read_text(encoding="utf-8"), title)
    for model in models:
        row = re.search(rf"^\| `{re.escape(model.type)}` \| (seed|new) \|", section, re.MULTILINE)
        assert row, f"docs/protocol.md, '{title}': no table row for `{model.type}`"
        assert row.group(1) == ("seed" if model.seed else "new"), f"`{model.type}` is marked {row.group(1)}"

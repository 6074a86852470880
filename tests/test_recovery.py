"""Crash recovery, decided apart from the controller: which unfinished pour is adopted, how long
each other is counted to have run, which pours nothing on today's pumps. In fake time."""

from __future__ import annotations

from barmaid.clock import FakeClock
from barmaid.drivers.base import Span
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.outcomes import ActionKind
from barmaid.recovery import action_of, recover
from barmaid.store import PourRecord

BOOT = "this-boot"
FLOWS = [100.0, 50.0]


def record(pour_id: int, spans, mono_start=None, boot_id=BOOT, planned=None) -> PourRecord:
    planned = planned or {p: FLOWS[p] * span.seconds for p, span in (spans or {}).items()}
    return PourRecord(pour_id, 0.0, None, "blend", planned, None, "running", spans, mono_start, boot_id)


def driver(clock: FakeClock, playing: bool) -> SimulatedDriver:
    made = SimulatedDriver([5, 6], 60.0, clock)
    if playing:
        made.pour({0: Span(0.0, 1.0)})
    return made


def test_the_last_pour_still_playing_is_adopted_from_its_true_start_the_others_counted_up_to_now():
    clock = FakeClock()
    now = clock.now()
    records = [
        record(1, {0: Span(0.0, 2.0)}, boot_id="another-boot"),  # its time is unknown: in full
        record(2, {1: Span(0.0, 2.0)}, mono_start=now - 0.5),  # this boot, cut after 0.5 s
        record(3, {0: Span(0.0, 1.0)}, mono_start=now - 0.25),
    ]
    found = recover(records, now, BOOT, driver(clock, playing=True), FLOWS)
    assert [(action.pour_id, ran) for action, ran in found.interrupted] == [(1, 2.0), (2, 0.5)]
    assert found.adopted is not None and found.adopted.pour_id == 3
    assert found.adopted.adopted and found.adopted.t0 == now - 0.25 and found.adopted.kind is ActionKind.BLEND
    assert found.empty == []


def test_a_last_pour_no_longer_playing_is_counted_never_more_than_planned():
    clock = FakeClock()
    now = clock.now()
    found = recover([record(7, {0: Span(0.0, 1.0)}, mono_start=now - 5.0)], now, BOOT, driver(clock, False), FLOWS)
    assert found.adopted is None
    assert [(action.pour_id, ran) for action, ran in found.interrupted] == [(7, 1.0)]


def test_a_pour_on_no_pump_of_today_is_empty_and_an_old_record_runs_at_todays_flow():
    clock = FakeClock()
    gone = record(4, None, planned={5: 30.0})  # pump 5 is no longer configured
    found = recover([gone], clock.now(), BOOT, driver(clock, False), FLOWS)
    assert [action.pour_id for action in found.empty] == [4] and not found.interrupted
    old = action_of(record(5, None, planned={0: 50.0, 1: 50.0}), FLOWS)  # recorded before spans were
    assert old.spans == {0: Span(0.0, 0.5), 1: Span(0.0, 1.0)} and old.ml == {0: 50.0, 1: 50.0}

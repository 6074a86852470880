"""Nothing lost: levels, calibrated flows and the pour history in SQLite.

First the Store on its own, then servers restarted on the same data directory, then a real
`python -m barmaid serve` process killed with SIGKILL mid-pour.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.messages import is_state, is_type
from support.peer import Peer
from support.processes import process_config
from support.pumps import pumps_with
from support.rig import ask_state, blend, history, levels, set_level
from support.servers import free_port
from support.timing import TOLERANCE

import barmaid.store as store_module
from barmaid.drivers.base import Span
from barmaid.errors import StoreError
from barmaid.store import FILENAME, PumpRecord, Store

GARBAGE = b"this is not an SQLite database \x00\xff\x13" * 64


class FailingWrites:
    """A sqlite3 connection whose writes fail, as on a read-only or failing disk; reads work."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        if sql.split(None, 1)[0].upper() in ("BEGIN", "INSERT", "UPDATE", "DELETE", "COMMIT"):
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def begin(store: Store, action: str, planned_ml: dict[int, float]) -> int:
    """begin_pour with every pump running 1 s from now."""
    return store.begin_pour(action, planned_ml, {p: Span(0.0, 1.0) for p in planned_ml}, time.monotonic())


def store_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "barmaid.store"]


# ---- the Store ----------------------------------------------------------------------------


def test_a_missing_data_dir_is_created(tmp_path):
    folder = tmp_path / "not" / "there" / "yet"
    store = Store(folder)
    store.set_pump(0, level_ml=1.0)
    assert (folder / FILENAME).is_file()
    store.close()


def test_the_database_is_sqlite_in_wal_mode(tmp_path):
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_pump_values_survive_reopening_and_one_update_keeps_the_others(tmp_path):
    store = Store(tmp_path)
    store.set_pump(2, level_ml=100.0, flow_ml_s=12.5)
    store.set_pump(2, calibration_seconds=3.0)
    store.set_pump(5, level_ml=0.0)
    store.set_pump(5, level_ml=None)  # back to "not tracked"
    store.close()
    assert Store(tmp_path).pumps() == {2: PumpRecord(100.0, 12.5, 3.0), 5: PumpRecord(None, None, None)}


def test_a_pour_is_written_when_it_starts_and_again_when_it_ends(tmp_path):
    store = Store(tmp_path)
    before = time.time()
    pour = begin(store, "blend", {0: 30.0, 3: 10.0})
    # Another connection (a restarted barmaid) already sees it, as running.
    (running,) = Store(tmp_path).unfinished()
    assert (running.id, running.action, running.outcome) == (pour, "blend", "running")
    assert running.planned_ml == {0: 30.0, 3: 10.0}
    assert running.poured_ml is None and running.ended is None and before <= running.started <= time.time()

    store.end_pour(pour, "stopped", {0: 12.5, 3: 10.0}, {0: {"level_ml": 87.5}, 3: {"level_ml": 0.0}})
    reopened = Store(tmp_path)
    assert reopened.unfinished() == []
    (ended,) = reopened.history()
    assert (ended.outcome, ended.poured_ml) == ("stopped", {0: 12.5, 3: 10.0})
    assert ended.started <= ended.ended <= time.time()
    assert reopened.pumps() == {0: PumpRecord(level_ml=87.5), 3: PumpRecord(level_ml=0.0)}


def test_history_is_newest_first_and_limited(tmp_path):
    store = Store(tmp_path)
    ids = [begin(store, action, {i: float(i)}) for i, action in enumerate(["blend", "refill", "clean", "blend"])]
    assert [r.id for r in store.history()] == ids[::-1]
    assert [(r.action, r.planned_ml) for r in store.history(2)] == [("blend", {3: 3.0}), ("clean", {2: 2.0})]


@pytest.mark.parametrize("damage", ["garbage", "damaged-page"])
def test_a_corrupt_database_is_moved_aside_and_rebuilt_with_one_log_line(tmp_path, caplog, damage):
    path = tmp_path / FILENAME
    if damage == "garbage":
        path.write_bytes(GARBAGE)
    else:  # a real database whose second page was overwritten
        store = Store(tmp_path)
        for i in range(100):
            begin(store, "blend", {0: float(i)})
        store.close()
        data = bytearray(path.read_bytes())
        data[4096:4096 + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    broken = path.read_bytes()

    caplog.clear()
    with caplog.at_level(logging.INFO):
        store = Store(tmp_path)
    (line,) = store_logs(caplog)
    (aside,) = tmp_path.glob(f"{FILENAME}.corrupt-*")
    assert line.levelno == logging.ERROR
    assert str(path) in line.getMessage() and aside.name in line.getMessage()
    assert aside.read_bytes() == broken
    assert store.history() == [] and store.pumps() == {}
    store.set_pump(1, level_ml=5.0)
    assert Store(tmp_path).pumps() == {1: PumpRecord(level_ml=5.0)}


def test_two_corrupt_databases_moved_aside_in_the_same_second_are_both_kept(tmp_path, monkeypatch):
    # Both within one second, whatever the machine's speed: the clock's text stands still.
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=time.time, strftime=lambda f: "20250101-120000"))
    (tmp_path / FILENAME).write_bytes(GARBAGE)
    Store(tmp_path).close()
    (tmp_path / FILENAME).write_bytes(GARBAGE[::-1])
    Store(tmp_path).close()
    kept = sorted(aside.read_bytes() for aside in tmp_path.glob(f"{FILENAME}.corrupt-*"))
    assert kept == sorted([GARBAGE, GARBAGE[::-1]])


def test_a_missing_database_is_created_with_one_log_line_naming_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        Store(tmp_path / "fresh").close()
    (line,) = store_logs(caplog)
    assert str(tmp_path / "fresh" / FILENAME) in line.getMessage()


def test_a_data_dir_that_cannot_be_created_is_a_store_error_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreError, match="a-file"):
        Store(tmp_path / "a-file" / "data")


def test_a_write_that_fails_is_a_store_error_naming_the_file_and_writes_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.set_pump(0, level_ml=10.0)
    monkeypatch.setattr(store, "_db", FailingWrites(store._db))
    for write in (lambda: store.set_pump(0, level_ml=1.0), lambda: begin(store, "blend", {0: 1.0})):
        with pytest.raises(StoreError) as raised:
            write()
        assert str(tmp_path / FILENAME) in str(raised.value) and "disk I/O error" in str(raised.value)
    monkeypatch.undo()
    assert store.pumps() == {0: PumpRecord(level_ml=10.0)} and store.history() == []


# ---- servers on the same data directory ---------------------------------------------------


def test_levels_calibrated_flows_and_history_survive_a_restart(make_rig, tmp_path):
    pumps, folder = pumps_with(capacity={0: 1000.0}), tmp_path / "kept"
    first = make_rig(pumps, data_dir=folder)
    peer = first.peer()
    set_level(peer, 0, 600)
    peer.send({"type": "calibrate", "data": {"pump": 1, "seconds": 0.1}})
    peer.recv_until(is_state("idle"))
    peer.send({"type": "set_flow", "data": {"pump": 1, "ml": 30}})
    peer.recv_until(is_type("state"))
    peer.send(blend(0.1, {"0": 1}))
    peer.recv_until(is_state("idle"))
    before = ask_state(peer)
    first.close()

    second = make_rig(pumps, data_dir=folder)
    peer = second.peer()
    after = ask_state(peer)
    assert after == before
    assert after["pumps"][0]["level_ml"] == pytest.approx(500)
    assert after["pumps"][1]["flow_ml_s"] == pytest.approx(300) and after["pumps"][2]["flow_ml_s"] == 400
    assert after["pumps"][1]["calibration_seconds"] == pytest.approx(0.1, abs=TOLERANCE)
    assert [(p["action"], p["outcome"]) for p in history(peer)] == [("blend", "completed"), ("calibrate", "completed")]
    # The calibrated flow is used by the restarted server: 30 ml at 300 ml/s.
    peer.send(blend(0.03, {"1": 1}))
    [started] = [m for m in peer.recv_until(is_state("idle")) if m["type"] == "started"]
    assert started["data"]["seconds"] == pytest.approx(0.1)  # 0.075 at the configured 400 ml/s


def test_history_returns_pours_newest_first_with_planned_and_poured_ml_and_the_outcome(make_rig):
    rig = make_rig()
    peer, seed = rig.peer(), rig.seed_only()
    started = time.time()
    peer.send(blend(0.1, {"0": 0.5, "1": 0.5}))
    peer.recv_until()
    peer.send(blend(1.0, {"2": 1}))  # 2.5 s, stopped
    peer.recv_until(is_type("status"))
    peer.send({"type": "stop"})
    after = peer.recv_until(is_type("stopped"))[-1]["data"]["after"]
    peer.send({"type": "refill", "data": {"pump": 3}})  # 50 ml
    peer.recv_until()

    pours = history(peer)
    assert [(p["action"], p["outcome"]) for p in pours] == [
        ("refill", "completed"), ("blend", "stopped"), ("blend", "completed")
    ]
    refill, stopped, completed = pours
    assert refill["planned_ml"] == refill["poured_ml"] == {"3": pytest.approx(50)}
    assert completed["planned_ml"] == completed["poured_ml"] == {"0": pytest.approx(50), "1": pytest.approx(50)}
    assert stopped["planned_ml"] == {"2": pytest.approx(1000)}
    assert stopped["poured_ml"] == {"2": pytest.approx(after * 400, abs=2)} and stopped["poured_ml"]["2"] < 1000
    assert refill["id"] > stopped["id"] > completed["id"]
    for pour in pours:
        assert started <= pour["started"] <= pour["ended"] <= time.time()
    assert history(peer, limit=2) == pours[:2]
    seed.assert_only_seed_types()


@pytest.mark.parametrize("limit, says", [(0, "limit"), ("5", "limit"), (501, "limit"), (1.5, "limit")])
def test_history_refuses_a_limit_that_is_not_a_whole_number_from_1_to_500(make_rig, limit, says):
    peer = make_rig().peer()
    peer.send({"type": "history", "data": {"limit": limit}})
    reply = peer.recv()
    assert reply["type"] == "error" and reply["data"]["msg"].startswith("history: ") and says in reply["data"]["msg"]


def test_a_missing_data_dir_is_created_by_the_server(make_rig, tmp_path):
    folder = tmp_path / "deep" / "er" / "data"
    rig = make_rig(data_dir=folder)
    peer = rig.peer()
    peer.send(blend(0.04, {"0": 1}))
    peer.recv_until()
    assert (folder / FILENAME).is_file()
    assert [p["outcome"] for p in history(peer)] == ["completed"]


def test_a_corrupt_database_at_start_is_rebuilt_and_the_server_serves(make_rig, tmp_path, caplog):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / FILENAME).write_bytes(GARBAGE)
    with caplog.at_level(logging.INFO):
        rig = make_rig(data_dir=folder)
    assert len(store_logs(caplog)) == 1
    peer = rig.peer()
    assert history(peer) == []
    peer.send(blend(0.04, {"0": 1}))
    peer.recv_until()
    assert [p["outcome"] for p in history(peer)] == ["completed"]
    assert len(list(folder.glob(f"{FILENAME}.corrupt-*"))) == 1


def writes_go_through(path: Path) -> bool:
    try:
        with sqlite3.connect(path, timeout=0.5) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
        return True
    except sqlite3.Error:
        return False


def test_a_read_only_data_dir_refuses_a_blend_naming_the_file_and_nothing_moves(make_rig, tmp_path):
    folder = tmp_path / "read-only"
    rig = make_rig(pumps_with(capacity={0: 1000.0}), data_dir=folder)
    peer, other, seed = rig.peer(), rig.peer(), rig.seed_only()
    set_level(peer, 0, 500)
    store = rig.controller.store
    connection = store._db
    os.chmod(folder, 0o500)
    try:
        # root writes anyway, and an open connection keeps its file handles: make the writes fail.
        if writes_go_through(store.path):
            store._db = FailingWrites(connection)
        peer.send(blend(0.1, {"0": 1}))
        reply = peer.recv()
        assert reply["type"] == "error" and str(store.path) in reply["data"]["msg"], reply
        assert rig.driver.timeline == [] and rig.controller.state == "idle"
        peer.send({"type": "set_level", "data": {"pump": 0, "ml": 100}})
        reply = peer.recv()
        assert reply["type"] == "error" and str(store.path) in reply["data"]["msg"], reply
        assert other.echo() == [] and seed.drain() == []  # no status: nothing started
    finally:
        store._db = connection
        os.chmod(folder, 0o700)
    assert levels(peer)[0] == 500
    assert history(peer) == []
    # Writable again: pours go on.
    peer.send(blend(0.1, {"0": 1}))
    peer.recv_until(is_state("idle"))
    assert levels(peer)[0] == pytest.approx(400)
    seed.assert_only_seed_types()


# ---- a real barmaid process, killed mid-pour ----------------------------------------------


def test_kill_9_mid_pour_then_restart_marks_it_interrupted_and_counts_every_pour(barmaid_process, tmp_path):
    folder = tmp_path / "process-data"
    port = free_port()
    # pump 0 is slow: 30 ml take 3 s; pump 1 pours 400 ml/s.
    config = process_config(folder, port, pumps_with(capacity={0: 1000.0, 1: 1000.0}, p0={"flow_ml_s": 10.0}))
    process = barmaid_process(config)
    peer = Peer.at(port)
    set_level(peer, 0, 800)
    set_level(peer, 1, 1000)
    peer.send(blend(0.1, {"1": 1}))  # completed: 100 ml
    peer.recv_until(is_state("idle"))
    peer.send(blend(0.8, {"1": 1}))  # stopped after about 0.1 s of 2 s
    peer.recv_until(is_type("status"))
    time.sleep(0.1)
    peer.send({"type": "stop"})
    peer.recv_until(is_type("stopped"))
    level_1 = levels(peer)[1]
    assert 500 < level_1 < 900
    peer.send(blend(0.05, {"0": 0.6, "1": 0.4}))  # pump 0: 30 ml, 3 s; pump 1: 20 ml
    running_since = time.monotonic()
    peer.recv_until(is_type("status"))
    running = history(peer)[0]
    assert (running["outcome"], running["planned_ml"]) == ("running", {"0": 30.0, "1": 20.0})
    killed = time.monotonic()
    process.crash()

    # The simulated pumps died with the process: nothing plays on, so the pour is counted as
    # poured up to the restart (at least up to the kill), never more than planned.
    process = barmaid_process(config)
    assert sum("cut off by a crash" in line for line in process.lines) == 1, process.lines
    peer = Peer.at(port)
    state = ask_state(peer)
    assert (state["state"], state["action"]) == ("idle", None)
    pours = history(peer)
    assert [(p["action"], p["outcome"]) for p in pours] == [
        ("blend", "interrupted"), ("blend", "stopped"), ("blend", "completed")
    ]
    poured_0 = pours[0]["poured_ml"]["0"]
    assert (killed - running_since) * 10 <= poured_0 <= 30
    assert pours[0]["poured_ml"]["1"] == 20.0  # its 0.05 s were over before the restart
    assert [p["level_ml"] for p in state["pumps"][:3]] == [
        pytest.approx(800 - poured_0), pytest.approx(level_1 - 20), None
    ]
    assert pours[1]["poured_ml"] == {"1": pytest.approx(900 - level_1)}
    assert pours[2]["poured_ml"] == {"1": pytest.approx(100)}
    peer.close()
    process.popen.terminate()
    assert process.popen.wait(5) == 0
    # A second restart finds nothing left to recover: the interrupted pour is counted once.
    store = Store(folder)
    assert store.unfinished() == [] and store.pumps()[0].level_ml == pytest.approx(800 - poured_0)


def test_a_garbage_database_does_not_stop_barmaid_from_starting(barmaid_process, tmp_path):
    folder = tmp_path / "process-data"
    folder.mkdir()
    (folder / FILENAME).write_bytes(GARBAGE)
    port = free_port()
    process = barmaid_process({"data_dir": str(folder), "server": {"host": "127.0.0.1", "port": port}})
    assert [line for line in process.lines if FILENAME in line and "damaged" in line] != []
    assert sum(FILENAME in line for line in process.lines) == 1, process.lines
    peer = Peer.at(port)
    assert history(peer) == []
    peer.close()

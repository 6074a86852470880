"""Nothing lost, nothing counted twice: the ledger across crashes, full disks, locks and restarts.

The rule under test: the recorded level is never above what is really in the bottle, and no pour
is counted twice. First the Store and the Controller on a data directory (a second Controller on
the same SimulatedDriver and folder is a barmaid restarted against a daemon that kept playing),
then real `python -m barmaid serve` processes: two on one folder, kill -9 at each step of a pour's
record, and real small filesystems (tmpfs in a private mount namespace) that are full or read-only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pytest
import yaml
from support import processes
from support.broadcasts import Broadcasts
from support.fake_pigpiod import FakePigpiod
from support.messages import is_final_status, is_state, is_type
from support.peer import Peer
from support.processes import ROOT, process_config
from support.pumps import pumps_with
from support.rig import blend, history, levels, set_level
from support.servers import free_port
from support.timeline import on_times
from support.timing import TOLERANCE
from support.waiting import eventually

import barmaid.store as store_module
from barmaid.config import Config, load_config
from barmaid.dispatch import submit
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.errors import Busy, PumpsUnavailable, StoreError
from barmaid.machine import Controller
from barmaid.protocol import Limits, parse
from barmaid.server import BarmaidServer
from barmaid.store import FILENAME, Store

LIMITS = Limits(pumps=8, max_cup_size=1.0)


def request(kind: str, **data: Any):
    return parse(json.dumps({"type": kind, "data": data}), LIMITS)


def blend_request(cup_size: float, ratios: dict[str, float]):
    return request("blend", cup_size=cup_size, ratios=ratios)


# ---- the Store ----------------------------------------------------------------------------


def hold_exclusive(path: Path) -> sqlite3.Connection:
    """Another program (the sqlite3 shell, a backup tool) holding the database locked."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE")
    return db


@pytest.fixture
def busy_timeout(monkeypatch):
    """Sets how long the store's writes wait for a lock (raising=False: also before it existed)."""
    return lambda seconds: monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", seconds, raising=False)


def test_a_locked_database_at_start_is_left_alone_and_named_not_moved_aside(tmp_path, busy_timeout):
    busy_timeout(0.1)
    store = Store(tmp_path)
    store.set_pump(0, level_ml=560.0)
    store.close()
    before = (tmp_path / FILENAME).read_bytes()
    holder = hold_exclusive(tmp_path / FILENAME)
    try:
        with pytest.raises(StoreError) as raised:
            Store(tmp_path)
        assert str(tmp_path / FILENAME) in str(raised.value) and "locked" in str(raised.value)
        assert "left as it is" in str(raised.value)
    finally:
        holder.close()
    assert list(tmp_path.glob(f"{FILENAME}.corrupt-*")) == []
    assert (tmp_path / FILENAME).read_bytes() == before
    assert Store(tmp_path).pumps()[0].level_ml == 560.0


def lock_writes(path: Path) -> sqlite3.Connection:
    """A second connection holding the write lock: every write of barmaid waits, then fails."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    return db


def test_a_failed_end_record_is_written_with_the_next_write_so_a_restart_counts_it_once(
    tmp_path, write_config, busy_timeout
):
    busy_timeout(0.05)
    config = ledger_config(write_config, tmp_path)
    controller = Controller(config, sim(config), Broadcasts(), store=Store(tmp_path))
    submit(controller, request("set_level", pump=0, ml=600))
    broadcasts = controller._broadcast
    submit(controller, blend_request(0.04, {"0": 1}))  # 40 ml, 0.1 s
    blocker = lock_writes(tmp_path / FILENAME)  # its end cannot be written
    broadcasts.wait_for(timeout=10)  # (a store without a settable busy timeout waits 5 s)
    blocker.rollback()
    blocker.close()
    assert controller.pumps[0].level_ml == pytest.approx(560)  # memory moved on, the disk did not
    assert controller.store.history()[0].outcome == "completed"  # history shows it as it will be
    submit(controller, blend_request(0.03, {"0": 1}))  # 30 ml: written, and the first with it
    assert eventually(lambda: sum(map(is_final_status, broadcasts.messages)) == 2)
    controller.close()

    restarted = Controller(config, sim(config), Broadcasts(), store=Store(tmp_path))
    assert restarted.pumps[0].level_ml == pytest.approx(530)
    assert [(p.outcome, p.poured_ml) for p in restarted.store.history()] == [
        ("completed", {0: pytest.approx(30)}), ("completed", {0: pytest.approx(40)})
    ]
    restarted.close()


def test_a_failed_end_record_is_retried_until_it_is_written(tmp_path, monkeypatch, busy_timeout):
    monkeypatch.setattr(store_module, "RETRY_S", 0.05)
    busy_timeout(0.05)
    store = Store(tmp_path)
    pour = store.begin_pour("blend", {0: 40.0}, {0: store_module.Span(0.0, 0.1)}, time.monotonic())
    blocker = lock_writes(tmp_path / FILENAME)
    with pytest.raises(StoreError, match="kept in memory"):
        store.end_pour(pour, "completed", {0: 40.0}, {0: {"level_ml": 560.0}})
    assert Store(tmp_path).unfinished() != []
    blocker.rollback()
    assert eventually(lambda: store.pending == 0)
    assert Store(tmp_path).unfinished() == [] and Store(tmp_path).pumps()[0].level_ml == 560.0
    store.close()


# ---- a restart against a daemon that kept playing -----------------------------------------


def ledger_config(write_config, folder: Path, flow: float = 400.0, **extra: Any) -> Config:
    pumps = pumps_with(flow, capacity={0: 1000.0, 1: 1000.0, 3: 1000.0}, p3={"prime_ml": 50.0})
    return load_config(
        write_config({"data_dir": str(folder), "pumps": pumps, **extra}, name=f"ledger-{flow}.yaml"),
        {"server": {"status_interval": 0.05}},
    )


def sim(config: Config) -> SimulatedDriver:
    return SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds)


def crash(controller: Controller) -> None:
    """What kill -9 leaves of a barmaid: nothing more from it, while the pumps' daemon plays on."""
    if controller.action is not None:
        controller.action.done.set()  # its clock thread ends without recording anything
    controller.store._db.close()


class Restart(NamedTuple):
    controller: Controller
    broadcasts: Broadcasts
    began: float
    ended: float


@pytest.fixture
def restart():
    """Builds the Controller of a restarted barmaid on a driver and a folder; closes it at teardown."""
    made: list[Controller] = []

    def start(config: Config, driver: SimulatedDriver, store: Optional[Store] = None) -> Restart:
        broadcasts = Broadcasts()
        began = time.monotonic()
        controller = Controller(config, driver, broadcasts, store=store or Store(config.data_dir))
        made.append(controller)
        return Restart(controller, broadcasts, began, time.monotonic())

    yield start
    for controller in made:
        controller.close()


def test_a_restart_adopts_the_pour_still_playing_and_records_it_completed_once(tmp_path, write_config, restart):
    config = ledger_config(write_config, tmp_path)
    driver = sim(config)
    first = Controller(config, driver, Broadcasts(), store=Store(tmp_path))
    submit(first, request("set_level", pump=0, ml=600))
    submit(first, blend_request(0.4, {"0": 1}))  # 400 ml in 1 s
    crash(first)

    second, broadcasts, _, _ = restart(config, driver)
    assert second.state == "blending" and driver.is_on(0)
    with pytest.raises(Busy, match=r"^Already blending ! Retry in 1 sec$"):
        submit(second, blend_request(0.1, {"1": 1}))
    messages = broadcasts.wait_for()
    statuses = [m["data"] for m in messages if m["type"] == "status"]
    assert statuses[0]["remaining_time"] == 1 and statuses[-1] == {
        "remaining_time": 0, "action": "blend", "initial_time": 1, "outcome": "completed"
    }
    assert [s["remaining_time"] for s in statuses].count(0) == 1
    assert on_times(driver) == {0: pytest.approx(1.0, abs=TOLERANCE)}  # never cut by the restart
    assert second.state == "idle" and second.pumps[0].level_ml == pytest.approx(200)
    (pour,) = second.store.history()
    assert (pour.outcome, pour.poured_ml) == ("completed", {0: pytest.approx(400)})
    assert Store(tmp_path).pumps()[0].level_ml == pytest.approx(200)


@pytest.mark.parametrize(
    "action, state",
    [
        (request("clean", seconds=0.5, pumps=[2]), "cleaning"),
        (request("calibrate", pump=2, seconds=0.5), "calibrating"),
    ],
    ids=["clean", "calibrate"],
)
def test_an_adopted_action_is_in_its_own_busy_state(tmp_path, write_config, restart, action, state):
    config = ledger_config(write_config, tmp_path)
    driver = sim(config)
    first = Controller(config, driver, Broadcasts(), store=Store(tmp_path))
    submit(first, action)
    crash(first)
    second, broadcasts, _, _ = restart(config, driver)
    assert second.state == state and second.action.kind == action.type
    assert broadcasts.wait_for()[-1]["data"]["outcome"] == "completed"
    assert second.state == "idle" and on_times(driver) == {2: pytest.approx(0.5, abs=TOLERANCE)}


@pytest.mark.parametrize("cut_after", [0.05, None], ids=["cut-mid-pour", "ended-before-the-restart"])
def test_a_restart_counts_a_pour_no_longer_playing_up_to_now_never_more_than_planned(
    tmp_path, write_config, restart, caplog, cut_after
):
    config = ledger_config(write_config, tmp_path)
    driver = sim(config)
    first = Controller(config, driver, Broadcasts(), store=Store(tmp_path))
    submit(first, request("set_level", pump=0, ml=600))
    seconds = 1.0 if cut_after else 0.1
    sent = time.monotonic()
    submit(first, blend_request(0.4 * seconds, {"0": 1}))
    returned = time.monotonic()
    crash(first)
    if cut_after:  # the daemon restarted, say: the wave is gone
        time.sleep(cut_after)
        driver.halt()
    else:
        assert eventually(lambda: not driver.playing())

    with caplog.at_level(logging.WARNING, logger="barmaid.machine"):
        second, _, began, ended = restart(config, driver)
    assert second.state == "idle"
    (pour,) = second.store.history()
    assert pour.outcome == "interrupted"
    poured = pour.poured_ml[0]
    if cut_after:  # up to now: at least until the restart began, at most until it ended
        assert (began - returned) * 400 <= poured <= (ended - sent) * 400 < 400
    else:
        assert poured == pytest.approx(40)
    assert second.pumps[0].level_ml == pytest.approx(600 - poured)
    assert any("cut off by a crash" in r.getMessage() and "counted as poured" in r.getMessage() for r in caplog.records)


def test_a_pour_from_another_boot_is_counted_in_full(tmp_path, write_config, restart, monkeypatch):
    config = ledger_config(write_config, tmp_path)
    driver = sim(config)
    first = Controller(config, driver, Broadcasts(), store=Store(tmp_path))
    submit(first, request("set_level", pump=0, ml=600))
    submit(first, blend_request(0.4, {"0": 1}))
    crash(first)
    driver.halt()  # the power went
    monkeypatch.setattr(store_module, "boot_id", lambda: "the-next-boot", raising=False)
    second = restart(config, driver).controller
    assert second.pumps[0].level_ml == pytest.approx(200)
    assert [(p.outcome, p.poured_ml) for p in second.store.history()] == [("interrupted", {0: pytest.approx(400)})]


class DiesAfterSending(SimulatedDriver):
    """A daemon that dies right after the wave was sent: the pumps run, the answer never comes."""

    def pour(self, plan):
        super().pour(plan)
        raise PumpsUnavailable(
            "lost the pigpio daemon while starting the pour (unpack requires a buffer of 16 bytes)", maybe_started=True
        )


def test_a_pour_the_daemon_may_have_started_is_counted_in_full_as_lost_in_plain_words(tmp_path, write_config, restart):
    config = ledger_config(write_config, tmp_path)
    driver = DiesAfterSending([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds)
    controller = restart(config, driver).controller
    submit(controller, request("set_level", pump=0, ml=600))
    with pytest.raises(PumpsUnavailable) as raised:
        submit(controller, blend_request(0.1, {"0": 1}))
    message = str(raised.value)
    assert "unpack" not in message and "buffer" not in message
    assert "counted as poured in full" in message and "100.0 ml" in message
    assert controller.state == "idle" and not driver.is_on(0)
    assert controller.pumps[0].level_ml == pytest.approx(500)
    assert [(p.outcome, p.poured_ml) for p in Store(tmp_path).history()] == [("lost", {0: pytest.approx(100)})]


# ---- over the WebSocket -------------------------------------------------------------------


@pytest.fixture
def ledger_server(write_config, tmp_path, busy_timeout, serve_config):
    """A BarmaidServer on a data directory with a store whose writes wait up to 30 s."""
    busy_timeout(30)

    def start(flow: float = 400.0) -> BarmaidServer:
        config = ledger_config(write_config, tmp_path / "data", flow=flow)
        return serve_config(config, sim(config), Store(config.data_dir))

    return start


def held(lock) -> bool:
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def test_stop_switches_the_pumps_off_while_another_client_waits_on_a_locked_store(ledger_server, tmp_path):
    server = ledger_server(flow=100.0)
    driver = server.controller.driver
    url = f"ws://127.0.0.1:{server.port}/"
    pourer, setter, stopper = Peer(url), Peer(url), Peer(url)
    pourer.send(blend(1.0, {"0": 1}))  # 10 s
    pourer.recv_until(is_type("status"))
    blocker = lock_writes(tmp_path / "data" / FILENAME)
    try:
        setter.send({"type": "set_level", "data": {"pump": 1, "ml": 5}})  # waits for the lock, in the controller
        # The set_level holds the controller's lock while SQLite waits (up to 30 s).
        assert eventually(lambda: held(server.controller._lock) and held(server.controller._lock))
        stopper.send({"type": "stop"})
        assert eventually(lambda: not driver.is_on(0), timeout=3), "stop waited behind the store"
        assert blocker.in_transaction  # the pumps went off while the store was still locked
    finally:
        blocker.rollback()
        blocker.close()
    assert stopper.recv_until(is_type("stopped"))[-1]["data"]["action"] == "blend"
    for peer in (pourer, setter, stopper):
        peer.close()


def test_prime_primes_the_tube_without_a_new_bottle_and_refill_still_means_one(make_rig):
    rig = make_rig(pumps_with(capacity={3: 1000.0}, p3={"prime_ml": 50.0}))
    peer, seed = rig.peer(), rig.seed_only()
    set_level(peer, 3, 500)
    peer.send({"type": "prime", "data": {"pump": 3}})  # 50 ml at 400 ml/s
    priming = peer.recv_until(is_state("priming"))[-1]["data"]
    assert priming["action"] == "prime"
    peer.send(blend(0.1, {"0": 1}))
    assert peer.recv_until(is_type("error"))[-1]["data"]["msg"].startswith("Already priming ! Retry in")
    peer.recv_until(is_state("idle"))
    assert levels(peer)[3] == pytest.approx(450)  # what priming drew, off the same bottle
    assert on_times(rig.driver) == {3: pytest.approx(0.125, abs=TOLERANCE)}
    peer.send({"type": "refill", "data": {"pump": 3}})
    peer.recv_until(is_state("idle"))
    assert levels(peer)[3] == pytest.approx(950)  # a new bottle, less what priming took
    assert [(p["action"], p["outcome"]) for p in history(peer)] == [("refill", "completed"), ("prime", "completed")]
    set_level(peer, 3, 10)
    peer.send({"type": "prime", "data": {"pump": 3}})
    assert "needs 50.0 ml but has 10.0 ml left" in peer.recv_until(is_type("error"))[-1]["data"]["msg"]
    seed.assert_only_seed_types()


def test_the_final_status_of_every_action_carries_its_outcome(make_rig):
    rig = make_rig()
    peer = rig.peer()
    peer.send(blend(0.04, {"0": 1}))
    assert peer.recv_until(is_final_status)[-1]["data"]["outcome"] == "completed"
    peer.send(blend(1.0, {"1": 1}))
    first = peer.recv_until(is_type("status"))[-1]["data"]
    assert "outcome" not in first
    peer.send({"type": "stop"})
    assert peer.recv_until(is_final_status)[-1]["data"]["outcome"] == "stopped"


# ---- real processes -----------------------------------------------------------------------


def serve_once(config: Path, *prefix: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """`barmaid serve` that is expected to stop by itself."""
    return subprocess.run(
        [*prefix, *processes.command("serve", "--config", str(config))],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_a_second_barmaid_on_the_same_data_dir_exits_2_naming_it_and_never_reaches_the_daemon(
    barmaid_process, tmp_path
):
    folder = tmp_path / "shared"
    with FakePigpiod() as daemon:
        driver = {"kind": "pigpio", "host": "127.0.0.1", "port": daemon.port}
        config = process_config(folder, free_port(), pumps_with(10.0), driver=driver)
        first = barmaid_process(config)
        first_port = config["server"]["port"]
        peer = Peer.at(first_port)
        peer.send(blend(0.1, {"0": 1}))  # 10 s
        peer.recv_until(is_type("status"))
        connections = daemon._conn_seq

        config["server"]["port"] = free_port()
        second = serve_once(write_yaml(tmp_path / "second.yaml", config))
        assert second.returncode == 2, second.stderr
        assert str(folder) in second.stderr and f"PID {first.popen.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert daemon._conn_seq == connections and daemon.wave_busy()  # the pour plays on, untouched

        config["data_dir"] = str(tmp_path / "own")  # its own folder, but the first one's port
        config["server"]["port"] = first_port
        third = serve_once(write_yaml(tmp_path / "third.yaml", config))
        assert third.returncode == 1 and f"cannot listen on 127.0.0.1:{first_port}" in third.stderr, third.stderr
        assert daemon._conn_seq == connections and daemon.wave_busy()
        peer.send({"type": "stop"})
        assert peer.recv_until(is_final_status)[-1]["data"]["outcome"] == "stopped"
        peer.close()


def wait_until_it_waits_for_the_lock(seconds: float = 0.3) -> None:
    """The process got the message and sits in SQLite's busy wait (2 s): no state shows that."""
    time.sleep(seconds)


def test_kill_9_at_each_step_of_a_pours_record_then_restart_counts_it_once(barmaid_process, tmp_path):
    """(kill -9 between begin and end is drilled in test_store.py.)"""
    folder = tmp_path / "killed"
    port = free_port()
    config = process_config(folder, port, pumps_with(capacity={0: 1000.0}, p0={"flow_ml_s": 10.0}))  # 3 ml in 0.3 s
    url = f"ws://127.0.0.1:{port}/"
    process = barmaid_process(config)
    peer = Peer(url)
    set_level(peer, 0, 800)

    def kill_and_restart(blocker: Optional[sqlite3.Connection] = None) -> Peer:
        """kill -9, then (the lock released) a new barmaid on the same folder."""
        nonlocal process
        peer.close()
        process.crash()
        if blocker is not None:
            blocker.rollback()
            blocker.close()
        process = barmaid_process(config)
        return Peer(url)

    # After the end was recorded: the restart finds nothing to do.
    peer.send(blend(0.003, {"0": 1}))
    peer.recv_until(is_final_status)
    peer = kill_and_restart()
    assert not any("cut off" in line for line in process.lines)
    assert levels(peer)[0] == pytest.approx(797)

    # The pumps ran and stopped, but the end could not be written (the database was locked):
    # the row says running, no level changed on disk; the restart counts it once, in full.
    peer.send(blend(0.003, {"0": 1}))
    peer.recv_until(is_type("status"))
    blocker = lock_writes(folder / FILENAME)
    time.sleep(0.3 + 0.2)  # the pour's 0.3 s are over; its end record waits for the lock
    peer = kill_and_restart(blocker)
    assert sum("cut off by a crash" in line for line in process.lines) == 1, process.lines
    assert levels(peer)[0] == pytest.approx(794)

    # Before the start was recorded: nothing moved, nothing is counted.
    blocker = lock_writes(folder / FILENAME)
    peer.send(blend(0.003, {"0": 1}))
    wait_until_it_waits_for_the_lock()
    peer = kill_and_restart(blocker)
    assert not any("cut off" in line for line in process.lines)
    assert levels(peer)[0] == pytest.approx(794)
    assert [(p["outcome"], p["poured_ml"]) for p in history(peer)] == [
        ("interrupted", {"0": 3.0}), ("completed", {"0": 3.0})
    ]
    peer.close()
    process.popen.terminate()
    assert process.popen.wait(5) == 0
    assert Store(folder).pumps()[0].level_ml == pytest.approx(794)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="barmaid-ledger-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_an_existing_data_dir_barmaid_cannot_write_exits_2_naming_it(world_readable_dir):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run barmaid as a user who may not write the folder")
    folder = world_readable_dir / "data"
    folder.mkdir(mode=0o755)
    config = write_yaml(world_readable_dir / "c.yaml", {"data_dir": str(folder), "server": {"port": free_port()}})
    config.chmod(0o644)
    result = serve_once(config, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert result.returncode == 2, result.stderr
    assert str(folder) in result.stderr and "cannot be written" in result.stderr
    assert "Traceback" not in result.stderr and "cannot listen" not in result.stderr
    assert list(folder.iterdir()) == []


# ---- real small filesystems ---------------------------------------------------------------


class SmallDisk:
    """A tmpfs of `size` mounted at `mount` in a private mount namespace (held by a sleeping
    process): commands run inside with `enter`, files are reached from here through `view`."""

    def __init__(self, mount: Path, size: str) -> None:
        self.mount = mount
        mount.mkdir(parents=True)
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size={size} tmpfs {mount} && echo mounted && exec sleep 600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        if self.holder.stdout.readline().strip() != "mounted":
            self.close()
            pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {self.holder.stderr.read().strip()}")
        self.enter = ("nsenter", "-t", str(self.holder.pid), "-m", "--")

    def view(self, path: Path) -> Path:
        return Path(f"/proc/{self.holder.pid}/root{path}")

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, *command], capture_output=True, text=True, timeout=20)

    def fill(self) -> Path:
        filler = self.view(self.mount / "filler")
        with open(filler, "ab") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        return filler

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(5)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare and nsenter to mount a small filesystem in a private namespace")
    disk = SmallDisk(tmp_path / "disk", "512k")
    yield disk
    disk.close()


def store_in(disk: SmallDisk, folder: Path, code: str) -> str:
    """Runs Python with a Store on `folder` inside the disk's namespace (SQLite resolves
    /proc/<pid>/root, so it must open the file from inside)."""
    result = disk.run(sys.executable, "-c", f"from barmaid.store import Store; store = Store({str(folder)!r}); {code}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_full_disk_at_start_leaves_the_database_alone_and_says_so(small_disk, tmp_path):
    folder = small_disk.mount / "data"
    store_in(small_disk, folder, "store.set_pump(0, level_ml=560.0); store.close()")
    before = small_disk.view(folder / FILENAME).read_bytes()
    filler = small_disk.fill()
    config = write_yaml(tmp_path / "full.yaml", {"data_dir": str(folder), "server": {"port": free_port()}})
    result = serve_once(config, *small_disk.enter)
    assert result.returncode == 2, result.stderr  # SQLite cannot map its -shm file on a full disk
    assert str(folder / FILENAME) in result.stderr and "left as it is" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert list(small_disk.view(folder).glob(f"{FILENAME}.corrupt-*")) == []
    assert small_disk.view(folder / FILENAME).read_bytes() == before
    filler.unlink()
    assert "560.0" in store_in(small_disk, folder, "print(store.pumps()[0].level_ml)")


def test_a_read_only_data_dir_exits_2_naming_it(small_disk, tmp_path):
    folder = small_disk.mount / "data"
    store_in(small_disk, folder, "store.close()")
    assert small_disk.run("mount", "-o", "remount,ro", str(small_disk.mount)).returncode == 0
    config = write_yaml(tmp_path / "ro.yaml", {"data_dir": str(folder), "server": {"port": free_port()}})
    result = serve_once(config, *small_disk.enter)
    assert result.returncode == 2, result.stderr
    assert str(folder) in result.stderr and "Read-only file system" in result.stderr
    assert "cannot listen" not in result.stderr and "Traceback" not in result.stderr


def test_a_disk_that_fills_mid_pour_keeps_the_end_record_and_counts_the_pour_once(small_disk, tmp_path):
    folder = small_disk.mount / "data"
    port = free_port()
    config = write_yaml(
        tmp_path / "filling.yaml", process_config(folder, port, pumps_with(capacity={0: 1000.0}, p0={"flow_ml_s": 10.0}))
    )
    process = subprocess.Popen(
        [*small_disk.enter, *processes.command("serve", "--config", str(config))],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        for line in process.stderr:
            if "listening" in line:
                break
        peer = Peer.at(port)
        set_level(peer, 0, 600)
        for _ in range(3):  # pages for the history to come
            peer.send(blend(0.001, {"0": 1}))
            peer.recv_until(is_final_status)
        level = levels(peer)[0]
        peer.send(blend(0.003, {"0": 1}))  # 3 ml in 0.3 s
        peer.recv_until(is_type("status"))
        filler = small_disk.fill()
        final = peer.recv_until(is_final_status)[-1]["data"]
        assert final["outcome"] == "completed"
        assert levels(peer)[0] == pytest.approx(level - 3)  # memory moved on
        filler.unlink()
        set_level(peer, 1, 5)  # the next write carries the pending end record
        peer.close()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(5)
    finally:
        process.kill()
        process.wait(5)
    out = store_in(small_disk, folder, "print(store.pumps()[0].level_ml, [p.outcome for p in store.unfinished()])")
    assert out.split()[0] == str(round(level - 3, 3)) or float(out.split()[0]) == pytest.approx(level - 3), out
    assert "[]" in out

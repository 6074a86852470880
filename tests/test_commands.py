"""The client subcommands against a real in-process server.

What needs a process of its own runs as `python -m barmaid ...` from the working tree: the wizard
driven through stdin, Ctrl-C (SIGINT) during a pour and during watch, --json, and each exit status.
The rest calls `barmaid.cli.main` in this process: the same code, without an interpreter start-up
each (about 0.6 s of CPU on a loaded 2-core machine).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from support import processes
from support.cli import Ran, run_main
from support.messages import is_final_status
from support.processes import PROCESS_TIMEOUT, ROOT
from support.pumps import FAST_FLOW_ML_S
from support.servers import free_port
from support.timeline import assert_countdown

from barmaid.cli import main
from barmaid.client import Client
from barmaid.protocol import REQUESTS
from barmaid.server import BarmaidServer

TOKEN = "s3cret-party-token"


def barmaid(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return processes.run(*args, stdin=stdin)


def spawn(*args: str) -> subprocess.Popen:
    return processes.spawn(*args, stdout=subprocess.PIPE)


def url(server: BarmaidServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def last_pour(server: BarmaidServer) -> dict[str, Any]:
    with Client.connect(url(server)) as client:
        return client.history(limit=1)[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """Runs `barmaid ARGS` in this process, with `stdin` as standard input."""

    def run(*args: str, stdin: str = "") -> Ran:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return run_main(main, list(args), capsys)

    return run


@pytest.fixture
def client(server: BarmaidServer):
    with Client.connect(url(server)) as connected:
        yield connected


def test_every_subprocess_runs_the_working_tree(tmp_path):
    """Also from another folder: conftest puts the checkout first on every child's PYTHONPATH."""
    found = subprocess.run(
        [sys.executable, "-c", "import barmaid; print(barmaid.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
    )
    assert Path(found.stdout.strip()).parent == ROOT / "barmaid"


# ---- reading --------------------------------------------------------------------------------


def test_state_shows_the_machine_and_every_pump(server, cli):
    result = cli("state", "--url", url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"barmaid at {url(server)}: idle; pump hardware reachable"
    rows = [line for line in result.stdout.splitlines() if f"{FAST_FLOW_ML_S:.2f}" in line]
    assert len(rows) == 8 and "not tracked" in rows[0]


def test_state_json_prints_the_state_frame_alone(server, cli):
    result = cli("state", "--json", "--url", url(server))
    [frame] = json_lines(result.stdout)
    assert frame["type"] == "state" and len(frame["data"]["pumps"]) == 8


def test_history_lists_the_last_pours(server, client, cli):
    client.run("blend", {"cup_size": 0.02, "ratios": {"4": 1}})
    result = cli("history", "--limit", "1", "--url", url(server))
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if "blend" in line]
    assert "completed" in row and "4: 20 (20)" in row


def test_watch_follows_state_and_statuses_until_ctrl_c(server, client):
    watcher = spawn("watch", "--json", "--url", url(server))
    try:
        assert json.loads(watcher.stdout.readline())["type"] == "state"
        client.run("blend", {"cup_size": 0.02, "ratios": {"0": 1}})
        seen = [json.loads(watcher.stdout.readline())]
        while not is_final_status(seen[-1]):
            seen.append(json.loads(watcher.stdout.readline()))
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(PROCESS_TIMEOUT) == 0, watcher.stderr.read()
    finally:
        watcher.kill()
        watcher.wait()
    assert next(m["data"]["state"] for m in seen if m["type"] == "state") == "blending"


# ---- pouring --------------------------------------------------------------------------------


def test_blend_pours_the_ratios_and_prints_the_statuses_as_json(server):
    result = barmaid("blend", "--cup", "0.1", "0=0.5", "3=0.5", "--json", "--url", url(server))
    assert result.returncode == 0, result.stderr
    frames = json_lines(result.stdout)
    assert_countdown([f["data"]["remaining_time"] for f in frames if f["type"] == "status"], 0.125)
    pour = last_pour(server)
    assert pour["planned_ml"] == {"0": 50.0, "3": 50.0} and pour["outcome"] == "completed"


def test_blend_for_people_ends_with_one_line(server, cli):
    result = cli("blend", "--cup", "0.02", "1=1", "--url", url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("blend ") and " in " in result.stdout


def test_refill_and_clean_run_the_pumps_named(server, cli):
    assert cli("refill", "5", "--url", url(server)).returncode == 0
    assert last_pour(server)["action"] == "refill" and last_pour(server)["planned_ml"] == {"5": 70.0}
    assert cli("clean", "--seconds", "0.05", "1", "2", "--url", url(server)).returncode == 0
    assert last_pour(server)["planned_ml"] == {"1": 20.0, "2": 20.0}


def test_prime_runs_where_the_server_knows_it_and_is_refused_where_not(server, cli):
    result = cli("prime", "6", "--url", url(server))
    if "prime" in REQUESTS:
        assert result.returncode == 0, result.stderr
        assert last_pour(server)["action"] == "prime"
    else:
        assert result.returncode == 1 and 'unknown type "prime"' in result.stderr


def test_level_sets_what_is_left_in_a_bottle(server, client, cli):
    result = cli("level", "2", "650", "--url", url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pump 2: 650 ml left"
    assert client.state()["pumps"][2]["level_ml"] == 650


def test_stop_ends_what_runs(server, client, cli):
    client.start("clean", {"seconds": 30}).wait_started()
    result = cli("stop", "--url", url(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stopped the clean after")
    assert client.state()["state"] == "idle"


def test_ctrl_c_during_a_pour_asks_the_server_to_stop_it(server, client):
    pouring = spawn("clean", "--seconds", "30", "--json", "--url", url(server))
    try:
        first = json.loads(pouring.stdout.readline())
        while first["type"] != "status":  # a server that copies ids acknowledges with `started` first
            first = json.loads(pouring.stdout.readline())
        assert first["data"]["remaining_time"] == 30  # the pour has started and the command saw it
        pouring.send_signal(signal.SIGINT)
        assert pouring.wait(PROCESS_TIMEOUT) == 130
        out, err = pouring.communicate()
    finally:
        pouring.kill()
        pouring.wait()
    assert "stopping the clean" in err
    assert any(frame["type"] == "stopped" for frame in json_lines(out))
    assert client.state()["state"] == "idle"
    pour = last_pour(server)
    assert pour["outcome"] == "stopped" and all(ml < 400 * 30 for ml in pour["poured_ml"].values())


# ---- the calibration wizard -----------------------------------------------------------------


def test_the_calibration_wizard_primes_runs_twice_shows_the_fit_and_checks(server, client):
    # 400 ml/s pumps; the answers claim 20 ml in 0.1 s and 95 ml in 0.4 s: 250 ml/s from 0.02 s.
    answers = "y\n0.1\n20\n0.4\n95\n20\n19.5\n"
    result = barmaid("calibrate", "2", "--url", url(server), stdin=answers)
    assert result.returncode == 0, result.stdout + result.stderr
    flow = client.state()["pumps"][2]["flow_ml_s"]
    assert flow in (pytest.approx(95 / 0.4), pytest.approx(250))  # last run only, or the two-point fit
    assert f"Fit: flow {flow:.2f} ml/s" in result.stdout
    assert "asked 20 ml, got 19.5 ml (-0.5 ml, -2.5%)" in result.stdout
    with Client.connect(url(server)) as reader:
        actions = [pour["action"] for pour in reversed(reader.history(limit=4))]
    assert actions[0] in ("prime", "refill") and actions[1:] == ["calibrate", "calibrate", "blend"]


class TwoPointServer:
    """Answers like a server with two-point calibration: ids, `started`, outcomes, and pumps with
    start-up times and points (with residuals) in its state."""

    def __init__(self) -> None:
        self.points: list[dict[str, float]] = [{"seconds": 5.0, "ml": 90.0, "residual_ml": 0.0}]
        self.last_run = 0.0

    def pump(self) -> dict[str, Any]:
        fitted = len(self.points) >= 2
        return {
            "pump": 0, "name": "gin", "flow_ml_s": 20.0, "prime_ml": 8.0, "level_ml": None,
            "capacity_ml": None, "dead_s": 0.25 if fitted else 0.0, "points": self.points,
        }

    def answer(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        rid, kind, data = request["id"], request["type"], request.get("data") or {}
        state = {"type": "state", "id": rid, "data": {"state": "idle", "remaining_time": 0, "pumps": [self.pump()]}}
        if kind == "hello":
            return [{"type": "welcome", "id": rid, "data": {"protocol": 2}}]
        if kind == "reset_calibration":
            self.points = []
            return [state]
        if kind == "set_flow":
            self.points.append({"seconds": self.last_run, "ml": data["ml"], "residual_ml": 0.1 * (-1) ** len(self.points)})
            return [state]
        if kind in ("prime", "calibrate", "blend"):
            self.last_run = data.get("seconds", self.last_run)
            status = {"action": kind, "initial_time": 1}
            return [
                {"type": "status", "data": {"remaining_time": 1, **status}},
                {"type": "started", "id": rid, "data": {"action": kind}},
                {"type": "status", "data": {"remaining_time": 0, "outcome": "completed", **status}},
            ]
        return [state]


def test_the_wizard_starts_over_and_shows_the_fit_and_residuals_the_server_keeps(scripted, cli):
    server = scripted(TwoPointServer().answer)
    result = cli("calibrate", "gin", "--url", server.url, stdin="y\ny\n2\n40\n8\n160\nn\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Calibrating pump 0 (gin): now flow 20.00 ml/s, start-up time 0.000 s, 1 point(s)." in result.stdout
    assert "Fit: flow 20.00 ml/s, start-up time 0.250 s, 2 point(s)." in result.stdout
    assert "+0.10" in result.stdout and "-0.10" in result.stdout  # each point's residual
    sent = [request["type"] for request in server.requests]
    assert sent[sent.index("reset_calibration"):] == [
        "reset_calibration", "prime", "calibrate", "set_flow", "calibrate", "set_flow", "state",
    ]


def test_the_wizard_asks_again_for_a_second_run_as_long_as_the_first(server, cli):
    result = cli("calibrate", "0", "--url", url(server), stdin="n\n0.1\n40\n0.1\n0.3\n120\nn\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "at least 20% longer or shorter than run 1" in result.stdout
    assert last_pour(server)["action"] == "calibrate" and last_pour(server)["planned_ml"] == {"0": 120.0}


def test_the_wizard_stops_when_standard_input_ends(server, cli):
    result = cli("calibrate", "0", "--url", url(server), stdin="n\n")
    assert result.returncode == 1
    assert "no answer on standard input" in result.stderr


# ---- where to connect, and exit statuses ----------------------------------------------------


def test_config_gives_the_url_and_the_token(server_with, write_config, cli):
    server = server_with(token=TOKEN)
    config = write_config({"server": {"host": "0.0.0.0", "port": server.port, "token": TOKEN}})
    result = cli("refill", "0", "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_the_token_can_come_from_the_environment(server_with, cli, monkeypatch):
    server = server_with(token=TOKEN)
    monkeypatch.setenv("BARMAID_TOKEN", TOKEN)
    assert cli("refill", "0", "--url", url(server)).returncode == 0


def test_a_refused_pour_exits_1_with_the_servers_message_on_stderr(server_with):
    server = server_with(token=TOKEN)
    result = barmaid("refill", "0", "--url", url(server))
    assert result.returncode == 1
    assert "needs its token" in result.stderr and result.stdout == ""


def test_a_pour_the_server_refuses_exits_1(server, cli):
    result = cli("blend", "--cup", "2", "0=1", "--url", url(server))
    assert result.returncode == 1 and "cup_size must be > 0 and <= 1.0 litres" in result.stderr


def test_nothing_listening_exits_3_naming_the_url_and_how_to_start_the_server():
    target = f"ws://127.0.0.1:{free_port()}"
    result = barmaid("state", "--url", target)
    assert result.returncode == 3
    assert f"cannot connect to {target}" in result.stderr and "barmaid serve" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("blend", "--cup", "0.1", "0=x"), "PUMP=RATIO"),
        (("blend", "0=1"), "--cup"),
        (("level", "0", "-5"), "must be a number >= 0"),
        (("clean", "--seconds", "0"), "must be a number > 0"),
        (("state", "--url", "http://localhost:8765"), "must start with ws://"),
        (("refill", "rum"), "no pump named 'rum'"),
        (("history", "--limit", "0"), "--limit must be from 1 to 500"),
        (("calibrate", "9"), "pump 9 is not on this machine; it has pumps 0 to 7"),
        (("state", "--config", "/nonexistent/barmaid.yaml"), "cannot read config file"),
    ],
    ids=["bad-ratio", "no-cup", "negative-level", "zero-seconds", "http-url", "unknown-name", "limit", "pump-9", "config"],
)
def test_a_bad_command_line_exits_2_saying_what_is_wrong(server, cli, args, says):
    result = cli(*args, *(() if "--url" in args or "--config" in args else ("--url", url(server))))
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_a_bad_command_line_in_a_process_exits_2_with_the_usage(server):
    result = barmaid("blend", "--cup", "0.1", "0=x", "--url", url(server))
    assert result.returncode == 2
    assert result.stderr.startswith("usage: barmaid blend") and "PUMP=RATIO" in result.stderr

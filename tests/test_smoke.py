"""scripts/smoke_test.py against a real in-process server: what it expects comes from the server's
state, a pour that ran too short fails, failed rows say so, token/origin/config work, and every bad
argument gets a sentence instead of a traceback. One run is a real process, as a builder runs it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from support.cli import Ran, run_main

from barmaid.client import Client
from barmaid.server import BarmaidServer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "smoke_test.py"
TOKEN = "s3cret-party-token"
#: Runs that must pass allow this much latency: a loaded CI machine is not a Pi on its own.
SLACK = ("--slack", "0.5")


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("barmaid_smoke_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


smoke_test = _load_script()


@pytest.fixture
def smoke(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """Runs the smoke test's main() in this process, with --yes."""
    return lambda *args: run_main(smoke_test.main, ["--yes", *args], capsys)


def url(server: BarmaidServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def test_passes_against_a_simulated_server_as_a_real_process(server):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--yes", "--url", url(server), "--ml", "20", "--pumps", "0,3,7", *SLACK],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["what", "expected", "s", "seen"]
    assert [line.split()[:2] for line in table[1:6]] == [["echo", "-"], ["pump", "0"], ["pump", "3"], ["pump", "7"], ["pump", "0"]]
    assert all(line.split()[-1] == "ok" or " ok " in line for line in table[1:6]), result.stdout
    assert "pump 0 + pump 3" in table[5]
    assert table[-1] == "5 passed, 0 failed"


def test_expected_times_come_from_the_servers_calibrated_flow_not_the_config(server, write_config, smoke):
    with Client.connect(url(server)) as client:
        client.run("calibrate", {"pump": 1, "seconds": 0.1})
        client.request("set_flow", {"pump": 1, "ml": 5})  # 50 ml/s; the config still says 400
    config = write_config({"server": {"host": "127.0.0.1", "port": server.port}})
    result = smoke("--config", str(config), "--url", url(server), "--pumps", "1", "--ml", "20", *SLACK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.line("pump 1").split()[2] == "0.400"  # 20 ml at 50 ml/s


def test_a_pour_that_ended_early_fails_and_its_row_says_failed(server, smoke):
    stopper = threading.Thread(target=_stop_the_next_pour, args=(url(server), 0.05))
    stopper.start()
    result = smoke("--url", url(server), "--pumps", "0", "--ml", "400")  # 1 s at 400 ml/s, stopped at 0.05 s
    stopper.join()
    assert result.returncode == 1
    row = result.line("pump 0")
    assert "FAIL" in row and " ok " not in row, result.stdout
    assert result.stdout.splitlines()[-1] == "1 passed, 1 failed"


def _stop_the_next_pour(target: str, after: float) -> None:
    with Client.connect(target) as client:
        client.state()  # follows the statuses from here on
        for message in client.messages(timeout=10):
            if message.remaining:
                threading.Event().wait(after)
                client.stop()
                return


def test_a_refused_pour_is_a_failed_row_with_the_servers_message(server, smoke):
    result = smoke("--url", url(server), "--ml", "2000", "--pumps", "1")  # over limits.max_cup_size
    assert result.returncode == 1
    assert "FAIL" in result.line("pump 1") and "cup_size" in result.line("pump 1")
    assert result.stdout.splitlines()[-1] == "1 passed, 1 failed"


def test_the_token_from_the_flag_or_the_config_lets_it_pour(server_with, write_config, smoke):
    server = server_with(token=TOKEN)
    refused = smoke("--url", url(server), "--pumps", "2")
    assert refused.returncode == 1 and "token" in refused.line("pump 2")
    assert smoke("--url", url(server), "--pumps", "2", "--token", TOKEN, *SLACK).returncode == 0
    config = write_config({"server": {"host": "0.0.0.0", "port": server.port, "token": TOKEN}})
    assert smoke("--config", str(config), "--pumps", "2", *SLACK).returncode == 0


def test_origin_is_sent_for_a_server_that_checks_it(server_with, smoke):
    server = server_with(allowed_origins=("http://kiosk.local",))
    refused = smoke("--url", url(server), "--pumps", "2", "--origin", "http://evil.example")
    assert refused.returncode == 3 and "--origin" in refused.stderr
    assert smoke("--url", url(server), "--pumps", "2", "--origin", "http://kiosk.local", *SLACK).returncode == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--pumps", "9"), "pump 9 is not on this machine; it has pumps 0 to 7"),
        (("--pumps", "0,x"), "--pumps: 'x' is not a pump number"),
        (("--pumps", ""), "--pumps: give pump numbers"),
        (("--pumps", "1,1"), "--pumps names pump 1 twice"),
        (("--ml", "0"), "--ml must be a number > 0"),
        (("--ml", "nan"), "--ml must be a number > 0"),
        (("--tolerance", "-0.1"), "--tolerance must be a number >= 0"),
        (("--slack", "x"), "--slack must be a number >= 0"),
    ],
    ids=["pump-9", "pump-x", "pumps-empty", "pump-twice", "ml-0", "ml-nan", "tolerance", "slack"],
)
def test_a_bad_argument_exits_2_with_a_sentence(server, smoke, args, says):
    result = smoke("--url", url(server), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (("--url", "ws://127.0.0.1:9"), 3, "cannot connect to ws://127.0.0.1:9"),
        (("--url", "localhost:8765"), 2, "must start with ws://"),
        (("--config", "/nonexistent/barmaid.yaml"), 2, "cannot read config file"),
    ],
    ids=["nothing-listens", "not-a-ws-url", "no-config"],
)
def test_where_to_connect_is_checked_with_a_sentence(smoke, args, status, says):
    result = smoke(*args)
    assert result.returncode == status, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


def test_the_relative_tolerance_fails_0_053_s_for_0_25_s_and_passes_small_jitter():
    assert not smoke_test.on_time(0.25, 0.053, tolerance=0.1, slack=0.05)
    assert not smoke_test.on_time(10.0, 11.5, tolerance=0.1, slack=0.05)
    assert smoke_test.on_time(10.0, 10.9, tolerance=0.1, slack=0.05)
    assert smoke_test.on_time(0.05, 0.08, tolerance=0.1, slack=0.05)

"""The `barmaid` command, run from the working tree in a subprocess: diagram, config errors, serve.

What a process adds (an exit status, signals, a port) is checked in one; the variations of the
same path (more config errors, diagram --output) call `barmaid.cli.main` in this process.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Optional

import pytest
import websocket
from support import processes
from support.cli import run_main
from support.factories import closing_all
from support.processes import Process
from support.servers import free_port

from barmaid.cli import main

barmaid = processes.run


@pytest.fixture
def serve(tmp_path: Path):
    """Starts `barmaid serve` on 127.0.0.1 and a free port (extra args allowed), in tmp_path with
    no config; kills what is still running at teardown."""

    def start(*args: str) -> Process:
        return Process("--host", "127.0.0.1", "--port", str(free_port()), *args, cwd=tmp_path)

    with closing_all(start, Process.kill) as make:
        yield make


def open_ws(serving: Process) -> websocket.WebSocket:
    return websocket.create_connection(f"ws://127.0.0.1:{serving.port}/", timeout=5)


def recv_json(ws: websocket.WebSocket) -> Optional[dict]:
    text = ws.recv()
    return json.loads(text) if text else None


# ---- diagram --------------------------------------------------------------------------------


def test_diagram_prints_a_mermaid_state_diagram_of_idle_blending_refilling(tmp_path):
    result = barmaid("diagram", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "stateDiagram-v2" in lines
    assert "[*] --> idle" in lines, result.stdout
    for busy, trigger in (("blending", "blend"), ("refilling", "refill")):
        [edge] = [line for line in lines if line.startswith(f"idle --> {busy}:")]
        assert trigger in edge.split(": ", 1)[1].split(" | "), result.stdout
    for busy in ("blending", "refilling"):
        [back] = [line for line in lines if line.startswith(f"{busy} --> idle:")]
        assert "finish" in back and "abort" in back


def test_diagram_output_writes_the_same_diagram_to_a_file(tmp_path, capsys):
    printed = run_main(main, ["diagram"], capsys).stdout
    result = run_main(main, ["diagram", "--output", str(tmp_path / "states.mmd")], capsys)
    assert result.returncode == 0 and result.stdout == ""
    assert (tmp_path / "states.mmd").read_text(encoding="utf-8").strip() == printed.strip()


# ---- serve: configuration errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("server:\n  prot: 9000\n", "unknown key 'server.prot'"),
        ("server:\n  port: 70000\n", "server.port = 70000"),
        ("pumps:\n  - {gpio: 5}\n  - {gpio: 5}\n", "pumps.1.gpio = 5"),
    ],
    ids=["unknown-key", "out-of-range", "duplicate-gpio"],
)
def test_serve_with_a_bad_config_exits_2_naming_the_key(write_config, capsys, text, says):
    result = run_main(main, ["serve", "--config", str(write_config(text, "bad.yaml"))], capsys)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and says in result.stderr, result.stderr


def test_serve_with_a_bad_config_in_a_process_exits_2_before_it_listens(write_config, tmp_path):
    result = barmaid("serve", "--config", str(write_config("server:\n  prot: 9000\n", "bad.yaml")), cwd=tmp_path)
    assert result.returncode == 2
    assert "configuration error: " in result.stderr and "unknown key 'server.prot'" in result.stderr, result.stderr
    assert "listening" not in result.stderr and "Traceback" not in result.stderr


# ---- serve: running and stopping ------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_echo_and_exits_0_with_every_pump_off_on_signal(serve, signum):
    serving = serve()
    assert f"listening on ws://127.0.0.1:{serving.port} with 8 simulated pumps" in serving.log
    ws = open_ws(serving)
    ws.send(json.dumps({"type": "echo", "data": {"msg": "toaster"}}))
    assert recv_json(ws) == {"type": "echo", "data": {"msg": "toaster"}}
    status, _ = serving.stop(signum)
    assert status == 0, serving.log
    assert f"{signal.Signals(signum).name} received" in serving.log
    assert "every pump off" in serving.log
    assert recv_json(ws) is None  # the server closed the connection
    ws.close()


def test_sigterm_mid_blend_stops_the_blend_and_exits_0_at_once(serve):
    serving = serve()  # default pumps, 20 ml/s: 0.1 l runs 5 s
    ws = open_ws(serving)
    ws.send(json.dumps({"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}}))
    first = recv_json(ws)
    assert first["type"] == "status" and first["data"]["remaining_time"] == 5
    status, took = serving.stop(signal.SIGTERM)
    assert status == 0, serving.log
    assert took < 3.0, f"took {took:.1f} s to exit: the 5 s blend was waited out"
    assert "blend shut down" in serving.log and "pump 0 off after" in serving.log
    assert "every pump off" in serving.log
    statuses = []
    while (message := recv_json(ws)) is not None:
        statuses.append(message["data"]["remaining_time"])
    assert statuses and statuses[-1] == 0 and statuses.count(0) == 1, statuses
    ws.close()


def test_serve_on_a_port_in_use_says_so_and_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = barmaid("serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr

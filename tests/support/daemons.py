"""What the pigpio and rgpio driver tests share: a fast supervisor, free loopback ports, configs
for a daemon on loopback, blend frames and a real barmaid process to kill mid-pour.

Import `quick_reconnects` into a test module to make it autouse there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Peer, fast_pumps

import barmaid.drivers.daemon as daemon_driver
from barmaid.config import Config, load_config
from support import processes


@pytest.fixture(autouse=True)
def quick_reconnects(monkeypatch):
    """Heartbeat and reconnect backoff of both daemon drivers in tens of milliseconds."""
    monkeypatch.setattr(daemon_driver, "BACKOFF", (0.02, 0.1))
    monkeypatch.setattr(daemon_driver, "HEARTBEAT", 0.02)


def free_port() -> int:
    """A loopback port nobody listens on (for a daemon or server that is not there yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def daemon_config(write_config, kind: str, port: int, active_low: bool = False, flow: float = 400.0, **server) -> Config:
    """A config for `kind`'s daemon on loopback `port`, with fast pumps and a server on a free port."""
    return load_config(
        write_config(
            {
                "server": {"host": "127.0.0.1", "port": free_port(), "status_interval": 0.05, **server},
                "driver": {"kind": kind, "host": "127.0.0.1", "port": port, "active_low": active_low},
                "pumps": fast_pumps(flow),
            }
        )
    )


def blend(ml_per_pump: float, pumps=(0, 1)) -> dict:
    """A blend frame pouring `ml_per_pump` from each of `pumps`."""
    cup = ml_per_pump * len(pumps) / 1000
    return {"type": "blend", "data": {"cup_size": cup, "ratios": {str(p): 1 / len(pumps) for p in pumps}}}


@contextmanager
def barmaid_process(config_path: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`python -m barmaid serve --config PATH [args]`, once it says it listens; killed at the end."""
    process = processes.spawn("serve", "--config", str(config_path), *args)
    try:
        if not any("listening" in line for line in process.stderr):
            raise AssertionError(f"barmaid did not start: exit status {process.wait(5)}")
        yield process
    finally:
        process.kill()
        process.wait()


def sigkill_mid_pour(process: subprocess.Popen, server_port: int, ml_per_pump: float) -> None:
    """Starts a blend of pumps 0 and 1 on a barmaid process, then SIGKILLs it once it pours."""
    client = Peer(f"ws://127.0.0.1:{server_port}/")
    client.send(blend(ml_per_pump))
    client.recv_until(lambda m: m["type"] == "status")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)

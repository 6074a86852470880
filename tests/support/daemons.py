"""What the pigpio and rgpio driver tests share: a fast supervisor and free loopback ports.

Import `quick_reconnects` into a test module to make it autouse there.
"""

from __future__ import annotations

import socket

import pytest

import barmaid.drivers.daemon as daemon_driver


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

"""Waiting for something that happens in another thread or process, without a fixed sleep.

A healthy server answers in milliseconds; `RECV_TIMEOUT` only bounds a hang, so a loaded
machine makes a test slower, never red.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest

from support.timing import TIME_FACTOR

#: Longest wait for one expected message or condition (5 s, times BARMAID_TEST_TIME_FACTOR).
RECV_TIMEOUT = 5.0 * TIME_FACTOR


def eventually(predicate: Callable[[], bool], timeout: float = RECV_TIMEOUT) -> bool:
    """Polls `predicate` every millisecond until it holds; False if it never did within `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def wait_until(condition: Callable[[], bool], what: str, timeout: float = RECV_TIMEOUT) -> None:
    """Fails the test, naming `what`, unless `condition` holds within `timeout`."""
    if not eventually(condition, timeout):
        pytest.fail(f"not within {timeout} s: {what}")

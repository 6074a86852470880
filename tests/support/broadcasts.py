"""A Controller's broadcast callback for tests without a network: every event kept as the frame
a seed-only client gets, checked against the protocol schema, and waitable."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

import pytest

from barmaid.action import Event
from barmaid.server import event_frames
from support.messages import from_server, is_final_status
from support.waiting import RECV_TIMEOUT


class Broadcasts:
    """The controller's broadcast callback: keeps every event as the frame a seed-only client gets,
    and lets a test wait for one."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        frame = event_frames(event)[0]
        from_server(frame)
        with self._cond:
            self.messages.append(json.loads(frame))
            self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool] = is_final_status, timeout: float = RECV_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Every message so far, once one of them satisfies `predicate` (default: the final status)."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(map(predicate, self.messages)), timeout):
                pytest.fail(f"no matching broadcast within {timeout} s; got {self.messages}")
            return list(self.messages)

"""The suite's WebSocket client of a running barmaid: the real `websocket-client` library, as a
GUI would use one, with every frame it receives checked against the protocol schema.

(support.rawws is the other client: one written out by hand, for the bytes no library sends.)
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Union

import pytest
import websocket

from support.messages import from_server, is_final_status
from support.waiting import RECV_TIMEOUT


class Peer:
    """One WebSocket client of the server under test, speaking JSON."""

    def __init__(self, url: str, **options: Any) -> None:
        """`options` go to websocket.create_connection (origin=..., header=...). The library sets
        TCP_NODELAY itself, so a request and the echo sent right after it are not held by Nagle."""
        self.ws = websocket.create_connection(url, timeout=5, **options)

    @classmethod
    def at(cls, port: int, **options: Any) -> Peer:
        """A client of the barmaid listening on 127.0.0.1:`port`."""
        return cls(f"ws://127.0.0.1:{port}/", **options)

    def send(self, message: Union[str, dict]) -> None:
        """Sends a raw text frame, or a message given as a dict."""
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return self.recv_until(lambda message: True, timeout)[-1]

    def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool] = is_final_status, timeout: float = RECV_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Every message received up to and including the first one `predicate` accepts (default:
        the final status). Fails the test if none comes within `timeout` seconds, showing what did."""
        deadline = time.monotonic() + timeout
        messages: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no matching message within {timeout} s; received {messages}")
            self.ws.settimeout(left)
            try:
                text = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                pytest.fail(f"no matching message within {timeout} s; received {messages}")
            if not text:
                pytest.fail(f"connection closed; received {messages}")
            messages.append(from_server(text))
            if predicate(messages[-1]):
                return messages

    def echo(self, data: Any = "sync") -> list[dict[str, Any]]:
        """Round-trips an echo; returns what arrived before its reply (the reply excluded)."""
        expected = {"type": "echo", "data": data}
        self.send(expected)
        messages = self.recv_until(lambda message: message == expected)
        return messages[:-1]

    def close(self) -> None:
        self.ws.close(timeout=1)

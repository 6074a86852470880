"""A WebSocket server whose answers the test writes, to drive barmaid.client through exchanges
barmaid's own server may not produce on demand (replies out of order, pushes, error codes)."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

from websocket_server import WebsocketServer


class Scripted:
    """`answer(request)` returns the frames (dicts) to send back, in order; `requests` is every
    request received."""

    def __init__(self, answer: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer = answer
        self.server = WebsocketServer(host="127.0.0.1", port=0)
        self.server.set_fn_message_received(self._on_message)
        # Its own run_forever polls every 0.5 s: every close would wait for it.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        self.url = f"ws://127.0.0.1:{self.server.port}/"

    def _on_message(self, peer: dict, server: WebsocketServer, text: str) -> None:
        request = json.loads(text)
        self.requests.append(request)
        for frame in self.answer(request):
            server.send_message(peer, json.dumps(frame))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Closing a server under test at once, and a free loopback port for one that is not there yet.

socketserver's accept loop looks for a shutdown request only every 0.5 s; a connection wakes it,
so `close_quickly` keeps connecting until the close is done. Every server and bare Transport the
suite starts is closed this way (the fixtures in conftest start them).
"""

from __future__ import annotations

import socket
import threading
from typing import Any


def close_quickly(server: Any) -> None:
    """server.close() (a BarmaidServer or a Transport on 127.0.0.1), without waiting out
    socketserver's 0.5 s poll."""
    closer = threading.Thread(target=server.close, name="test-server-close")
    closer.start()
    while closer.is_alive():
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
        except OSError:
            pass
        closer.join(0.01)


def free_port() -> int:
    """A loopback port nobody listens on (for a daemon or server that is not there yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""The TCP side both fake daemons share: a listener on loopback and the loop that accepts on it.

Each fake decides in `admit` what a new connection is (or closes it while the fake stops); the
sockets get TCP_NODELAY as the real daemons' clients expect one small answer per command.
"""

from __future__ import annotations

import socket
from typing import Callable


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), reusable at once after a restart."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(100)
    except OSError:
        listener.close()
        raise
    return listener


def accept_each(listener: socket.socket, admit: Callable[[socket.socket], bool]) -> None:
    """Accepts until the listener is closed, handing each connection to `admit`; stops when
    `admit` returns False (it has closed that socket: the fake is stopping)."""
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not admit(sock):
            return

"""The WebSocket adapter: frames in, requests to the controller, replies and statuses out.

Every frame gets an answer or an effect; whatever goes wrong becomes one `error` reply to the
sender, and the connection, the machine state and the pumps stay as they were.
"""

from __future__ import annotations

import logging
from typing import Callable

from .config import Config
from .drivers.base import Driver
from .errors import BarmaidError
from .machine import Controller
from .protocol import Blend, Echo, Limits, Refill, Request, echo_frame, error_frame, parse
from .transport import Client, Transport

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class BarmaidServer:
    """barmaid on a port: a transport, a controller and the driver it owns."""

    def __init__(self, config: Config, driver: Driver) -> None:
        self.config = config
        self.limits = Limits(pumps=len(config.pumps), max_cup_size=config.limits.max_cup_size)
        self.transport = Transport(
            config.server.host,
            config.server.port,
            self._on_message,
            max_message_bytes=config.server.max_message_bytes,
            max_clients=config.server.max_clients,
            allowed_origins=config.server.allowed_origins,
        )
        self.controller = Controller(config, driver, self.transport.broadcast)
        self._handlers: dict[type[Request], Callable[[Client, Request], None]] = {
            Echo: self._echo,
            Blend: self._pour,
            Refill: self._pour,
        }

    @property
    def port(self) -> int:
        return self.transport.port

    def start(self) -> None:
        self.transport.start()
        log.info(
            "barmaid listening on ws://%s:%d with %d %s pumps",
            self.config.server.host,
            self.port,
            len(self.config.pumps),
            "simulated" if self.config.driver.kind == "sim" else self.config.driver.kind,
        )

    def close(self) -> None:
        """Pumps off first, then every client closed."""
        try:
            self.controller.close()
        finally:
            self.transport.close()

    def _on_message(self, client: Client, text: str) -> None:
        try:
            request = parse(text, self.limits)
            self._handlers[type(request)](client, request)
        except BarmaidError as exc:
            client.send(error_frame(str(exc)))
        except Exception:
            log.exception("failed on %.200r from %r", text, client)
            client.send(error_frame("internal error (logged on the server); the pumps are safe, try again"))

    def _echo(self, client: Client, request: Echo) -> None:
        client.send(echo_frame(request.data))

    def _pour(self, client: Client, request: Request) -> None:
        self.controller.submit(request)

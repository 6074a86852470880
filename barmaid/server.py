"""The WebSocket adapter: frames in, requests to the controller, replies and statuses out.

Every frame gets an answer or an effect; whatever goes wrong becomes one `error` reply to the
sender, and the connection, the machine state and the pumps stay as they were.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Callable, Optional, Union
from urllib.parse import parse_qs, urlsplit

from .config import Config
from .drivers.base import Driver
from .errors import BadMessage, BarmaidError
from .machine import Controller
from .protocol import Echo, Hello, Limits, ResetCalibration, SetFlow, SetLevel, State, Welcome, echo_frame, error_frame, parse
from .store import Store
from .transport import Client, Transport

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class BarmaidServer:
    """barmaid on a port: a transport, a controller and the driver it owns."""

    def __init__(
        self, config: Config, driver: Union[Driver, Callable[[], Driver]], store: Optional[Store] = None
    ) -> None:
        """
        Args:
            driver: the pumps, or a function that makes them: it is called once the port is
                bound, so a barmaid that cannot serve never reaches the pump daemon.
            store: levels, calibrations, history; by default barmaid.db in config.data_dir.
        """
        self.config = config
        self.limits = Limits(pumps=len(config.pumps), max_cup_size=config.limits.max_cup_size)
        self.transport = Transport(
            config.server.host,
            config.server.port,
            self._on_message,
            max_message_bytes=config.server.max_message_bytes,
            max_clients=config.server.max_clients,
            allowed_origins=config.server.allowed_origins,
            on_leave=self._forget,
        )
        #: Clients that presented server.token (set.add/discard are atomic).
        self._trusted: set[int] = set()
        #: Clients that asked for the state once: they get it on every change.
        self._watchers: set[int] = set()
        self._watchers_lock = threading.Lock()
        made = not isinstance(driver, Driver)
        try:
            if made:
                driver = driver()
            self.controller = Controller(
                config,
                driver,
                self.transport.broadcast,
                store=store or Store(config.data_dir),
                publish=self._publish_state,
            )
        except BaseException:
            if made and isinstance(driver, Driver):
                driver.close()
            self.transport.close()  # the port is bound already: free it
            raise

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
            if isinstance(request, Echo):
                client.send(echo_frame(request.data))
                return
            if isinstance(request, Hello):
                client.send(self._hello(client, request).frame())
                return
            if request.guarded and not self._may_pour(client):
                raise BadMessage(
                    f"{request.type}: this machine needs its token first: connect to ws://host:port/?token=..."
                    ' or send {"type": "hello", "data": {"token": "..."}}'
                )
            if isinstance(request, (State, SetLevel, SetFlow, ResetCalibration)):  # they see the state from now on
                with self._watchers_lock:
                    self._watchers.add(client.id)
            reply = self.controller.submit(request)
            if reply is not None:
                client.send(reply.frame())
        except BarmaidError as exc:
            client.send(error_frame(str(exc)))
        except Exception:
            log.exception("failed on %.200r from %r", text, client)
            client.send(error_frame("internal error (logged on the server); the pumps are safe, try again"))

    def _may_pour(self, client: Client) -> bool:
        token = self.config.server.token
        if token is None or client.id in self._trusted:
            return True
        given = parse_qs(urlsplit(client.path).query).get("token", [""])[0]
        if hmac.compare_digest(given.encode(), token.encode()):
            self._trusted.add(client.id)
            return True
        return False

    def _hello(self, client: Client, request: Hello) -> Welcome:
        token = self.config.server.token
        if token is not None and not hmac.compare_digest(request.token.encode(), token.encode()):
            log.warning("%r presented a wrong token", client)
            raise BadMessage("hello: wrong token; ask the machine's owner for server.token")
        self._trusted.add(client.id)
        return Welcome()

    def _publish_state(self, frame: str) -> None:
        # `state` is not in the seed protocol: only clients that asked for it get it.
        with self._watchers_lock:
            watchers = set(self._watchers)
        for client in self.transport.clients():
            if client.id in watchers:
                client.send(frame)

    def _forget(self, client: Client) -> None:
        with self._watchers_lock:
            self._watchers.discard(client.id)
        self._trusted.discard(client.id)

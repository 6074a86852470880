"""The WebSocket adapter: frames in, requests to the controller (barmaid.dispatch), replies and
statuses out, each to the clients it concerns.

Every frame gets an answer or an effect; whatever goes wrong becomes one `error` reply to the
sender, and the connection, the machine state and the pumps stay as they were.
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Callable, Optional, Union
from urllib.parse import parse_qs, urlsplit

from . import panel
from .action import Event, Progress, Snapshot
from .clock import Clock
from .config import Config
from .dispatch import pump_states, state_reply, submit
from .drivers.base import Driver
from .errors import BarmaidError, Busy, PumpsUnavailable, TokenRequired, error_code
from .machine import Controller
from .protocol import (
    Echo,
    Error,
    Hello,
    Limits,
    Request,
    RequestId,
    ResetCalibration,
    ServedLimits,
    SetFlow,
    SetLevel,
    Started,
    State,
    Status,
    Welcome,
    build,
    build_request_models,
    echo_frame,
    read_frame,
    request_model,
)
from .store import Store
from .transport import Client, Transport

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

def event_frames(event: Event) -> tuple[str, str]:
    """The frames of a controller event: for a seed-only client, and for one of the extended protocol."""
    if isinstance(event, Progress):
        frame = Status(
            remaining_time=event.remaining,
            action=event.kind,
            initial_time=event.initial,
            outcome=event.outcome,
        ).frame()
        return frame, frame
    msg = f"pump hardware lost: {event.reason}; the {event.kind} was stopped"
    return Error(msg=msg).frame(), Error(msg=msg, code=PumpsUnavailable.code).frame()


INTERNAL_ERROR = "internal error (logged on the server); the pumps are safe, try again"


class BarmaidServer:
    """barmaid on a port: a transport, a controller and the driver it owns."""

    def __init__(
        self,
        config: Config,
        driver: Union[Driver, Callable[[], Driver]],
        store: Optional[Store] = None,
        clock: Optional[Clock] = None,
    ) -> None:
        """
        Args:
            driver: the pumps, or a function that makes them: it is called once the port is
                bound, so a barmaid that cannot serve never reaches the pump daemon.
            store: levels, calibrations, history; by default barmaid.db in config.data_dir.
            clock: what the controller times actions by (default: the real one); the driver's
                must agree with it.
        """
        build_request_models()
        self.config = config
        self.limits = Limits.from_config(config)
        self.transport = Transport(
            config.server.host,
            config.server.port,
            self._on_message,
            max_message_bytes=config.server.max_message_bytes,
            max_clients=config.server.max_clients,
            allowed_origins=config.server.allowed_origins,
            on_leave=self._forget,
            http_handler=panel.respond,  # the service panel, on the WebSocket's port
        )
        #: Clients that presented server.token (set.add/discard are atomic).
        self._trusted: set[int] = set()
        #: Clients that sent an id or a message beyond the seed: they get the new frames and keys.
        self._extended: set[int] = set()
        #: Per submitting thread: sends the `started` of the action it is starting (see _broadcast).
        self._ack = threading.local()
        #: Clients that asked for the state once: they get it on every change.
        self._watchers: set[int] = set()
        self._watchers_lock = threading.Lock()
        made: Optional[Driver] = None
        try:
            if not isinstance(driver, Driver):
                driver = made = driver()
            self.controller = Controller(
                config,
                driver,
                self._broadcast,
                store=store or Store(config.data_dir),
                publish=self._publish_state,
                clock=clock,
            )
        except BaseException:
            if made is not None:
                made.close()
            self.transport.close()  # the port is bound already: free it
            raise

    @property
    def port(self) -> int:
        return self.transport.port

    def start(self) -> None:
        self.transport.start()
        host = self.config.server.host
        log.info(
            "barmaid listening on ws://%s:%d with %d %s pumps",
            f"[{host}]" if ":" in host else host,
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
        request_id: Optional[RequestId] = None
        try:
            incoming = read_frame(text)
            request_id = incoming.id
            model = request_model(incoming.message)
            if request_id is not None or not model.seed:
                self._extended.add(client.id)
            request = build(model, incoming.message, self.limits)
            if isinstance(request, Echo):
                client.send(echo_frame(request.data, request_id))
            else:
                self._serve(client, request, request_id)
        except BarmaidError as exc:
            self._refuse(client, exc, request_id)
        except Exception as exc:
            log.exception("failed on %.200r from %r", text, client)
            self._refuse(client, exc, request_id)

    def _serve(self, client: Client, request: Request, request_id: Optional[RequestId]) -> None:
        """Carries out one valid request (not an echo) and answers its sender."""
        if isinstance(request, Hello):
            client.send(self._hello(client, request).frame(request_id))
            return
        if request.guarded and not self._may_pour(client):
            raise TokenRequired(
                f"{request.type}: this machine needs its token first: connect to ws://host:port/?token=..."
                ' or send {"type": "hello", "data": {"token": "..."}}'
            )
        if isinstance(request, (State, SetLevel, SetFlow, ResetCalibration)):  # they see the state from now on
            with self._watchers_lock:
                self._watchers.add(client.id)
        if request.blocking and client.id in self._extended:
            self._ack.send = lambda: client.send(self._started(request).frame(request_id))
        try:
            reply = submit(self.controller, request)
        finally:
            unsent, self._ack.send = getattr(self._ack, "send", None), None
        if unsent is not None:  # it started without a status from this thread: acknowledge it now
            unsent()
        if request.guarded and not request.blocking:
            log.info("%r: %s %s", client, request.type, request.model_dump_json())
        if reply is not None:
            client.send(reply.frame(request_id))

    def _started(self, request: Request) -> Started:
        action = self.controller.action  # set by the transition that is sending its first status
        return Started(action=request.type, seconds=round(action.seconds, 3) if action else 0.0)

    def _broadcast(self, event: Event) -> None:
        """Tells every client of a controller event; the first one the submitting thread reports
        for a new action is preceded by that action's `started`, so the ack comes before every status."""
        ack, self._ack.send = getattr(self._ack, "send", None), None
        if ack is not None:
            ack()
        seed, extended = event_frames(event)
        if seed == extended:
            self.transport.broadcast(seed)
            return
        for client in self.transport.clients():
            client.send(extended if client.id in self._extended else seed)

    def _refuse(self, client: Client, exc: BaseException, request_id: Optional[RequestId]) -> None:
        """One error to the sender, in the seed's shape unless it speaks the extended protocol,
        and one log line saying who was refused and why."""
        code = error_code(exc)
        msg = str(exc) if isinstance(exc, BarmaidError) else INTERNAL_ERROR
        if code != "internal":  # an internal error was logged with its traceback already
            # A wrong token may be someone trying the door: worth a warning.
            log.log(logging.WARNING if code == "token" else logging.INFO, "refused %r (%s): %s", client, code, msg)
        if client.id not in self._extended:
            client.send(Error(msg=msg).frame())
            return
        retry_in = exc.retry_in if isinstance(exc, Busy) else None
        client.send(Error(msg=msg, code=code, retry_in=retry_in).frame(request_id))

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
        if token is not None and request.token is not None:
            if not hmac.compare_digest(request.token.encode(), token.encode()):
                raise TokenRequired("hello: wrong token; ask the machine's owner for server.token")
            self._trusted.add(client.id)
        may_pour = self._may_pour(client)
        limits = self.config.limits
        return Welcome(
            msg="this connection may pour" if may_pour else "send hello with server.token before pouring",
            limits=ServedLimits(
                pumps=self.limits.pumps,
                max_cup_size=limits.max_cup_size,
                max_pump_seconds=limits.max_pump_seconds,
                max_parallel_pumps=limits.max_parallel_pumps,
                max_message_bytes=self.config.server.max_message_bytes,
                status_interval=self.config.server.status_interval,
            ),
            token_required=token is not None,
            may_pour=may_pour,
            hardware=self.controller.driver.available,
            pumps=pump_states(self.controller.snapshot()),
        )

    def _publish_state(self, snapshot: Snapshot) -> None:
        # `state` is not in the seed protocol: only clients that asked for it get it.
        frame = state_reply(snapshot).frame()
        with self._watchers_lock:
            watchers = set(self._watchers)
        for client in self.transport.clients():
            if client.id in watchers:
                client.send(frame)

    def _forget(self, client: Client) -> None:
        with self._watchers_lock:
            self._watchers.discard(client.id)
        self._trusted.discard(client.id)
        self._extended.discard(client.id)

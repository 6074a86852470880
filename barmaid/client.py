"""A synchronous client for a running barmaid: each request gets its own reply, actions are followed.

The command-line client, the smoke test and the tests use it. A reader thread receives every frame
and the caller's thread only waits for it, so a Ctrl-C while waiting never cuts a frame in half and
the connection stays usable to send `stop`.

Matching replies: every request carries a top-level `"id"`. A server that copies it back into its
replies is matched by it; an older server (which ignores ids) is matched by the reply type each
request is answered with (`state` -> `state`, `stop` -> `stopped`, ...). Either way a frame that
answers nothing the caller asked (a pushed `state`, another client's statuses) waits in the inbox
for `messages()`.

A blocking action (blend, refill, prime, calibrate, clean) is acknowledged by `started` (or an
error) carrying its id, or, from an older server, by its first status; then it is followed through
its statuses to the final status 0.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import websocket

DEFAULT_URL = "ws://localhost:8765"
#: Seconds to wait for a reply; a healthy server answers in milliseconds.
DEFAULT_TIMEOUT = 5.0
#: Longest silence while an action runs: a status comes every server.status_interval (60 s at most).
STATUS_SILENCE = 90.0
#: The blocking actions: acknowledged, then statuses until 0.
ACTIONS = ("blend", "refill", "prime", "calibrate", "clean")
#: The reply type an older server (no ids) answers each request with.
_ANSWERS = {
    "echo": "echo",
    "state": "state",
    "history": "history",
    "stop": "stopped",
    "hello": "welcome",
    "set_level": "state",
    "set_flow": "state",
    "reset_calibration": "state",
}
#: Most frames kept for a caller that is not reading them; the oldest go first.
INBOX_LIMIT = 1000
_BUSY = re.compile(r"Already \w+ ! Retry in (\d+) sec")

RequestId = Union[int, str]


class _Socket(websocket.WebSocket):
    """websocket-client's socket, which answers a server's close frame before handing it over: when
    the server has already gone (a refusal such as 1013), that answer fails and the reason the
    server gave would be lost with it."""

    def send_close(self, status: int = websocket.STATUS_NORMAL, reason: Union[str, bytes] = b"") -> None:
        try:
            super().send_close(status, reason)
        except (OSError, websocket.WebSocketException):
            pass


class ClientError(Exception):
    """Base of what the client raises."""


class CannotConnect(ClientError):
    """No barmaid answers at the URL (nothing listens, the handshake is refused, it closed at once)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason


class ConnectionLost(ClientError):
    """The connection ended while a reply or a status was awaited."""


class NoReply(ClientError):
    """No reply came in time."""


class Refused(ClientError):
    """The server answered a request with `error`: nothing was done.

    Attributes:
        code: busy, invalid, unavailable, token, storage, bottle or internal; from an older server
            that sends no code, "busy" for its busy text and None for anything else.
        msg: the server's sentence, to show as it is.
        retry_in: whole seconds until the running action ends (busy only).
    """

    def __init__(self, msg: str, code: Optional[str] = None, retry_in: Optional[int] = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.retry_in = retry_in

    @classmethod
    def from_data(cls, data: Any) -> Refused:
        data = data if isinstance(data, dict) else {}
        msg = str(data.get("msg", "error without a message"))
        code, retry_in = data.get("code"), data.get("retry_in")
        busy = _BUSY.search(msg)
        if code is None and busy:
            code = "busy"
        if retry_in is None and busy:
            retry_in = int(busy.group(1))
        return cls(msg, code, retry_in)


@dataclass(frozen=True)
class Message:
    """One frame from the server."""

    type: str
    data: Any
    #: The request id the server copied into it; None for pushed frames and older servers.
    id: Optional[RequestId]
    #: The text as received (what `--json` prints).
    frame: str
    #: Arrival order on this connection.
    seq: int

    @property
    def remaining(self) -> Optional[int]:
        """remaining_time of a status, else None."""
        if self.type != "status" or not isinstance(self.data, dict):
            return None
        value = self.data.get("remaining_time")
        return value if isinstance(value, int) else None


class Action:
    """One blocking action this client asked for: its acknowledgement, then its statuses to the end."""

    def __init__(self, client: Client, kind: str, request_id: RequestId, mark: int) -> None:
        self.client = client
        self.kind = kind
        self.id = request_id
        #: Frames up to this one are not about this action.
        self._mark = mark
        self._sent_after = mark
        #: The acknowledgement: `started`, or the first status from an older server.
        self.started: Optional[Message] = None
        self.statuses: list[Message] = []
        #: Errors sent to every client while it ran (the pump hardware was lost...).
        self.errors: list[Message] = []
        self.final: Optional[Message] = None
        #: time.monotonic() when it was sent and when its final status came.
        self.sent_at = time.monotonic()
        self.ended_at: Optional[float] = None
        self._series_begun = False
        self._reported = 0

    def wait_started(self, timeout: Optional[float] = None) -> Message:
        """The acknowledgement.

        Raises:
            Refused: the server would not start it; nothing moved.
            NoReply / ConnectionLost.
        """
        if self.started is None:
            reply = self.client._take(self._answers, timeout or self.client.timeout)
            if reply.type == "error":
                raise Refused.from_data(reply.data)
            self.started = reply
            if self._opens_series(reply):
                self._begin_series(reply)
        return self.started

    def follow(self, on_status: Optional[Callable[[Message], None]] = None, silence: float = STATUS_SILENCE) -> Message:
        """Waits for the final status 0, calling on_status for every status of this action.

        Returns:
            The final status (its data has `outcome` when the server sends one).
        """
        self.wait_started()
        for status in self.statuses[self._reported :]:  # the first status, if it was the acknowledgement
            self._report(status, on_status)
        while self.final is None:
            status = self.client._take(self._is_status, silence)
            if status.type == "error":
                self.errors.append(status)
                continue
            if not self._series_begun:
                if not self._opens_series(status):
                    continue  # the end of an action that finished before this one began
                self._begin_series(status)
            else:
                self.statuses.append(status)
            if status.remaining == 0:
                self.final = status
                self.ended_at = time.monotonic()
            self._report(status, on_status)
        return self.final

    def _report(self, status: Message, on_status: Optional[Callable[[Message], None]]) -> None:
        self._reported += 1  # first: a Ctrl-C inside on_status must not report it twice
        if on_status:
            on_status(status)

    @property
    def elapsed(self) -> Optional[float]:
        """Seconds from sending the request to its final status, as seen here."""
        return None if self.ended_at is None else self.ended_at - self.sent_at

    @property
    def initial_time(self) -> Optional[int]:
        """Whole seconds the action was to run, from its first status."""
        if not self.statuses:
            return None
        first = self.statuses[0]
        return first.data.get("initial_time", first.remaining)

    @property
    def outcome(self) -> Optional[str]:
        """How it ended: the final status's `outcome`; from an older server, "stopped" if this client
        stopped it, else None (it ended, how is not said)."""
        if self.final is None:
            return None
        outcome = self.final.data.get("outcome")
        if outcome is None and self.client.stopped_after(self._sent_after):
            return "stopped"
        return outcome

    def _answers(self, message: Message) -> bool:
        if message.seq <= self._mark:
            return False
        if message.id is not None:
            return message.id == self.id
        if self.client.echoes_ids:  # only `started` or an error with our id: a status may be another's
            return False
        return message.type == "error" or self._opens_series(message)

    def _begin_series(self, first: Message) -> None:
        self._series_begun = True
        self._mark = first.seq  # whatever came before belongs to earlier actions
        self.statuses.append(first)

    def _is_status(self, message: Message) -> bool:
        pushed_error = message.type == "error" and message.id is None
        return message.seq > self._mark and (message.remaining is not None or pushed_error)

    def _opens_series(self, message: Message) -> bool:
        remaining = message.remaining
        return remaining is not None and remaining > 0 and message.data.get("action", self.kind) == self.kind


class Client:
    """One connection to barmaid. Use `Client.connect`; close it (or use it as a context manager)."""

    def __init__(self, ws: websocket.WebSocket, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        #: The server's `welcome` data (version, limits, pumps...), None from an older server.
        self.welcome: Optional[dict[str, Any]] = None
        self._ws = ws
        self._ids = itertools.count(1)
        self._inbox: deque[Message] = deque(maxlen=INBOX_LIMIT)
        self._cond = threading.Condition()
        self._seq = 0
        self._closed: Optional[str] = None
        self._echoes_ids = False
        self._stop_marks: list[int] = []
        self._reader = threading.Thread(target=self._read, name="barmaid-client", daemon=True)
        self._reader.start()

    @classmethod
    def connect(
        cls,
        url: str = DEFAULT_URL,
        token: Optional[str] = None,
        origin: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Client:
        """Opens the connection and says hello (presenting the token, if any).

        Args:
            origin: the Origin header; None sends websocket-client's own (http://host:port).

        Raises:
            CannotConnect: nothing listens, the handshake was refused, or the server closed at once
                or did not answer the hello.
            Refused: the token is wrong (code token).
        """
        try:
            ws = websocket.create_connection(url, timeout=timeout, origin=origin, class_=_Socket)
        except websocket.WebSocketBadStatusException as exc:
            reason = f"the server refused the handshake (HTTP {exc.status_code})"
            if exc.status_code == 403:
                reason += "; is this Origin in server.allowed_origins? (--origin)"
            raise CannotConnect(url, reason) from None
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            raise CannotConnect(url, _reason(exc)) from None
        ws.settimeout(None)  # the reader waits for frames as long as it takes
        client = cls(ws, url, timeout)
        try:
            client.welcome = client._hello(token)
        except (ConnectionLost, NoReply) as exc:
            client.close()
            raise CannotConnect(url, f"{exc}; is barmaid serving there?") from None
        except BaseException:
            client.close()
            raise
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def echoes_ids(self) -> bool:
        """True once the server has copied a request id into a reply."""
        return self._echoes_ids

    # ---- requests ---------------------------------------------------------------------

    def request(self, type: str, data: Optional[dict[str, Any]] = None, timeout: Optional[float] = None) -> Message:
        """Sends one request and returns its reply.

        Raises:
            Refused: the server answered with an error.
            NoReply / ConnectionLost.
        """
        request_id, mark = self._send(type, data)
        expected = _ANSWERS.get(type)

        def answers(message: Message) -> bool:
            if message.seq <= mark:
                return False
            if message.id is not None:
                return message.id == request_id
            return not self._echoes_ids and message.type in ("error", expected)

        reply = self._take(answers, timeout or self.timeout)
        if reply.type == "error":
            raise Refused.from_data(reply.data)
        return reply

    def start(self, kind: str, data: dict[str, Any]) -> Action:
        """Sends a blocking action (blend, refill, prime, calibrate, clean); returns at once.

        Follow it with `Action.follow()`, which raises Refused if the server would not start it.
        """
        if kind not in ACTIONS:
            raise ValueError(f"{kind} is not a blocking action; use request()")
        return Action(self, kind, *self._send(kind, data))

    def run(self, kind: str, data: dict[str, Any], on_status: Optional[Callable[[Message], None]] = None) -> Action:
        """Starts an action and follows it to its final status."""
        action = self.start(kind, data)
        action.follow(on_status)
        return action

    def state(self) -> dict[str, Any]:
        """The machine's state now; from then on the server also pushes it on every change."""
        return self.request("state").data

    def stop(self) -> Message:
        """Ends whatever runs (every pump off); the `stopped` reply."""
        with self._cond:
            self._stop_marks.append(self._seq)
        return self.request("stop")

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.request("history", {"limit": limit}).data["pours"]

    def stopped_after(self, mark: int) -> bool:
        """True if this client sent stop after the frame numbered `mark` arrived."""
        with self._cond:
            return any(at >= mark for at in self._stop_marks)

    # ---- what the server pushes -------------------------------------------------------

    def messages(self, timeout: Optional[float] = None) -> Iterator[Message]:
        """Every frame no request took (statuses, pushed states, errors to all), in order, as they
        come; ends when the connection closes, or after `timeout` seconds of silence."""
        while True:
            try:
                yield self._take(lambda message: True, timeout)
            except (ConnectionLost, NoReply):
                return

    def watch(self, on_message: Optional[Callable[[Message], None]] = None) -> Iterator[Message]:
        """The state now, then every pushed state and status, until the connection closes."""
        first = self.request("state")
        for message in itertools.chain([first], self.messages()):
            if on_message:
                on_message(message)
            yield message

    def close(self) -> None:
        """Says goodbye (a close frame, which the reader thread sees answered) and drops the socket."""
        with self._cond:
            if self._closed is None:
                self._closed = "closed by this client"
            self._cond.notify_all()
        try:
            self._ws.send_close()  # not ws.close(): it would read the answer beside the reader thread
        except (OSError, websocket.WebSocketException):
            pass
        if threading.current_thread() is not self._reader:
            self._reader.join(1)
        self._ws.shutdown()

    # ---- inside -----------------------------------------------------------------------

    def _hello(self, token: Optional[str]) -> Optional[dict[str, Any]]:
        try:
            return self.request("hello", {"token": token} if token else {}).data
        except Refused:
            if token:
                raise
            return None  # an older server wants a token in every hello: without one, nothing to say

    def _send(self, type: str, data: Optional[dict[str, Any]]) -> tuple[int, int]:
        request_id = next(self._ids)
        message: dict[str, Any] = {"type": type, "id": request_id}
        if data is not None:
            message["data"] = data
        with self._cond:
            if self._closed is not None:
                raise ConnectionLost(f"the connection to {self.url} is closed ({self._closed})")
            mark = self._seq
        try:
            self._ws.send(json.dumps(message))
        except (OSError, websocket.WebSocketException) as exc:
            self._reader.join(self.timeout)  # it may have the server's close frame, with the reason
            with self._cond:
                reason = self._closed or _reason(exc)
            raise ConnectionLost(f"lost the connection to {self.url}: {reason}") from None
        return request_id, mark

    def _take(self, accept: Callable[[Message], bool], timeout: Optional[float]) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self._inbox:
                    if accept(message):
                        self._inbox.remove(message)
                        return message
                if self._closed is not None:
                    raise ConnectionLost(f"the connection to {self.url} ended ({self._closed})")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NoReply(f"no answer from {self.url} within {timeout:g} s")
                self._cond.wait(left)

    def _read(self) -> None:
        reason = "the server closed it"
        try:
            while True:
                opcode, payload = self._ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    reason = _close_reason(payload)
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._deliver(payload.decode("utf-8", "replace"))
        except (OSError, websocket.WebSocketException) as exc:
            reason = _reason(exc)
        with self._cond:
            if self._closed is None:
                self._closed = reason
            self._cond.notify_all()

    def _deliver(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return  # not barmaid's: nothing a caller could wait for
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return
        request_id = message.get("id")
        with self._cond:
            self._seq += 1
            if request_id is not None:
                self._echoes_ids = True
            self._inbox.append(Message(message["type"], message.get("data"), request_id, text, self._seq))
            self._cond.notify_all()


def _close_reason(payload: bytes) -> str:
    """The server's close frame in words: its code and reason (1013: too many clients...)."""
    if len(payload) < 2:
        return "the server closed it"
    code = struct.unpack("!H", payload[:2])[0]
    text = payload[2:].decode("utf-8", "replace")
    return f"the server closed it (close {code}{': ' + text if text else ''})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

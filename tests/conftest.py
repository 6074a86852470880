"""Shared pieces: config files, a running server on loopback, WebSocket peers, the bad-input table.

Pumps here are very fast (400 ml/s), so a 0.1 l blend lasts 0.25 s and the suite stays quick.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union

import jsonschema
import pytest
import websocket
import yaml
from support.processes import ENV
from websocket_server import WebsocketServer

from barmaid.clock import Clock
from barmaid.config import DEFAULT_GPIOS, Config, load_config
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.machine import Controller, Event
from barmaid.protocol import schema
from barmaid.server import BarmaidServer, event_frames

#: Every child process of the suite imports the working tree's barmaid, not an installed copy.
os.environ.update(ENV)

#: Longest wait for one expected message; a healthy server answers in milliseconds.
RECV_TIMEOUT = 3.0
FAST_FLOW_ML_S = 400.0


def fast_pumps(flow_ml_s: float = FAST_FLOW_ML_S, prime_ml: Optional[float] = None) -> list[dict[str, Any]]:
    """8 pumps on the default GPIOs; prime_ml 20, 30, ... unless one volume is given."""
    return [
        {"gpio": gpio, "flow_ml_s": flow_ml_s, "prime_ml": 20.0 + 10 * i if prime_ml is None else prime_ml}
        for i, gpio in enumerate(DEFAULT_GPIOS)
    ]


#: Every message a test receives from barmaid is checked against the published protocol schema.
_FROM_SERVER = jsonschema.Draft202012Validator({"$defs": schema()["$defs"], "$ref": "#/$defs/FromServer"})


def from_server(frame: str) -> dict[str, Any]:
    """A frame the server sent, parsed, after checking it against docs/protocol.schema.json."""
    message = json.loads(frame)
    errors = sorted(_FROM_SERVER.iter_errors(message), key=str)
    assert not errors, f"server sent a message outside the protocol schema: {frame}\n{errors[0].message}"
    return message


def eventually(predicate: Callable[[], bool], timeout: float = RECV_TIMEOUT) -> bool:
    """Polls `predicate` every millisecond until it holds; False if it never did within `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def status_times(messages: list[dict[str, Any]]) -> list[int]:
    """The remaining_time of every status message, in order."""
    return [m["data"]["remaining_time"] for m in messages if m["type"] == "status"]


def is_final_status(message: dict[str, Any]) -> bool:
    return message["type"] == "status" and message["data"]["remaining_time"] == 0


def assert_countdown(times: list[int], seconds: float) -> None:
    """Statuses as the protocol wants them: ceil(seconds) first, never increasing, one 0, last."""
    assert times, "no status message"
    assert times[0] == math.ceil(seconds), times
    assert all(later <= earlier for earlier, later in zip(times, times[1:])), times
    assert times.count(0) == 1 and times[-1] == 0, times


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers per core. Half of a test's time is spent waiting on a real pour, a
    process start or the browser, so one worker per core would leave the cores idle half the time."""
    return 2 * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test, and every barmaid process it starts, keeps its barmaid.db in its own folder."""
    folder = tmp_path / "data"
    monkeypatch.setenv("BARMAID_DATA_DIR", str(folder))
    return folder


# ---- configuration ------------------------------------------------------------------------


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Writes a YAML config (a dict, or raw text) into tmp_path and returns its path."""

    def write(content: Union[dict, str], name: str = "barmaid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fast_config(write_config: Callable[..., Path]) -> Config:
    """8 fast pumps, loopback, status every 50 ms; port 0 so the OS picks a free one."""
    return load_config(
        write_config({"pumps": fast_pumps()}),
        {"server": {"host": "127.0.0.1", "port": 0, "status_interval": 0.05}},
    )


# ---- a controller with simulated pumps, no network ----------------------------------------


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


@pytest.fixture
def make_controller(write_config: Callable[..., Path]):
    """Builds Controller(config, SimulatedDriver, Broadcasts) from a pump list, both on `clock` (a
    FakeClock for fake time; default real); closes each at teardown."""
    made: list[Controller] = []

    def make(
        pumps: Optional[list[dict[str, Any]]] = None,
        flow_ml_s: float = FAST_FLOW_ML_S,
        prime_ml: Optional[float] = None,
        status_interval: float = 0.05,
        clock: Optional[Clock] = None,
    ) -> tuple[Controller, Broadcasts]:
        pumps = pumps or fast_pumps(flow_ml_s, prime_ml)
        config = load_config(write_config({"pumps": pumps}), {"server": {"status_interval": status_interval}})
        broadcasts = Broadcasts()
        driver = SimulatedDriver([pump.gpio for pump in config.pumps], config.limits.max_pump_seconds, clock)
        controller = Controller(config, driver, broadcasts, clock=clock)
        made.append(controller)
        return controller, broadcasts

    yield make
    for controller in made:
        controller.close()


# ---- a running server and its clients -----------------------------------------------------


@pytest.fixture
def serve_config():
    """The suite's one server factory: `serve_config(config, driver=None, store=None)` starts a
    BarmaidServer for the config on 127.0.0.1 and a free port, with simulated pumps unless given a
    driver; every server it started is closed at teardown."""
    started: list[BarmaidServer] = []

    def start(config: Config, driver: Any = None, store: Any = None) -> BarmaidServer:
        config = config.model_copy(update={"server": config.server.model_copy(update={"host": "127.0.0.1", "port": 0})})
        barmaid = BarmaidServer(config, driver or SimulatedDriver.for_config(config), store=store)
        barmaid.start()
        started.append(barmaid)
        return barmaid

    yield start
    for barmaid in started:
        close_quickly(barmaid)


@pytest.fixture
def server(fast_config: Config, serve_config: Callable[..., BarmaidServer]) -> BarmaidServer:
    """A BarmaidServer with simulated pumps, listening on 127.0.0.1:<server.port>."""
    return serve_config(fast_config)


@pytest.fixture
def server_with(fast_config: Config, serve_config: Callable[..., BarmaidServer]):
    """Starts a BarmaidServer like `server`, with other server settings (token, allowed_origins...)."""

    def start(**server_settings: Any) -> BarmaidServer:
        return serve_config(fast_config.model_copy(update={"server": fast_config.server.model_copy(update=server_settings)}))

    return start


class Ran(NamedTuple):
    """What a command-line entry point did: its exit status and output."""

    returncode: int
    stdout: str
    stderr: str

    def line(self, start: str) -> str:
        """The one stdout line that starts with `start`."""
        [found] = [line for line in self.stdout.splitlines() if line.startswith(start)]
        return found


def run_main(main: Callable[[list[str]], int], args: list[str], capsys: pytest.CaptureFixture[str]) -> Ran:
    """Calls a `main(argv)` in this process (no interpreter start-up) and captures what it printed;
    argparse's exit on a bad command line counts as its exit status."""
    capsys.readouterr()
    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return Ran(status, out, err)


class Scripted:
    """A WebSocket server whose answers are written by the test, to speak protocol extensions
    barmaid may not have yet: `answer(request)` returns the frames (dicts) to send back, in order."""

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


@pytest.fixture
def scripted():
    """Starts Scripted servers; closes them at teardown."""
    made: list[Scripted] = []

    def make(answer: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Scripted:
        made.append(Scripted(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def close_quickly(barmaid: BarmaidServer) -> None:
    """server.close(), without waiting out socketserver's 0.5 s poll: a connection wakes it."""
    closer = threading.Thread(target=barmaid.close, name="test-server-close")
    closer.start()
    while closer.is_alive():
        try:
            socket.create_connection(("127.0.0.1", barmaid.port), timeout=0.5).close()
        except OSError:
            pass
        closer.join(0.01)


def recv_until(
    ws: websocket.WebSocket, predicate: Callable[[dict[str, Any]], bool], timeout: float = RECV_TIMEOUT
) -> list[dict[str, Any]]:
    """Every message received up to and including the first one `predicate` accepts.

    Fails the test if none comes within `timeout` seconds, showing what did come.
    """
    deadline = time.monotonic() + timeout
    messages: list[dict[str, Any]] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no matching message within {timeout} s; received {messages}")
        ws.settimeout(left)
        try:
            text = ws.recv()
        except websocket.WebSocketTimeoutException:
            pytest.fail(f"no matching message within {timeout} s; received {messages}")
        if not text:
            pytest.fail(f"connection closed; received {messages}")
        messages.append(from_server(text))
        if predicate(messages[-1]):
            return messages


class Peer:
    """One WebSocket client of the server under test, speaking JSON."""

    def __init__(self, url: str, **options: Any) -> None:
        """`options` go to websocket.create_connection (origin=..., header=...)."""
        self.ws = websocket.create_connection(url, timeout=5, **options)

    def send(self, message: Union[str, dict]) -> None:
        """Sends a raw text frame, or a message given as a dict."""
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return self.recv_until(lambda message: True, timeout)[-1]

    def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool] = is_final_status, timeout: float = RECV_TIMEOUT
    ) -> list[dict[str, Any]]:
        """Receives up to the first message `predicate` accepts (default: the final status)."""
        return recv_until(self.ws, predicate, timeout)

    def echo(self, data: Any = "sync") -> list[dict[str, Any]]:
        """Round-trips an echo; returns what arrived before its reply (the reply excluded)."""
        expected = {"type": "echo", "data": data}
        self.send(expected)
        messages = self.recv_until(lambda message: message == expected)
        return messages[:-1]

    def close(self) -> None:
        self.ws.close(timeout=1)


@pytest.fixture
def connect(server: BarmaidServer) -> Callable[[], Peer]:
    """Opens a new WebSocket client to the running server; all are closed at teardown."""
    peers: list[Peer] = []

    def open_peer() -> Peer:
        peer = Peer(f"ws://127.0.0.1:{server.port}/")
        peers.append(peer)
        # The server registers a client just after the handshake; an echo reply proves it is in.
        assert peer.echo("hello") == []
        return peer

    yield open_peer
    for peer in peers:
        peer.close()


# ---- the bad-input table, for parse, for the server and for the protocol schema ------------


class BadInput(NamedTuple):
    frame: str
    #: Fragments the error message must contain: what was wrong, and the offending value.
    says: tuple[str, ...]
    #: Who refuses it: "json" (not a strict JSON document: no schema sees it), "schema" (the
    #: protocol schema rejects it too), "server" (beyond what a JSON Schema can say).
    level: str = "schema"


def _blend(cup_size: str = "0.1", ratios: str = '{"0": 1}') -> str:
    return f'{{"type": "blend", "data": {{"cup_size": {cup_size}, "ratios": {ratios}}}}}'


def _refill(pump: str) -> str:
    return f'{{"type": "refill", "data": {{"pump": {pump}}}}}'


def _with_id(id: str) -> str:
    return f'{{"type": "echo", "data": 1, "id": {id}}}'


def _bad(frame: str, says: tuple[str, ...], id: str, level: str = "schema") -> Any:
    return pytest.param(BadInput(frame, says, level), id=id)


_HUGE_INT = "1" + "0" * 400
_5000_DIGITS = "9" * 5000
_TOO_LARGE = ("too large", "a float cannot hold it")

BAD_INPUTS = [
    _bad("hello", ("not JSON", "hello"), id="not-json", level="json"),
    _bad('{"type": "echo"', ("not JSON",), id="truncated-json", level="json"),
    _bad("[1, 2]", ("JSON object", "[1, 2]"), id="list"),
    _bad('"echo"', ("JSON object", '"echo"'), id="string"),
    _bad("42", ("JSON object", "42"), id="number"),
    _bad("null", ("JSON object", "null"), id="null"),
    _bad('{"data": 1}', ('missing "type"',), id="no-type"),
    _bad('{"type": 3, "data": {}}', ('"type" must be a string', "3"), id="type-number"),
    _bad('{"type": null}', ('"type" must be a string', "null"), id="type-null"),
    _bad('{"type": "dance", "data": {}}', ("unknown type", '"dance"'), id="unknown-type"),
    _bad('{"type": "status", "data": {}}', ("unknown type", '"status"'), id="server-only-type"),
    _bad('{"type": "echo", "data": 1, "extra": 2}', ('unknown key "extra" in the message', "allowed: type, data, id"), id="unknown-top-level-key"),
    _bad('{"type": "blend"}', ("blend", '"data" missing'), id="blend-no-data"),
    _bad('{"type": "blend", "data": null}', ("blend", '"data" missing'), id="blend-data-null"),
    _bad('{"type": "refill"}', ("refill", '"data" missing'), id="refill-no-data"),
    _bad('{"type": "blend", "data": [0.1]}', ('"data" must be an object', "[0.1]"), id="blend-data-list"),
    _bad('{"type": "refill", "data": 4}', ('"data" must be an object', "4"), id="refill-data-number"),
    _bad('{"type": "blend", "data": {"ratios": {"0": 1}}}', ('missing "cup_size"',), id="cup-size-missing"),
    _bad(_blend(cup_size='"0.1"'), ("cup_size", 'got "0.1"'), id="cup-size-string"),
    _bad(_blend(cup_size="true"), ("cup_size", "got true"), id="cup-size-bool"),
    _bad(_blend(cup_size="null"), ("cup_size", "got null"), id="cup-size-null"),
    _bad(_blend(cup_size="NaN"), ("NaN is not JSON",), id="cup-size-nan", level="json"),
    _bad(_blend(cup_size="1e999"), ("1e999", *_TOO_LARGE), id="cup-size-1e999", level="json"),
    _bad(_blend(cup_size="Infinity"), ("Infinity is not JSON",), id="cup-size-infinity", level="json"),
    _bad(_blend(cup_size="-Infinity"), ("-Infinity is not JSON",), id="cup-size-minus-infinity", level="json"),
    _bad(_blend(cup_size="0"), ("cup_size", "> 0", "got 0"), id="cup-size-zero"),
    _bad(_blend(cup_size="-0.1"), ("cup_size", "got -0.1"), id="cup-size-negative"),
    _bad(_blend(cup_size="1.5"), ("cup_size", "<= 1.0", "got 1.5"), id="cup-size-over-max"),
    _bad(_blend(cup_size=_HUGE_INT), _TOO_LARGE, id="cup-size-huge-integer", level="json"),
    _bad(_blend(cup_size=_5000_DIGITS), _TOO_LARGE, id="cup-size-5000-digits", level="json"),
    _bad('{"type": "blend", "data": {"cup_size": 0.1}}', ('missing "ratios"',), id="ratios-missing"),
    _bad(_blend(ratios='"0: 1"'), ("ratios must be an object", '"0: 1"'), id="ratios-string"),
    _bad(_blend(ratios="[0.5, 0.5]"), ("ratios must be an object", "[0.5, 0.5]"), id="ratios-list"),
    _bad(_blend(ratios='{"8": 1}'), ('ratios key "8"', "not a configured pump"), id="ratios-key-8"),
    _bad(_blend(ratios='{"-1": 1}'), ("ratios key", 'got "-1"'), id="ratios-key-minus-1"),
    _bad(_blend(ratios='{"x": 1}'), ("ratios key", 'got "x"'), id="ratios-key-x"),
    _bad(_blend(ratios='{"1.5": 1}'), ("ratios key", 'got "1.5"'), id="ratios-key-fraction"),
    _bad(_blend(ratios='{"": 1}'), ("ratios key", 'got ""'), id="ratios-key-empty"),
    _bad(_blend(ratios='{"01": 1}'), ("ratios key", 'got "01"'), id="ratios-key-leading-zero"),
    _bad(_blend(ratios='{"0": 0.5, "0": 0.9}'), ("duplicate key", '"0"'), id="ratios-duplicate-key", level="json"),
    _bad(_blend(ratios='{"0": "0.5"}'), ("ratio of pump 0", 'got "0.5"'), id="ratio-string"),
    _bad(_blend(ratios='{"0": true}'), ("ratio of pump 0", "got true"), id="ratio-bool"),
    _bad(_blend(ratios='{"0": null}'), ("ratio of pump 0", "got null"), id="ratio-null"),
    _bad(_blend(ratios='{"0": -0.1}'), ("ratio of pump 0", "got -0.1"), id="ratio-negative"),
    _bad(_blend(ratios='{"0": 1.1}'), ("ratio of pump 0", "got 1.1"), id="ratio-over-1"),
    _bad(_blend(ratios='{"0": NaN}'), ("NaN is not JSON",), id="ratio-nan", level="json"),
    _bad(_blend(ratios=f'{{"0": {_HUGE_INT}}}'), _TOO_LARGE, id="ratio-huge-integer", level="json"),
    _bad(_blend(ratios='{"0": 0.6, "1": 0.6}'), ("add up to 1.2", "more than a full cup"), id="ratios-sum-1.2", level="server"),
    _bad(_blend(ratios='{"0": 0, "1": 0}'), ("nothing to pour",), id="ratios-all-zero"),
    _bad(_blend(ratios="{}"), ("nothing to pour",), id="ratios-empty"),
    _bad(
        '{"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}, "extra": 1}}',
        ('blend: unknown key "extra" in data', "allowed: cup_size, ratios"),
        id="blend-unknown-key",
    ),
    _bad(
        '{"type": "echo", "type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 1}}}',
        ("duplicate key", '"type"'),
        id="duplicate-type",
        level="json",
    ),
    _bad('{"type": "refill", "data": {}}', ('missing "pump"',), id="pump-missing"),
    _bad(_refill("true"), ("pump", "got true"), id="pump-bool"),
    _bad(_refill("null"), ("pump", "got null"), id="pump-null"),
    _bad(_refill("1.5"), ("pump", "got 1.5"), id="pump-fraction"),
    _bad(_refill('"x"'), ("pump", 'got "x"'), id="pump-x"),
    _bad(_refill('"-1"'), ("pump", 'got "-1"'), id="pump-string-minus-1"),
    _bad(_refill('"07"'), ("pump", 'got "07"'), id="pump-leading-zero"),
    _bad(_refill("-1"), ("pump -1", "not a configured pump"), id="pump-minus-1"),
    _bad(_refill("8"), ("pump 8", "not a configured pump"), id="pump-8"),
    _bad(_refill('"8"'), ('pump "8"', "not a configured pump"), id="pump-string-8"),
    _bad('{"type": "refill", "data": {"pump": 1, "pumps": 2}}', ('unknown key "pumps" in data', "allowed: pump"), id="refill-unknown-key"),
    _bad(
        '{"type": "clean", "data": {"seconds": 0.5, "pump": [3]}}',
        ('clean: unknown key "pump" in data', "allowed: seconds, pumps"),
        id="clean-pump-typo",
    ),
    _bad('{"type": "clean", "data": {"seconds": -1}}', ("seconds must be a number > 0", "got -1"), id="clean-seconds-negative"),
    _bad('{"type": "clean", "data": {"seconds": 0}}', ("seconds must be a number > 0", "got 0"), id="clean-seconds-zero"),
    _bad('{"type": "clean", "data": {"seconds": 1, "pumps": [-4]}}', ("pumps item -4", "not a configured pump"), id="clean-pump-minus-4"),
    _bad('{"type": "clean", "data": {"seconds": 1, "pumps": []}}', ("non-empty list",), id="clean-pumps-empty"),
    _bad('{"type": "clean", "data": {"seconds": 1, "pumps": [1, 1]}}', ("names a pump twice",), id="clean-pumps-twice"),
    _bad('{"type": "calibrate", "data": {"pump": 0, "seconds": -0.5}}', ("seconds must be a number > 0",), id="calibrate-seconds-negative"),
    _bad('{"type": "history", "data": {"limt": 5}}', ('history: unknown key "limt" in data', "allowed: limit"), id="history-limit-typo"),
    _bad('{"type": "history", "data": {"limit": 0}}', ("limit must be a whole number from 1 to 500", "got 0"), id="history-limit-0"),
    _bad('{"type": "history", "data": {"limit": "5"}}', ("limit must be a whole number", 'got "5"'), id="history-limit-string"),
    _bad('{"type": "set_level", "data": {"pump": 0, "ml": -1}}', ("ml must be a number of millilitres >= 0", "got -1"), id="set-level-negative"),
    _bad('{"type": "set_flow", "data": {"pump": 0, "ml": 0}}', ("ml must be a number > 0", "got 0"), id="set-flow-zero"),
    _bad('{"type": "hello", "data": {"token": 5}}', ("token must be text", "got 5"), id="hello-token-number"),
    _bad('{"type": "stop", "data": {"now": true}}', ('stop: unknown key "now" in data', "allowed: none"), id="stop-unknown-key"),
    _bad(_with_id("true"), ('"id" must be a string', "got true"), id="id-bool"),
    _bad(_with_id("1.5"), ('"id" must be', "got 1.5"), id="id-fraction"),
    _bad(_with_id('""'), ('"id" must be a string of 1 to 64 characters', 'got ""'), id="id-empty"),
    _bad(_with_id('"' + "x" * 65 + '"'), ('"id" must be a string of 1 to 64 characters',), id="id-65-characters"),
    _bad(_with_id(str(2**53)), ('"id" must be', str(2**53)), id="id-over-2-53"),
    _bad(_with_id("[1]"), ('"id" must be', "got [1]"), id="id-list"),
    _bad(_with_id("NaN"), ("NaN is not JSON",), id="id-nan", level="json"),
    _bad('{"type": "echo", "data": 1e400}', ("1e400", *_TOO_LARGE), id="echo-1e400", level="json"),
    _bad('{"type": "echo", "data": [1E+1000]}', ("1E+1000", *_TOO_LARGE), id="echo-1e1000", level="json"),
    _bad('{"type": "echo", "data": 2e0308}', ("2e0308", *_TOO_LARGE), id="echo-2e308", level="json"),
    _bad('{"type": "echo", "data": 17976931348623159e292}', _TOO_LARGE, id="echo-long-mantissa", level="json"),
    _bad('{"type": "echo", "data": ' + "9" * 299 + 'e10}', _TOO_LARGE, id="echo-299-digits-e10", level="json"),
    _bad('{"type": "echo", "data": ' + _5000_DIGITS + "}", _TOO_LARGE, id="echo-5000-digits", level="json"),
    _bad('{"type": "echo", "data": ' + "[" * 33 + "]" * 33 + "}", ("nested too deeply", "at most 32"), id="echo-33-deep", level="json"),
    _bad('{"type": "echo", "data": ' + "[" * 30000 + "]" * 30000 + "}", ("nested too deeply",), id="echo-30000-deep", level="json"),
]

#: Frames the server acts on; the protocol schema accepts each of them too.
GOOD_INPUTS = [
    '{"type": "blend", "data": {"cup_size": 0.04, "ratios": {"1": 0.2, "2": 0.1, "5": 0.7}}}',
    '{"type": "blend", "data": {"cup_size": 1, "ratios": {"0": 0.35, "1": 0.65}}, "id": "order-1"}',
    '{"type": "blend", "data": {"cup_size": 0.1, "ratios": {"0": 0.5, "7": 0}}}',
    '{"type": "refill", "data": {"pump": 4}}',
    '{"type": "refill", "data": {"pump": "4"}, "id": 17}',
    '{"type": "refill", "data": {"pump": 4.0}}',
    '{"type": "echo", "data": {"msg": "toaster"}}',
    '{"type": "echo"}',
    '{"type": "echo", "data": ' + "[" * 31 + "]" * 31 + "}",
    '{"type": "echo", "data": [1e308, -1e-400, 123456789012345678901234567890]}',
    '{"type": "stop"}',
    '{"type": "stop", "data": null, "id": -5}',
    '{"type": "state", "data": {}}',
    '{"type": "history"}',
    '{"type": "history", "data": {"limit": 500}}',
    '{"type": "set_level", "data": {"pump": 2, "ml": 0}}',
    '{"type": "set_flow", "data": {"pump": "2", "ml": 203}}',
    '{"type": "calibrate", "data": {"pump": 2, "seconds": 10}}',
    '{"type": "clean", "data": {"seconds": 20}}',
    '{"type": "clean", "data": {"seconds": 0.5, "pumps": ["0", 3]}}',
    '{"type": "clean", "data": {"seconds": 0.5, "pumps": null}}',
    '{"type": "hello"}',
    '{"type": "hello", "data": {"token": "s3cret-party"}, "id": "' + "x" * 64 + '"}',
]


@pytest.fixture(params=BAD_INPUTS)
def bad_input(request: pytest.FixtureRequest) -> BadInput:
    """One frame from the table, with what its error message must say."""
    return request.param

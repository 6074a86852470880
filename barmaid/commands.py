"""The client subcommands of `barmaid`: a machine builder's tools for a running barmaid.

state, watch, blend, refill, prime, stop, calibrate (a wizard), level, clean and history, each
over barmaid.client, so every pump can be set up, primed, calibrated, cleaned and watched without
writing JSON. Exit status: 0 done, 1 refused or not completed (the reason on stderr), 2 usage,
3 cannot connect (or the connection was lost), 130 when Ctrl-C stopped a pour.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from .client import DEFAULT_URL, Action, CannotConnect, Client, ClientError, ConnectionLost, Message, Refused
from .config import load_config
from .errors import ConfigError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

#: Default length of each rinse, seconds.
CLEAN_SECONDS = 10.0
#: Default calibration runs, seconds: two different lengths separate flow from start-up time.
FIRST_RUN_S = 3.0
SECOND_RUN_S = 9.0
#: Two runs closer than this (relative) cannot separate flow from start-up time.
MIN_RUN_DIFFERENCE = 0.2
CHECK_POUR_ML = 20.0


class UsageError(Exception):
    """A command line or an answer the command cannot use; exit status 2."""


class Abandoned(Exception):
    """Standard input ended while the wizard waited for an answer."""


def add_commands(subparsers: Any) -> None:
    """Adds the client subcommands to the `barmaid` parser."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("connection and output")
    where.add_argument("--url", help=f"barmaid's WebSocket (default {DEFAULT_URL}, or the one --config names)")
    where.add_argument("--token", help="server.token, if the machine has one (or set $BARMAID_TOKEN)")
    where.add_argument("--config", type=Path, help="a barmaid config: the URL and token from its server section")
    where.add_argument("--origin", help="the Origin header to send (when server.allowed_origins is set)")
    where.add_argument("--json", action="store_true", help="print the server's frames as JSON lines, for scripts")

    def command(name: str, run: Callable[..., int], help: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(client_command=run)
        return parser

    command("state", _state, "show every pump: flow, start-up time, level, and what runs")
    command("watch", _watch, "follow the state and the statuses live, until Ctrl-C")
    blend = command("blend", _blend, "pour a cup: blend --cup 0.04 1=0.2 2=0.1 5=0.7")
    blend.add_argument("--cup", type=_positive, required=True, metavar="LITRES", help="cup size in litres")
    blend.add_argument("ratios", nargs="+", type=_ratio, metavar="PUMP=RATIO", help="share of the cup, 0 to 1")
    refill = command("refill", _refill, "prime a pump after its bottle was changed (its level becomes a full bottle)")
    refill.add_argument("pump", metavar="PUMP", help="pump number or name")
    command("prime", _prime, "prime a pump's tube, leaving its level as it is").add_argument(
        "pump", metavar="PUMP", help="pump number or name"
    )
    command("stop", _stop, "stop whatever runs: every pump off")
    calibrate = command("calibrate", _calibrate, "calibrate a pump, step by step (prime, two runs, a check pour)")
    calibrate.add_argument("pump", metavar="PUMP", help="pump number or name")
    level = command("level", _level, "set what is left in a pump's bottle")
    level.add_argument("pump", metavar="PUMP", help="pump number or name")
    level.add_argument("ml", type=_non_negative, metavar="ML", help="millilitres left")
    clean = command("clean", _clean, "rinse the tubes: every pump (or those given) runs --seconds")
    clean.add_argument("--seconds", type=_positive, default=CLEAN_SECONDS, help=f"default {CLEAN_SECONDS:g}")
    clean.add_argument("pumps", nargs="*", metavar="PUMP", help="pump numbers or names (default: all)")
    history = command("history", _history, "the last pours: what each pump poured and how it ended")
    history.add_argument("--limit", type=int, default=20, help="how many (default 20)")


def run(args: argparse.Namespace) -> int:
    """Runs one client subcommand; returns the exit status."""
    view = View(args.json)
    # Ctrl-C must reach a pour even where SIGINT came ignored (a job started in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        url, token = target(args)
        with Client.connect(url, token=token, origin=args.origin) as client:
            return args.client_command(client, view, args)
    except UsageError as exc:
        view.fail(str(exc))
        return EXIT_USAGE
    except CannotConnect as exc:
        view.fail(cannot_connect_text(exc))
        return EXIT_CONNECT
    except Refused as exc:
        view.fail(exc.msg)
        return EXIT_REFUSED
    except Abandoned:
        view.fail("no answer on standard input: stopped")
        return EXIT_REFUSED
    except ClientError as exc:  # connection lost, no reply
        view.fail(str(exc))
        return EXIT_CONNECT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def cannot_connect_text(exc: CannotConnect) -> str:
    """What failed, and what to do about it."""
    return f"{exc}\n  is barmaid running? start it with `barmaid serve`, or point --url or --config at it"


def target(args: argparse.Namespace) -> tuple[str, Optional[str]]:
    """The URL and token: the flags ($BARMAID_TOKEN for the token, kept out of `ps`), else the
    config's server section, else the defaults.

    Raises:
        UsageError: a URL that is not ws:// or wss://, or a config that cannot be read.
    """
    url, token = args.url, args.token or os.environ.get("BARMAID_TOKEN") or None
    if args.config is not None:
        try:
            server = load_config(args.config).server
        except ConfigError as exc:
            raise UsageError(f"configuration error: {exc}") from None
        host = "localhost" if server.host in ("0.0.0.0", "::", "") else server.host
        url = url or f"ws://{f'[{host}]' if ':' in host else host}:{server.port}"
        token = token or server.token
    url = url or DEFAULT_URL
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"--url must start with ws:// or wss://, got {url!r}; e.g. {DEFAULT_URL}")
    return url, token


# ---- output ---------------------------------------------------------------------------------


class View:
    """Where a command's output goes: words and tables for people, or the frames as JSON lines."""

    def __init__(self, json_lines: bool, stdin: Optional[TextIO] = None) -> None:
        self.json = json_lines
        self.out = Console(highlight=False, markup=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
        #: Words for people: on stdout, unless stdout carries JSON lines.
        self.words = self.err if json_lines else self.out
        self.stdin = stdin or sys.stdin

    def frame(self, message: Message) -> None:
        if self.json:
            sys.stdout.write(message.frame + "\n")
            sys.stdout.flush()

    def say(self, text: str) -> None:
        self.words.print(text)

    def result(self, text: str) -> None:
        """The one line a command ends with, for people (JSON lines already said it)."""
        if not self.json:
            self.out.print(text)

    def show(self, table: Table) -> None:
        if not self.json:
            self.out.print(table)

    def fail(self, text: str) -> None:
        self.err.print(f"barmaid: {text}")

    def ask(self, question: str) -> str:
        """One line from standard input, stripped.

        Raises:
            Abandoned: standard input ended.
        """
        self.words.print(question + " ", end="")
        self.words.file.flush()
        line = self.stdin.readline()
        if not line:
            self.words.print()
            raise Abandoned()
        if not self.stdin.isatty():  # a scripted answer: show it, so the transcript reads as a dialogue
            self.words.print(line.strip())
        return line.strip()


class Countdown:
    """A progress bar fed by the action's statuses: the remaining time is the server's."""

    def __init__(self, view: View, kind: str) -> None:
        self.view = view
        self.kind = kind
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[left]}"),
            console=view.err,
            transient=True,
            disable=view.json or not view.err.is_terminal,
        )
        self.task = self.progress.add_task(kind, total=None, left="")

    def __enter__(self) -> Countdown:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, status: Message) -> None:
        self.view.frame(status)
        total = status.data.get("initial_time") or status.remaining or 1
        left = status.remaining or 0
        self.progress.update(self.task, total=total, completed=total - left, left=f"{left} s left")


# ---- pumps by number or name ----------------------------------------------------------------


def pump_number(client: Client, given: str) -> int:
    """A pump by its number, or by the name the server's state gives it.

    Raises:
        UsageError: no pump has that name.
    """
    if given.isdigit():
        return int(given)
    pumps = client.state()["pumps"]
    for pump in pumps:
        if str(pump.get("name") or "").casefold() == given.casefold():
            return pump["pump"]
    names = ", ".join(f"{p['pump']} {p['name']}" for p in pumps if p.get("name")) or "none has a name"
    raise UsageError(f"no pump named {given!r}; give a number from 0 to {len(pumps) - 1} (names: {names})")


def pump_state(client: Client, pump: int) -> dict[str, Any]:
    pumps = client.state()["pumps"]
    if not 0 <= pump < len(pumps):
        raise UsageError(f"pump {pump} is not on this machine; it has pumps 0 to {len(pumps) - 1}")
    return pumps[pump]


# ---- commands -------------------------------------------------------------------------------


def _state(client: Client, view: View, args: argparse.Namespace) -> int:
    reply = client.request("state")
    view.frame(reply)
    state = reply.data
    running = f", {state['action']} with {state['remaining_time']} s left" if state.get("action") else ""
    view.result(f"barmaid at {client.url}: {state['state']}{running}{_hardware_text(state.get('hardware'))}")
    pumps = state["pumps"]
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("pump", lambda p: str(p["pump"])),
        ("name", lambda p: p.get("name") or ""),
        ("flow ml/s", lambda p: f"{p['flow_ml_s']:.2f}"),
        ("start-up s", lambda p: _number(p.get("dead_s"), "{:.3f}")),
        ("points", lambda p: str(_points_count(p["points"])) if p.get("points") is not None else ""),
        ("level ml", _level_text),
        ("prime ml", lambda p: f"{p['prime_ml']:g}"),
    ]
    # Columns no pump fills (an older server has no names, start-up times or points) are left out.
    columns = [(title, cell) for title, cell in columns if any(cell(pump) for pump in pumps)]
    table = Table(*(title for title, _ in columns))
    for pump in pumps:
        table.add_row(*(cell(pump) for _, cell in columns))
    view.show(table)
    return EXIT_OK


def _watch(client: Client, view: View, args: argparse.Namespace) -> int:
    view.say(f"watching {client.url} (Ctrl-C to end)")
    last_state: Optional[str] = None
    try:
        for message in client.watch():
            view.frame(message)
            if view.json:
                continue
            stamp = time.strftime("%H:%M:%S")
            if message.type == "state":
                summary = _state_summary(message.data)
                if summary != last_state:
                    view.say(f"{stamp} {summary}")
                    last_state = summary
            elif message.type == "status":
                outcome = message.data.get("outcome")
                view.say(f"{stamp} {message.data.get('action', 'action')}: {message.remaining} s left"
                         + (f" ({outcome})" if outcome and message.remaining == 0 else ""))
            elif message.type == "error":
                view.say(f"{stamp} error: {message.data.get('msg')}")
    except KeyboardInterrupt:
        return EXIT_OK
    raise ConnectionLost(f"the connection to {client.url} ended")


def _blend(client: Client, view: View, args: argparse.Namespace) -> int:
    ratios = {str(pump_number(client, pump)): ratio for pump, ratio in args.ratios}
    return pour(client, view, "blend", {"cup_size": args.cup, "ratios": ratios})


def _refill(client: Client, view: View, args: argparse.Namespace) -> int:
    return pour(client, view, "refill", {"pump": pump_number(client, args.pump)})


def _prime(client: Client, view: View, args: argparse.Namespace) -> int:
    return pour(client, view, "prime", {"pump": pump_number(client, args.pump)})


def _clean(client: Client, view: View, args: argparse.Namespace) -> int:
    data: dict[str, Any] = {"seconds": args.seconds}
    if args.pumps:
        data["pumps"] = [pump_number(client, pump) for pump in args.pumps]
    return pour(client, view, "clean", data)


def _stop(client: Client, view: View, args: argparse.Namespace) -> int:
    reply = client.stop()
    view.frame(reply)
    view.result(reply.data.get("msg", "stopped"))
    return EXIT_OK


def _level(client: Client, view: View, args: argparse.Namespace) -> int:
    pump = pump_number(client, args.pump)
    reply = client.request("set_level", {"pump": pump, "ml": args.ml})
    view.frame(reply)
    pumps = reply.data.get("pumps") if reply.type == "state" else None
    view.result(f"pump {pump}: {_level_text(pumps[pump]) if pumps else f'{args.ml:g}'} ml left")
    return EXIT_OK


def _history(client: Client, view: View, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 500:
        raise UsageError(f"--limit must be from 1 to 500, got {args.limit}")
    reply = client.request("history", {"limit": args.limit})
    view.frame(reply)
    table = Table("id", "started", "action", "outcome", "poured ml (planned)")
    for pour_entry in reply.data["pours"]:
        poured = pour_entry.get("poured_ml") or {}
        table.add_row(
            str(pour_entry["id"]),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pour_entry["started"])),
            pour_entry["action"],
            pour_entry["outcome"],
            ", ".join(
                f"{pump}: {poured.get(pump, 0):g} ({planned:g})" for pump, planned in pour_entry["planned_ml"].items()
            ),
        )
    view.show(table)
    if not reply.data["pours"]:
        view.result("no pours yet")
    return EXIT_OK


def pour(client: Client, view: View, kind: str, data: dict[str, Any]) -> int:
    """Runs one blocking action with a progress bar; Ctrl-C asks the server to stop it."""
    action = follow(client, view, kind, data)
    if action is None:
        return EXIT_INTERRUPTED
    return finished(view, action)


def follow(client: Client, view: View, kind: str, data: dict[str, Any]) -> Optional[Action]:
    """Starts the action and follows it to its final status; None if Ctrl-C stopped it.

    Raises:
        Refused: the server would not start it.
    """
    action: Optional[Action] = None
    countdown = Countdown(view, kind)
    try:
        with countdown:
            action = client.start(kind, data)
            started = action.wait_started()
            if started.type != "status":
                view.frame(started)
            action.follow(countdown)
    except KeyboardInterrupt:
        if action is None:
            raise
        action.wait_started()  # Refused (busy): the pour running is someone else's, left alone
        view.say(f"Ctrl-C: stopping the {kind}")
        stopped = client.stop()
        view.frame(stopped)
        action.follow(countdown)
        view.result(stopped.data.get("msg", f"stopped the {kind}"))
        return None
    for error in action.errors:
        view.frame(error)
        view.fail(error.data.get("msg", "error"))
    return action


def finished(view: View, action: Action) -> int:
    """Says how the action ended; EXIT_OK if it ran to its end."""
    outcome = action.outcome
    if outcome in (None, "completed"):
        view.result(f"{action.kind} {outcome or 'done'} in {action.elapsed:.2f} s")
        return EXIT_OK
    view.fail(f"the {action.kind} did not complete: {outcome}")
    return EXIT_REFUSED


# ---- the calibration wizard -----------------------------------------------------------------


def _calibrate(client: Client, view: View, args: argparse.Namespace) -> int:
    pump = pump_number(client, args.pump)
    before = pump_state(client, pump)
    label = f"pump {pump}" + (f" ({before['name']})" if before.get("name") else "")
    view.say(f"Calibrating {label}: now {_fit_text(before)}.")
    points = _points_count(before.get("points"))
    if points and _yes(view, f"Start over, forgetting its {points} calibration point(s)?", default=True):
        reply = client.request("reset_calibration", {"pump": pump})
        view.frame(reply)
        view.say("Its calibration starts over.")
    prime = _yes(view, "Prime its tube first (bottle connected, a glass under the outlet)?", default=True)
    if prime and not _prime_for_calibration(client, view, pump):
        return EXIT_INTERRUPTED
    runs: list[tuple[float, float]] = []
    for number, default in ((1, FIRST_RUN_S), (2, SECOND_RUN_S)):
        seconds = _run_seconds(view, number, default, runs)
        action = follow(client, view, "calibrate", {"pump": pump, "seconds": seconds})
        if action is None:
            return EXIT_INTERRUPTED
        if action.outcome not in (None, "completed"):
            return finished(view, action)
        runs.append((seconds, _measured(client, view, pump, seconds)))
    after = pump_state(client, pump)
    view.say(f"Fit: {_fit_text(after)}.")
    _show_points(view, after, runs)
    return _check_pour(client, view, pump)


def _prime_for_calibration(client: Client, view: View, pump: int) -> bool:
    """Primes the pump (with refill on a server that has no prime); False if Ctrl-C stopped it."""
    try:
        action = follow(client, view, "prime", {"pump": pump})
    except Refused as exc:
        if "prime" not in exc.msg or exc.code not in (None, "invalid"):
            raise
        view.say("This server has no prime; priming with refill (a tracked level becomes a full bottle).")
        action = follow(client, view, "refill", {"pump": pump})
    return action is not None


def _run_seconds(view: View, number: int, default: float, runs: list[tuple[float, float]]) -> float:
    """Asks how long run `number` lasts; a second run must differ enough from the first."""
    if runs:
        default = max(default, 3 * runs[0][0])
    while True:
        seconds = _number_answer(
            view,
            f"Run {number}: an empty measuring jug under the outlet, then how many seconds? [{default:g}]",
            default,
        )
        if seconds <= 0:
            view.say("Give a number of seconds > 0.")
        elif runs and abs(seconds - runs[0][0]) < MIN_RUN_DIFFERENCE * max(seconds, runs[0][0]):
            view.say(
                f"Make it at least {MIN_RUN_DIFFERENCE:.0%} longer or shorter than run 1 ({runs[0][0]:g} s):"
                " two lengths tell the flow from the start-up time."
            )
        else:
            return seconds


def _measured(client: Client, view: View, pump: int, seconds: float) -> float:
    """Asks what the run poured and sends it (set_flow); asks again if the server refuses it."""
    while True:
        ml = _number_answer(view, f"How many ml came out in {seconds:g} s?", None)
        try:
            reply = client.request("set_flow", {"pump": pump, "ml": ml})
        except Refused as exc:
            view.say(f"Refused: {exc.msg}")
            continue
        view.frame(reply)
        return ml


def _show_points(view: View, pump: dict[str, Any], runs: list[tuple[float, float]]) -> None:
    points = pump.get("points")
    if isinstance(points, list) and points and isinstance(points[0], dict):
        table = Table("seconds", "ml", "residual ml")
        for point in points:
            residual = next((point[key] for key in ("residual_ml", "residual") if key in point), None)
            table.add_row(
                _number(point.get("seconds"), "{:g}"), _number(point.get("ml"), "{:g}"), _number(residual, "{:+.2f}")
            )
        view.words.print(table)
    elif "dead_s" not in pump:
        (s1, ml1), (s2, ml2) = runs
        flow = (ml2 - ml1) / (s2 - s1)
        view.say(
            "This server keeps one run per pump (flow = the last run's ml / seconds) and no start-up time;"
            f" your two runs say {flow:.2f} ml/s with a start-up time of {s1 - ml1 / flow:.2f} s."
            if flow > 0
            else "This server keeps one run per pump (flow = the last run's ml / seconds)."
        )


def _check_pour(client: Client, view: View, pump: int) -> int:
    answer = view.ask(f"Check pour: how many ml? [{CHECK_POUR_ML:g}, n to skip]")
    if answer.lower() in ("n", "no"):
        view.result("Calibration done.")
        return EXIT_OK
    ml = _parse_number(answer, CHECK_POUR_ML)
    while ml is None or ml <= 0:
        ml = _parse_number(view.ask("Give a number of ml > 0:"), None)
    action = follow(client, view, "blend", {"cup_size": ml / 1000, "ratios": {str(pump): 1}})
    if action is None:
        return EXIT_INTERRUPTED
    if action.outcome not in (None, "completed"):
        return finished(view, action)
    got = _number_answer(view, f"How many ml came out (asked for {ml:g})?", None)
    off_by = f"{got - ml:+.1f} ml, {(got - ml) / ml:+.1%}"
    view.result(f"Check pour: asked {ml:g} ml, got {got:g} ml ({off_by}). Calibration done.")
    return EXIT_OK


def _yes(view: View, question: str, default: bool) -> bool:
    while True:
        answer = view.ask(f"{question} [{'Y/n' if default else 'y/N'}]").lower()
        if not answer:
            return default
        if answer in ("y", "yes", "n", "no"):
            return answer.startswith("y")
        view.say("Answer y or n.")


def _number_answer(view: View, question: str, default: Optional[float]) -> float:
    while True:
        number = _parse_number(view.ask(question), default)
        if number is not None and number >= 0:
            return number
        view.say("Give a number (like 12.5).")


def _parse_number(text: str, default: Optional[float]) -> Optional[float]:
    if not text:
        return default
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# ---- small pieces ---------------------------------------------------------------------------


def _fit_text(pump: dict[str, Any]) -> str:
    parts = [f"flow {pump['flow_ml_s']:.2f} ml/s"]
    if pump.get("dead_s") is not None:
        parts.append(f"start-up time {pump['dead_s']:.3f} s")
    if pump.get("points") is not None:
        parts.append(f"{_points_count(pump['points'])} point(s)")
    return ", ".join(parts)


def _hardware_text(hardware: Any) -> str:
    """The state's `hardware` (a flag, a word, or an object saying whether it is reachable); older
    servers send none."""
    if isinstance(hardware, dict):
        hardware = hardware.get("reachable", hardware.get("ok", hardware.get("state")))
    if isinstance(hardware, bool):
        hardware = "reachable" if hardware else "unreachable"
    return f"; pump hardware {hardware}" if isinstance(hardware, str) else ""


def _points_count(points: Any) -> int:
    if isinstance(points, list):
        return len(points)
    return points if isinstance(points, int) else 0


def _level_text(pump: dict[str, Any]) -> str:
    level, capacity = pump.get("level_ml"), pump.get("capacity_ml")
    if level is None:
        return "not tracked"
    return f"{level:g}" + (f" / {capacity:g}" if capacity is not None else "")


def _number(value: Any, form: str) -> str:
    return form.format(value) if isinstance(value, (int, float)) else ""


def _state_summary(state: dict[str, Any]) -> str:
    running = f" ({state['action']}, {state['remaining_time']} s left)" if state.get("action") else ""
    levels = ", ".join(f"{p['pump']}: {p['level_ml']:g} ml" for p in state["pumps"] if p.get("level_ml") is not None)
    return f"state {state['state']}{running}" + (f"; levels {levels}" if levels else "")


def _positive(text: str) -> float:
    number = _parse_number(text, None)
    if number is None or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return number


def _non_negative(text: str) -> float:
    number = _parse_number(text, None)
    if number is None or number < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return number


def _ratio(text: str) -> tuple[str, float]:
    pump, sep, ratio = text.partition("=")
    number = _parse_number(ratio, None)
    if not sep or not pump or number is None:
        raise argparse.ArgumentTypeError(f"give PUMP=RATIO, like 3=0.5 (pump 3, half the cup); got {text!r}")
    return pump, number

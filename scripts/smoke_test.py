#!/usr/bin/env python3
"""Hardware smoke test: drives a running barmaid over its WebSocket, as a GUI would.

An echo round trip, then each pump alone pours --ml, then a two-pump blend. What each pour should
take comes from the server's own state (its calibrated flow and start-up time), never from a config
file. A pour passes when it completed, its statuses count down (ceil(seconds) first, never up, one
final 0) and the time seen from here is within --tolerance of it (relative) plus --slack seconds
(the network and the scheduler). Prints a table; exit status 0 all passed, 1 a row failed, 2 a bad
argument, 3 barmaid cannot be reached. Example: `python scripts/smoke_test.py --pumps 0,1 --ml 5`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from barmaid.client import CannotConnect, Client, ClientError, Refused
from barmaid.commands import EXIT_CONNECT, EXIT_USAGE, UsageError, cannot_connect_text, target

#: Relative tolerance on a pour's time, and the seconds of latency allowed on top of it.
TOLERANCE = 0.1
SLACK_S = 0.05


@dataclass
class Row:
    what: str
    #: Seconds the pour should take; None for the echo.
    expected: Optional[float]
    seen: Optional[float] = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def on_time(expected: float, seen: float, tolerance: float, slack: float) -> bool:
    """True if `seen` seconds is within `tolerance` (relative) of `expected`, plus `slack` seconds."""
    return abs(seen - expected) <= tolerance * expected + slack


def pour_seconds(pump: dict[str, Any], ml: float) -> float:
    """How long the server runs a pump for `ml`: its start-up time (0 if it has none) plus ml / flow."""
    return (pump.get("dead_s") or 0.0) + ml / pump["flow_ml_s"]


def countdown_problem(times: list[int], expected: float) -> str:
    """What is wrong with a pour's statuses, or "" if they count down as the protocol says."""
    first_ok = bool(times) and math.ceil(expected - 1e-6) <= times[0] <= math.ceil(expected + 1e-6)
    if first_ok and all(a >= b for a, b in zip(times, times[1:])) and times.count(0) == 1 and times[-1] == 0:
        return ""
    return f"statuses {times}: expected {math.ceil(expected)} first, never up, one 0 at the end"


def pour(client: Client, ratios: dict[int, float], cup_size: float, expected: float, args: argparse.Namespace) -> Row:
    """One blend, followed to its final status, judged on its outcome, statuses and time."""
    row = Row(" + ".join(f"pump {p}" for p in ratios), expected)
    try:
        action = client.run("blend", {"cup_size": cup_size, "ratios": {str(p): r for p, r in ratios.items()}})
    except Refused as exc:
        row.problem = exc.msg
        return row
    except ClientError as exc:
        row.problem = f"connection: {exc}"
        return row
    row.seen = action.elapsed
    allowed = args.tolerance * expected + args.slack
    if action.outcome not in (None, "completed"):
        row.problem = f"the pour ended {action.outcome}"
    else:
        row.problem = countdown_problem([status.remaining for status in action.statuses], expected)
    if not row.problem and not on_time(expected, row.seen, args.tolerance, args.slack):
        row.problem = f"took {row.seen:.3f} s, expected {expected:.3f} s +- {allowed:.3f} s"
    return row


def echo(client: Client) -> Row:
    row = Row("echo", None)
    try:
        sent = {"smoke": "test"}
        started = time.monotonic()
        reply = client.request("echo", sent)
        row.seen = time.monotonic() - started
        if reply.data != sent:
            row.problem = f"echo came back as {reply.data!r}"
    except ClientError as exc:
        row.problem = str(exc)
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="barmaid's WebSocket (default ws://localhost:8765, or the one --config names)")
    parser.add_argument("--token", help="server.token, if the machine has one")
    parser.add_argument("--origin", help="the Origin header to send (when server.allowed_origins is set)")
    parser.add_argument("--config", type=Path, help="a barmaid config: the URL and token from its server section")
    parser.add_argument("--pumps", help="comma-separated pump numbers (default: every pump)")
    parser.add_argument("--ml", default="5", help="volume each pump pours (default 5)")
    parser.add_argument(
        "--tolerance", default=str(TOLERANCE), help=f"relative time error allowed (default {TOLERANCE})"
    )
    parser.add_argument("--slack", default=str(SLACK_S), help=f"seconds of latency allowed on top (default {SLACK_S})")
    parser.add_argument("--yes", action="store_true", help="do not ask whether a cup is in place")
    args = parser.parse_args(argv)
    args.ml = _number(parser, "--ml", args.ml, "> 0", lambda n: n > 0)
    args.tolerance = _number(parser, "--tolerance", args.tolerance, ">= 0", lambda n: n >= 0)
    args.slack = _number(parser, "--slack", args.slack, ">= 0", lambda n: n >= 0)
    wanted = _pump_list(parser, args.pumps)
    try:
        url, token = target(args)
    except UsageError as exc:
        parser.error(str(exc))

    try:
        client = Client.connect(url, token=token, origin=args.origin)
    except CannotConnect as exc:
        print(f"smoke_test: {cannot_connect_text(exc)}", file=sys.stderr)
        return EXIT_CONNECT
    except Refused as exc:
        print(f"smoke_test: {exc.msg}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        try:
            pumps = client.state()["pumps"]
        except ClientError as exc:
            print(f"smoke_test: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        for pump in wanted or []:
            if pump >= len(pumps):
                have = f"it has pumps 0 to {len(pumps) - 1}"
                print(f"smoke_test: pump {pump} is not on this machine; {have}", file=sys.stderr)
                return EXIT_USAGE
        chosen = wanted if wanted is not None else list(range(len(pumps)))
        total_ml = args.ml * (len(chosen) + (2 if len(chosen) >= 2 else 0))
        if not args.yes and not _confirm(f"Is a cup in place under the outlet ({total_ml:g} ml)? [y/N] "):
            print("stopped: no cup")
            return 1
        rows = [echo(client)]
        cup = args.ml / 1000
        for p in chosen:
            rows.append(pour(client, {p: 1.0}, cup, pour_seconds(pumps[p], args.ml), args))
        if len(chosen) >= 2:
            a, b = chosen[:2]
            times = [pour_seconds(pumps[a], args.ml), pour_seconds(pumps[b], args.ml)]
            together = sum(times) if _lanes(client) == 1 else max(times)
            rows.append(pour(client, {a: 0.5, b: 0.5}, 2 * cup, together, args))
    _print_table(rows)
    return 1 if any(not row.ok for row in rows) else 0


def _print_table(rows: list[Row]) -> None:
    print(f"{'what':<18}{'expected s':>11}{'seen s':>9}  {'result':<7}detail")
    for row in rows:
        expected = f"{row.expected:.3f}" if row.expected is not None else "-"
        seen = f"{row.seen:.3f}" if row.seen is not None else "-"
        print(f"{row.what:<18}{expected:>11}{seen:>9}  {'ok' if row.ok else 'FAIL':<7}{row.problem}")
    failed = sum(not row.ok for row in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")


def _lanes(client: Client) -> Optional[int]:
    """limits.max_parallel_pumps, when the server's welcome tells it."""
    limits = (client.welcome or {}).get("limits")
    return limits.get("max_parallel_pumps") if isinstance(limits, dict) else None


def _number(parser: argparse.ArgumentParser, flag: str, text: str, rule: str, ok: Any) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and ok(number)):
        parser.error(f"{flag} must be a number {rule}, got {text!r}")
    return number


def _pump_list(parser: argparse.ArgumentParser, text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        parser.error(f"--pumps: give pump numbers, like 0,3; got {text!r}")
    pumps = []
    for item in items:
        if not item.isdigit():
            parser.error(f"--pumps: {item!r} is not a pump number; give numbers like 0,3")
        if int(item) in pumps:
            parser.error(f"--pumps names pump {int(item)} twice")
        pumps.append(int(item))
    return pumps


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hardware smoke test: drives a running barmaid over its WebSocket, as the GUI would.

Echo round trip, then each pump alone pours a small volume, then a two-pump blend; it watches the
statuses, prints a table and exits non-zero on any failure. Needs websocket-client
(`pip install websocket-client`, or `pip install '.[test]'` in the checkout). Example: `python scripts/smoke_test.py --pumps 0,1 --ml 5`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import websocket

from barmaid.config import load_config


@dataclass
class Row:
    what: str
    expected: float
    seen: Optional[float] = None
    status_ok: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.status_ok


def pour(ws: websocket.WebSocket, ratios: dict[int, float], cup_size: float, expected: float, tolerance: float) -> Row:
    """One blend; checks its statuses (first ceil(expected), never up, one final 0) and its time."""
    row = Row(" + ".join(f"pump {p}" for p in ratios), expected)
    started = time.monotonic()
    ws.send(json.dumps({"type": "blend", "data": {"cup_size": cup_size, "ratios": {str(p): r for p, r in ratios.items()}}}))
    remaining: list[int] = []
    deadline = started + expected + 10
    try:
        while time.monotonic() < deadline:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(ws.recv())
            if message["type"] == "error":
                row.error = message["data"]["msg"]
                return row
            if message["type"] == "status":
                remaining.append(message["data"]["remaining_time"])
                if remaining[-1] == 0:
                    break
        else:
            row.error = "no final status 0"
            return row
    except (websocket.WebSocketException, OSError) as exc:
        row.error = f"connection: {exc}"
        return row
    row.seen = time.monotonic() - started
    row.status_ok = (
        remaining[0] == math.ceil(expected)
        and all(a >= b for a, b in zip(remaining, remaining[1:]))
        and remaining.count(0) == 1
    )
    if not row.status_ok:
        row.error = f"statuses {remaining}"
    elif abs(row.seen - expected) > tolerance:
        row.error = f"took {row.seen:.2f} s, expected {expected:.2f} s +- {tolerance} s"
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:8765")
    parser.add_argument("--config", type=Path, help="the server's config file, for pump count and flow rates")
    parser.add_argument("--pumps", help="comma-separated pump numbers (default: all)")
    parser.add_argument("--ml", type=float, default=5.0, help="volume each pump pours (default 5)")
    parser.add_argument("--tolerance", type=float, default=0.3, help="seconds a pour may differ as seen from here")
    parser.add_argument("--yes", action="store_true", help="do not ask whether a cup is in place")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    pumps = [int(p) for p in args.pumps.split(",")] if args.pumps else list(range(len(config.pumps)))
    flows = {p: config.pumps[p].flow_ml_s for p in pumps}
    if not args.yes and input(f"Is a cup in place under the outlet ({args.ml * (len(pumps) + 2):g} ml)? [y/N] ").lower() != "y":
        print("stopped: no cup")
        return 1

    ws = websocket.create_connection(args.url, timeout=5)
    rows = []
    started = time.monotonic()
    ws.send(json.dumps({"type": "echo", "data": {"smoke": "test"}}))
    echo = json.loads(ws.recv())
    echo_row = Row("echo", 0.0, time.monotonic() - started, echo == {"type": "echo", "data": {"smoke": "test"}})
    if not echo_row.status_ok:
        echo_row.error = f"got {echo}"
    rows.append(echo_row)
    cup = args.ml / 1000
    for p in pumps:
        rows.append(pour(ws, {p: 1.0}, cup, args.ml / flows[p], args.tolerance))
    if len(pumps) >= 2:
        a, b = pumps[:2]
        rows.append(pour(ws, {a: 0.5, b: 0.5}, 2 * cup, max(args.ml / flows[a], args.ml / flows[b]), args.tolerance))
    ws.close()

    print(f"{'what':<18}{'expected s':>11}{'seen s':>9}  {'status':<7}error")
    for row in rows:
        seen = f"{row.seen:.3f}" if row.seen is not None else "-"
        print(f"{row.what:<18}{row.expected:>11.3f}{seen:>9}  {'ok' if row.status_ok else 'BAD':<7}{row.error}")
    failed = [row for row in rows if not row.ok]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

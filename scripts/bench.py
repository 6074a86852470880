#!/usr/bin/env python3
"""barmaid's benchmark: WebSocket echo against the bare library, pump timing, idle cost.

`python scripts/bench.py` (a full run, a few minutes) prints a table and writes
docs/performance.md: the machine, each figure with its target and whether it is met, the last few
full runs side by side, and the analysis notes kept from the previous file. `--quick` shrinks every
count (well under a minute, for a smoke check) and writes nothing unless `--output` is given.

Everything runs on loopback (127.0.0.1), in processes this script starts and stops itself:
  - barmaid with simulated pumps (`python -m barmaid serve`), and a bare `websocket-server` echo
    handler, for the echo round trip and throughput (the ratio barmaid / bare is the figure);
  - barmaid with the pigpio driver against tests/support/fake_pigpiod.py (run inside this process, on the
    same monotonic clock), for the on-time error, start skew, stop latency and status jitter;
  - barmaid with the rgpio driver against tests/support/fake_rgpiod.py, for its start delay, on-time
    error and stop latency next to pigpio's;
  - barmaid with simulated pumps that start pouring 0.1 to 0.5 s late, calibrated through the
    protocol from one and from two runs, for the error of each pour in millilitres;
  - both barmaid processes, idle, for CPU and resident memory;
  - `barmaid serve` started again and again, for the time and CPU to its listening line, and
    `barmaid off` against the fake pigpio daemon (what systemd runs after every stop).
Needs websocket-client (`pip install '.[test]'`). A watchdog ends the run if it overruns.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
# Imported after the path is set, so that the tests' fake daemons and the working tree's barmaid are the ones run.
from support.fake_pigpiod import CMD_WVHLT, FakePigpiod  # noqa: E402  (the fake daemon the tests use)
from support.fake_rgpiod import FakeRgpiod  # noqa: E402

from barmaid import frames  # noqa: E402  (the server's own frame codec)

DEFAULT_OUTPUT = ROOT / "docs" / "performance.md"
GPIOS = (5, 6, 13, 16, 19, 20, 21, 26)
FLOW_ML_S = 100.0
#: One echo frame, the same text for both servers; barmaid's reply is byte for byte this text.
ECHO_TEXT = json.dumps({"type": "echo", "data": {"msg": "toaster", "n": 12345}})
RECV_TIMEOUT = 10.0
#: Round trips in a row to one server before the other server's turn.
RT_BLOCK = 100
#: Runs kept side by side in docs/performance.md.
KEEP_RUNS = 6
NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"
RUNS_MARK = "<!-- bench-runs:"


@dataclass
class Sizes:
    reps: int  # echo repetitions (median taken)
    warmup: int  # echo round trips before each measurement
    rt_messages: int
    tp_clients: int
    tp_messages: int  # per client
    pours: int
    stops: int
    jitter: list[tuple[float, float]]  # (status_interval, blend seconds)
    idle_seconds: float
    starts: int  # `barmaid serve` and `barmaid off` start-ups
    deadline: float  # the watchdog's limit for the whole run


FULL = Sizes(5, 200, 2000, 20, 500, 20, 20, [(0.1, 6.05), (1.0, 30.5)], 10.0, 15, 900.0)
QUICK = Sizes(1, 50, 400, 20, 50, 5, 5, [(0.1, 2.05)], 3.0, 5, 120.0)


# ---- small helpers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return math.nan
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> int:
    """A kB value of /proc/<pid>/status (VmRSS, VmHWM, Threads)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def code_version() -> str:
    """The commit measured, and which of barmaid's files differed from it (read-only git)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args], check=False,
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("diff", "--name-only", "HEAD", "--", "barmaid", "states.yaml").split()
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    os_name = platform.platform()
    try:
        with open("/etc/os-release") as f:
            pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', f.read(), re.MULTILINE)
        if pretty:
            os_name = f"{pretty.group(1)} (kernel {platform.release()})"
    except OSError:
        pass
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "code": code_version(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": os_name,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load": load,
    }


# ---- processes --------------------------------------------------------------------------------


class Process:
    """A child process with its output in a file; stopped with SIGTERM, then SIGKILL."""

    live: ClassVar[list[Process]] = []

    def __init__(self, name: str, argv: list[str], workdir: Path, env: Optional[dict[str, str]] = None) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self._out = open(self.log, "w")  # noqa: SIM115  (the child writes to it until stop() closes it)
        self.popen = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        Process.live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log.read_text(errors="replace"))
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not say {pattern!r} (exit {self.popen.poll()}):\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._out.close()
        if self in Process.live:
            Process.live.remove(self)


BARE_SERVER = """
import logging, sys
from websocket_server import WebsocketServer
server = WebsocketServer(host="127.0.0.1", port=int(sys.argv[1]), loglevel=logging.WARNING)
server.set_fn_message_received(lambda client, server, message: server.send_message(client, message))
print("listening", server.port, flush=True)
server.run_forever()
"""


def start_bare(workdir: Path) -> tuple[Process, str]:
    process = Process("bare-echo", [sys.executable, "-c", BARE_SERVER, "0"], workdir)
    port = int(process.wait_for(r"listening (\d+)").group(1))
    return process, f"ws://127.0.0.1:{port}/"


def start_barmaid(name: str, workdir: Path, **config: Any) -> tuple[Process, str]:
    """`python -m barmaid serve --config <file>` with its own data directory; returns it and its URL."""
    port = free_port()
    data = workdir / f"{name}-data"
    data.mkdir()
    server = {"host": "127.0.0.1", "port": port, "max_clients": 64, **config.pop("server", {})}
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps({"server": server, **config}, indent=2))  # JSON is YAML
    process = Process(name, [sys.executable, "-m", "barmaid", "serve", "--config", str(path)], workdir,
                      env={"BARMAID_DATA_DIR": str(data)})
    process.wait_for(r"barmaid listening on")
    return process, f"ws://127.0.0.1:{port}/"


def pumps_config(flow: float = FLOW_ML_S) -> list[dict[str, float]]:
    return [{"gpio": g, "flow_ml_s": flow, "prime_ml": 5.0} for g in GPIOS]


# ---- a lean WebSocket client for the echo loops -----------------------------------------------


def client_frame(text: str, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A masked, final text frame, built once: the client's cost per message stays tiny."""
    return frames.encode(frames.Opcode.TEXT, text.encode(), mask=mask)


class RawClient:
    """websocket-client does the handshake; then frames go straight over the socket."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=RECV_TIMEOUT)
        self.sock: socket.socket = self.ws.sock
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def frames(self) -> list[bytes]:
        """Every whole frame in the buffer (the server never masks nor fragments)."""
        out = []
        while (parsed := frames.parse(self.buf)) is not None:
            frame, size = parsed
            if frame.opcode is not frames.Opcode.TEXT:
                raise RuntimeError(f"unexpected frame opcode {frame.opcode:#x}: {frame.payload!r}")
            out.append(frame.payload)
            del self.buf[:size]
        return out

    def recv(self) -> bytes:
        while True:
            got = self.frames()
            if got:
                if len(got) > 1:
                    raise RuntimeError("more than one reply to one message")
                return got[0]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk

    def close(self) -> None:
        try:
            self.ws.close(timeout=2)
        except Exception:
            self.ws.shutdown()


def round_trips(client: RawClient, data: bytes, expected: bytes, count: int) -> list[float]:
    """`count` echoes one after the other; seconds each, from send to whole reply."""
    times = []
    clock = time.perf_counter
    for _ in range(count):
        t = clock()
        client.sock.sendall(data)
        reply = client.recv()
        times.append(clock() - t)
        if reply != expected:
            raise RuntimeError(f"echo came back as {reply[:100]!r}")
    return times


def throughput(clients: list[RawClient], data: bytes, expected: bytes, per_client: int) -> float:
    """Every client sends `per_client` echoes, each after the previous reply, all at once.

    One thread drives every connection through a selector, so the client side needs little CPU
    and no GIL handoffs. Returns messages per second.
    """
    sel = selectors.DefaultSelector()
    left = {}
    for c in clients:
        sel.register(c.sock, selectors.EVENT_READ, c)
        left[c] = per_client
    try:
        t0 = time.perf_counter()
        for c in clients:
            c.sock.sendall(data)
        running = len(clients)
        while running:
            events = sel.select(RECV_TIMEOUT)
            if not events:
                raise TimeoutError("no echo for 10 s during the throughput run")
            for key, _ in events:
                c = key.data
                chunk = c.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed a connection during the throughput run")
                c.buf += chunk
                for reply in c.frames():
                    if reply != expected:
                        raise RuntimeError(f"echo came back as {reply[:100]!r}")
                    left[c] -= 1
                    if left[c]:
                        c.sock.sendall(data)
                    else:
                        running -= 1
        elapsed = time.perf_counter() - t0
    finally:
        sel.close()
    return len(clients) * per_client / elapsed


# ---- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    figure: str
    measured: str
    target: str = "—"
    met: Optional[bool] = None  # None: informational, no target

    @property
    def verdict(self) -> str:
        return "—" if self.met is None else ("yes" if self.met else "**NO**")


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, figure: str, measured: str, target: str = "—", met: Optional[bool] = None) -> None:
        self.rows.append(Row(key, figure, measured, target, met))
        verdict = f"  (target {target}: {'met' if met else 'MISSED'})" if met is not None else ""
        print(f"  {figure}: {measured}{verdict}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


# ---- 1. echo ----------------------------------------------------------------------------------


def set_affinity(pids: Sequence[int], cpus: set[int]) -> None:
    """Every thread of these processes, and the calling thread, on these CPUs (threads they
    start later inherit it from the thread that starts them)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:  # a thread that just ended
                pass
    os.sched_setaffinity(0, cpus)


#: Where the echo runs: every thread on one core (the code path's own cost, no placement luck),
#: or where the OS puts them.
PLACEMENTS = ("one core", "OS-placed")


def bench_echo(sizes: Sizes, barmaid_url: str, bare_url: str, pids: dict[str, int], res: Results) -> None:
    data, expected = client_frame(ECHO_TEXT), ECHO_TEXT.encode()
    servers = {"bare": bare_url, "barmaid": barmaid_url}
    rt_clients = {name: RawClient(url) for name, url in servers.items()}
    tp_clients = {name: [RawClient(url) for _ in range(sizes.tp_clients)] for name, url in servers.items()}
    every_cpu = os.sched_getaffinity(0)
    cpus = {"one core": {max(every_cpu)}, "OS-placed": every_cpu}
    # placement -> measure -> server -> one value per repetition
    got: dict[str, dict[str, dict[str, list[float]]]] = {
        place: {m: {name: [] for name in servers} for m in ("p50", "p99", "rate", "cpu")} for place in PLACEMENTS
    }
    try:
        for rep in range(sizes.reps):
            # Alternate the order, so a slow spell of the shared machine hits both alike.
            order = list(servers) if rep % 2 == 0 else list(reversed(servers))
            for place in PLACEMENTS:
                set_affinity(list(pids.values()), cpus[place])
                g = got[place]
                # Round trips in short blocks, the servers taking turns, so that the machine's
                # slow and fast spells fall on both alike.
                times: dict[str, list[float]] = {name: [] for name in servers}
                for name in order:
                    round_trips(rt_clients[name], data, expected, sizes.warmup)
                for block in range(math.ceil(sizes.rt_messages / RT_BLOCK)):
                    count = min(RT_BLOCK, sizes.rt_messages - block * RT_BLOCK)
                    for name in order if block % 2 == 0 else reversed(order):
                        times[name] += round_trips(rt_clients[name], data, expected, count)
                for name in servers:
                    g["p50"][name].append(percentile(times[name], 50))
                    g["p99"][name].append(percentile(times[name], 99))
                for name in order:
                    clients = tp_clients[name]
                    for c in clients:
                        round_trips(c, data, expected, max(1, sizes.warmup // 20))
                    before = cpu_seconds(pids[name])
                    g["rate"][name].append(throughput(clients, data, expected, sizes.tp_messages))
                    g["cpu"][name].append((cpu_seconds(pids[name]) - before) / (len(clients) * sizes.tp_messages))
                figures = ", ".join(
                    f"{n} p50 {g['p50'][n][-1] * 1e6:.0f} us p99 {g['p99'][n][-1] * 1e6:.0f} us"
                    f" {g['rate'][n][-1]:.0f} msg/s {g['cpu'][n][-1] * 1e6:.0f} us CPU/msg" for n in servers)
                print(f"  rep {rep + 1}/{sizes.reps}, {place}: {figures}", flush=True)
    finally:
        set_affinity(list(pids.values()), every_cpu)
        for client in [*rt_clients.values(), *(c for cs in tp_clients.values() for c in cs)]:
            client.close()

    med = statistics.median
    for place in PLACEMENTS:
        g, tag = got[place], "1core" if place == "one core" else "os"
        for label in ("p50", "p99"):
            b, r = med(g[label]["barmaid"]), med(g[label]["bare"])
            res.raw[f"echo_rt_{label}_{tag}"] = {"barmaid": b, "bare": r, "reps": g[label]}
            res.add(f"echo_rt_{label}_{tag}", f"echo round trip {label}, 1 client x {sizes.rt_messages}, {place}",
                    f"{b * 1e6:.0f} us vs bare {r * 1e6:.0f} us = {b / r:.2f}x", "<= 1.25x", b / r <= 1.25)
        b, r = med(g["rate"]["barmaid"]), med(g["rate"]["bare"])
        res.raw[f"echo_tp_{tag}"] = {"barmaid": b, "bare": r, "reps": g["rate"]}
        res.add(f"echo_tp_{tag}", f"echo throughput, {sizes.tp_clients} clients x {sizes.tp_messages}, {place}",
                f"{b:.0f} vs bare {r:.0f} msg/s = {b / r:.2f}x", ">= 0.8x", b / r >= 0.8)
        b, r = med(g["cpu"]["barmaid"]), med(g["cpu"]["bare"])
        res.raw[f"echo_cpu_{tag}"] = {"barmaid": b, "bare": r, "reps": g["cpu"]}
        # CPU time comes in clock ticks (10 ms): a short run may show none.
        res.add(f"echo_cpu_{tag}", f"server CPU per echo in the throughput run, {place}",
                f"{b * 1e6:.0f} us vs bare {r * 1e6:.0f} us" + (f" = {b / r:.2f}x" if r else " (under one clock tick)"))


# ---- 2. pump timing through the fake daemon ---------------------------------------------------


class Peer:
    """A websocket-client connection that timestamps every message it receives."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=RECV_TIMEOUT)
        self.ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def recv(self) -> tuple[float, dict]:
        text = self.ws.recv()
        return time.monotonic(), json.loads(text)

    def recv_until(self, done: Callable[[dict], bool]) -> list[tuple[float, dict]]:
        got = []
        while True:
            t, message = self.recv()
            got.append((t, message))
            if message["type"] == "error":
                raise RuntimeError(f"barmaid answered an error: {message['data']['msg']}")
            if done(message):
                return got

    def close(self) -> None:
        try:
            self.ws.close(timeout=2)
        except Exception:
            self.ws.shutdown()


def final_status(message: dict) -> bool:
    return message["type"] == "status" and message["data"]["remaining_time"] == 0


def wait_all(daemon: FakePigpiod, level: int, timeout: float = 3.0) -> None:
    if not daemon.wait_for(lambda: all(daemon.level(g) == level for g in GPIOS) and
                           (level == 1 or not daemon.wave_busy()), timeout):
        raise RuntimeError(f"the pumps did not all go {'on' if level else 'off'} within {timeout} s")


def first_command(daemon: FakePigpiod, command: int, since: float) -> float:
    """When the daemon executed the first `command` after `since` (its monotonic clock)."""
    return min(t for t, cmd, *_ in daemon.command_log() if cmd == command and t >= since)


def bench_pours(sizes: Sizes, url: str, daemon: FakePigpiod, res: Results) -> None:
    """Blends of all 8 pumps with different ratios; on-times and start skew from the daemon."""
    rng = random.Random(5)
    cup = 0.2  # litres: 2 s of pumping at 100 ml/s, shared by 8 pumps
    errors, skews, starts, lateness, to_driver = [], [], [], [], []
    peer = Peer(url)
    try:
        for _ in range(sizes.pours):
            weights = [rng.uniform(0.2, 1.0) for _ in GPIOS]
            total = sum(weights)
            ratios = {p: w / total * (1 - 1e-9) for p, w in enumerate(weights)}
            expected = {GPIOS[p]: cup * 1000 * r / FLOW_ML_S for p, r in ratios.items()}
            daemon.clear_history()
            sent = time.monotonic()
            peer.send({"type": "blend", "data": {"cup_size": cup, "ratios": {str(p): r for p, r in ratios.items()}}})
            peer.recv_until(final_status)
            wait_all(daemon, 0)
            history = daemon.history()
            lateness.append(daemon.max_lateness())
            ons = {}
            for gpio in GPIOS:
                changes = [(t, level) for t, g, level in history if g == gpio]
                if [level for _, level in changes] != [1, 0]:
                    raise RuntimeError(f"GPIO {gpio} switched {changes} in one pour, expected on then off")
                ons[gpio] = changes[0][0]
                errors.append(changes[1][0] - changes[0][0] - expected[gpio])
            skews.append(max(ons.values()) - min(ons.values()))
            starts.append(min(ons.values()) - sent)
            to_driver.append(first_command(daemon, CMD_WVHLT, sent) - sent)
    finally:
        peer.close()
    absolute = [abs(e) for e in errors]
    res.raw["pour"] = {"errors": errors, "skews": skews, "starts": starts, "lateness": lateness}
    p99 = percentile(absolute, 99)
    res.add("pour_error", f"on-time error |measured - planned|, {sizes.pours} pours x 8 pumps",
            f"p50 {ms(percentile(absolute, 50))}, p99 {ms(p99)}"
            f" (signed {min(errors) * 1e3:+.3f} .. {max(errors) * 1e3:+.3f} ms)",
            "p99 <= 2 ms", p99 <= 0.002)
    res.add("pour_skew", "start skew (last pump on - first pump on)",
            f"p50 {ms(percentile(skews, 50))}, max {ms(max(skews))}", "<= 1 ms", max(skews) <= 0.001)
    res.add("pour_start", "blend frame sent -> pumps on",
            f"p50 {ms(percentile(starts, 50))}, p99 {ms(percentile(starts, 99))}")
    res.add("pour_to_driver", "blend frame sent -> the driver's first command to the daemon",
            f"p50 {ms(percentile(to_driver, 50))}, p99 {ms(percentile(to_driver, 99))}")
    res.add("fake_lateness", "fake daemon's own wave-player lateness (measurement floor)",
            f"p50 {ms(percentile(lateness, 50))}, max {ms(max(lateness))}")


def bench_stops(sizes: Sizes, url: str, daemon: FakePigpiod, res: Results) -> None:
    """Stop mid-pour: client's monotonic time just before the frame -> the last pump off."""
    rng = random.Random(7)
    stop = client_frame(json.dumps({"type": "stop"}))
    latencies, first, spread, to_driver = [], [], [], []
    peer = Peer(url)
    try:
        for _ in range(sizes.stops):
            # 8 pumps x 125 ml at 100 ml/s: 1.25 s, stopped after 0.05 to 0.3 s.
            peer.send({"type": "blend", "data": {"cup_size": 1.0, "ratios": {str(p): 0.125 for p in range(8)}}})
            peer.recv_until(lambda m: m["type"] == "status")
            wait_all(daemon, 1, timeout=1.0)
            time.sleep(rng.uniform(0.05, 0.3))
            daemon.clear_history()
            sent = time.monotonic()
            peer.ws.sock.sendall(stop)
            pending = {"stopped", "final status"}
            while pending:  # both come, in either order
                _, message = peer.recv()
                if message["type"] == "error":
                    raise RuntimeError(f"barmaid answered the stop with an error: {message['data']['msg']}")
                pending.discard("final status" if final_status(message) else message["type"])
            wait_all(daemon, 0)
            offs = [t for t, g, level in daemon.history() if g in GPIOS and level == 0]
            if len(offs) != len(GPIOS):
                raise RuntimeError(f"{len(offs)} pumps went off after the stop, expected {len(GPIOS)}")
            latencies.append(max(offs) - sent)
            to_driver.append(first_command(daemon, CMD_WVHLT, sent) - sent)
            first.append(min(offs) - sent)
            spread.append(max(offs) - min(offs))
    finally:
        peer.close()
    res.raw["stop"] = {"latencies": latencies, "first": first, "spread": spread}
    p99 = percentile(latencies, 99)
    res.add("stop_latency", f"stop latency (frame sent -> last pump off), {sizes.stops} stops",
            f"p50 {ms(percentile(latencies, 50))}, p99 {ms(p99)}", "p99 <= 10 ms", p99 <= 0.010)
    res.add("stop_to_driver", "stop: frame sent -> the driver's first command (wave_tx_stop)",
            f"p50 {ms(percentile(to_driver, 50))}, p99 {ms(percentile(to_driver, 99))}")
    res.add("stop_first", "stop: frame sent -> first pump off",
            f"p50 {ms(percentile(first, 50))}, p99 {ms(percentile(first, 99))}")
    res.add("stop_spread", "stop: first pump off -> last pump off",
            f"p50 {ms(percentile(spread, 50))}, max {ms(max(spread))}")


def rgpio_periods(daemon: FakeRgpiod) -> dict[int, list[tuple[float, float]]]:
    """(on, off) of every completed high period of each pump line, from the fake rgpiod."""
    periods: dict[int, list[tuple[float, float]]] = {g: [] for g in GPIOS}
    since: dict[int, float] = {}
    for t, line, level in daemon.history():
        if line in periods and level:
            since[line] = t
        elif line in since:
            periods[line].append((since.pop(line), t))
    return periods


def bench_rgpio(sizes: Sizes, url: str, daemon: FakeRgpiod, res: Results) -> None:
    """The blends of bench_pours and the stops of bench_stops, through the rgpio driver."""
    rng = random.Random(5)
    errors, starts, stops = [], [], []
    peer = Peer(url)
    try:
        for _ in range(sizes.pours):
            weights = {p: rng.uniform(0.2, 1.0) for p in range(len(GPIOS))}
            ratios = {str(p): w / sum(weights.values()) * (1 - 1e-9) for p, w in weights.items()}
            daemon.clear_history()
            sent = time.monotonic()
            peer.send({"type": "blend", "data": {"cup_size": 0.2, "ratios": ratios}})
            peer.recv_until(final_status)
            wait_all(daemon, 0)
            periods = rgpio_periods(daemon)
            if any(len(p) != 1 for p in periods.values()):
                raise RuntimeError(f"a pump switched other than on then off in one pour: {periods}")
            errors += [off - on - 200 * float(ratios[str(p)]) / FLOW_ML_S
                       for p, [(on, off)] in enumerate(periods[g] for g in GPIOS)]
            starts.append(min(on for [(on, _)] in periods.values()) - sent)
        for _ in range(sizes.stops):
            peer.send({"type": "blend", "data": {"cup_size": 1.0, "ratios": {str(p): 0.125 for p in range(8)}}})
            peer.recv_until(lambda m: m["type"] == "status")
            wait_all(daemon, 1, timeout=1.0)
            time.sleep(rng.uniform(0.05, 0.3))
            sent = time.monotonic()
            peer.send({"type": "stop"})
            peer.recv_until(final_status)
            wait_all(daemon, 0)
            stops.append(max(t for t, line, level in daemon.history() if line in GPIOS and not level) - sent)
    finally:
        peer.close()
    res.raw["rgpio"] = {"errors": errors, "starts": starts, "stops": stops}
    absolute = [abs(e) for e in errors]
    error_p99, stop_p99 = percentile(absolute, 99), percentile(stops, 99)
    res.add("rgpio_pour_error", f"rgpio on-time error |measured - planned|, {sizes.pours} pours x 8 pumps",
            f"p50 {ms(percentile(absolute, 50))}, p99 {ms(error_p99)}", "p99 <= 2 ms", error_p99 <= 0.002)
    res.add("rgpio_pour_start", "rgpio: blend frame sent -> pumps on (rgpiod starts a wave at its next 20 ms pass)",
            f"p50 {ms(percentile(starts, 50))}, p99 {ms(percentile(starts, 99))}")
    res.add("rgpio_stop_latency", f"rgpio stop latency (frame sent -> last pump off), {sizes.stops} stops",
            f"p50 {ms(percentile(stops, 50))}, p99 {ms(stop_p99)}", "p99 <= 25 ms", stop_p99 <= 0.025)


def bench_jitter(url: str, interval: float, seconds: float, res: Results) -> None:
    """One long blend; the gaps between status arrivals at the client, against status_interval."""
    peer = Peer(url)
    try:
        cup = seconds * FLOW_ML_S / 1000
        peer.send({"type": "blend", "data": {"cup_size": cup, "ratios": {"0": 1.0}}})
        got = peer.recv_until(final_status)
    finally:
        peer.close()
    times = [t for t, m in got if m["type"] == "status" and m["data"]["remaining_time"] > 0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    deviation = [abs(g - interval) for g in gaps]
    key = f"jitter_{interval:g}"
    res.raw[key] = {"gaps": gaps}
    res.add(key, f"status interval jitter |gap - {interval:g} s|, {len(gaps)} gaps",
            f"p50 {ms(percentile(deviation, 50))}, p99 {ms(percentile(deviation, 99))}")


# ---- 3. volumes: calibrating pumps with a start-up time --------------------------------------

#: The simulated pumps' truths, (flow ml/s, start-up time s), unknown to barmaid: every flow of
#: 5, 12, 25, 40 ml/s with a start-up time of 0.1 s and of 0.5 s, one per pump.
VOLUME_PUMPS = [(flow, dead) for dead in (0.1, 0.5) for flow in (5.0, 12.0, 25.0, 40.0)]
#: (name, calibrate runs in seconds, each run's spread in ml (sd), target checked).
VOLUME_CASES = [
    ("one point", (6.0,), 0.0, False),
    ("two points", (1.0, 6.0), 0.0, True),
    ("two points, runs +-0.1 ml", (1.0, 6.0), 0.1, False),
]
VOLUME_POURS_ML = (5.0, 10.0, 25.0, 50.0, 150.0)
#: Seconds of the runs and pours are divided by it (see bench_volume).
VOLUME_SPEEDUP = 20.0


def volume_target(error_ml: float, ml: float) -> bool:
    """The promise for calibrated pumps: within 0.2 ml or 1 %, whichever is larger."""
    return abs(error_ml) <= max(0.2, 0.01 * ml)


def ask_state(peer: Peer, message: dict) -> dict:
    """Sends `message` and returns the state that answers it: barmaid answers a client's frames
    in order, so it is the last state before the reply to an echo sent right after."""
    peer.send(message)
    peer.send({"type": "echo", "data": "volume sync"})
    answer = None
    for _, got in peer.recv_until(lambda m: m["type"] == "echo"):
        if got["type"] == "state":
            answer = got["data"]
    return answer


def poured(peer: Peer, message: dict) -> list[float]:
    """What each simulated pump really poured (`sim_poured_ml`) for one blocking request."""
    before = [p["sim_poured_ml"] for p in ask_state(peer, {"type": "state"})["pumps"]]
    peer.send(message)
    peer.recv_until(final_status)
    after = [p["sim_poured_ml"] for p in ask_state(peer, {"type": "state"})["pumps"]]
    return [a - b for a, b in zip(after, before)]


def bench_volume(workdir: Path, res: Results) -> None:
    """Calibrates 8 simulated pumps with start-up times through the protocol, once from one 6 s
    run and once from two runs (1 s and 6 s), as a user with a jug would (calibrate, read what
    came out, set_flow), then pours 5, 10, 25, 50 and 150 ml from each; the error of each pour.

    It runs VOLUME_SPEEDUP times faster than real time, and that changes no millilitre: every
    flow is multiplied and every start-up time and run divided by it, so each pump pours
    speedup * F * (t / speedup - D / speedup) = F * (t - D), the same volume. What is measured is
    the simulated driver's law (`pumps[i].sim`, `sim_poured_ml`), and that driver pours by the
    times its switches were due, as the pigpio daemon's DMA does, so how late its thread wakes
    does not enter either. Without noise these are the errors of the model alone; the noisy case
    gives every run (calibration or pour) a seeded normal spread, as a real pump's runs differ.
    """
    for name, runs, noise, checked in VOLUME_CASES:
        errors = volume_errors(workdir, name, runs, noise)
        res.raw.setdefault("volume_errors", {})[name] = {str(ml): e for ml, e in errors.items()}
        for ml, errs in errors.items():
            worst = max(errs, key=abs)
            outside = sum(not volume_target(e, ml) for e in errs)
            measured = (f"{min(errs):+.3f} .. {max(errs):+.3f} ml (worst {worst / ml * 100:+.1f} %),"
                        f" {outside}/{len(errs)} outside 0.2 ml / 1 %")
            res.add(f"volume_{re.sub(r'[^a-z0-9]+', '_', name)}_{ml:g}ml",
                    f"{ml:g} ml pour error, poured - asked, {name} ({', '.join(f'{s:g} s' for s in runs)}),"
                    " 8 pumps of 5-40 ml/s starting 0.1-0.5 s late",
                    measured, "within 0.2 ml or 1 %" if checked else "—", outside == 0 if checked else None)


def volume_errors(workdir: Path, name: str, runs: Sequence[float], noise: float) -> dict[float, list[float]]:
    """One barmaid with the VOLUME_PUMPS, each calibrated from `runs`: ml -> per pump, poured - asked."""
    k = VOLUME_SPEEDUP
    pumps = [{"gpio": g, "flow_ml_s": 20.0 * k, "prime_ml": 5.0,
              "sim": {"flow_ml_s": f * k, "dead_s": d / k, "noise_ml": noise}}
             for g, (f, d) in zip(GPIOS, VOLUME_PUMPS)]
    process, url = start_barmaid(f"barmaid-volume-{re.sub(r'[^a-z0-9]+', '-', name)}", workdir, pumps=pumps,
                                 server={"status_interval": 0.1}, limits={"max_cup_size": 2.0})
    peer = Peer(url)
    errors: dict[float, list[float]] = {}
    try:
        for pump in range(len(VOLUME_PUMPS)):
            for seconds in runs:
                ml = poured(peer, {"type": "calibrate", "data": {"pump": pump, "seconds": seconds / k}})[pump]
                fitted = ask_state(peer, {"type": "set_flow", "data": {"pump": pump, "ml": ml}})["pumps"][pump]
            print(f"    {name}: pump {pump} (truly {VOLUME_PUMPS[pump][0]:g} ml/s after {VOLUME_PUMPS[pump][1]:g} s)"
                  f" fitted {fitted['flow_ml_s'] / k:.3f} ml/s after {fitted['dead_s'] * k:.3f} s", flush=True)
        ratios = {str(p): 1 / len(VOLUME_PUMPS) for p in range(len(VOLUME_PUMPS))}
        for ml in VOLUME_POURS_ML:
            got = poured(peer, {"type": "blend", "data": {"cup_size": ml * len(VOLUME_PUMPS) / 1000, "ratios": ratios}})
            errors[ml] = [g - ml for g in got]
    finally:
        peer.close()
        process.stop()
    return errors


# ---- 4. idle ----------------------------------------------------------------------------------


def bench_idle(sizes: Sizes, processes: dict[str, int], urls: dict[str, str], res: Results) -> None:
    """CPU over an idle spell (one connected, silent GUI each), then resident memory."""
    peers = [Peer(url) for url in urls.values()]
    try:
        time.sleep(0.5)
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        t0 = time.monotonic()
        time.sleep(sizes.idle_seconds)
        elapsed = time.monotonic() - t0
        after = {name: cpu_seconds(pid) for name, pid in processes.items()}
        memory = {name: (proc_status(pid, "VmRSS") / 1024, proc_status(pid, "VmHWM") / 1024,
                         proc_status(pid, "Threads")) for name, pid in processes.items()}
    finally:
        for peer in peers:
            peer.close()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    for name in processes:
        cpu = (after[name] - before[name]) / elapsed * 100
        rss, hwm, threads = memory[name]
        res.raw[f"idle_{name}"] = {"cpu_percent": cpu, "rss_mb": rss, "hwm_mb": hwm, "threads": threads}
        res.add(f"idle_cpu_{name}", f"idle CPU over {sizes.idle_seconds:g} s, {name}",
                f"{cpu:.2f} % of one core (resolution {tick / elapsed * 100:.2f} %)", "< 1 %", cpu < 1.0)
        res.add(f"rss_{name}", f"resident memory after the runs, {name}",
                f"{rss:.1f} MB (peak {hwm:.1f} MB, {threads} threads)", "< 40 MB", rss < 40.0)


# ---- 5. start-up ------------------------------------------------------------------------------


def serve_start(workdir: Path, number: int) -> tuple[float, float]:
    """One `python -m barmaid serve --port 0`: seconds from the spawn to its listening line, and
    the CPU seconds it used until then."""
    data = workdir / f"start-{number}-data"
    env = {**os.environ, "BARMAID_DATA_DIR": str(data)}
    argv = [sys.executable, "-m", "barmaid", "serve", "--host", "127.0.0.1", "--port", "0"]
    started = time.perf_counter()
    popen = subprocess.Popen(argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    try:
        for line in popen.stderr or ():
            if "listening on" in line:
                return time.perf_counter() - started, cpu_seconds(popen.pid)
        raise RuntimeError(f"barmaid serve did not start (exit {popen.wait(5)})")
    finally:
        popen.terminate()
        popen.wait(5)


def off_run(config: Path) -> tuple[float, float]:
    """One `python -m barmaid off --config CONFIG` to its end: seconds, and its CPU seconds."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "barmaid", "off", "--config", str(config)], check=True,
                   capture_output=True, cwd=ROOT, timeout=20)
    took = time.perf_counter() - started
    after = os.times()
    return took, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def bench_startup(sizes: Sizes, workdir: Path, pigpio: dict[str, Any], res: Results) -> None:
    """What a restart costs (systemd, a crash, every test that starts a process): imports and
    set-up until `serve` listens, and a whole `off`."""
    serve = [serve_start(workdir, n) for n in range(sizes.starts)]
    config = workdir / "off.yaml"
    config.write_text(json.dumps(pigpio))  # JSON is YAML
    off = [off_run(config) for _ in range(sizes.starts)]
    for key, figure, runs in (("startup_serve", "start-up: serve --port 0 to its listening line", serve),
                              ("startup_off", "start-up: off, pigpio, to its exit", off)):
        walls, cpus = [wall for wall, _ in runs], [cpu for _, cpu in runs]
        res.raw[key] = {"wall_s": walls, "cpu_s": cpus}
        res.add(key, f"{figure}, {len(runs)} runs",
                f"p50 {statistics.median(walls) * 1e3:.0f} ms, CPU p50 {statistics.median(cpus) * 1e3:.0f} ms"
                f" (min {min(cpus) * 1e3:.0f} ms)")


# ---- the report -------------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[Row]) -> str:
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {cell(r.figure)} | {cell(r.measured)} | {r.target} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, a)) for r in rows) for a in ("figure", "measured", "target")]
    heads = ("figure", "measured", "target", "met")
    widths = [max(w, len(h)) for w, h in zip(widths, heads)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(heads, [*widths, 3])))
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        print("  ".join(v.ljust(w) for v, w in zip((r.figure, r.measured, r.target, met), [*widths, 3])))


def compared(runs: list[dict]) -> str:
    keys: list[str] = []
    names: dict[str, str] = {}
    for run in runs:
        for row in run["rows"]:
            if row["key"] not in names:
                keys.append(row["key"])
                names[row["key"]] = row["figure"]
    head = "| figure | target | " + " | ".join(
        f"run {i + 1}: {r['machine']['date']}{' (--quick)' if r.get('quick') else ''}"
        for i, r in enumerate(runs)) + " |"
    lines = [head, "|---|---|" + "---|" * len(runs)]
    for key in keys:
        cells, target = [], "—"
        for run in runs:
            row = next((r for r in run["rows"] if r["key"] == key), None)
            if row is None:
                cells.append("")
                continue
            target = row["target"]
            mark = "" if row["met"] is None else (" ✓" if row["met"] else " ✗")
            cells.append(cell(row["measured"]) + mark)
        lines.append(f"| {cell(names[key])} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


METHOD = """\
## How each figure is measured

Everything runs on loopback (127.0.0.1) in processes `scripts/bench.py` starts and stops itself;
`--quick` runs the same steps with smaller counts (and writes nothing unless `--output` is given).

- **Echo round trip**: one client sends `{{"type": "echo", "data": {{...}}}}` (56 bytes), waits for
  the whole reply, and again, {rt} times after {warmup} warm-up echoes; p50 and p99 of the
  `time.perf_counter()` spans. The same frames go to barmaid (`python -m barmaid serve`, simulated
  pumps, default settings but `max_clients` 64) and to a bare `websocket_server.WebsocketServer`
  whose `message_received` calls `server.send_message(client, message)`, started in the same run.
  The client is lean on purpose (websocket-client for the handshake, then pre-masked frames over
  the raw socket), so that the ratio shows the servers, not the client. The round trips go in
  blocks of {block}, the two servers taking turns, so that slow and fast spells of the machine fall
  on both alike. The figure is the median over {reps} repetitions.
- **Two placements**: *one core*: the client and every thread of both servers pinned to one CPU
  (`sched_setaffinity`): each round trip is then plain CPU work and context switches, the cost of
  the code path. *OS-placed*: wherever the scheduler puts them. On this VM a wake-up that has to
  cross to the other vCPU costs ~50 us when that vCPU was idle, so OS-placed round trips jump
  between ~14 us and ~70 us depending on where the threads land: a server that needs more
  threads per message (barmaid's reply goes through a second thread) lands on the slow side more
  often. Both are reported; both have the targets.
- **Echo throughput**: {clients} clients connected at once, each sends its next echo as soon as its
  previous reply is in, {per} each; one client thread drives them all through a selector.
  Messages per second, median of {reps}. The server CPU per echo is the server process's
  utime + stime (`/proc/<pid>/stat`) over that run, divided by the messages.
- **Pump timing**: barmaid with `driver: {{kind: pigpio}}` talks to `tests/support/fake_pigpiod.py` (run
  inside the benchmark process; it timestamps every level change with `time.monotonic()`),
  8 pumps on GPIO 5, 6, 13, 16, 19, 20, 21, 26 at 100 ml/s, `status_interval` 0.1 s. {pours} blends
  of 0.2 l over all 8 pumps with random ratios (seeded): each pump's on-time error is the high
  period seen by the daemon minus `cup_size * 1000 * ratio / flow_ml_s`; the start skew is the
  spread of the 8 switch-on times of one pour. The fake daemon plays waves in a Python thread
  (sleep, then spin for the last millisecond), so its own lateness (shown) is the floor of what
  can be measured; a real pigpiod times the same waveform by DMA, to the microsecond.
- **Stop latency**: {stops} blends of 1.25 s, each stopped 0.05 to 0.3 s after all pumps are on:
  from the client's `time.monotonic()` just before it writes `{{"type": "stop"}}` to the daemon's
  timestamp of the last pump's switch-off (same clock, same machine).
- **rgpio**: barmaid with `driver: {{kind: rgpio}}` against `tests/support/fake_rgpiod.py`, the same blends
  and stops. The fake plays rgpiod's timing thread in virtual microseconds (the instants the real
  thread aims at), so its on-time error shows the driver's pulse arithmetic, not a thread's
  lateness; the start delay includes the wait for the thread's next pass (up to 20 ms).
- **Status jitter**: one long blend per interval; the gaps between the arrivals of the status
  messages at the client (the final 0 excluded), against `status_interval`. No target.
- **Volumes**: 8 simulated pumps whose truth barmaid does not know (flows 5, 12, 25, 40 ml/s,
  each starting 0.1 s and 0.5 s late) are calibrated through the protocol, as a user with a jug
  would (calibrate, read `sim_poured_ml`, set_flow): once from one 6 s run, once from two runs of
  1 s and 6 s; then each pours 5, 10, 25, 50 and 150 ml. The figure is poured minus asked, per
  pump. It runs 20 times faster than real time (flows times 20, start-up times and runs divided by
  20), which changes no millilitre, since the simulated pumps pour by the times their switches were
  due; no noise: the error of the model alone.
- **Start-up**: `python -m barmaid serve --host 127.0.0.1 --port 0` on a new data directory,
  {starts} times: from the spawn to the line saying it listens, and the process's utime + stime at that
  moment (`/proc/<pid>/stat`, clock ticks of 10 ms); then `python -m barmaid off` against the fake
  pigpio daemon {starts} times, to its exit (its CPU from `os.times()`). Both are mostly imports; a loaded
  machine stretches the wall time far more than the CPU.
- **Idle**: after the runs, with one silent client connected to each barmaid, the process's
  utime + stime over {idle:g} s in % of one core (clock ticks of 10 ms: the resolution is shown), and
  `VmRSS` (and the peak `VmHWM`) from `/proc/<pid>/status`; for simulated pumps and for the pigpio
  driver connected to the fake daemon (it asks the daemon `wave_tx_busy` every 0.25 s).
"""


def render(
    machine_info: dict[str, str], rows: list[Row], runs: list[dict], notes: str, sizes: Sizes, quick: bool
) -> str:
    missed = [r for r in rows if r.met is False]
    m = machine_info
    parts = [
        "# Performance",
        "",
        "Written by `python scripts/bench.py` (do not edit by hand, except between the notes markers:",
        "the script keeps that part, and the last runs, when it rewrites this file).",
        "",
        ("**These numbers come from a shared 2-core VM on which other test suites ran at the same time:"
         " they are noisy.** Compare runs side by side (below) rather than trusting one figure; the echo"
         " figures are ratios against the bare library measured in the same run, which cancels part of"
         " the noise, and the median of several repetitions."),
        "",
        "## Machine",
        "",
        "| CPU | cores | Python | OS | date | load average at the start (1/5/15 min) | barmaid measured |",
        "|---|---|---|---|---|---|---|",
        f"| {m['cpu']} | {m['cores']} | {m['python']} | {m['os']} | {m['date']} | {m['load']} | {m.get('code', '?')} |",
        "",
        f"## Latest run{' (--quick)' if quick else ''}",
        "",
        table(rows),
        "",
        "## Missed targets",
        "",
        ("Every target was met." if not missed else
         "\n".join(f"- {r.figure}: {r.measured} (target {r.target})" for r in missed)),
        "",
        NOTES_BEGIN,
        notes.strip() or "_No analysis written yet._",
        NOTES_END,
        "",
        "## Full runs side by side" if any(not r.get("quick") for r in runs) else "## This run",
        "",
        compared(runs),
        "",
        METHOD.format(block=RT_BLOCK, rt=sizes.rt_messages, warmup=sizes.warmup, reps=sizes.reps,
                      clients=sizes.tp_clients, per=sizes.tp_messages, pours=sizes.pours, stops=sizes.stops,
                      idle=sizes.idle_seconds, starts=sizes.starts),
        f"{RUNS_MARK} {json.dumps(runs)} -->",
        "",
    ]
    return "\n".join(parts)


def write_report(path: Path, machine_info: dict[str, str], res: Results, sizes: Sizes, quick: bool) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    notes = ""
    if NOTES_BEGIN in old and NOTES_END in old:
        notes = old.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    runs: list[dict] = []
    if RUNS_MARK in old:
        try:
            runs = json.loads(old.split(RUNS_MARK, 1)[1].rsplit("-->", 1)[0])
        except ValueError:
            runs = []
    run = {"machine": machine_info, "quick": quick, "rows": [asdict(r) for r in res.rows]}
    if not quick:
        runs = [*runs, run][-KEEP_RUNS:]
    path.write_text(render(machine_info, res.rows, runs or [run], notes, sizes, quick), encoding="utf-8")
    print(f"\nwrote {path}")


# ---- main -------------------------------------------------------------------------------------


def watchdog(seconds: float) -> None:
    def fire() -> None:
        print(f"\nbench: still running after {seconds:.0f} s; stopping everything", file=sys.stderr, flush=True)
        for process in list(Process.live):
            process.popen.kill()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke check (< 30 s)")
    parser.add_argument("--output", type=Path,
                        help=f"where to write the report (default {DEFAULT_OUTPUT.relative_to(ROOT)} for a full run;"
                             " nothing for --quick)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    output = None if args.no_write else (args.output or (None if args.quick else DEFAULT_OUTPUT))
    watchdog(sizes.deadline)
    machine_info = machine()
    print("barmaid benchmark" + (" (--quick)" if args.quick else ""), machine_info, flush=True)
    res = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="barmaid-bench-") as tmp, FakePigpiod() as daemon, FakeRgpiod() as lg:
        workdir = Path(tmp)
        pigpio = {"driver": {"kind": "pigpio", "host": "127.0.0.1", "port": daemon.port},
                  "limits": {"max_cup_size": 5.0}, "pumps": pumps_config()}
        try:
            bare, bare_url = start_bare(workdir)
            sim, sim_url = start_barmaid("barmaid-sim", workdir, pumps=pumps_config())
            pig, pig_url = start_barmaid("barmaid-pigpio", workdir, server={"status_interval": 0.1}, **pigpio)

            print("1. echo: barmaid (simulated pumps) against the bare websocket-server", flush=True)
            bench_echo(sizes, sim_url, bare_url, {"barmaid": sim.pid, "bare": bare.pid}, res)
            res.raw["rss_bare_mb"] = proc_status(bare.pid, "VmRSS") / 1024
            bare.stop()

            print("2. pump timing through the fake pigpio daemon", flush=True)
            bench_pours(sizes, pig_url, daemon, res)
            bench_stops(sizes, pig_url, daemon, res)
            for interval, seconds in sizes.jitter:
                if interval == 0.1:
                    bench_jitter(pig_url, interval, seconds, res)
                else:
                    other, other_url = start_barmaid(f"barmaid-pigpio-{interval:g}", workdir,
                                                     server={"status_interval": interval}, **pigpio)
                    try:
                        bench_jitter(other_url, interval, seconds, res)
                    finally:
                        other.stop()

            print("2b. pump timing through the fake rgpiod", flush=True)
            rgpio = {**pigpio, "driver": {"kind": "rgpio", "host": "127.0.0.1", "port": lg.port}}
            rg, rg_url = start_barmaid("barmaid-rgpio", workdir, server={"status_interval": 0.1}, **rgpio)
            bench_rgpio(sizes, rg_url, lg, res)

            print("3. volumes: one- and two-point calibration of pumps with start-up times", flush=True)
            bench_volume(workdir, res)

            print("4. idle CPU and memory", flush=True)
            bench_idle(sizes, {"simulated": sim.pid, "pigpio": pig.pid, "rgpio": rg.pid},
                       {"simulated": sim_url, "pigpio": pig_url, "rgpio": rg_url}, res)
            res.add("rss_bare", "resident memory, bare websocket-server echo (for scale)",
                    f"{res.raw['rss_bare_mb']:.1f} MB")

            print("5. start-up of serve and off", flush=True)
            bench_startup(sizes, workdir, pigpio, res)
        except BaseException:
            for process in list(Process.live):
                print(f"--- {process.name} (last lines) ---\n{process.tail()}", file=sys.stderr)
            raise
        finally:
            for process in list(Process.live):
                process.stop()
    print(f"\ndone in {time.monotonic() - started:.0f} s")
    print_table(res.rows)
    if output:
        write_report(output, machine_info, res, sizes, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs `python -m barmaid ...` in a subprocess, always from this working tree.

The checkout may also be installed (a wheel in CI, an older copy in the virtual environment);
a subprocess must test the code beside these tests, not that copy. `environment()` puts the
checkout first on PYTHONPATH; conftest applies it to `os.environ` once, so that every child
process of the suite (`-c` snippets and scripts too) imports the working tree's barmaid.

The environment is read when a process starts, not when this module is imported: a child must
see what the test set, above all its own BARMAID_DATA_DIR (conftest's `data_dir`), or it would
keep its database and lock in the user's data directory, shared with every other test.

The environment also lets Python write bytecode where PYTHONDONTWRITEBYTECODE is set (some
machines set it to keep source trees clean): without a bytecode cache each pytest-xdist worker
rewrites and compiles every test module again (about 4 s of CPU each on a 2-core machine), and each
of the barmaid processes the suite starts compiles barmaid again (about 0.1 s each). The bytecode
goes where Python puts it by default, the `__pycache__` folders .gitignore lists.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The checkout: the folder holding barmaid/ and tests/.
ROOT = Path(__file__).resolve().parent.parent.parent

#: Start-up, one exchange and shutdown take well under a second; this only bounds a hang.
PROCESS_TIMEOUT = 20.0


def environment() -> dict[str, str]:
    """The environment a barmaid subprocess gets: this process's, as the test has it now, with
    the checkout first on PYTHONPATH and bytecode written (an empty PYTHONDONTWRITEBYTECODE
    counts as unset)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *rest])}
    if env.get("PYTHONDONTWRITEBYTECODE"):
        env["PYTHONDONTWRITEBYTECODE"] = ""
    return env


def process_config(data_dir: Path, port: int, pumps: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """The config of a real barmaid process: its data directory, 127.0.0.1:`port`, statuses every
    50 ms, these pumps (and any other top-level keys)."""
    return {
        "data_dir": str(data_dir),
        "server": {"host": "127.0.0.1", "port": port, "status_interval": 0.05},
        "pumps": pumps,
        **more,
    }


def command(*args: str) -> list[str]:
    """The command line of `barmaid ARGS`, run by this interpreter."""
    return [sys.executable, "-m", "barmaid", *args]


def run(*args: str, cwd: Path = ROOT, stdin: str = "", timeout: float = PROCESS_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs `barmaid ARGS` to its end; its output as text."""
    return subprocess.run(
        command(*args), cwd=cwd, env=environment(), input=stdin, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )


def spawn(*args: str, cwd: Path = ROOT, **kwargs: Any) -> subprocess.Popen:
    """Starts `barmaid ARGS` (text pipes unless told otherwise); the caller kills and waits for it."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(command(*args), cwd=cwd, env=environment(), text=True, **kwargs)


class Process:
    """`python -m barmaid serve ARGS`, once it logged that it listens.

    A thread reads its log (stderr) to the end, so a barmaid that logs a lot never blocks on a
    full pipe: `lines` is what it logged until it listened, `log` everything so far.
    """

    def __init__(self, *args: str, cwd: Path = ROOT) -> None:
        self.popen = spawn("serve", *args, cwd=cwd)
        self.lines: list[str] = []
        self._log: list[str] = []
        self._started = threading.Event()  # set once it listens, or its log ended without it
        self._reader = threading.Thread(target=self._read, name="barmaid-log", daemon=True)
        self._reader.start()
        if not self._started.wait(PROCESS_TIMEOUT) or not self.lines or "listening" not in self.lines[-1]:
            self.kill()
            raise AssertionError(f"barmaid did not start (exit status {self.popen.returncode}): {self.log}")

    @property
    def log(self) -> str:
        return "".join(self._log)

    @property
    def port(self) -> int:
        """The port it said it listens on."""
        listening = re.search(r"listening on ws://[^ ]*:(\d+)", self.lines[-1])
        assert listening, self.lines[-1]
        return int(listening.group(1))

    def _read(self) -> None:
        for line in self.popen.stderr:
            self._log.append(line)
            if not self._started.is_set():
                self.lines.append(line)
                if "listening" in line:
                    self._started.set()
        self._started.set()

    def stop(self, signum: int) -> tuple[int, float]:
        """Sends the signal; returns the exit status and how long the exit took (its log read to the end)."""
        sent = time.monotonic()
        self.popen.send_signal(signum)
        status = self.popen.wait(PROCESS_TIMEOUT)
        took = time.monotonic() - sent
        self._reader.join(PROCESS_TIMEOUT)
        return status, took

    def crash(self) -> None:
        """kill -9: no handler runs, no pump is switched off, no record is finished."""
        self.popen.kill()
        assert self.popen.wait(5) == -signal.SIGKILL

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(5)


@contextmanager
def serving(config: Path, *args: str) -> Iterator[Process]:
    """A barmaid process serving `config`, once it says it listens; killed at the end."""
    process = Process("--config", str(config), *args)
    try:
        yield process
    finally:
        process.kill()

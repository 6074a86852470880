"""Runs `python -m barmaid ...` in a subprocess, always from this working tree.

The checkout may also be installed (a wheel in CI, an older copy in the virtual environment);
a subprocess must test the code beside these tests, not that copy. `ENV` puts the checkout first
on PYTHONPATH; conftest applies it to `os.environ` so that every child process of the suite
(the pytest-xdist workers, `-c` snippets and scripts too) imports the working tree's barmaid.

`ENV` also lets Python write bytecode where PYTHONDONTWRITEBYTECODE is set (some machines set it
to keep source trees clean): without a bytecode cache each pytest-xdist worker rewrites and
compiles every test module again (about 4 s of CPU each on a 2-core machine), and each of the
barmaid processes the suite starts compiles barmaid again (about 0.1 s each). The bytecode goes
where Python puts it by default, the `__pycache__` folders .gitignore lists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

#: The checkout: the folder holding barmaid/ and tests/.
ROOT = Path(__file__).resolve().parent.parent.parent

#: Start-up, one exchange and shutdown take well under a second; this only bounds a hang.
PROCESS_TIMEOUT = 20.0


def working_tree_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the checkout first on PYTHONPATH, and bytecode written (an empty
    PYTHONDONTWRITEBYTECODE counts as unset)."""
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    env = {**environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *rest])}
    if env.get("PYTHONDONTWRITEBYTECODE"):
        env["PYTHONDONTWRITEBYTECODE"] = ""
    return env


#: The environment every barmaid subprocess gets.
ENV = working_tree_env(os.environ)


def command(*args: str) -> list[str]:
    """The command line of `barmaid ARGS`, run by this interpreter."""
    return [sys.executable, "-m", "barmaid", *args]


def run(*args: str, cwd: Path = ROOT, stdin: str = "", timeout: float = PROCESS_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs `barmaid ARGS` to its end; its output as text."""
    return subprocess.run(
        command(*args), cwd=cwd, env=kwargs.pop("env", ENV), input=stdin, capture_output=True, text=True,
        timeout=timeout, **kwargs,
    )


def spawn(*args: str, cwd: Path = ROOT, **kwargs: Any) -> subprocess.Popen:
    """Starts `barmaid ARGS` (text pipes unless told otherwise); the caller kills and waits for it."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(command(*args), cwd=cwd, env=kwargs.pop("env", ENV), text=True, **kwargs)


class Process:
    """`python -m barmaid serve --config PATH`; `lines` is what it logged until it listened."""

    def __init__(self, config: Path) -> None:
        self.popen = spawn("serve", "--config", str(config))
        self.lines: list[str] = []
        for line in self.popen.stderr:
            self.lines.append(line)
            if "listening" in line:
                return
        raise AssertionError(f"barmaid did not start (exit status {self.popen.wait(5)}): {''.join(self.lines)}")


@pytest.fixture
def barmaid_process(tmp_path):
    """Starts real barmaid processes from a config dict; kills whatever is left at teardown."""
    started: list[Process] = []

    def start(config: dict[str, Any]) -> Process:
        path = tmp_path / "process.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        started.append(Process(path))
        return started[-1]

    yield start
    for process in started:
        process.popen.kill()
        process.popen.wait(5)

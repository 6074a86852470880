"""Running a command-line entry point (`main(argv)`) inside the test process.

The same code as `python -m barmaid ...`, without an interpreter start-up each time (about 0.6 s
of CPU on a loaded 2-core machine); what needs a process of its own uses support.processes.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import pytest


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
    """Calls a `main(argv)` in this process and captures what it printed; argparse's exit on a bad
    command line counts as its exit status."""
    capsys.readouterr()
    try:
        status = main(args)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return Ran(status, out, err)

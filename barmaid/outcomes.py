"""The words for what an action is and how it ended, shared by the machine, the store and the wire.

Both are `str` enums: they compare equal to, and serialise as, the protocol's words.
"""

from __future__ import annotations

from enum import Enum


class ActionKind(str, Enum):
    """A blocking action: what the machine is busy with."""

    BLEND = "blend"
    REFILL = "refill"
    PRIME = "prime"
    CALIBRATE = "calibrate"
    CLEAN = "clean"

    def __str__(self) -> str:
        return self.value


class Outcome(str, Enum):
    """How an action ended; the final status and the history use these words."""

    #: Still pouring (a history row only).
    RUNNING = "running"
    #: Ran to its planned end.
    COMPLETED = "completed"
    #: A client sent stop.
    STOPPED = "stopped"
    #: barmaid itself was stopped (SIGTERM, Ctrl-C) mid-action.
    SHUT_DOWN = "shut down"
    #: The pump hardware went away mid-action; counted as the most it can have poured.
    LOST = "lost"
    #: It could not start, or its clock failed; nothing moved, or it was switched off at once.
    FAILED = "failed"
    #: A crash or power cut ended barmaid mid-action; found and counted at the next start.
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

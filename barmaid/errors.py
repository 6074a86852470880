"""One exception tree for barmaid, so callers can catch by meaning.

Leaves also subclass the matching builtin (gpiozero's habit), so generic code still works. Every
error carries a machine-readable `code`, the word a GUI reads in an `error` reply's data instead
of parsing the English `msg`.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

#: The words an `error` reply's `code` can be.
ErrorCode = Literal["busy", "invalid", "unavailable", "token", "storage", "bottle", "internal"]


class BarmaidError(Exception):
    """Base of every error barmaid raises on purpose."""

    #: The `code` of the error reply: busy, invalid, unavailable, token, storage, bottle, internal.
    code: ClassVar[ErrorCode] = "internal"


class ConfigError(BarmaidError, ValueError):
    """The configuration file or states.yaml is wrong; the message names the key."""

    code: ClassVar[ErrorCode] = "invalid"


class BadMessage(BarmaidError, ValueError):
    """A client sent a frame we cannot act on; the message is sent back to it as is."""

    code: ClassVar[ErrorCode] = "invalid"


class TokenRequired(BadMessage):
    """A guarded message came from a client that has not presented server.token (or a wrong one)."""

    code: ClassVar[ErrorCode] = "token"


class Busy(BarmaidError, RuntimeError):
    """A blocking action was asked for while another one runs."""

    code: ClassVar[ErrorCode] = "busy"

    def __init__(self, msg: str, retry_in: int = 0) -> None:
        super().__init__(msg)
        #: Whole seconds until the running action ends.
        self.retry_in = retry_in


class PumpsUnavailable(BarmaidError, RuntimeError):
    """The pump hardware (the pigpio or rgpio daemon) cannot be reached right now."""

    code: ClassVar[ErrorCode] = "unavailable"

    def __init__(self, msg: str, maybe_started: bool = False) -> None:
        super().__init__(msg)
        #: True when the pour was handed to the daemon but its answer never came: the pumps may
        #: have run, so the pour must be counted as the most it can have poured.
        self.maybe_started = maybe_started


class PourRejected(BarmaidError, ValueError):
    """A pour the driver cannot carry out exactly (too long, too many pulses)."""

    code: ClassVar[ErrorCode] = "invalid"


class BottleTooLow(PourRejected):
    """A pour needs more than a tracked bottle holds; nothing moved."""

    code: ClassVar[ErrorCode] = "bottle"


class StoreError(BarmaidError, RuntimeError):
    """The data directory cannot be written (read-only, full, locked); nothing was poured."""

    code: ClassVar[ErrorCode] = "storage"


def error_code(exc: Optional[BaseException]) -> ErrorCode:
    """The protocol's code for an exception: its own for barmaid's, `internal` for anything else."""
    return exc.code if isinstance(exc, BarmaidError) else "internal"

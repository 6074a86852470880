"""One exception tree for barmaid, so callers can catch by meaning.

Leaves also subclass the matching builtin (gpiozero's habit), so generic code still works.
"""


class BarmaidError(Exception):
    """Base of every error barmaid raises on purpose."""


class ConfigError(BarmaidError, ValueError):
    """The configuration file or states.yaml is wrong; the message names the key."""


class BadMessage(BarmaidError, ValueError):
    """A client sent a frame we cannot act on; the message is sent back to it as is."""


class Busy(BarmaidError, RuntimeError):
    """A blocking action was asked for while another one runs."""


class PumpsUnavailable(BarmaidError, RuntimeError):
    """The pump hardware (the pigpio daemon) cannot be reached right now."""


class PourRejected(BarmaidError, ValueError):
    """A pour the driver cannot carry out exactly (too long, too many pulses)."""


class StoreError(BarmaidError, RuntimeError):
    """The data directory cannot be written (read-only, full); nothing was poured."""

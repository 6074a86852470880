"""What the controller says in domain terms: the action it runs, the events it reports to every
client, its state, and what a stop cut short. barmaid.server turns each into frames; nothing
here knows the wire.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional, Union

from .drivers.base import Span
from .outcomes import ActionKind, Outcome
from .planning import poured
from .pumpbook import Pump


@dataclass
class Action:
    """One blocking action in progress: which pumps run when, how much they pour, from when."""

    kind: ActionKind
    #: Per pump, when it is on, counted from t0.
    spans: dict[int, Span]
    #: Millilitres each pump pours if it runs to the end.
    ml: dict[int, float]
    t0: float = 0.0
    pour_id: int = 0
    #: Started by a barmaid that crashed; this one found it still playing.
    adopted: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    #: Each pump's start-up time: seconds on before it pours (missing: 0).
    dead_s: dict[int, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(span.stop for span in self.spans.values())

    @property
    def end(self) -> float:
        return self.t0 + self.seconds

    def poured(self, elapsed: float) -> dict[int, float]:
        """Millilitres each pump has poured `elapsed` seconds after the start (planning.poured)."""
        return poured(self.spans, self.ml, self.dead_s, elapsed)


@dataclass(frozen=True)
class Progress:
    """An action's countdown, for every client: at its start, every status_interval, and once at
    its end, with its outcome."""

    kind: ActionKind
    remaining: int
    #: Whole seconds the action lasts (rounded up).
    initial: int
    outcome: Optional[Outcome] = None


@dataclass(frozen=True)
class HardwareLost:
    """The pump hardware went away while an action ran; the action ended (outcome lost)."""

    kind: ActionKind
    reason: str


#: What the controller reports to every client.
Event = Union[Progress, HardwareLost]


@dataclass(frozen=True)
class Snapshot:
    """The controller's state now: for `state`, and for every client watching it."""

    #: The state machine's state: idle, blending, ...
    state: str
    #: The running action; None when idle.
    action: Optional[ActionKind]
    #: Whole seconds until it ends (rounded up); 0 when idle.
    remaining: int
    #: False while the pump hardware cannot be reached.
    hardware: bool
    pumps: list[Pump]
    #: Simulated pumps only: what each really poured since the start; None with real pumps.
    sim_poured_ml: Optional[list[float]] = None


@dataclass(frozen=True)
class StoppedAction:
    """What a stop cut short: the action and how long it had run."""

    kind: ActionKind
    after: float

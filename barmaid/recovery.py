"""Crash recovery: what becomes of the pours a barmaid that stopped left unfinished in the store.

The last one, if the hardware still plays it, is adopted: the machine is busy with it until it
ends, then records it. Any other is counted as poured up to now (exact within one boot, in full
when its time is unknown or the daemon is out of reach), never more than planned, and marked
interrupted. The controller carries out what `recover` decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from .action import Action
from .drivers.base import Driver, Span
from .outcomes import ActionKind
from .store import PourRecord

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


@dataclass
class Recovery:
    """What to do with each unfinished pour."""

    #: The last pour, still playing: the machine is busy with it until it ends.
    adopted: Optional[Action] = None
    #: Each pour a crash cut off, with the seconds it is counted to have run.
    interrupted: list[tuple[Action, float]] = field(default_factory=list)
    #: Pours that move none of today's pumps: recorded as failed.
    empty: list[Action] = field(default_factory=list)


def recover(
    unfinished: Sequence[PourRecord], now: float, boot_id: Optional[str], driver: Driver, flows: Sequence[float]
) -> Recovery:
    """Decides, for the unfinished pours (oldest first), which is adopted and how long each other ran.

    Args:
        now: the time on the clock the records' mono_start was taken by.
        boot_id: this boot's; a pour of another boot ran for a time not known.
        driver: the pumps (whether the daemon is reachable, whether it still plays a pour).
        flows: each of today's pumps' flow, for pours recorded before their spans were.
    """
    found = Recovery()
    for record in unfinished:
        action = action_of(record, flows)
        elapsed = record.elapsed(now, boot_id)
        if not action.spans:
            found.empty.append(action)
            continue
        if record is unfinished[-1] and elapsed is not None and driver.playing():
            action.t0, action.adopted = now - elapsed, True
            log.warning("the %s started %.1f s ago by a barmaid that stopped is still pouring: adopted,"
                        " it ends in %.1f s", action.kind, elapsed, max(0.0, action.seconds - elapsed))
            found.adopted = action
            continue
        # A daemon out of reach may still be playing it to its end: count it in full then too.
        if elapsed is None or not driver.available:
            ran, unknown = action.seconds, True
        else:
            ran, unknown = min(elapsed, action.seconds), False
        found.interrupted.append((action, ran))
        log.warning(
            "the %s started at %s was cut off by a crash; counted as poured %s: %s ml of %s ml planned",
            record.action, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started)),
            "in full (its running time is unknown)" if unknown else f"for {ran:.3f} s",
            action.poured(ran), action.ml,
        )
    return found


def action_of(record: PourRecord, flows: Sequence[float]) -> Action:
    """The action an unfinished pour record describes, on today's pumps (`flows`: one per pump)."""
    ml = {p: v for p, v in record.planned_ml.items() if p < len(flows) and v > 0}
    if record.spans is not None:
        spans = {p: span for p, span in record.spans.items() if p in ml}
    else:  # recorded before spans were: all together, at today's flow
        spans = {p: Span(0.0, v / flows[p]) for p, v in ml.items()}
    return Action(ActionKind(record.action), spans, {p: ml[p] for p in spans}, pour_id=record.id)

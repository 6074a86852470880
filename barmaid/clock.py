"""The one clock barmaid times things by: now, and a call at a given time.

The controller, the action clock (status ticks, the end of an action) and the simulated pumps
ask a Clock rather than the time module, so their logic runs in fake time in tests: a FakeClock
stands still until a test advances it, and the calls due by then run in the test's own thread,
one after the other in time order. What such a test asserts is exact, however busy the machine.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable, Optional, Protocol

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


class Timer(Protocol):
    """A call a clock will make; cancel() before it runs and it never does."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a clock that never goes back (time.monotonic for the real one)."""
        ...

    def call_at(self, at: float, call: Callable[[], None], name: str = "barmaid-clock") -> Timer:
        """Calls `call` once, as soon as now() >= at, on a thread of the clock's choosing."""
        ...


class _Call:
    def __init__(self, at: float, order: int, call: Callable[[], None]) -> None:
        self.at, self.order, self.call = at, order, call
        self.cancelled = False

    def __lt__(self, other: _Call) -> bool:
        return (self.at, self.order) < (other.at, other.order)

    def cancel(self) -> None:
        self.cancelled = True


class RealClock:
    """time.monotonic, and one thread that makes this clock's calls, one after another.

    Each part that times things (the controller, the simulated pumps) has its own RealClock, so a
    call that waits (for the controller's lock, say) never delays another part's. The thread starts
    with the first call and ends when none is left.
    """

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, at: float, call: Callable[[], None], name: str = "barmaid-clock") -> Timer:
        with self._cond:
            entry = _Call(at, next(self._order), call)
            heapq.heappush(self._calls, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()
            self._cond.notify()
            return entry

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._calls and self._calls[0].cancelled:
                    heapq.heappop(self._calls)
                if not self._calls:
                    self._thread = None
                    return
                wait = self._calls[0].at - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                due = heapq.heappop(self._calls)
                self._cond.release()
                try:
                    due.call()
                except Exception:
                    log.exception("a call at %.3f on the clock failed", due.at)
                finally:
                    self._cond.acquire()


class FakeClock:
    """A clock whose time moves only in advance(); due calls run there, in time order."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._calls: list[_Call] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def call_at(self, at: float, call: Callable[[], None], name: str = "barmaid-clock") -> Timer:
        with self._lock:
            entry = _Call(at, next(self._order), call)
            heapq.heappush(self._calls, entry)
            return entry

    def next_call(self) -> Optional[float]:
        """When the next call is due; None when none is waiting."""
        with self._lock:
            pending = [c.at for c in self._calls if not c.cancelled]
            return min(pending) if pending else None

    def advance(self, seconds: float) -> None:
        """Moves the time on by `seconds`, making every call due by then at its own time
        (calls that those calls add are made too, if they fall due before the end)."""
        with self._lock:
            target = self._now + seconds
        while True:
            with self._lock:
                if not self._calls or self._calls[0].at > target:
                    self._now = target
                    return
                due = heapq.heappop(self._calls)
                if due.cancelled:
                    continue
                self._now = max(self._now, due.at)
            due.call()

    def run(self, limit: float = 3600.0) -> None:
        """Advances until no call is waiting (at most `limit` seconds, then fails)."""
        start = self.now()
        while (at := self.next_call()) is not None:
            if at - start > limit:
                raise RuntimeError(f"calls still due after {limit:g} s of fake time")
            self.advance(max(0.0, at - self.now()))

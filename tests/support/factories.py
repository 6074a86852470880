"""The shape of every factory fixture: a function that makes things (servers, clients, processes)
for a test, and everything it made closed at teardown, in the order it was made."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

T = TypeVar("T")


@contextmanager
def closing_all(make: Callable[..., T], close: Callable[[T], Any]) -> Iterator[Callable[..., T]]:
    """`make`, keeping what it returns; on exit, `close(thing)` for each.

    In a fixture: `with closing_all(Scripted, Scripted.close) as make: yield make`.
    """
    made: list[T] = []

    def make_one(*args: Any, **kwargs: Any) -> T:
        made.append(make(*args, **kwargs))
        return made[-1]

    try:
        yield make_one
    finally:
        for thing in made:
            close(thing)

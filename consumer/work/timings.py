"""Where a request's wall time went: a few named parts, cheap enough to keep on in production.

A slice answers with its parts (`/work`'s JSON body and its log line), so the benchmark and an
operator reading logs see the same numbers: the time inside `run_job` against the overhead around it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Stopwatch:
    """Accumulates seconds per named part; a part measured twice adds up."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.parts: dict[str, float] = {}  # part → seconds

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - started)

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def seconds(self, name: str) -> float:
        return self.parts.get(name, 0.0)

    def as_json(self) -> dict[str, float]:
        return {name: round(seconds, 6) for name, seconds in self.parts.items()}

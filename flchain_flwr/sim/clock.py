"""The simulated clock: it moves only when someone waits on it.

Waiting jumps straight to the next event (a reply falling due, a node joining or
leaving), so a run costs the real time of its work and nothing else.
"""

from __future__ import annotations

import math
from typing import Protocol


class EventSource(Protocol):
    """What the clock waits on: something that knows its next event."""

    def next_event_time(self) -> float:
        """Time of the next event after now (inf if none)."""


class VirtualClock:
    """Simulated seconds, advanced by :meth:`wait` to the grid's next event."""

    def __init__(self, grid: EventSource) -> None:
        self._grid = grid
        self.time = 0.0

    def now(self) -> float:
        """Current simulated time."""
        return self.time

    def wait(self, deadline: float) -> None:
        """Jump to the next event, or to ``deadline`` if that comes first."""
        target = min(deadline, self._grid.next_event_time())
        if target > self.time and math.isfinite(target):
            self.time = target

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (e.g. a consensus delay)."""
        if seconds < 0:
            raise ValueError("cannot move the clock backwards")
        self.time += seconds

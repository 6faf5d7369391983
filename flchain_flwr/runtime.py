"""Clocks and result reporting shared by strategies and simulators.

A strategy never calls ``time`` directly: it asks the grid for a clock. Flower's own
grids have none, so they get the wall clock; the virtual-clock grid in
:mod:`flchain_flwr.sim` supplies simulated time, so the same strategy loop runs
unchanged under ``flwr run``, in deployment and in the simulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Source of time for a strategy loop."""

    def now(self) -> float:
        """Return the current time in seconds."""

    def wait(self, deadline: float) -> None:
        """Block until something may have changed, but not past ``deadline``.

        A wall clock sleeps for a short poll interval; a virtual clock jumps to
        its next event (a reply arriving, a node joining) or to ``deadline``.
        """


class WallClock:
    """Monotonic wall-clock time, polling at a fixed interval."""

    def __init__(self, poll_interval: float = 0.1) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.poll_interval = poll_interval

    def now(self) -> float:
        """Return monotonic wall time in seconds."""
        return time.monotonic()

    def wait(self, deadline: float) -> None:
        """Sleep one poll interval, or less if ``deadline`` comes first."""
        time.sleep(max(0.0, min(self.poll_interval, deadline - self.now())))


def clock_of(grid: object, poll_interval: float = 0.1) -> Clock:
    """Return the grid's clock if it has one, else a wall clock."""
    clock = getattr(grid, "clock", None)
    if isinstance(clock, Clock):
        return clock
    return WallClock(poll_interval)


_RESULT_SINK: ContextVar[list[Any] | None] = ContextVar(
    "flchain_result_sink", default=None
)


def publish_result(result: Any) -> None:
    """Hand a finished strategy's result to whoever is collecting (no-op otherwise)."""
    sink = _RESULT_SINK.get()
    if sink is not None:
        sink.append(result)


@contextmanager
def collect_results() -> Iterator[list[Any]]:
    """Collect every result published by strategies run inside this block."""
    sink: list[Any] = []
    token = _RESULT_SINK.set(sink)
    try:
        yield sink
    finally:
        _RESULT_SINK.reset(token)

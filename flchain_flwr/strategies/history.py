"""What the server has seen of each node: accepted updates and round-trip times.

Straggler policies (:mod:`.fedsa`, :mod:`.bafl`) read it to set a node's train
config. Everything is updated in O(1) per event, so a policy's choice costs the
same in a federation of ten nodes or a million.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class NodeRecord:
    """One node's history."""

    updates: int = 0
    """Updates accepted into the buffer."""
    dispatched_at: float | None = None
    """When the train message now in flight was sent (``None``: none is)."""
    work: float = 1.0
    """Local work that message asked for (epochs or steps; 1 when not set)."""
    seconds_per_work: float | None = None
    """Smoothed round-trip seconds per unit of local work."""


class NodeHistory:
    """Per-node counts and speeds, with running totals over all nodes.

    Parameters
    ----------
    smoothing : float (default: 0.5)
        Weight of the newest round trip in each node's moving average, in (0, 1].
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.nodes: dict[int, NodeRecord] = {}
        self.total_updates = 0
        self._log_speed_sum = 0.0  # sum of log(seconds_per_work) over timed nodes
        self._timed = 0

    def dispatched(self, node_id: int, now: float, work: float = 1.0) -> None:
        """A train message asking for ``work`` went to ``node_id`` at ``now``."""
        record = self.nodes.setdefault(node_id, NodeRecord())
        record.dispatched_at, record.work = now, work

    def updated(self, node_id: int, now: float) -> None:
        """``node_id``'s update was accepted at ``now``: count it, time it."""
        record = self.nodes.setdefault(node_id, NodeRecord())
        record.updates += 1
        self.total_updates += 1
        if record.dispatched_at is None or record.work <= 0:
            return
        rate = max(now - record.dispatched_at, 0.0) / record.work
        record.dispatched_at = None
        if rate <= 0.0:
            return  # an instant reply says nothing about speed
        old = record.seconds_per_work
        new = rate if old is None else old + self.smoothing * (rate - old)
        if old is None:
            self._timed += 1
        else:
            self._log_speed_sum -= math.log(old)
        self._log_speed_sum += math.log(new)
        record.seconds_per_work = new

    def count_earlier(self, participation: Mapping[int, int]) -> None:
        """Add updates accepted before this run (a resumed run's, counted from
        its ledger); they are not timed."""
        for node_id, count in participation.items():
            self.nodes.setdefault(node_id, NodeRecord()).updates += count
            self.total_updates += count

    def failed(self, node_id: int) -> None:
        """``node_id``'s message failed: it is no longer timed."""
        record = self.nodes.get(node_id)
        if record is not None:
            record.dispatched_at = None

    def updates(self, node_id: int) -> int:
        """Accepted updates of ``node_id`` (0 if never heard of)."""
        record = self.nodes.get(node_id)
        return 0 if record is None else record.updates

    def mean_updates(self) -> float:
        """Mean accepted updates over every node dispatched to (0 if none)."""
        return self.total_updates / len(self.nodes) if self.nodes else 0.0

    def seconds_per_work(self, node_id: int) -> float | None:
        """``node_id``'s smoothed seconds per unit of work, if timed yet."""
        record = self.nodes.get(node_id)
        return None if record is None else record.seconds_per_work

    def typical_seconds_per_work(self) -> float | None:
        """The geometric mean of every timed node's seconds per unit of work."""
        if not self._timed:
            return None
        return math.exp(self._log_speed_sum / self._timed)

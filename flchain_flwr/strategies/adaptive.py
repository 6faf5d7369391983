"""A scheduling policy that sets per-node train configs for stragglers.

:class:`AdaptiveScheduling` picks nodes as its base policy does and lets
*adjusters* (:class:`~.fedsa.FedSALearningRate`,
:class:`~.bafl.AdaptiveLocalWork`) change each node's train config from what
the server has seen of it (:class:`~.history.NodeHistory`): its accepted
updates and round-trip times. The loop calls the hooks; nothing else changes.
"""

from __future__ import annotations

import random
from typing import Protocol

from flwr.app import ConfigRecord

from ..configvalues import checked_number
from .history import NodeHistory
from .nodes import NodePool
from .scheduling import RandomSample, SchedulingPolicy


def check_bounds(low: float, high: float) -> None:
    """``ValueError`` unless ``0 < low <= 1 <= high < inf`` (a per-node
    multiple of a base setting; numbers, not bools)."""
    checked_number(low, "low", low=0.0, high=1.0, low_open=True)
    checked_number(high, "high", low=1.0)


class ConfigAdjuster(Protocol):
    """Maps a node's history to train-config keys to override."""

    def adjust(
        self, node_id: int, history: NodeHistory, config: dict[str, object]
    ) -> dict[str, int | float]:
        """The keys to set in ``node_id``'s train config."""
        ...

    @property
    def spec(self) -> str:
        """The adjuster as its run-config string."""
        ...


class AdaptiveScheduling(SchedulingPolicy):
    """``base``'s choice of nodes; each node's train config from ``adjusters``.

    Parameters
    ----------
    adjusters : sequence of ConfigAdjuster
        Applied in order; a later one sees the keys an earlier one set.
    base : SchedulingPolicy (default: RandomSample())
        Which nodes train next.
    work_key : str | None (default: None)
        The train-config key holding a message's local work, by which a round
        trip is divided to time the node (``None``: every message is 1 unit).
        The loop passes the work its dispatch recorded to :meth:`on_dispatch`
        (:func:`~.nova.asked_work`: 1 unit where the value is not a finite
        number > 0, e.g. 0 or inf), the same work FedNova weighs by.
    history : NodeHistory | None (default: a new one)
        Where what is seen is kept (one per run).
    """

    def __init__(
        self,
        adjusters: list[ConfigAdjuster],
        base: SchedulingPolicy | None = None,
        work_key: str | None = None,
        history: NodeHistory | None = None,
    ) -> None:
        self.adjusters = list(adjusters)
        self.base = base or RandomSample()
        self.work_key = work_key
        self.history = history or NodeHistory()

    def select(self, pool: NodePool, capacity: int, rng: random.Random) -> list[int]:
        """The base policy's choice."""
        return self.base.select(pool, capacity, rng)

    def train_config(
        self, node_id: int, version: int, config: ConfigRecord
    ) -> ConfigRecord | None:
        """``config`` with each adjuster's keys for ``node_id``."""
        if not self.adjusters:
            return None
        values: dict[str, object] = dict(config)
        for adjuster in self.adjusters:
            values.update(adjuster.adjust(node_id, self.history, values))
        return ConfigRecord(values)  # type: ignore[arg-type]

    def on_dispatch(self, node_id: int, version: int, now: float, work: float) -> None:
        """Start timing ``node_id``'s round trip, of ``work`` units (the asked
        work the dispatch recorded: 1 where the work key's value is not a
        finite number > 0, e.g. 0 or inf)."""
        self.history.dispatched(node_id, now, work)

    def on_update(self, node_id: int, staleness: int, now: float) -> None:
        """Count ``node_id``'s accepted update and time its round trip."""
        self.history.updated(node_id, now)

    def on_failure(self, node_id: int, now: float) -> None:
        """Stop timing ``node_id``."""
        self.history.failed(node_id)

    def __repr__(self) -> str:
        specs = ", ".join(a.spec for a in self.adjusters)
        return f"AdaptiveScheduling([{specs}], base={self.base!r})"

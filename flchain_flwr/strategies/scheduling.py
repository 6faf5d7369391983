"""Scheduling policies: which free node trains next, and with what train config.

The event loop asks its policy two things each time it has capacity: which of
the eligible nodes to send the current model to (:meth:`SchedulingPolicy.select`)
and, per node, whether the train config should differ from the run's
(:meth:`SchedulingPolicy.train_config`: a per-node learning rate or amount of
local work). It also tells the policy what happened (dispatches, updates,
failures), so adaptive policies can learn from arrivals without touching the
loop.
"""

from __future__ import annotations

import random

from flwr.app import ConfigRecord

from .nodes import NodePool


class SchedulingPolicy:
    """Base policy: no per-node config, no learning. Subclasses pick nodes."""

    work_key: str | None = None
    """The train-config key holding the local work a message asks for
    (``None``: no per-node work; every message is 1 unit)."""

    def select(self, pool: NodePool, capacity: int, rng: random.Random) -> list[int]:
        """Return up to ``capacity`` nodes of ``pool`` to train next, in order.

        Called only with ``capacity >= 1`` and a non-empty pool. May remove the
        chosen nodes from ``pool``.
        """
        raise NotImplementedError

    def train_config(
        self, node_id: int, version: int, config: ConfigRecord
    ) -> ConfigRecord | None:
        """The train config for ``node_id``, or ``None`` to send ``config`` as is."""
        return None

    def on_dispatch(self, node_id: int, version: int, now: float, work: float) -> None:
        """A train message for ``version``, asking for ``work`` units of local
        work, went to ``node_id`` (or started there, if it was queued) at
        ``now``.

        ``work`` is the one the dispatch recorded
        (:func:`~.nova.asked_work` of the message's train config under
        :attr:`work_key`, also what work normalisation weighs by): the value
        if it is a finite number > 0, else 1 (so 0, a negative number, inf,
        NaN or a bool count as 1 unit).
        """

    def on_update(self, node_id: int, staleness: int, now: float) -> None:
        """An update from ``node_id`` was accepted into the buffer at ``now``."""

    def on_failure(self, node_id: int, now: float) -> None:
        """A message to ``node_id`` failed (error reply, TTL) at ``now``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomSample(SchedulingPolicy):
    """Uniformly random eligible nodes, O(1) per node chosen (the default).

    When every eligible node fits, all go, in id order, and no random number is
    drawn; otherwise each is drawn uniformly without replacement.
    """

    def select(self, pool: NodePool, capacity: int, rng: random.Random) -> list[int]:
        """Up to ``capacity`` nodes drawn uniformly from ``pool``."""
        if capacity >= len(pool):
            return sorted(pool)
        return [pool.pick(rng) for _ in range(capacity)]


class ShuffleAll(SchedulingPolicy):
    """Shuffle every eligible node, take the first ``capacity`` (O(eligible)).

    FedBuff's scheduling before version 0.2, kept so that earlier runs can be
    reproduced bit for bit with the same seed. Its cost grows with the number
    of eligible nodes on every dispatch: use :class:`RandomSample` for large
    populations.
    """

    def select(self, pool: NodePool, capacity: int, rng: random.Random) -> list[int]:
        """The first ``capacity`` nodes of a seeded shuffle of the sorted pool."""
        eligible = sorted(pool)
        rng.shuffle(eligible)
        return eligible[:capacity]


def scheduling_policy(name: str) -> SchedulingPolicy:
    """A policy by run-config name: ``random`` (default) or ``shuffle``."""
    policies: dict[str, type[SchedulingPolicy]] = {
        "random": RandomSample,
        "shuffle": ShuffleAll,
    }
    if name not in policies:
        raise ValueError(
            f"unknown scheduling policy {name!r}; expected one of {sorted(policies)}"
        )
    return policies[name]()

"""Participation-aware learning rates (FedSA).

FedSA (Ma et al., "FedSA: A Semi-Asynchronous Federated Learning Mechanism in
Heterogeneous Edge Computing", IEEE JSAC 39(12), 2021) sets each node's local
learning rate from its relative participation frequency: a node that updates
the global model rarely (a slow device) takes larger local steps, a frequent
one smaller, so that slow nodes' data is not under-learnt. Here the frequency
is the node's accepted updates over the mean of all nodes dispatched to (both
plus one, so that a new node counts as average), and the factor is bounded::

    lr_i = base_lr * clip((mean_j u_j + 1) / (u_i + 1), low, high)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..configvalues import checked_number
from ..numbertext import decimal_number, number_text
from .adaptive import check_bounds
from .history import NodeHistory


def participation_lr(
    base_lr: float, updates: int, mean_updates: float, low: float, high: float
) -> float:
    """``base_lr`` scaled by the inverse relative participation, within bounds."""
    factor = (mean_updates + 1.0) / (updates + 1.0)
    return base_lr * min(max(factor, low), high)


@dataclass(frozen=True)
class FedSALearningRate:
    """The ``lr`` key of each train config, from the node's participation.

    Parameters
    ----------
    base_lr : float
        The run's learning rate (the app's ``lr``: finite, > 0); a train
        config that already holds ``lr`` is scaled from that instead.
    low, high : float (default: 0.5, 2.0)
        Bounds on the factor, ``0 < low <= 1 <= high``, with ``base_lr *
        high`` finite.
    """

    base_lr: float
    low: float = 0.5
    high: float = 2.0
    key: str = "lr"

    def __post_init__(self) -> None:
        checked_number(self.base_lr, "base_lr", low=0.0, low_open=True)
        check_bounds(self.low, self.high)
        if not math.isfinite(self.base_lr * self.high):
            raise ValueError(
                f"base_lr * high must be finite (a node's lr), got "
                f"base_lr={self.base_lr!r}, high={self.high!r}"
            )

    def adjust(
        self, node_id: int, history: NodeHistory, config: dict[str, object]
    ) -> dict[str, int | float]:
        """``{"lr": ...}`` for ``node_id``."""
        base = config.get(self.key, self.base_lr)
        base_lr = float(base) if isinstance(base, int | float) else self.base_lr
        lr = participation_lr(
            base_lr,
            history.updates(node_id),
            history.mean_updates(),
            self.low,
            self.high,
        )
        return {self.key: lr}

    @property
    def spec(self) -> str:
        """``"fedsa:<low>:<high>"``."""
        return f"fedsa:{number_text(self.low)}:{number_text(self.high)}"


def fedsa_learning_rate(spec: str, base_lr: float) -> FedSALearningRate | None:
    """``""``/``"none"``: off; ``"fedsa"`` or ``"fedsa:<low>:<high>"``."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "fedsa" and len(params) in (0, 2):
        try:
            if not params:
                return FedSALearningRate(base_lr)
            return FedSALearningRate(
                base_lr, decimal_number(params[0]), decimal_number(params[1])
            )
        except ValueError as exc:
            raise ValueError(f"bad adaptive lr {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown adaptive lr {spec!r}; expected '', 'none', 'fedsa' or "
        "'fedsa:<low>:<high>'"
    )

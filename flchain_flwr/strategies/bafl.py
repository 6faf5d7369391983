"""Adaptive local work from measured round trips (BAFL).

BAFL (Feng et al., "BAFL: A Blockchain-Based Asynchronous Federated Learning
Framework", IEEE Trans. Computers 71(5), 2022) limits each device's local
iterations by its speed: fast devices do more local work, slow ones less, so
that updates arrive at a similar pace and slow devices are neither stale nor
rare. Here each node's round trip per unit of work (epochs or steps) is
measured and smoothed (:class:`~.history.NodeHistory`); a node is asked for the
work that would take the typical node (geometric mean over nodes) its base
round trip, within bounds::

    work_i = clip(round(base * typical / seconds_per_work_i),
                  ceil(low * base), floor(high * base)),   at least 1

A node not timed yet gets the base work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .adaptive import check_bounds
from .history import NodeHistory


def local_work(
    base: int, seconds_per_work: float, typical: float, low: float, high: float
) -> int:
    """The local work that evens out a node's round trip, within bounds."""
    lo = max(1, math.ceil(low * base))
    hi = max(lo, math.floor(high * base))
    wanted = round(base * typical / seconds_per_work)
    return int(min(max(wanted, lo), hi))


@dataclass(frozen=True)
class AdaptiveLocalWork:
    """The local-work key (``local-steps`` or ``local-epochs``) of each train config.

    Parameters
    ----------
    base : int
        The run's local work (the app's ``local-steps``, or ``local-epochs``).
    key : str (default: "local-steps")
        The train-config key the app reads.
    low, high : float (default: 0.25, 4.0)
        Bounds on the work, as multiples of ``base`` (``0 < low <= 1 <= high``).
    """

    base: int
    key: str = "local-steps"
    low: float = 0.25
    high: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.base, bool) or not isinstance(self.base, int):
            raise ValueError(f"base must be an int, got {self.base!r}")
        if self.base < 1:
            raise ValueError(f"base must be >= 1, got {self.base}")
        check_bounds(self.low, self.high)

    def adjust(
        self, node_id: int, history: NodeHistory, config: dict[str, object]
    ) -> dict[str, int | float]:
        """``{key: work}`` for ``node_id``."""
        mine = history.seconds_per_work(node_id)
        typical = history.typical_seconds_per_work()
        if mine is None or typical is None:
            return {self.key: self.base}
        return {self.key: local_work(self.base, mine, typical, self.low, self.high)}

    @property
    def spec(self) -> str:
        """``"bafl:<low>:<high>"``."""
        return f"bafl:{self.low:g}:{self.high:g}"


def bafl_local_work(spec: str, base: int, key: str) -> AdaptiveLocalWork | None:
    """``""``/``"none"``: off; ``"bafl"`` or ``"bafl:<low>:<high>"``."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "bafl" and len(params) in (0, 2):
        try:
            if not params:
                return AdaptiveLocalWork(base, key)
            return AdaptiveLocalWork(base, key, float(params[0]), float(params[1]))
        except ValueError as exc:
            raise ValueError(f"bad adaptive work {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown adaptive work {spec!r}; expected '', 'none', 'bafl' or "
        "'bafl:<low>:<high>'"
    )

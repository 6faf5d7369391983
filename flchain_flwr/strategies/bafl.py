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

A node not timed yet gets the base work. The work is a train config's integer
(int64, as the run config's ``local-steps``): ``high * base`` must not exceed
:data:`MAX_WORK`, so the upper bound is always one a message can carry. The
clip is taken before rounding, so a node timed as almost infinitely fast
gets the upper bound, not an overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..configvalues import checked_integer
from ..numbertext import decimal_number, number_text
from .adaptive import check_bounds
from .history import NodeHistory

MAX_WORK = 2**63 - 1
"""The most local work a node is asked: the largest integer of a run config
(int64), as its ``local-steps`` or ``local-epochs``."""


def local_work(
    base: int, seconds_per_work: float, typical: float, low: float, high: float
) -> int:
    """The local work that evens out a node's round trip, within bounds."""
    lo = max(1, math.ceil(low * base))
    hi = max(lo, math.floor(high * base))
    # clipped as a float, then rounded: the wanted work may exceed any int
    # (inf for a node timed as almost instant); rounding commutes with the clip
    return round(min(max(base * typical / seconds_per_work, lo), hi))


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
        Bounds on the work, as multiples of ``base`` (``0 < low <= 1 <= high``,
        ``high * base <= MAX_WORK``).
    """

    base: int
    key: str = "local-steps"
    low: float = 0.25
    high: float = 4.0

    def __post_init__(self) -> None:
        checked_integer(self.base, "base", minimum=1, maximum=MAX_WORK)
        check_bounds(self.low, self.high)
        if self.high * self.base > MAX_WORK:  # exact: a float against an int
            raise ValueError(
                f"high * base must be at most 2**63 - 1 (the largest local work a "
                f"train config holds), got high={self.high!r}, base={self.base}"
            )

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
        return f"bafl:{number_text(self.low)}:{number_text(self.high)}"


def bafl_local_work(spec: str, base: int, key: str) -> AdaptiveLocalWork | None:
    """``""``/``"none"``: off; ``"bafl"`` or ``"bafl:<low>:<high>"``."""
    name, *params = spec.strip().split(":")
    if name in ("", "none") and not params:
        return None
    if name == "bafl" and len(params) in (0, 2):
        try:
            if not params:
                return AdaptiveLocalWork(base, key)
            return AdaptiveLocalWork(
                base, key, decimal_number(params[0]), decimal_number(params[1])
            )
        except ValueError as exc:
            raise ValueError(f"bad adaptive work {spec!r}: {exc}") from None
    raise ValueError(
        f"unknown adaptive work {spec!r}; expected '', 'none', 'bafl' or "
        "'bafl:<low>:<high>'"
    )

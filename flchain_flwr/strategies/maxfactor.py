"""The bound ``max`` of a weight factor.

Fairness weighting (``"inverse[:max]"``, :mod:`.fairness`) and capped work
normalisation (``"fednova:max"``, :mod:`.nova`) clip each update's factor to
``[1/max, max]``. Both check the bound here, and write it into their spec
exactly (:func:`~flchain_flwr.numbertext.number_text`).
"""

from __future__ import annotations

from ..configvalues import checked_number


def check_max_factor(max_factor: float) -> None:
    """``ValueError`` unless ``max_factor`` is a finite number >= 1 (not a bool)."""
    checked_number(max_factor, "max_factor", low=1.0)


def clip_factor(factor: float, max_factor: float) -> float:
    """``factor`` within ``[1/max_factor, max_factor]``."""
    return min(max(factor, 1.0 / max_factor), max_factor)

"""The bound ``max`` of a weight factor, as a policy spec writes it.

Fairness weighting (``"inverse[:max]"``, :mod:`.fairness`) and capped work
normalisation (``"fednova:max"``, :mod:`.nova`) clip each update's factor to
``[1/max, max]``. Both check the bound, and write it into their spec, here:
the spec is what a ledger records and ``verify --replay`` parses back, so it
must give back exactly the bound the server used.
"""

from __future__ import annotations

import math


def check_max_factor(max_factor: float) -> None:
    """``ValueError`` unless ``max_factor`` is a finite number >= 1."""
    if not (math.isfinite(max_factor) and max_factor >= 1.0):
        raise ValueError(f"max_factor must be finite and >= 1, got {max_factor}")


def clip_factor(factor: float, max_factor: float) -> float:
    """``factor`` within ``[1/max_factor, max_factor]``."""
    return min(max(factor, 1.0 / max_factor), max_factor)


def max_factor_text(max_factor: float) -> str:
    """``max_factor`` as a spec writes it: short (``"4"``) where that reads
    back as the same float, else all its digits."""
    short = f"{max_factor:g}"
    return short if float(short) == max_factor else repr(float(max_factor))

"""The PoV rule's norm bound: a candidate's step against the median step.

A pass/fail direction test gives an update that clears it its full weight, and
the median pre-filter lets a step through up to 4x the batch's median norm. An
attacker told both (the cosine-edge attack of :mod:`flchain_flwr.sim.adaptive`)
sends a step just above the cosine threshold at 0.9 of that norm limit: most of
a 3.6x step points where the threshold does not look. The norm bound
(:class:`~flchain_flwr.pov.Threshold` ``max_norm_ratio``) is the rule's own,
signed into the rule digest, and checked by each verifier on what it is asked:
a candidate is approved only if its L2 norm is at most ``max_norm_ratio`` times
the median norm of the candidates in the same request. The harm an update can
do along a direction the cosine test misses grows with its norm, so a tight
bound shrinks that lever from 3.6x to ``0.9 * max_norm_ratio``.

What it does not stop: an attacker that stays under the bound (it still moves
the model by up to that much per update), and a leader that pads a request
with small candidates of its own to lower the median (each padded candidate is
then judged, and must be included or leave a signed vote behind).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..arrays import NDArrays


def update_norm(delta: NDArrays) -> float:
    """L2 norm of an update over its float arrays; NaN if the update holds a
    non-finite value or its norm overflows.

    The squares are summed in float64 by NumPy's pairwise summation, array by
    array in the update's order, not by a BLAS dot product, whose summation
    order (and so the last bits) can differ between machines: a verifier's
    norm bound and trust weighting's clip (which replay recomputes) must give
    every machine the same number.
    """
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for value in delta.values():
            if value.dtype.kind == "f":
                total += float(np.sum(np.square(value, dtype=np.float64)))
    return math.sqrt(total) if math.isfinite(total) else math.nan


def norm_ratios(deltas: Sequence[NDArrays]) -> list[float]:
    """Each update's norm over the median norm of ``deltas`` (the candidates of
    one request). A zero median gives 0 for a zero update and ``inf`` for any
    other; a non-finite norm gives NaN (never within a bound)."""
    norms = [update_norm(d) for d in deltas]
    finite = [n for n in norms if math.isfinite(n)]
    if not finite:
        return [math.nan for _ in norms]
    # Non-finite norms count as the largest: they cannot pull the median down.
    median = float(np.median([n if math.isfinite(n) else math.inf for n in norms]))
    if not math.isfinite(median):
        median = max(finite)
    ratios = []
    for n in norms:
        if not math.isfinite(n):
            ratios.append(math.nan)
        elif median > 0:
            ratios.append(n / median)
        else:
            ratios.append(0.0 if n == 0 else math.inf)
    return ratios


def within_bound(ratio: float | None, max_ratio: float) -> bool:
    """Whether a candidate's norm ``ratio`` (from :func:`norm_ratios`) is within
    ``max_ratio``; an unknown or non-finite ratio never is."""
    return ratio is not None and math.isfinite(ratio) and ratio <= max_ratio

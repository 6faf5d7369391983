"""Renormalising weight factors without overflow.

Work normalisation (:mod:`.nova`) and fairness weighting (:mod:`.fairness`)
scale each buffered update's raw factor ``r_i`` by one number so that the
buffer's example-weighted total is kept: ``f_i = r_i * sum_k n_k / sum_k n_k
r_k``. With effective example counts near the float maximum (a ``"claimed"``
weighting takes a node's word) ``r_i * sum_k n_k`` or ``sum_k n_k r_k`` can
overflow while every ``f_i`` is finite: a factor then comes out infinite, or
the scale 0 and every factor its lower bound. The scale does not change when
all ``r_i`` are divided by the largest, and then each lies in (0, 1], so
neither product exceeds the (finite) total of the examples: that is the rule
here, taken only where the direct computation would overflow, so that the
factors of every other buffer, and the weights a ledger records and replays,
are unchanged to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def overflow_free(
    raw: Sequence[float],
    examples: Sequence[float],
    relative: Callable[[], Sequence[float]] | None = None,
) -> Sequence[float]:
    """``raw``, or the same factors divided by the largest where renormalising
    ``raw`` over ``examples`` would overflow (see the module's docstring).

    ``relative`` gives those divided factors where ``raw`` cannot (its largest
    is itself infinite: ``1 / work`` for a tiny work); by default each
    ``r / max(raw)``. ``examples`` total a finite number.
    """
    top = max(raw, default=1.0)
    total = sum(examples)
    weighted = sum(n * r for n, r in zip(examples, raw, strict=True))
    if math.isfinite(top * total) and math.isfinite(weighted):
        return raw
    if relative is not None:
        return relative()
    return [r / top for r in raw]

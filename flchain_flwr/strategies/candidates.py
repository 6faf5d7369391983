"""The buffer a per-buffer weight factor was computed over, as a block records it.

Fairness weighting (:mod:`.fairness`) and work normalisation (:mod:`.nova`)
compute one factor per buffered update over the whole buffer, before a PoV
committee may reject some of it; so a block records the buffer they weighed
(each in a body field of its own), which ``verify --replay`` recomputes the
factors over (:mod:`flchain_flwr.ledger.replayweights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def candidates_record(
    node_ids: Sequence[int],
    examples: Sequence[float],
    work: Sequence[float] | None = None,
    digests: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The buffer, in buffer order, for a block's body: ``{"candidates":
    [{"node_id": "<id>", "num_examples": n}, ...]}`` (node ids as text: a
    64-bit id has no exact JSON number), each with ``"work": w`` and
    ``"digest": d`` too when ``work`` and ``digests`` are given (a factor
    that differs between two replies of one node needs the reply, not the
    node, to find its candidate)."""
    candidates: list[dict[str, Any]] = [
        {"node_id": str(n), "num_examples": e}
        for n, e in zip(node_ids, examples, strict=True)
    ]
    for key, values in (("work", work), ("digest", digests)):
        if values is not None:
            for candidate, value in zip(candidates, values, strict=True):
                candidate[key] = value
    return {"candidates": candidates}

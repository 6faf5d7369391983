"""Contribution accounting: data size, model relevance, participation.

After the asynchronous FLchain paper's reward design (§3.2.1): a node's
contribution to one block is its share of the block's data times the relevance of
its update (cosine similarity with the aggregated step, clipped at 0, so an update
that pulls against the consensus earns nothing); participation across blocks
accumulates by summing those per-block scores. Reward shares are the sums,
normalised over all nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from .blocks import entries_problem, node_key


def contributions(
    node_ids: Sequence[int],
    deltas: Sequence[Mapping[str, np.ndarray]],
    num_examples: Sequence[float],
    step: Mapping[str, np.ndarray],
) -> list[dict[str, Any]]:
    """Per-node contribution to one aggregation (JSON-ready, rounded for storage)."""
    total = float(sum(num_examples))
    step_vec = np.concatenate([np.ravel(v).astype(np.float64) for v in step.values()])
    step_norm = float(np.linalg.norm(step_vec))
    out = []
    for node_id, delta, n in zip(node_ids, deltas, num_examples, strict=True):
        vec = np.concatenate([np.ravel(delta[k]).astype(np.float64) for k in step])
        norm = float(np.linalg.norm(vec))
        # Clipped at 1 too: rounding can put the cosine of (nearly) parallel
        # vectors a hair above 1, and `verify` refuses a relevance above 1.
        relevance = (
            min(1.0, max(0.0, float(vec @ step_vec) / (norm * step_norm)))
            if norm and step_norm
            else 0.0
        )
        share = n / total if total else 0.0
        out.append(
            {
                "node_id": int(node_id),
                "data_share": round(share, 12),
                "relevance": round(relevance, 12),
                "score": round(share * relevance, 12),
            }
        )
    return out


def model_step(
    model: Mapping[str, np.ndarray], parent: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The step ``model`` takes from ``parent``, in float64: what
    :func:`contributions` measures a wrapped strategy's aggregation by."""
    return {k: model[k].astype(np.float64) - v for k, v in parent.items()}


CONTRIBUTION_FIELDS: Final = ("data_share", "relevance", "score")
"""A contribution's numbers: each in [0, 1] (a share, a clipped cosine, and
their product)."""
_SLACK: Final = 1e-9
"""What rounding to 12 decimals may add to a product."""


def contribution_problem(body: Mapping[str, Any]) -> str | None:
    """Why a block body's contributions could not have come from
    :func:`contributions` over its included set, or ``None``.

    The body's included set and contributions must be JSON arrays of
    objects (:func:`~.blocks.entries_problem`). Each contribution names an
    included node (a node id :func:`~.blocks.node_key` reads; at most as many
    contributions per node as it has included updates); each of its numbers
    present is finite and in [0, 1], and its score is at most
    ``data_share * relevance``.
    """
    problem = entries_problem(body, ("included", "contributions"))
    if problem is not None:
        return problem
    entries = body["contributions"]
    keys = (node_key(u.get("node_id")) for u in body["included"])
    included: Counter[int | None] = Counter(k for k in keys if k is not None)
    for c in entries:
        if node_key(c.get("node_id")) not in included:
            return (
                f"a contribution credits node {c.get('node_id')!r}, "
                "which is not in the block's included set"
            )
    credited_to: Counter[int | None] = Counter()
    for c in entries:
        node = node_key(c.get("node_id"))
        credited_to[node] += 1
        if credited_to[node] > included[node]:
            return (
                f"node {str(c.get('node_id'))[:24]!r} is credited "
                f"{credited_to[node]} times but has {included[node]} included "
                "update(s)"
            )
        values = {}
        for name in CONTRIBUTION_FIELDS:
            if name not in c:
                continue
            value = c[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= 1  # False for NaN; exact for huge ints
            ):
                return f"a contribution's {name} {str(value)[:24]} is not in [0, 1]"
            values[name] = float(value)
        if len(values) == len(CONTRIBUTION_FIELDS) and (
            values["score"] > values["data_share"] * values["relevance"] + _SLACK
        ):
            return (
                f"a contribution's score {values['score']} exceeds "
                "data_share * relevance"
            )
    return None


def credited(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A block body's contributions, or none if they are not what
    :func:`contributions` could have recorded (:func:`contribution_problem`:
    ``verify`` fails such a block; a reward never pays it either)."""
    if contribution_problem(body) is not None:
        return []
    return list(body.get("contributions", []))


@dataclass(frozen=True)
class RewardShare:
    """One node's standing over a range of blocks."""

    node_id: int
    blocks: int
    mean_relevance: float
    score: float
    share: float


def reward_shares(
    per_block: Iterable[Sequence[Mapping[str, Any]]],
) -> list[RewardShare]:
    """Aggregate per-block contributions into reward shares, largest first."""
    blocks: dict[int, int] = {}
    relevance: dict[int, float] = {}
    score: dict[int, float] = {}
    for block in per_block:
        for c in block:
            node = int(c["node_id"])
            blocks[node] = blocks.get(node, 0) + 1
            relevance[node] = relevance.get(node, 0.0) + float(c["relevance"])
            score[node] = score.get(node, 0.0) + float(c["score"])
    total = sum(score.values())
    shares = [
        RewardShare(
            node_id=node,
            blocks=blocks[node],
            mean_relevance=relevance[node] / blocks[node],
            score=score[node],
            share=score[node] / total if total else 0.0,
        )
        for node in blocks
    ]
    return sorted(shares, key=lambda r: (-r.share, r.node_id))

"""Contribution accounting: data size, model relevance, participation.

After the asynchronous FLchain paper's reward design (§3.2.1): a node's
contribution to one block is its share of the block's data times the relevance of
its update (cosine similarity with the aggregated step, clipped at 0, so an update
that pulls against the consensus earns nothing); participation across blocks
accumulates by summing those per-block scores. Reward shares are the sums,
normalised over all nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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
        relevance = (
            max(0.0, float(vec @ step_vec) / (norm * step_norm))
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


def credited(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A block body's contributions to nodes in its included set (``verify``
    fails a block with any other; a reward never pays them either)."""
    included = {str(u.get("node_id")) for u in body.get("included", [])}
    return [
        c for c in body.get("contributions", []) if str(c.get("node_id")) in included
    ]


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

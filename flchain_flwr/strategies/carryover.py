"""What a run resumed from a ledger carries over, beyond the server's state.

:class:`~.resume.Resumed` restores what shapes the next model (the model, the
momentum's velocity, the example-weighting claims, the participation that
fairness counts). This module reads from the chain what shapes the run's
choices and its result, so that a run split by a resume reports and decides as
one run would:

- the buffer tuner's K and tau and its moving averages, from the head block's
  ``buffer`` field and the head's own time and staleness
  (:meth:`~.tuning.BufferTuner.resume`);
- the result's per-node participation and weight shares, over the whole chain
  (the shares recomputed from each block's included ``weight`` and
  ``num_examples`` as the buffer computes them);
- the participation counts FedSA's learning rates read
  (:meth:`~.history.NodeHistory.count_earlier`, with the chain's counts).

Pure readers of :class:`~flchain_flwr.ledger.Block` values; nothing here
writes to a ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..ledger import Block
from ..ledger.blocks import node_key
from .tuning import BUFFER_FIELD, BufferTuner, StalenessTarget


def block_weight_shares(block: Block) -> list[tuple[int, float]]:
    """Each included update's share of ``block``'s step, as the buffer computed
    it (``weight * examples / sum examples``, the server lr left out)."""
    entries = [
        (node_key(u.get("node_id")), float(u["weight"]), float(u["num_examples"]))
        for u in block.body.get("included", [])
    ]
    total = sum(examples for _, _, examples in entries)
    scale = 1.0 / total if total > 0 else 0.0
    return [
        (node, scale * weight * examples)
        for node, weight, examples in entries
        if node is not None
    ]


def ledger_weight_share(blocks: Iterable[Block]) -> dict[int, float]:
    """Each node's summed shares over ``blocks`` (``AsyncResult.weight_share``)."""
    shares: dict[int, float] = {}
    for block in blocks:
        for node, share in block_weight_shares(block):
            shares[node] = shares.get(node, 0.0) + share
    return shares


def resumed_tuner(
    policy: StalenessTarget | None,
    head: Block | None,
    buffer_size: int,
    max_wait: float | None,
) -> BufferTuner | None:
    """The run's buffer tuner: continued after ``head`` when ``head`` records
    one (its ``buffer`` field), else a new one from the configured K and tau.

    ``None`` when ``policy`` is ``None`` (tuning off).
    """
    if policy is None:
        return None
    if head is None or not isinstance(head.body.get(BUFFER_FIELD), Mapping):
        return BufferTuner(policy, buffer_size, max_wait)
    staleness = [int(u["staleness"]) for u in head.body.get("included", [])]
    time = float(head.header.get("sim_time", 0.0))
    return BufferTuner.resume(policy, head.body[BUFFER_FIELD], time, staleness)

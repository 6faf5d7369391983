"""The claim history: each node's latest claimed example count.

A train reply's ``num-examples`` is the client's word (see
:mod:`~flchain_flwr.strategies.weighting`). A stateful weighting policy reads
the claims recently heard, one per node, from a :class:`ClaimHistory` that the
strategy owns, one per run; the ledger records it, and
:func:`claims_transition` says whether a recorded history can follow the one
before it through one block's senders (what a replay checks).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence, Set
from itertools import islice

DEFAULT_MAX_NODES = 10_000
"""Nodes a :class:`ClaimHistory` remembers by default."""


class ClaimHistory:
    """The latest claimed example count of each node, most recently heard last.

    One entry per node, not per reply: a fast node replying ten times as often
    as the others still counts once in a median, so an attacker needs a
    majority of *nodes*, not of replies, to move it.

    Parameters
    ----------
    max_nodes : int (default: DEFAULT_MAX_NODES, 10,000)
        Nodes remembered; the node heard from least recently is forgotten first.
    """

    def __init__(self, max_nodes: int = DEFAULT_MAX_NODES) -> None:
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        self.max_nodes = max_nodes
        self._latest: OrderedDict[int, float] = OrderedDict()

    def observe(self, node_id: int, claimed: float) -> None:
        """Record ``node_id``'s latest claim (a finite number > 0)."""
        if not math.isfinite(claimed) or claimed <= 0:
            raise ValueError(f"a claim must be finite and > 0, got {claimed!r}")
        self._latest.pop(node_id, None)
        self._latest[node_id] = float(claimed)
        if len(self._latest) > self.max_nodes:
            self._latest.popitem(last=False)

    def recent(self, window: int) -> list[float]:
        """The latest claims of the ``window`` nodes heard from most recently."""
        if window <= 0:
            return []
        latest = list(islice(reversed(self._latest.values()), window))
        return latest[::-1]

    def entries(self) -> list[tuple[int, float]]:
        """``(node_id, latest claim)`` from least to most recently heard.

        Observing them in this order into an empty history rebuilds this one
        exactly (what a resumed run does with the ledger's copy).
        """
        return list(self._latest.items())

    def __len__(self) -> int:
        return len(self._latest)


def lower_median(values: Sequence[float]) -> float:
    """The lower median: ``sorted(values)[(n - 1) // 2]``.

    Unlike the mean of the two middle values, it is one of the values, and
    fewer than ``n / 2 + 1`` of them cannot raise it above every other one.
    """
    if not values:
        raise ValueError("the median of no values is undefined")
    return sorted(values)[(len(values) - 1) // 2]


def claims_transition(
    before: Sequence[tuple[int, float]],
    after: Sequence[tuple[int, float]],
    included: Sequence[tuple[int, float]],
    rejected_nodes: Set[int],
    max_nodes: int = DEFAULT_MAX_NODES,
) -> str | None:
    """Why ``after`` cannot follow ``before`` by observing this block's senders.

    Between two blocks the server observes the claim of every update it takes:
    the included ones, in order, and some that the block then lists as
    rejected. So ``after`` must be ``before`` without the nodes heard from
    (the oldest dropped beyond ``max_nodes``), followed by those nodes; each
    included node's latest included claim is its entry unless the node was
    also rejected (a later reply may have replaced it).

    Returns
    -------
    str | None
        ``None`` if that holds, else what does not.
    """
    nodes = [n for n, _ in after]
    if len(after) > max_nodes or len(set(nodes)) != len(nodes):
        return "it names a node twice or holds more nodes than a history can"
    if any(not math.isfinite(c) or c <= 0 for _, c in after):
        return "it holds a claim that is not finite and > 0"
    last = dict(included)  # node -> its last included claim
    position = {n: i for i, n in enumerate(nodes)}
    for node, claim in last.items():
        if node not in position:
            return f"node {node}, included in the block, is missing from it"
        if after[position[node]][1] != claim and node not in rejected_nodes:
            return (
                f"it holds {after[position[node]][1]!r} for node {node}, whose "
                f"included update claims {claim!r}"
            )
    heard = set(last) | rejected_nodes
    first = min(position[n] for n in last) if last else len(after)
    if any(n not in heard for n in nodes[first:]):
        return "it moves a node not heard from in this block to the most recent"
    lowest = first
    while lowest > 0 and nodes[lowest - 1] in heard:
        lowest -= 1
    for split in range(first, lowest - 1, -1):
        tail = set(nodes[split:])
        kept = [e for e in before if e[0] not in tail]
        if len(kept) < split:
            continue
        if list(after[:split]) == kept[len(kept) - split :] and (
            len(kept) == split or len(after) == max_nodes
        ):
            return None
    return "the claims of nodes not heard from in this block changed"

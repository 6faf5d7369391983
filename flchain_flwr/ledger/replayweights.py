"""How a replay weighs each included update, as the server weighed it.

An included update's ``num_examples`` is the recorded example-weighting
policy applied to its payload's claim, given the claim history the block
records, which must follow from the previous block's
(:func:`weigh_examples`). Its ``weight`` is the recorded staleness function
of its staleness, times, with fairness weighting, its node's factor,
recomputed from each node's included updates in the chain's earlier blocks
(:func:`ledger_participation`) over the candidates the block records
(:func:`check_weights`). Both checks raise :class:`~.replaytypes.Failed`
where a recorded value (the claim history, an update's examples or weight,
the fairness candidates) contradicts the recomputation; :func:`weigh_examples`
raises :class:`~.replaytypes.NotReplayable` where the example weighting
reads a claim history the block does not record.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..strategies.block import BufferedUpdate
from ..strategies.claims import ClaimHistory, claims_transition
from ..strategies.fairness import FAIRNESS_FIELD, count_participation
from ..strategies.weighting import MedianCapped, WeightingError, effective_examples
from .blocks import Block, node_key
from .replaysettings import Settings
from .replaytypes import Failed, NotReplayable
from .serverstate import ServerState


def included_nodes(block: Block) -> list[int]:
    """The node ids of ``block``'s included updates, in order (ids that are not
    node ids are left out: no server writes one, and no payload matches one)."""
    keys = (node_key(u.get("node_id")) for u in block.body.get("included", []))
    return [k for k in keys if k is not None]


def ledger_participation(blocks: Iterable[Block]) -> dict[int, int]:
    """Each node's included updates over ``blocks`` (what fairness counts)."""
    participation: dict[int, int] = {}
    for block in blocks:
        count_participation(participation, included_nodes(block))
    return participation


# pylint: disable=too-many-arguments
def weigh_examples(
    updates: list[BufferedUpdate],
    included: Sequence[Mapping[str, Any]],
    body: Mapping[str, Any],
    state: ServerState | None,
    before: ServerState | None,
    settings: Settings,
) -> None:
    """Recompute each update's effective examples; check the recorded ones."""
    entries = None if state is None else state.claims
    if entries is None:
        if isinstance(settings.weighting, MedianCapped):
            raise NotReplayable(
                "it records no claim history, which its example weighting reads"
            )
        entries = []
    else:
        problem = claims_transition(
            list(before.claims or []) if before is not None else [],
            entries,
            [(u.node_id, u.update.num_examples) for u in updates],
            {
                key
                for r in body["rejected"]
                if isinstance(r, dict) and (key := node_key(r["node_id"])) is not None
            },
        )
        if problem is not None:
            raise Failed(f"claim history: {problem}")
    history = ClaimHistory()
    for node_id, claim in entries:
        history.observe(node_id, claim)
    claims = [u.update.num_examples for u in updates]
    try:
        counts = effective_examples(settings.weighting, claims, history)
    except WeightingError as exc:
        raise Failed(f"example weighting: {exc}") from None
    for index, (u, count, entry) in enumerate(
        zip(updates, counts, included, strict=True)
    ):
        if entry["num_examples"] != count:
            raise Failed(
                f"included update {index} records {entry['num_examples']!r} "
                f"examples; {settings.weighting.spec} weighting of its claim "
                f"{u.update.num_examples!r} gives {count!r}"
            )
        u.examples = count


def check_weights(
    updates: list[BufferedUpdate],
    included: Sequence[Mapping[str, Any]],
    body: Mapping[str, Any],
    settings: Settings,
    participation: Mapping[int, int],
) -> None:
    """Apply the fairness factors as the server did; check each ``weight``."""
    fairness = settings.fairness
    factors = [1.0] * len(updates)
    if fairness is not None:
        node_ids, examples, chosen = _candidates(updates, body)
        all_factors = fairness.factors(node_ids, examples, participation)
        factors = [all_factors[i] for i in chosen]
    for index, (u, factor, entry) in enumerate(
        zip(updates, factors, included, strict=True)
    ):
        staleness_weight = u.weight
        if fairness is not None:
            u.weight *= factor
        if entry["weight"] != u.weight:
            why = f"the recorded staleness function gives {staleness_weight!r}"
            if fairness is not None:
                why += (
                    f", times its node's {fairness.spec} fairness factor "
                    f"{factor!r} gives {u.weight!r}"
                )
            what = "weight" if fairness is not None else "staleness weight"
            raise Failed(
                f"included update {index}: records {what} {entry['weight']!r}, {why}"
            )


def _candidates(
    updates: Sequence[BufferedUpdate], body: Mapping[str, Any]
) -> tuple[list[int], list[float], list[int]]:
    """The buffer the fairness factors were computed over: node ids, effective
    examples, and the position of each included update among them.

    Without a recorded ``fairness`` field, the included updates themselves.
    """
    record = body.get(FAIRNESS_FIELD)
    if record is None:
        return (
            [u.node_id for u in updates],
            [u.examples for u in updates],
            list(range(len(updates))),
        )
    node_ids: list[int] = []
    examples: list[float] = []
    try:
        for c in record["candidates"]:
            node_id, count = node_key(c["node_id"]), c["num_examples"]
            if (
                node_id is None
                or isinstance(count, bool)
                or not isinstance(count, int | float)
                or not math.isfinite(count)
                or count < 0
            ):
                raise ValueError(c)
            node_ids.append(node_id)
            examples.append(float(count))
    except (KeyError, TypeError, ValueError) as exc:
        raise Failed(f"its fairness candidates are malformed: {exc!r}") from None
    pairs = list(zip(node_ids, examples, strict=True))
    chosen: list[int] = []
    position = 0
    for index, u in enumerate(updates):
        while position < len(pairs) and pairs[position] != (u.node_id, u.examples):
            position += 1
        if position == len(pairs):
            raise Failed(
                f"included update {index} (node {u.node_id}, {u.examples!r} "
                "examples) is not among its fairness candidates, in their order"
            )
        chosen.append(position)
        position += 1
    kept = set(chosen)
    dropped = Counter(n for i, n in enumerate(node_ids) if i not in kept)
    rejected = Counter(
        key
        for r in body.get("rejected", [])
        if isinstance(r, dict) and (key := node_key(r.get("node_id"))) is not None
    )
    for node_id, count in dropped.items():
        if rejected[node_id] < count:
            raise Failed(
                f"a fairness candidate of node {node_id} is neither included nor "
                "rejected in this block"
            )
    return node_ids, examples, chosen

"""How a replay weighs each included update, as the server weighed it.

An included update's ``num_examples`` is the recorded example-weighting
policy applied to its payload's claim, given the claim history the block
records, which must follow from the previous block's
(:func:`weighed_examples`). Its ``weight`` is the recorded staleness function
of its staleness, times, with work normalisation, its work factor recomputed
from the work the block records for its buffer, then, with fairness
weighting, its node's factor, recomputed from each node's included updates
in the chain's earlier blocks (:func:`ledger_participation`) over the
candidates the block records (:func:`check_weights`). Both checks raise
:class:`~.replaytypes.Failed` where a recorded value (the claim history, an
update's examples or weight, the fairness or work candidates) contradicts the
recomputation; :func:`weighed_examples` raises
:class:`~.replaytypes.NotReplayable` where the example weighting reads a claim
history the block does not record. The work is the block's word: replay
checks that each weight follows from it, not that the node was asked it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..strategies.block import BufferedUpdate
from ..strategies.claims import ClaimHistory, claims_transition
from ..strategies.fairness import FAIRNESS_FIELD, count_participation
from ..strategies.nova import WORK_FIELD
from ..strategies.updates import finite_float
from ..strategies.weighting import (
    ExampleWeighting,
    MedianCapped,
    WeightingError,
    effective_examples,
)
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
def weighed_examples(
    claims: Sequence[tuple[int, float]],
    included: Sequence[Mapping[str, Any]],
    body: Mapping[str, Any],
    state: ServerState | None,
    before: ServerState | None,
    weighting: ExampleWeighting,
) -> list[float]:
    """Each included update's effective example count, recomputed from its
    ``(node id, claim)`` in ``claims`` (from its payload) by ``weighting``
    over the claim history the block records; the recorded ones checked."""
    entries = None if state is None else state.claims
    if entries is None:
        if isinstance(weighting, MedianCapped):
            raise NotReplayable(
                "it records no claim history, which its example weighting reads"
            )
        entries = []
    else:
        problem = claims_transition(
            list(before.claims or []) if before is not None else [],
            entries,
            claims,
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
    try:
        counts = effective_examples(weighting, [c for _, c in claims], history)
    except WeightingError as exc:
        raise Failed(f"example weighting: {exc}") from None
    for index, ((_, claim), count, entry) in enumerate(
        zip(claims, counts, included, strict=True)
    ):
        if isinstance(entry["num_examples"], bool) or entry["num_examples"] != count:
            raise Failed(
                f"included update {index} records "
                f"{str(entry['num_examples'])[:24]} examples; {weighting.spec} "
                f"weighting of its claim {claim!r} gives {count!r}"
            )
    return counts


def check_weights(
    updates: list[BufferedUpdate],
    included: Sequence[Mapping[str, Any]],
    body: Mapping[str, Any],
    settings: Settings,
    participation: Mapping[int, int],
) -> None:
    """Apply the work normalisation and fairness factors as the server did, in
    that order; check each ``weight``."""
    nova, fairness = settings.work_normalisation, settings.fairness
    work_factors = asked = fair_factors = [1.0] * len(updates)
    if nova is not None:
        buffer = _candidates(updates, body, WORK_FIELD, work=True)
        factors = nova.factors(buffer.work, buffer.examples)
        work_factors = [factors[i] for i in buffer.chosen]
        asked = [buffer.work[i] for i in buffer.chosen]
    if fairness is not None:
        buffer = _candidates(updates, body, FAIRNESS_FIELD)
        factors = fairness.factors(buffer.node_ids, buffer.examples, participation)
        fair_factors = [factors[i] for i in buffer.chosen]
    for index, (u, entry) in enumerate(zip(updates, included, strict=True)):
        staleness_weight = u.weight
        if nova is not None:
            u.weight *= work_factors[index]
        if fairness is not None:
            u.weight *= fair_factors[index]
        if entry["weight"] != u.weight:
            why = f"the recorded staleness function gives {staleness_weight!r}"
            if nova is not None:
                why += (
                    f", times its {nova.spec} work factor {work_factors[index]!r} "
                    f"(for its recorded work {asked[index]!r})"
                )
            if fairness is not None:
                why += (
                    f", times its node's {fairness.spec} fairness factor "
                    f"{fair_factors[index]!r}"
                )
            factored = nova is not None or fairness is not None
            if factored:
                why += f" gives {u.weight!r}"
            what = "weight" if factored else "staleness weight"
            raise Failed(
                f"included update {index}: records {what} {entry['weight']!r}, {why}"
            )


@dataclass(frozen=True)
class _Buffer:
    """The buffer a factor was computed over, as a block records it."""

    node_ids: list[int]
    examples: list[float]
    """Effective examples."""
    work: list[float]
    """Asked local work (1 each where the record holds none)."""
    chosen: list[int]
    """The position of each included update among them."""


def _candidates(
    updates: Sequence[BufferedUpdate],
    body: Mapping[str, Any],
    field: str,
    *,
    work: bool = False,
) -> _Buffer:
    """The buffer as ``body[field]`` records it (each candidate's ``work``
    too, if ``work``), matched to the included updates.

    Without the field: the included updates themselves for fairness (blocks
    written before it was recorded); work normalisation always records it.
    """
    record = body.get(field)
    if record is None:
        if work:
            raise Failed(
                f"it records no {field} candidates, which its work normalisation reads"
            )
        return _Buffer(
            [u.node_id for u in updates],
            [u.examples for u in updates],
            [1.0] * len(updates),
            list(range(len(updates))),
        )
    node_ids: list[int] = []
    examples: list[float] = []
    asked: list[float] = []
    digests: list[str | None] = []
    try:
        for c in record["candidates"]:
            node_id, count = node_key(c["node_id"]), c["num_examples"]
            units = c["work"] if work else 1.0
            # work differs between two replies of one node: match the reply
            digest = c["digest"] if work else None
            if (
                node_id is None
                or not _finite_number(count)
                or count < 0
                or not _finite_number(units)
                or units <= 0
                or (work and not isinstance(digest, str))
            ):
                raise ValueError(c)
            node_ids.append(node_id)
            examples.append(float(count))
            asked.append(float(units))
            digests.append(digest)
    except (KeyError, TypeError, ValueError) as exc:
        raise Failed(f"its {field} candidates are malformed: {exc!r}") from None
    keys = list(zip(node_ids, examples, digests, strict=True))
    chosen: list[int] = []
    position = 0
    for index, u in enumerate(updates):
        wanted = (u.node_id, u.examples, u.digest if work else None)
        while position < len(keys) and keys[position] != wanted:
            position += 1
        if position == len(keys):
            raise Failed(
                f"included update {index} (node {u.node_id}, {u.examples!r} "
                f"examples) is not among its {field} candidates, in their order"
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
                f"a {field} candidate of node {node_id} is neither included nor "
                "rejected in this block"
            )
    return _Buffer(node_ids, examples, asked, chosen)


def _finite_number(value: object) -> bool:
    """Whether ``value`` is a finite JSON number (not a bool; an integer past
    the float range is not)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and finite_float(value) is not None
    )

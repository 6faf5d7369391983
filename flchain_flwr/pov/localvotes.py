"""Votes from in-process members: verifiers this process holds the keys of.

Each member of a block's committee that lives in this process votes on the
batch directly (:meth:`~flchain_flwr.pov.Verifier.vote`). The candidate
models (the global model plus each candidate's step at its share, or its
whole delta with ``scoring="full"``) are built once per pass and shared by
the members, and not at all when the rule scores no models. A member that
raises has refused: it simply has no votes, and the reason is kept. Votes
come back unchecked, as a remote member's do (:mod:`.remote`): the tally
keeps only valid ones (:func:`~.tally.collect_votes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..arrays import NDArrays, apply_step
from ..ledger import VoteContext
from .decision import Candidate, Cast
from .judging import Rule
from .verifier import Verifier
from .views import moved_past


def in_process_votes(
    verifiers: Mapping[str, Verifier],
    members: Sequence[str],
    *,
    context: VoteContext,
    global_model: NDArrays,
    candidates: Sequence[Candidate],
    weights: Sequence[float],
    rule: Rule,
) -> Cast:
    """Each of ``members`` (keys into ``verifiers``) votes on ``candidates``
    at ``weights`` (their shares) under ``rule``; why others gave none."""
    models = [
        (
            c.digest,
            apply_step(global_model, c.delta, rule.scale(w))
            if rule.threshold.scores_models
            else {},
        )
        for c, w in zip(candidates, weights, strict=True)
    ]
    votes: list[dict[str, Any]] = []
    problems: list[str] = []
    moved: set[str] = set()
    for key in members:
        try:
            votes.extend(
                verifiers[key].vote(
                    context=context,
                    global_model=global_model,
                    candidates=models,
                    weights=weights,
                    deltas=[c.delta for c in candidates],
                    rule=rule,
                )
            )
        except Exception as exc:  # pylint: disable=broad-exception-caught
            problems.append(f"verifier {key[:12]}… failed: {exc!r}")
            continue
        if moved_past(verifiers[key], context.chain_id, context.height, context.view):
            moved.add(key)
    return Cast(votes, problems, moved_past=frozenset(moved))

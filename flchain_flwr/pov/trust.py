"""Trust weighting: how much of the step each approved update gets.

A pass/fail rule gives every update that passes its full weight, so an
attacker that learns the rule (the cosine-edge attack of
:mod:`flchain_flwr.sim.adaptive`: a cosine just above the threshold, at the
largest norm the rule lets through) moves the model as far as an honest node,
in a direction the rule does not look at. FLTrust (Cao et al., NDSS 2021)
instead weights each update by its trust score ``ReLU(cos)`` with the server's
reference update and rescales every update to one norm. Here, with
``Committee(trust_weighting=True)``, a block weighs each update it includes by

- **trust** ``t_i``: the ``q``-th highest of the scores the approving members
  signed on it (each member's cosine with its own reference update; ``q`` the
  quorum, so a quorum of members scored it at least that high), clipped to
  ``[0, 1]``: an update the committee barely approves gets little of the step,
  and no single member's score sets it;
- **norm clip** ``c_i = min(1, m / ||delta_i||)``, ``m`` the lower median of
  the included updates' norms: no update moves the model further than the
  median one does.

The step is then ``sum_i (w_i c_i) (n_i t_i) delta_i / sum_i n_i t_i``
(:func:`~flchain_flwr.strategies.serverstep.server_step` with ``examples *
trust`` and ``weight * clip``): with equal trusts and no clipping it is
FedBuff's step unchanged. The trusts are data the committee signed, so a
replay reads them from the block's votes; the clips are recomputed from the
stored updates (norms summed without BLAS, whose order can differ between
machines), rounded to :data:`CLIP_DIGITS` significant digits as a second guard.

Who can move what: the scores are signed by the members, so only a member's
key changes its own; but the block's builder (its leader) chooses which valid
votes the block holds, as long as each included update keeps a quorum of
approvals, and a member refuses to sign a header that leaves out its own
vote on an update the block judges (:mod:`.headers`): a leader can drop only
the votes of members whose header signatures it can do without. Leaving
approvals out can only lower the ``q``-th highest one: a leader can move an
update's trust down towards the lowest approving score cast on it, never above
what a quorum of members signed. The votes sign the share a
candidate had before trust weighting (the rule judges direction alone, so no
verdict rests on it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..arrays import NDArrays
from ..ledger.consensus import quorum
from ..ledger.votes import score_problem
from ..strategies.block import BufferedUpdate
from ..strategies.claims import lower_median
from .norms import update_norm

CLIP_DIGITS = 9
"""Significant digits a clip factor is rounded to."""


__all__ = [
    "TrustError",
    "norm_clips",
    "trust_scores",
    "weigh_by_trust",
]


class TrustError(ValueError):
    """Trust weights that cannot be computed from what a block holds."""


def trust_scores(
    votes: Sequence[Mapping[str, Any]], digests: Sequence[str], committee_size: int
) -> list[float]:
    """Each candidate's trust: the ``q``-th highest score among the approving
    votes on it (``q`` the quorum of ``committee_size``), clipped to ``[0, 1]``.

    Raises
    ------
    TrustError
        If a vote is malformed, a candidate has fewer than ``q`` approvals, or
        every trust is 0.
    """
    needed = quorum(committee_size)
    approving: dict[str, list[float]] = {d: [] for d in digests}
    for vote in votes:
        if not isinstance(vote, Mapping):
            raise TrustError("a vote is not an object")
        digest = vote.get("candidate")
        if (
            isinstance(digest, str)
            and digest in approving
            and vote.get("verdict") is True
        ):
            problem = score_problem(vote.get("score"))
            if problem is not None:
                raise TrustError(f"a vote on {digest[:16]}…: {problem}")
            approving[digest].append(float(vote["score"]))
    trusts = []
    for digest in digests:
        scores = sorted(approving[digest], reverse=True)
        if len(scores) < needed:
            raise TrustError(
                f"candidate {digest[:16]}… has {len(scores)} approvals, quorum {needed}"
            )
        trusts.append(min(1.0, max(0.0, scores[needed - 1])))
    if not any(t > 0 for t in trusts):
        raise TrustError("every included update has trust 0: no step to take")
    return trusts


def norm_clips(deltas: Sequence[NDArrays]) -> list[float]:
    """``min(1, m / ||delta_i||)`` for each update, ``m`` the lower median of
    their norms, rounded to :data:`CLIP_DIGITS` significant digits.

    Raises
    ------
    TrustError
        If an update's norm is not finite.
    """
    norms = [update_norm(d) for d in deltas]
    if not all(math.isfinite(n) for n in norms):
        raise TrustError("an update's norm is not finite")
    if not norms:
        return []
    median = lower_median(norms)
    return [
        1.0 if n <= median else float(f"{median / n:.{CLIP_DIGITS}g}") for n in norms
    ]


def weigh_by_trust(
    updates: Sequence[BufferedUpdate],
    votes: Sequence[Mapping[str, Any]],
    committee_size: int,
) -> None:
    """Set each update's ``trust`` (from ``votes``, the block's, by digest) and
    ``clip`` (from the updates' norms); :class:`TrustError` if they cannot be."""
    trusts = trust_scores(votes, [u.digest for u in updates], committee_size)
    clips = norm_clips([u.update.delta for u in updates])
    for update, trust, clip in zip(updates, trusts, clips, strict=True):
        update.trust, update.clip = trust, clip

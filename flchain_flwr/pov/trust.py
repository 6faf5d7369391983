"""Trust weighting: how much of the step each approved update gets.

A pass/fail rule gives every update that passes its full weight, so an
attacker that learns the rule (the cosine-edge attack of
:mod:`flchain_flwr.sim.adaptive`: a cosine just above the threshold, at the
largest norm the rule lets through) moves the model as far as an honest node,
in a direction the rule does not look at. FLTrust (Cao et al., NDSS 2021)
instead weights each update by its trust score ``ReLU(cos)`` with the server's
reference update and rescales every update to one norm. Here, with
``Committee(trust_weighting=True)``, a block weighs each update it includes by

- **trust** ``t_i``: the lower median of the scores the committee signed on
  it (each member's cosine with its own reference update), clipped to
  ``[0, 1]``: an update the committee barely approves gets little of the step,
  and no single member's score sets it;
- **norm clip** ``c_i = min(1, m / ||delta_i||)``, ``m`` the lower median of
  the included updates' norms: no update moves the model further than the
  median one does.

The step is then ``sum_i (w_i c_i) (n_i t_i) delta_i / sum_i n_i t_i``
(:func:`~flchain_flwr.strategies.pipeline.server_step` with ``examples *
trust`` and ``weight * clip``): with equal trusts and no clipping it is
FedBuff's step unchanged. The trusts are data the committee signed, so a
replay reads them from the block's votes; the clips are recomputed from the
stored updates, rounded to :data:`CLIP_DIGITS` significant digits so that a
replay on another machine (whose BLAS may sum a norm in another order) gets
the same factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..arrays import NDArrays
from ..strategies.pipeline import BufferedUpdate
from ..strategies.weighting import lower_median
from .norms import update_norm

TRUST_WEIGHTING = "fltrust"
"""The recorded setting (``trust_weighting`` in a FedBuff config) that turns it on."""
CLIP_DIGITS = 9
"""Significant digits a clip factor is rounded to."""


class TrustError(ValueError):
    """Trust weights that cannot be computed from what a block holds."""


def trust_scores(
    votes: Sequence[Mapping[str, Any]], digests: Sequence[str]
) -> list[float]:
    """Each candidate's trust: the lower median of the scores of the votes on
    it, clipped to ``[0, 1]``.

    Raises
    ------
    TrustError
        If a candidate has no vote, or a score is not a finite number.
    """
    scores: dict[str, list[float]] = {d: [] for d in digests}
    for vote in votes:
        digest = vote.get("candidate")
        if digest in scores:
            score = vote.get("score")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise TrustError(f"a vote on {str(digest)[:16]}… has no numeric score")
            if not math.isfinite(score):
                raise TrustError(f"a vote on {str(digest)[:16]}… scores {score!r}")
            scores[digest].append(float(score))
    trusts = []
    for digest in digests:
        if not scores[digest]:
            raise TrustError(f"no vote on candidate {digest[:16]}… to weigh it by")
        trusts.append(min(1.0, max(0.0, lower_median(scores[digest]))))
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
    updates: Sequence[BufferedUpdate], votes: Sequence[Mapping[str, Any]]
) -> None:
    """Set each update's ``trust`` (from ``votes``, the block's, by digest) and
    ``clip`` (from the updates' norms); :class:`TrustError` if they cannot be."""
    trusts = trust_scores(votes, [u.digest for u in updates])
    clips = norm_clips([u.update.delta for u in updates])
    for update, trust, clip in zip(updates, trusts, clips, strict=True):
        update.trust, update.clip = trust, clip

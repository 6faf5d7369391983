"""How a verifier judges a candidate update: its scores and the rule it signs.

A verifier judges a candidate update in up to two ways, both on its own trusted
examples:

- **loss (or accuracy)**: the global model plus the candidate's step must score
  at most :class:`Threshold`'s tolerance worse than the global model;
- **direction** (``Threshold(min_cosine=...)``, needs a :data:`ReferenceFn`):
  the verifier trains its own reference update from the global model on its
  trusted data, as FLTrust's server does (Cao et al., NDSS 2021), and the
  candidate's update must have a cosine above ``min_cosine`` with it. An update
  pointing away from what the trusted data asks for (sign-flipped, IPM,
  label-flipped) fails this test however small its step is, which the loss
  test cannot see at a single update's share of the block.

A :class:`Rule` (the threshold and the scale a candidate is scored at) is what
a vote signs the digest of. Everything here is pure; the
:class:`~flchain_flwr.pov.verifier.Verifier` that signs the votes is
:mod:`.verifier`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..arrays import NDArrays
from ..ledger.consensus import RULE_FORMAT, TRUST_WEIGHTING, rule_digest
from .norms import within_bound


@dataclass(frozen=True)
class Score:
    """How a model does on a verifier's trusted test data."""

    accuracy: float
    loss: float


ScoreFn = Callable[[NDArrays], Score]
"""Scores one model (name -> array, the global model's layout) on trusted data."""

ReferenceFn = Callable[[NDArrays], NDArrays]
"""Trains from a model (the global) on trusted data; returns the update
(trained minus given, name -> array). The verifier's reference direction."""


def cosine(a: NDArrays, b: NDArrays) -> float:
    """Cosine similarity of two updates over ``a``'s float arrays (float64).

    0 if either is all zeros; NaN if either holds a non-finite value.
    """
    names = [k for k, v in a.items() if v.dtype.kind == "f" and k in b]
    if not names:
        return 0.0
    x = np.concatenate([np.ravel(a[k]).astype(np.float64) for k in names])
    y = np.concatenate([np.ravel(b[k]).astype(np.float64) for k in names])
    with np.errstate(over="ignore", invalid="ignore"):
        dot, nx, ny = float(x @ y), float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if not (math.isfinite(dot) and math.isfinite(nx) and math.isfinite(ny)):
        return math.nan
    return dot / (nx * ny) if nx > 0 and ny > 0 else 0.0


@dataclass(frozen=True)
class Threshold:
    """When a verifier approves a candidate.

    ``metric``: ``"loss"`` or ``"accuracy"`` of the global model plus the
    candidate's step on the verifier's trusted data, or ``"none"`` (no model is
    scored: the direction test alone decides).
    ``mode="relative"``: the candidate may be at most ``value`` worse than the
    current global model on the same data (loss: ``value`` is a relative increase,
    0.05 = 5 %; accuracy: ``value`` is a fraction, 0.05 = 5 points).
    ``mode="absolute"``: loss at most ``value``, or accuracy at least ``value``.
    ``min_cosine``: when set, the candidate's update must also have a cosine
    above ``min_cosine`` with the verifier's own reference update (see
    :data:`ReferenceFn`). ``0.0`` is FLTrust's rule (its ReLU gives an update
    with a cosine <= 0 no weight): approve only updates that do not point
    against what the trusted data asks for.
    ``max_norm_ratio``: when set, the candidate's update norm must also be at
    most this many times the median norm of the candidates judged in the same
    request (see :mod:`flchain_flwr.pov.norms`).
    A non-finite score or cosine is never approved. The default is loss, which
    still moves when a candidate is scored at its share of the block (see
    :class:`~flchain_flwr.pov.Committee`) and accuracy on 100 examples would not.
    """

    metric: Literal["accuracy", "loss", "none"] = "loss"
    mode: Literal["relative", "absolute"] = "relative"
    value: float = 0.05
    min_cosine: float | None = None
    max_norm_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "loss", "none"):
            raise ValueError(
                f"metric must be accuracy, loss or none, not {self.metric!r}"
            )
        if self.mode not in ("relative", "absolute"):
            raise ValueError(f"mode must be relative or absolute, not {self.mode!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"threshold value must be finite and >= 0: {self.value}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine < 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1): {self.min_cosine}")
        if self.max_norm_ratio is not None and not (
            math.isfinite(self.max_norm_ratio) and self.max_norm_ratio > 1.0
        ):
            raise ValueError(f"max_norm_ratio must be > 1: {self.max_norm_ratio}")
        if self.metric == "none" and self.min_cosine is None:
            raise ValueError("metric 'none' needs min_cosine (else nothing decides)")

    @property
    def scores_models(self) -> bool:
        """Whether candidates are scored on trusted data (metric is not none)."""
        return self.metric != "none"

    def approves(
        self,
        candidate: Score | None,
        reference: Score | None,
        cosine: float | None = None,
        norm_ratio: float | None = None,
    ) -> bool:
        """Whether a candidate passes: its ``candidate`` score against the global
        model's ``reference`` (both unused when the metric is none), its
        ``cosine`` with the verifier's reference update when ``min_cosine`` is
        set, and its ``norm_ratio`` to the request's median norm when
        ``max_norm_ratio`` is set.
        """
        if self.max_norm_ratio is not None and not within_bound(
            norm_ratio, self.max_norm_ratio
        ):
            return False
        if self.min_cosine is not None:
            if cosine is None or not math.isfinite(cosine):
                return False
            if cosine <= self.min_cosine:
                return False
        if self.metric == "none":
            return True
        if candidate is None or reference is None:
            return False
        if not (math.isfinite(candidate.accuracy) and math.isfinite(candidate.loss)):
            return False
        if self.metric == "accuracy":
            bar = (
                reference.accuracy - self.value
                if self.mode == "relative"
                else self.value
            )
            return candidate.accuracy >= bar
        if self.mode == "relative":
            return candidate.loss <= reference.loss * (1 + self.value)
        return candidate.loss <= self.value


@dataclass(frozen=True)
class Rule:
    """How a verifier judges: its :class:`Threshold` and the scale it applies a
    candidate's delta at (``"share"``: the weight the block applies, which the
    vote signs; ``"full"``: the whole delta). Votes sign its digest.

    A reference update's training settings are the verifier's own (its
    :data:`ReferenceFn`) and are not part of the digest.
    """

    threshold: Threshold = Threshold()
    scoring: Literal["share", "full"] = "share"
    trust_weighting: bool = False
    """Whether the block weighs approved updates by the votes' scores
    (:mod:`~flchain_flwr.pov.trust`): in the digest, so a member signs a
    vote, and replays a block, only under the aggregation it agreed to."""

    def __post_init__(self) -> None:
        if self.scoring not in ("share", "full"):
            raise ValueError(f"scoring must be 'share' or 'full', not {self.scoring!r}")
        threshold = self.threshold
        if self.trust_weighting and (
            threshold.metric != "none"
            or threshold.min_cosine is None
            or threshold.min_cosine < 0
        ):
            raise ValueError(
                "trust weighting needs the direction test deciding alone: "
                "Threshold(metric='none', min_cosine=<a value >= 0>)"
            )

    def to_json(self) -> dict[str, Any]:
        """The rule as a chain's genesis records it."""
        return {
            "format": RULE_FORMAT,
            "metric": self.threshold.metric,
            "mode": self.threshold.mode,
            "value": float(self.threshold.value),
            "min_cosine": (
                None
                if self.threshold.min_cosine is None
                else float(self.threshold.min_cosine)
            ),
            "scoring": self.scoring,
            # Only when set: the digests of rules without a norm bound (and so
            # the chains and test vectors signed over them) stay as they were.
            **(
                {"max_norm_ratio": float(self.threshold.max_norm_ratio)}
                if self.threshold.max_norm_ratio is not None
                else {}
            ),
            **({"aggregation": TRUST_WEIGHTING} if self.trust_weighting else {}),
        }

    @property
    def digest(self) -> str:
        """What votes sign (:func:`~flchain_flwr.ledger.consensus.rule_digest`)."""
        return rule_digest(self.to_json())

    def scale(self, weight: float) -> float:
        """How much of a candidate's delta is applied when it is scored."""
        return weight if self.scoring == "share" else 1.0


def signed_score(similarity: float | None, score: Score | None) -> float:
    """The score a vote signs: the candidate's cosine with the reference
    update when the direction test is on (its deciding quantity), else its
    accuracy; rounded to 6 digits, -1.0 if not finite (or neither is known)."""
    value = (
        similarity
        if similarity is not None
        else (score.accuracy if score is not None else math.nan)
    )
    return round(value, 6) if math.isfinite(value) else -1.0

"""A verifier: an Ed25519 identity, trusted test data, and a voting rule.

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
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from ..arrays import NDArrays
from ..ledger import VoteContext, model_hash, rule_digest, sign_vote
from ..ledger.consensus import RULE_FORMAT, TRUST_WEIGHTING
from .memory import MemberMemory
from .norms import norm_ratios, within_bound


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


class RefusedRequest(ValueError):
    """A verifier will not vote on a request that contradicts what it knows."""


class Behaviour(StrEnum):
    """How a verifier votes: honestly, or one of the Byzantine ways tests use."""

    HONEST = "honest"
    APPROVE_ALL = "approve-all"
    """Approves every candidate, poisoned or not."""
    REJECT_ALL = "reject-all"
    """Rejects every candidate, good or not."""
    INVERT = "invert"
    """Votes the opposite of its honest verdict."""
    GARBAGE_SIGNATURE = "garbage-signature"
    """Votes honestly but signs with random bytes."""
    REFUSE_TO_LEAD = "refuse-to-lead"
    """Votes honestly but refuses to sign a block header as its leader."""


class Verifier:
    """A committee member: signs votes on candidates judged on its trusted data.

    Parameters
    ----------
    score_fn : ScoreFn
        Scores a model on this verifier's trusted test data (e.g. 100 examples).
    key : nacl.signing.SigningKey, optional
        Its Ed25519 identity; a fresh key if not given.
    reference_fn : ReferenceFn, optional
        Trains this verifier's reference update from the global model on its
        trusted data (ideally with the clients' own local training); needed by
        a :class:`Threshold` with ``min_cosine``.
    behaviour : Behaviour (default: HONEST)
        Byzantine behaviours exist to test the committee; see :class:`Behaviour`.
    seed : int (default: 0)
        Seeds the garbage of ``GARBAGE_SIGNATURE``.
    rule : Rule, optional
        The verifier's own judging rule. When set, it judges by it alone and
        refuses requests that name another; a verifier on a node of its own
        must have one. Without it (an in-process committee's members) it
        judges by the rule it is given.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        score_fn: ScoreFn,
        key: SigningKey | None = None,
        *,
        reference_fn: ReferenceFn | None = None,
        behaviour: Behaviour | str = Behaviour.HONEST,
        seed: int = 0,
        rule: Rule | None = None,
    ) -> None:
        self.score_fn = score_fn
        self.rule = rule
        self.seen: dict[str, tuple[int, str, str]] = {}
        """By chain id, the last ``(height, previous hash, parent model
        hash)`` it voted at or led (a verifier node keeps it in its run state)."""
        self.statements: dict[str, tuple[int, int, str]] = {}
        """By chain id, the last (height, view, block hash or "view-change")
        it signed as a committee member (see :mod:`flchain_flwr.pov.views`)."""
        self.voted: dict[str, tuple[int, str, int, set[str]]] = {}
        """By chain id, the (height, previous hash, view) of its last votes and
        the candidates it voted on there: a header that leaves one of those
        votes out is refused (see :mod:`flchain_flwr.pov.headers`)."""
        self.memory = MemberMemory()
        """On a verifier node: the chain's models it saw and the pending
        height's candidates (see :mod:`flchain_flwr.pov.memory`)."""
        self.headers: dict[str, tuple[int, str]] = {}
        """By chain id, the height and SHA-256 of the last block header it
        signed as a leader (a verifier node keeps it in its run state)."""
        self._reference: tuple[str, NDArrays] | None = None
        """The reference update, by the parent model hash it was trained from."""
        self.reference_fn = reference_fn
        self.key = key or SigningKey.generate()
        self.behaviour = Behaviour(behaviour)
        self.public_key: str = self.key.verify_key.encode(HexEncoder).decode()
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"Verifier({self.public_key[:12]}…, {self.behaviour.value})"

    # pylint: disable=too-many-arguments,too-many-locals
    def vote(
        self,
        *,
        context: VoteContext,
        global_model: NDArrays,
        candidates: Sequence[tuple[str, NDArrays]],
        weights: Sequence[float],
        deltas: Sequence[NDArrays],
        rule: Rule | None = None,
    ) -> list[dict[str, Any]]:
        """Signed votes on ``(digest, candidate model)`` pairs in ``context``.

        ``weights`` are the shares of each candidate's delta the block would
        apply (each vote signs its own), ``deltas`` the candidates' updates
        (the direction test needs them), in the same order. The request is
        refused (:class:`RefusedRequest`) if ``global_model`` does not hash to
        ``context.parent_model``, if ``context.rule`` is not this verifier's
        rule (its own, else ``rule``), or if the position goes back on what
        it has voted on in this chain: a lower height, or the same height
        after another block or parent model. With ``max_norm_ratio`` each
        candidate's norm is compared with the median norm of ``deltas``.
        The global model is scored once per call,
        each candidate once (not at all with metric none), and the reference
        update once per parent model. The signed score is the candidate's
        cosine with the reference update when the direction test is on (its
        deciding quantity), else the candidate's accuracy; -1.0 if not finite.
        """
        judged = self._check_request(context, global_model, rule)
        if not len(weights) == len(deltas) == len(candidates):
            raise RefusedRequest("one weight and one delta per candidate needed")
        threshold = judged.threshold
        direction: NDArrays | None = None
        if threshold.min_cosine is not None:
            direction = self._reference_from(global_model, context.parent_model)
        reference = self.score_fn(global_model) if threshold.scores_models else None
        ratios: list[float | None] = (
            list(norm_ratios(deltas))
            if threshold.max_norm_ratio is not None
            else [None] * len(deltas)
        )
        votes = []
        for index, (digest, model) in enumerate(candidates):
            score = self.score_fn(model) if threshold.scores_models else None
            similarity = (
                cosine(deltas[index], direction) if direction is not None else None
            )
            verdict = self._verdict(
                threshold.approves(score, reference, similarity, ratios[index])
            )
            value = (
                similarity
                if similarity is not None
                else (score.accuracy if score is not None else math.nan)
            )
            value = round(value, 6) if math.isfinite(value) else -1.0
            vote = sign_vote(
                self.key, context, digest, verdict, value, float(weights[index])
            )
            if self.behaviour is Behaviour.GARBAGE_SIGNATURE:
                vote["signature"] = self._rng.randbytes(64).hex()
            votes.append(vote)
        self._record_votes(context, [digest for digest, _ in candidates])
        return votes

    def _record_votes(self, context: VoteContext, digests: Sequence[str]) -> None:
        where = (context.height, str(context.prev_hash), context.view)
        last = self.voted.get(context.chain_id)
        held = last[3] if last is not None and last[:3] == where else set()
        self.voted[context.chain_id] = (*where, held | set(digests))

    def _reference_from(self, global_model: NDArrays, parent: str) -> NDArrays:
        """The reference update from ``global_model`` (hash ``parent``), trained
        once per parent: candidates judged again at a new share reuse it."""
        if self.reference_fn is None:
            raise ValueError("the direction test needs a reference_fn")
        if self._reference is None or self._reference[0] != parent:
            self._reference = (parent, self.reference_fn(global_model))
        return self._reference[1]

    def _check_request(
        self, context: VoteContext, global_model: NDArrays, rule: Rule | None
    ) -> Rule:
        """The rule to judge by, after checking the request against what this
        verifier knows; raises :class:`RefusedRequest`."""
        judged = self.rule or rule
        if judged is None:
            raise RefusedRequest("this verifier has no judging rule")
        if context.format != 2:
            raise RefusedRequest("votes must bind their context (format 2)")
        if context.rule != judged.digest:
            raise RefusedRequest(
                f"the request names rule {context.rule[:16]}…, this verifier "
                f"judges by {judged.digest[:16]}…"
            )
        if model_hash(global_model) != context.parent_model:
            raise RefusedRequest(
                "the global model sent does not hash to the parent model named"
            )
        assert context.prev_hash is not None
        self.take_position(
            context.chain_id, context.height, context.prev_hash, context.parent_model
        )
        return judged

    def take_position(
        self, chain_id: str, height: int, prev_hash: str, parent_model: str
    ) -> None:
        """Record that this verifier acts at ``height`` after block ``prev_hash``
        on model ``parent_model`` in ``chain_id``; :class:`RefusedRequest` if
        that goes back on what it has voted on or led there: a lower height,
        or the same height after another block or parent model."""
        if chain_id in self.seen:
            seen_height, seen_prev, seen_parent = self.seen[chain_id]
            if height < seen_height:
                raise RefusedRequest(
                    f"height {height} is behind height {seen_height} "
                    "this verifier has voted at"
                )
            if height == seen_height and (seen_prev, seen_parent) != (
                prev_hash,
                parent_model,
            ):
                raise RefusedRequest(
                    f"height {height} was voted on after another block or model"
                )
        self.seen[chain_id] = (height, prev_hash, parent_model)

    def _verdict(self, honest: bool) -> bool:
        match self.behaviour:
            case Behaviour.APPROVE_ALL:
                return True
            case Behaviour.REJECT_ALL:
                return False
            case Behaviour.INVERT:
                return not honest
            case _:
                return honest

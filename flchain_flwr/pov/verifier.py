"""A verifier: an Ed25519 identity, trusted test data, and a voting rule."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from ..arrays import NDArrays
from ..ledger import sign_vote


@dataclass(frozen=True)
class Score:
    """How a model does on a verifier's trusted test data."""

    accuracy: float
    loss: float


ScoreFn = Callable[[NDArrays], Score]
"""Scores one model (name -> array, the global model's layout) on trusted data."""


@dataclass(frozen=True)
class Threshold:
    """When a verifier approves a candidate.

    ``mode="relative"``: the candidate may be at most ``value`` worse than the
    current global model on the same data (loss: ``value`` is a relative increase,
    0.05 = 5 %; accuracy: ``value`` is a fraction, 0.05 = 5 points).
    ``mode="absolute"``: loss at most ``value``, or accuracy at least ``value``.
    A non-finite score is never approved. The default is loss, which still
    moves when a candidate is scored at its share of the block (see
    :class:`~flchain_flwr.pov.Committee`) and accuracy on 100 examples would not.
    """

    metric: Literal["accuracy", "loss"] = "loss"
    mode: Literal["relative", "absolute"] = "relative"
    value: float = 0.05

    def __post_init__(self) -> None:
        if self.metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be accuracy or loss, not {self.metric!r}")
        if self.mode not in ("relative", "absolute"):
            raise ValueError(f"mode must be relative or absolute, not {self.mode!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"threshold value must be finite and >= 0: {self.value}")

    def approves(self, candidate: Score, reference: Score) -> bool:
        """Whether ``candidate`` passes against the global model's ``reference``."""
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


class Verifier:
    """A committee member: signs votes on candidates scored on its trusted data.

    Parameters
    ----------
    score_fn : ScoreFn
        Scores a model on this verifier's trusted test data (e.g. 100 examples).
    key : nacl.signing.SigningKey, optional
        Its Ed25519 identity; a fresh key if not given.
    behaviour : Behaviour (default: HONEST)
        Byzantine behaviours exist to test the committee; see :class:`Behaviour`.
    seed : int (default: 0)
        Seeds the garbage of ``GARBAGE_SIGNATURE``.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        key: SigningKey | None = None,
        *,
        behaviour: Behaviour | str = Behaviour.HONEST,
        seed: int = 0,
    ) -> None:
        self.score_fn = score_fn
        self.key = key or SigningKey.generate()
        self.behaviour = Behaviour(behaviour)
        self.public_key: str = self.key.verify_key.encode(HexEncoder).decode()
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"Verifier({self.public_key[:12]}…, {self.behaviour.value})"

    def vote(
        self,
        *,
        chain_id: str,
        height: int,
        global_model: NDArrays,
        candidates: Sequence[tuple[str, NDArrays]],
        threshold: Threshold,
    ) -> list[dict[str, Any]]:
        """Signed votes on ``(digest, candidate model)`` pairs for block ``height``.

        The global model is scored once; each candidate once.
        """
        reference = self.score_fn(global_model)
        votes = []
        for digest, model in candidates:
            score = self.score_fn(model)
            verdict = self._verdict(threshold.approves(score, reference))
            value = round(score.accuracy, 6) if math.isfinite(score.accuracy) else -1.0
            vote = sign_vote(self.key, chain_id, height, digest, verdict, value)
            if self.behaviour is Behaviour.GARBAGE_SIGNATURE:
                vote["signature"] = self._rng.randbytes(64).hex()
            votes.append(vote)
        return votes

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

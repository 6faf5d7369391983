"""A committee member's signed vote on one candidate update: its context,
the bytes it signs, signing it and checking a stored one (and its score,
where trust weighting reads it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from .canonical import VOTE_TAG, encode_round_trip, is_hex
from .consensus import VOTE_FORMAT
from .statements import signature_ok

_VOTE_TAG_V2: Final = b"flchain-vote/2\n"


@dataclass(frozen=True)
class VoteContext:
    """What a vote is judged against besides its candidate and weight.

    A format-2 vote signs all of it, so it holds for one block position, one
    parent model and one rule only. ``prev_hash=None`` stands for a format-1
    vote, which signs only ``chain_id`` and ``height``.
    """

    chain_id: str
    height: int
    prev_hash: str | None = None
    """Hash of the block this one follows."""
    parent_model: str = ""
    """Hash of the global model the candidates were applied to."""
    rule: str = ""
    """Digest of the judging rule (see ``consensus.rule_digest``)."""
    view: int = 0
    """The consensus view at this height (0 unless a leader failed)."""

    @property
    def format(self) -> int:
        """1 (chain id and height only) or 2 (everything)."""
        return 1 if self.prev_hash is None else 2


def vote_payload(
    context: VoteContext,
    candidate: str,
    verdict: bool,
    score: float,
    weight: float | None = None,
) -> bytes:
    """The bytes a verifier signs for one vote (``weight``: format 2 only).

    A format-1 vote is signed over the format-1 encoding (what ledgers of
    format 1 hold); a format-2 vote over RFC 8785 (:func:`encode`, version 2).
    """
    if context.format == 1:
        return VOTE_TAG + encode_round_trip(
            1,
            {
                "chain_id": context.chain_id,
                "height": context.height,
                "candidate": candidate,
                "verdict": verdict,
                "score": score,
            },
        )
    return _VOTE_TAG_V2 + encode_round_trip(
        2,
        {
            "format": VOTE_FORMAT,
            "chain_id": context.chain_id,
            "height": context.height,
            "view": context.view,
            "prev_hash": context.prev_hash,
            "parent_model": context.parent_model,
            "rule": context.rule,
            "candidate": candidate,
            "weight": weight,
            "verdict": verdict,
            "score": score,
        },
    )


# pylint: disable=too-many-arguments
def sign_vote(
    key: SigningKey,
    context: VoteContext,
    candidate: str,
    verdict: bool,
    score: float,
    weight: float | None = None,
) -> dict[str, Any]:
    """A signed vote, in the form stored in a block body.

    A format-2 vote stores its ``weight`` and ``format``; the rest of its
    context is recomputed from the chain by whoever checks it.
    """
    if context.format == 2 and (weight is None or not math.isfinite(weight)):
        raise ValueError("a format-2 vote needs a finite weight")
    payload = vote_payload(context, candidate, verdict, score, weight)
    vote: dict[str, Any] = {
        "verifier": key.verify_key.encode(HexEncoder).decode(),
        "candidate": candidate,
        "verdict": verdict,
        "score": score,
        "signature": key.sign(payload).signature.hex(),
    }
    if context.format == 2:
        vote["format"] = VOTE_FORMAT
        vote["weight"] = weight
    return vote


_VOTE_FIELDS: Final = frozenset(
    {"verifier", "candidate", "verdict", "score", "signature"}
)
_VOTE_FIELDS_V2: Final = _VOTE_FIELDS | {"format", "weight"}


def check_vote(context: VoteContext, vote: Any) -> str | None:
    """Why a stored vote is not a valid signed vote in ``context``, or ``None``.

    The vote's format must be the context's: a chain whose genesis declares
    format-2 votes accepts no format-1 vote, and the reverse.
    """
    fields = _VOTE_FIELDS if context.format == 1 else _VOTE_FIELDS_V2
    if not isinstance(vote, Mapping) or set(vote) != fields:
        return f"malformed vote: fields must be exactly {sorted(fields)}"
    if context.format == 2 and vote["format"] != VOTE_FORMAT:
        return f"malformed vote: format must be {VOTE_FORMAT!r}"
    if not isinstance(vote["verdict"], bool) or not is_hex(vote["candidate"], 64):
        return "malformed vote: verdict must be a boolean, candidate a digest"
    numbers = ("score",) if context.format == 1 else ("score", "weight")
    for name in numbers:
        value = vote[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"malformed vote: {name} must be a number"
    try:
        payload = vote_payload(
            context,
            vote["candidate"],
            vote["verdict"],
            vote["score"],
            vote.get("weight"),
        )
        ok = signature_ok(str(vote["verifier"]), payload, str(vote["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed vote: {exc!r}"
    return None if ok else "signature is invalid"


def score_problem(score: Any) -> str | None:
    """Why a vote's ``score`` cannot set a trust, or ``None``: it must be a
    number in ``[-1, 1]`` (a cosine).

    Under a rule with ``aggregation``
    (:data:`~flchain_flwr.ledger.consensus.TRUST_WEIGHTING`),
    :func:`~flchain_flwr.pov.trust.trust_scores` refuses a block's approving
    votes by it, and the leader drops an incoming vote by it
    (:func:`~flchain_flwr.pov.tally.collect_votes`), so no vote a block holds
    fails it.
    """
    if isinstance(score, bool) or not isinstance(score, int | float):
        return f"score is not numeric but a {type(score).__name__}"
    if not abs(score) <= 1:  # NaN too
        return f"score {score!r} is outside [-1, 1]"
    return None

"""Proof-of-Verifying: a signed verifier committee that filters poisoned updates.

Verifiers (Ed25519 identities with trusted test data) score each candidate
update, sign their votes, and a candidate counts only with approvals from more
than 2/3 of the block's committee. Committees and leaders rotate with the previous
block's hash; verifiers that contradict the quorum lose stake. Use it inside
:class:`~flchain_flwr.strategies.FedBuff` (``committee=``) or around any Flower
strategy with :class:`PoVStrategy`.
"""

from .committee import Committee
from .decision import Candidate, CommitteeDecision, Outcome
from .filters import IQRFilter, MedianFilter, Prefilter, distances_to_mean
from .judging import ReferenceFn, Rule, Score, ScoreFn, Threshold, cosine
from .strategy import PoVStrategy
from .tally import collect_votes
from .verifier import Behaviour, RefusedRequest, Verifier

__all__ = [
    "Behaviour",
    "Candidate",
    "Committee",
    "CommitteeDecision",
    "IQRFilter",
    "MedianFilter",
    "Outcome",
    "PoVStrategy",
    "Prefilter",
    "ReferenceFn",
    "RefusedRequest",
    "Rule",
    "Score",
    "ScoreFn",
    "Threshold",
    "Verifier",
    "collect_votes",
    "cosine",
    "distances_to_mean",
]

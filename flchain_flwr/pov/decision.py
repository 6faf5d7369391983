"""What a committee's decision is made of, and what it records.

A :class:`Candidate` is an update waiting for the committee; a :class:`Cast`
is what one vote request got back from the members (their unchecked votes,
why some gave none, who gave no answer at all); an :class:`Outcome` is the
verdict on one candidate; and a :class:`CommitteeDecision` is one batch
decided by one committee: its members, the quorum, the valid signed votes as a
block body stores them, the verdicts, and the view they were cast in with the
certificates of the views it skipped. These are plain records: deciding is
:class:`~flchain_flwr.pov.committee.Committee`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from flwr.app import RecordDict

from ..arrays import NDArrays
from ..ledger import VoteContext


@dataclass(frozen=True)
class Candidate:
    """An update waiting for the committee: its digest, sender and delta, and
    what it weighs in the aggregate (see
    :func:`~flchain_flwr.ledger.consensus.judged_shares`)."""

    digest: str
    node_id: int
    delta: NDArrays
    weight: float = 1.0
    """Its staleness weight."""
    examples: float = 1.0
    """The example count the aggregate weighs it by."""
    content: RecordDict | None = None
    """The reply as received (a remote committee sends it, see
    :mod:`~flchain_flwr.pov.voterequest`)."""
    base: NDArrays | None = None
    """For a full-weights reply, the model it was trained from (``None``:
    the global model judged against)."""


class Cast(NamedTuple):
    """What one vote request got back from a committee's members."""

    votes: list[dict[str, Any]]
    """Their votes, unchecked (:meth:`~.committee.Committee.decide` keeps the
    valid ones)."""
    problems: list[str]
    """Why members gave none (refused, failed, unreachable)."""
    unreachable: frozenset[str] = frozenset()
    """Members that gave no answer at all (no reply, node or message
    unavailable): unlike a refusal, this may pass."""
    moved_past: frozenset[str] = frozenset()
    """Members that voted but have moved past this view: they signed a view
    change in it or something at a later view of this height
    (:func:`~.views.moved_past`), so they sign no new header in it."""


@dataclass(frozen=True)
class Outcome:
    """The committee's decision on one candidate."""

    digest: str
    node_id: int
    accepted: bool
    approvals: int
    reason: str = ""
    """Why it was rejected ("" when accepted)."""


@dataclass
class CommitteeDecision:
    """One batch decided by one committee (several may share a block height)."""

    height: int
    committee: list[str]
    needed: int
    votes: list[dict[str, Any]]
    """Valid signed votes, in the form stored in a block body."""
    outcomes: list[Outcome]
    dropped_votes: list[str] = field(default_factory=list)
    """Why votes were not counted (bad signature, not a member, duplicate...)."""
    view: int = 0
    """The view the votes were cast in (its leader signs the block)."""
    context: VoteContext | None = None
    """What the votes sign."""
    view_changes: list[dict[str, Any]] = field(default_factory=list)
    """Certificates that the views this decision skipped failed (in order)."""
    unreachable: list[str] = field(default_factory=list)
    """Members that gave no answer to the last vote request here, the one
    that decided (see :class:`Cast`)."""
    requests: int = 0
    """Vote requests sent to the members for this decision, one per pass (0:
    every candidate was ruled out before the vote, or there was no member)."""
    moved_past: list[str] = field(default_factory=list)
    """Members that said, voting here, that they have moved past this view
    (see :class:`Cast`)."""

    def votes_on(self, digest: str) -> list[dict[str, Any]]:
        """The counted votes on one candidate."""
        return [v for v in self.votes if v["candidate"] == digest]

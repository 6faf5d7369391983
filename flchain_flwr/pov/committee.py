"""The PoV committee: verifiers vote on a batch of candidate updates, the leader
collects valid signed votes, and a candidate counts iff more than 2/3 of the
committee approve.

Each candidate is scored as the current global model plus the step it would
contribute to the aggregate (``share * delta``, its share of the buffer's
weighted sum; ``scoring="full"`` applies the whole delta instead), against the
current global model on the same verifier's data. With non-IID data a single
honest update applied in full is often worse on balanced test data than the
global model (measured: a median 11 points on Fashion-MNIST, Dirichlet 0.5), so
scoring the full delta rejects honest work; its share is what the block would
actually do. Candidate models are built once per decision and shared by the
committee; each verifier scores the global model once and every candidate once
(the batch is the block).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.supercore import log

from ..arrays import NDArrays, apply_step
from ..ledger import (
    BlockSigner,
    Ledger,
    PoVRules,
    PoVState,
    check_vote,
    model_hash,
    quorum,
)
from .filters import Prefilter
from .verifier import Threshold, Verifier


@dataclass(frozen=True)
class Candidate:
    """An update waiting for the committee: its digest, sender and delta."""

    digest: str
    node_id: int
    delta: NDArrays
    share: float = 1.0
    """Fraction of ``delta`` the aggregate would apply (weight / total weight)."""


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

    def votes_on(self, digest: str) -> list[dict[str, Any]]:
        """The counted votes on one candidate."""
        return [v for v in self.votes if v["candidate"] == digest]


class Committee:
    """A pool of verifiers, the committee rule and the deposits.

    Parameters
    ----------
    verifiers : Sequence[Verifier]
        The pool. Each block's committee (and leader) is drawn from the verifiers
        still in the pool, deterministically from the previous block's hash.
    committee_size : int | None (default: None)
        Members per block; ``None`` = the whole pool.
    threshold : Threshold (default: loss at most 5 % above the global's)
        Each verifier's approval rule.
    initial_stake, slash, floor : float (default: 100, 1, 50)
        Deposits: each member loses ``slash`` per candidate on which its vote
        contradicts the quorum's outcome (or is missing or invalid); below
        ``floor`` it leaves the pool.
    prefilters : Sequence[Prefilter] (default: none)
        Cheap filters run first, in order (:class:`~flchain_flwr.pov.IQRFilter`,
        :class:`~flchain_flwr.pov.MedianFilter`); what they rule out never
        reaches the committee and carries the filter's reason.
    scoring : "share" | "full" (default: "share")
        Score ``global + share * delta`` (what the block would do) or
        ``global + delta``.
    consensus_delay : float (default: 0.0)
        Seconds charged per decision on a virtual clock (the BFEL paper uses 0.5 s
        per block). On a wall clock the committee's real time is its cost, and
        this is not added.
    chain_id : str (default: "flchain-local")
        Signed into votes when no ledger is used (a ledger's own id otherwise).
    remote_members : Sequence[str] (default: none)
        Public keys of pool members that vote on machines of their own
        (:class:`~flchain_flwr.pov.remote.RemoteCommittee` asks them).
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        verifiers: Sequence[Verifier],
        *,
        committee_size: int | None = None,
        threshold: Threshold | None = None,
        initial_stake: float = 100.0,
        slash: float = 1.0,
        floor: float = 50.0,
        prefilters: Sequence[Prefilter] = (),
        scoring: str = "share",
        consensus_delay: float = 0.0,
        chain_id: str = "flchain-local",
        remote_members: Sequence[str] = (),
    ) -> None:
        if consensus_delay < 0:
            raise ValueError("consensus_delay must be >= 0")
        if threshold is not None and threshold.min_cosine is not None:
            missing = [v for v in verifiers if v.reference_fn is None]
            if missing:
                raise ValueError(
                    f"the direction test (min_cosine) needs a reference_fn on "
                    f"every verifier; {len(missing)} have none"
                )
        if scoring not in ("share", "full"):
            raise ValueError(f"scoring must be 'share' or 'full', not {scoring!r}")
        self.scoring = scoring
        self.verifiers = {v.public_key: v for v in verifiers}
        pool = (*(v.public_key for v in verifiers), *remote_members)
        if len(set(pool)) != len(pool):
            raise ValueError("two verifiers share a key")
        self.rules = PoVRules(
            pool=pool,
            committee_size=committee_size or len(pool),
            initial_stake=initial_stake,
            slash=slash,
            floor=floor,
        )
        self.state = PoVState(self.rules)
        self.threshold = threshold or Threshold()
        self.prefilters = tuple(prefilters)
        self.consensus_delay = consensus_delay
        self.chain_id = chain_id

    def __repr__(self) -> str:
        return (
            f"Committee(pool={len(self.rules.pool)}, "
            f"size={self.rules.committee_size}, threshold={self.threshold}, "
            f"scoring={self.scoring}, prefilters={list(self.prefilters)})"
        )

    @property
    def removed(self) -> list[str]:
        """Keys of verifiers that lost their place in the pool."""
        active = set(self.state.pool)
        return [k for k in self.rules.pool if k not in active]

    # ------------------------------------------------------------------ ledger
    def genesis_fields(self) -> dict[str, Any]:
        """Body fields of a PoV chain's genesis block (the pool and its rules)."""
        return {"pov": self.rules.to_json()}

    def resume(self, ledger: Ledger) -> None:
        """Take stakes from an existing PoV ledger (same pool and rules)."""
        genesis = ledger.block(0)
        if genesis.body.get("pov") != self.rules.to_json():
            raise ValueError(
                f"ledger {ledger.path} was not created with this verifier pool "
                "and these deposit rules"
            )
        self.state = PoVState.replayed(self.rules, (b.body for b in ledger.blocks()))

    def block_position(
        self, ledger: Ledger | None, model: NDArrays, height: int
    ) -> tuple[str, int, str]:
        """``(chain id, height, previous hash)`` of the block being decided: from
        the ledger's head, or without a ledger this committee's chain id,
        ``height`` and the current model's hash as the rotation seed."""
        if ledger is not None:
            head = ledger.head()
            if head is None:
                raise ValueError(f"ledger {ledger.path} has no genesis block")
            return ledger.chain_id, head.height + 1, head.hash
        return self.chain_id, height, model_hash(model)

    def seal(
        self, committee: list[str], votes: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, Any], BlockSigner]:
        """Settle a block's deposits; return its PoV body fields and what signs
        for the leader. The stakes change here, once per block."""
        deposits = self.state.settlement(committee, votes)
        self.state.apply(deposits)
        for entry in deposits:
            if entry["removed"]:
                log(WARNING, "Verifier %s… leaves the pool", entry["verifier"][:12])
        return (
            {"committee": list(committee), "deposits": deposits},
            self.signer(committee[0]),
        )

    def signer(self, leader: str) -> BlockSigner:
        """What signs a block led by ``leader``: here its own signing key."""
        return self.verifiers[leader].key

    @property
    def reserved_nodes(self) -> frozenset[int]:
        """Nodes that verify and must not be sent training (none in-process)."""
        return frozenset()

    def scale(self, candidate: Candidate) -> float:
        """How much of ``candidate``'s update is applied when it is scored."""
        return candidate.share if self.scoring == "share" else 1.0

    # pylint: disable=too-many-arguments
    def cast_votes(
        self,
        members: Sequence[str],
        *,
        chain_id: str,
        height: int,
        global_model: NDArrays,
        candidates: Sequence[Candidate],
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Ask each member to vote on ``candidates``: ``(votes, problems)``.

        Votes come back unchecked; :meth:`decide` keeps only valid ones. A
        member that fails simply has no votes (its deposit pays for it).
        """
        models = [
            (
                c.digest,
                apply_step(global_model, c.delta, self.scale(c))
                if self.threshold.scores_models
                else {},
            )
            for c in candidates
        ]
        votes: list[dict[str, Any]] = []
        problems: list[str] = []
        for key in members:
            try:
                votes.extend(
                    self.verifiers[key].vote(
                        chain_id=chain_id,
                        height=height,
                        global_model=global_model,
                        candidates=models,
                        threshold=self.threshold,
                        deltas=[c.delta for c in candidates],
                    )
                )
            except Exception as exc:  # pylint: disable=broad-exception-caught
                problems.append(f"verifier {key[:12]}… failed: {exc!r}")
        return votes, problems

    # ---------------------------------------------------------------- deciding
    # pylint: disable=too-many-arguments,too-many-locals
    def decide(
        self,
        *,
        chain_id: str,
        height: int,
        prev_hash: str,
        global_model: NDArrays,
        candidates: Sequence[Candidate],
        round_: int,
    ) -> CommitteeDecision:
        """Filter, score and vote on ``candidates`` for block ``height``."""
        members = self.state.committee(prev_hash)
        needed = quorum(len(members))
        outcomes: dict[int, Outcome] = {}  # by position in ``candidates``
        first: dict[str, int] = {}
        for index, c in enumerate(candidates):
            if c.digest in first:  # a replayed copy: at most one may count
                outcomes[index] = Outcome(
                    c.digest, c.node_id, False, 0, "duplicate of another candidate"
                )
            first.setdefault(c.digest, index)
        for prefilter in self.prefilters:
            flagged = prefilter.outliers([c.delta for c in candidates], round_)
            for index, reason in flagged.items():
                c = candidates[index]
                outcome = Outcome(c.digest, c.node_id, False, 0, reason)
                outcomes.setdefault(index, outcome)
        if not members:
            for index, c in enumerate(candidates):
                outcomes.setdefault(
                    index,
                    Outcome(c.digest, c.node_id, False, 0, "no verifier left in pool"),
                )
        pending = [(i, c) for i, c in enumerate(candidates) if i not in outcomes]
        votes: list[dict[str, Any]] = []
        dropped: list[str] = []
        if pending:
            votes, dropped = self.cast_votes(
                members,
                chain_id=chain_id,
                height=height,
                global_model=global_model,
                candidates=[c for _, c in pending],
            )
            votes, more = collect_votes(
                votes, chain_id, height, members, {c.digest for _, c in pending}
            )
            dropped.extend(more)
        for index, c in pending:
            approving = sum(
                1 for v in votes if v["candidate"] == c.digest and v["verdict"] is True
            )
            accepted = approving >= needed
            reason = (
                ""
                if accepted
                else f"PoV: {approving}/{len(members)} approvals, quorum {needed}"
            )
            outcomes[index] = Outcome(c.digest, c.node_id, accepted, approving, reason)
        return CommitteeDecision(
            height,
            members,
            needed,
            votes,
            [outcomes[i] for i in range(len(candidates))],
            dropped,
        )


def collect_votes(
    votes: Sequence[Any],
    chain_id: str,
    height: int,
    members: Sequence[str],
    candidates: set[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The leader's check of incoming votes: keep valid ones, say why others go.

    A vote counts once, only from a committee member, only on a candidate of
    this batch, and only with a valid signature for this chain and height (so a
    vote replayed from another block or altered in transit is dropped).
    """
    kept: list[dict[str, Any]] = []
    dropped: list[str] = []
    seen: set[tuple[str, str]] = set()
    allowed = set(members)
    for vote in votes:
        problem = check_vote(chain_id, height, vote)
        if problem is None:
            pair = (str(vote["verifier"]), str(vote["candidate"]))
            if pair[0] not in allowed:
                problem = "not from a committee member"
            elif pair[1] not in candidates:
                problem = "on a candidate outside this batch"
            elif pair in seen:
                problem = "a second vote on the same candidate"
            else:
                seen.add(pair)
                kept.append(dict(vote))
                continue
        who = str(vote.get("verifier", "?"))[:12] if isinstance(vote, dict) else "?"
        dropped.append(f"vote from {who}… dropped: {problem}")
    return kept, dropped

"""Tallying a batch: which votes count, and which candidates reach a quorum.

A vote counts once, only from a member of the block's committee, only on a
candidate of the batch and only with a valid signature in the block's vote
context (:func:`collect_votes`). A candidate is accepted iff more than 2/3 of
the committee approve it (:func:`~flchain_flwr.ledger.quorum`), judged at the
share of the aggregate it would have among the candidates approved with it:
when some are rejected, the others' shares grow and they are asked about
again, until every approved candidate was approved at the share the block
applies (:func:`decide_batch`). Replayed copies of a candidate and what the
prefilters rule out are rejected before any vote. These functions hold no
state: the committee passes in its members, filters and how to ask them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..ledger import VoteContext, check_vote, judged_shares, quorum
from ..ledger.consensus import share_problem
from ..ledger.votes import score_problem
from .decision import Candidate, Cast, CommitteeDecision, Outcome
from .filters import Prefilter


# pylint: disable=too-many-arguments,too-many-locals
def decide_batch(
    context: VoteContext,
    members: list[str],
    certificates: list[dict[str, Any]],
    candidates: Sequence[Candidate],
    *,
    prefilters: Sequence[Prefilter],
    round_: int,
    server_lr: float,
    ask: Callable[[Sequence[Candidate], Sequence[float]], Cast],
    trust_weighting: bool = False,
) -> CommitteeDecision:
    """Decide ``candidates`` in ``context`` with the committee ``members``
    (``certificates``: the view changes that led to this view); ``ask(batch,
    shares)`` sends one vote request to the members; ``trust_weighting``:
    whether the block weighs approved updates by the votes' scores."""
    needed = quorum(len(members))
    outcomes: dict[int, Outcome] = {}  # by position in ``candidates``
    first: dict[str, int] = {}
    for index, c in enumerate(candidates):
        if c.digest in first:  # a replayed copy: at most one may count
            outcomes[index] = Outcome(
                c.digest, c.node_id, False, 0, "duplicate of another candidate"
            )
        first.setdefault(c.digest, index)
    for prefilter in prefilters:
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
    pending = [i for i in range(len(candidates)) if i not in outcomes]
    votes: list[dict[str, Any]] = []
    dropped: list[str] = []
    unreachable: list[str] = []
    moved: set[str] = set()
    requests = 0
    while pending:  # each pass decides the rest at their shares among them
        batch = [candidates[i] for i in pending]
        weights = judged_shares(
            server_lr, [c.weight for c in batch], [c.examples for c in batch]
        )
        answers = ask(batch, weights)
        requests += 1
        cast, more = collect_votes(
            answers.votes,
            context,
            members,
            {c.digest: w for c, w in zip(batch, weights, strict=True)},
            trust_weighting=trust_weighting,
        )
        dropped.extend(answers.problems + more)
        # the last request's: an earlier one had a quorum of approvals
        unreachable = [k for k in members if k in answers.unreachable]
        moved |= answers.moved_past
        approved = []
        for index, c in zip(pending, batch, strict=True):
            approving = sum(
                1 for v in cast if v["candidate"] == c.digest and v["verdict"]
            )
            if approving >= needed:
                approved.append((index, approving))
            else:
                reason = f"PoV: {approving}/{len(members)} approvals, quorum {needed}"
                outcomes[index] = Outcome(c.digest, c.node_id, False, approving, reason)
        final = len(approved) == len(pending) or not approved
        keep = (
            {candidates[i].digest for i in pending}
            if final
            else {candidates[i].digest for i in pending if i in outcomes}
        )
        votes.extend(v for v in cast if v["candidate"] in keep)
        if final:
            for index, approving in approved:
                c = candidates[index]
                outcomes[index] = Outcome(c.digest, c.node_id, True, approving)
            break
        pending = [i for i, _ in approved]  # their shares grew: judge again
    return CommitteeDecision(
        context.height,
        members,
        needed,
        votes,
        [outcomes[i] for i in range(len(candidates))],
        dropped,
        context.view,
        context,
        certificates,
        unreachable,
        requests,
        [k for k in members if k in moved],
    )


def collect_votes(
    votes: Sequence[Any],
    context: VoteContext,
    members: Sequence[str],
    shares: Mapping[str, float],
    *,
    trust_weighting: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The leader's check of incoming votes: keep valid ones, say why others go.

    A vote counts once, only from a committee member, only on a candidate of
    this batch (``shares``: each one's digest and the share it was asked
    about), only judged at that share, only with a valid signature in
    ``context``, a format-2 one (so a vote replayed from another block,
    parent, view or rule, or altered in transit, is dropped) and, under
    ``trust_weighting``, only with a score trust weighting can use.

    The share and the score are checked by the rules ``verify`` checks a
    block's votes by (:func:`~flchain_flwr.ledger.consensus.share_problem`,
    :func:`~flchain_flwr.ledger.votes.score_problem`): a vote a block
    holds never fails them, so a member holding only its own key can neither
    make a block unverifiable nor stop trust weighting.
    """
    kept: list[dict[str, Any]] = []
    dropped: list[str] = []
    seen: set[tuple[str, str]] = set()
    allowed = set(members)
    for vote in votes:
        problem = check_vote(context, vote) or _batch_problem(
            vote, allowed, shares, trust_weighting
        )
        if problem is None:
            pair = (str(vote["verifier"]), str(vote["candidate"]))
            if pair in seen:
                problem = "a second vote on the same candidate"
            else:
                seen.add(pair)
                kept.append(dict(vote))
                continue
        who = str(vote.get("verifier", "?"))[:12] if isinstance(vote, dict) else "?"
        dropped.append(f"vote from {who}… dropped: {problem}")
    return kept, dropped


def _batch_problem(
    vote: Mapping[str, Any],
    members: set[str],
    shares: Mapping[str, float],
    trust_weighting: bool,
) -> str | None:
    """Why a validly signed ``vote`` cannot count in this batch, or ``None``."""
    if str(vote["verifier"]) not in members:
        return "not from a committee member"
    candidate = str(vote["candidate"])
    if candidate not in shares:
        return "on a candidate outside this batch"
    problem = share_problem(vote, shares[candidate])
    if problem is None and trust_weighting:
        score = score_problem(vote["score"])
        problem = None if score is None else f"trust weighting: {score}"
    return problem

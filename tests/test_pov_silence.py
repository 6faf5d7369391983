"""A committee that casts no vote stops the run (pov.silence)."""

from __future__ import annotations

import pytest

from flchain_flwr.pov.committee import CommitteeDecision, Outcome
from flchain_flwr.pov.silence import (
    SILENT_DECISIONS,
    CommitteeSilentError,
    SilenceWatch,
)

MEMBERS = ["a" * 64, "b" * 64]
REFUSED = [
    f"verifier {k[:12]}… (node {i}): error reply: another rule"
    for i, k in enumerate(MEMBERS)
]


def decision(*, votes: int = 0, asked: bool = True) -> CommitteeDecision:
    """A decision on one candidate: ``votes`` valid votes, and each member's
    refusal when none voted (``asked``: the request was sent at all)."""
    return CommitteeDecision(
        height=1,
        committee=list(MEMBERS),
        needed=2,
        votes=[{"verdict": True}] * votes,
        outcomes=[Outcome("d", 1, False, votes, f"PoV: {votes}/2 approvals")],
        dropped_votes=list(REFUSED) if asked and not votes else [],
    )


def test_silence_raises_on_the_limit_th_request_in_a_row_with_every_answer() -> None:
    watch = SilenceWatch()
    for _ in range(SILENT_DECISIONS - 1):
        watch.observe(decision())
    with pytest.raises(CommitteeSilentError) as raised:
        watch.observe(decision())
    message = str(raised.value)
    assert f"on {SILENT_DECISIONS} vote requests in a row" in message
    assert message.count("error reply: another rule") == len(MEMBERS)


def test_one_valid_vote_resets_the_count_and_unasked_decisions_leave_it() -> None:
    watch = SilenceWatch(limit=3)
    for step in (decision(), decision(), decision(votes=1), decision(), decision()):
        watch.observe(step)
    assert watch.in_a_row == 2
    watch.observe(decision(asked=False))  # every candidate filtered before the vote
    assert watch.in_a_row == 2
    with pytest.raises(CommitteeSilentError):
        watch.observe(decision())

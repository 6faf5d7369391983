"""A committee that casts no vote stops the run (pov.silence)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flchain_flwr import cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.pov import (
    Committee,
    CommitteeDecision,
    Outcome,
    RefusedRequest,
    Threshold,
    Verifier,
)
from flchain_flwr.pov.outage import vote_requested
from flchain_flwr.pov.silence import (
    SILENT_DECISIONS,
    CommitteeSilentError,
    SilenceWatch,
)
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import AsyncResult, Constant, FedBuff

from .test_pov import verifiers
from .test_pov_chain import _node_app, _remote_fedbuff, _verifier_grid, pov_run
from .toy import constant_work, initial_arrays

MEMBERS = ["a" * 64, "b" * 64]
REFUSED = [
    f"verifier {k[:12]}… (node {i}): error reply: another rule"
    for i, k in enumerate(MEMBERS)
]


def decision(*, votes: int = 0, asked: bool = True) -> CommitteeDecision:
    """A decision on one candidate: ``votes`` valid votes, and each member's
    refusal when none voted (``asked``: the request was sent at all; if not,
    a prefilter ruled the candidate out, and its reason says so)."""
    reason = f"PoV: {votes}/2 approvals" if asked else "IQR outlier: far out"
    return CommitteeDecision(
        height=1,
        committee=list(MEMBERS),
        needed=2,
        votes=[{"verdict": True}] * votes,
        outcomes=[Outcome("d", 1, False, votes, reason)],
        dropped_votes=list(REFUSED) if asked and not votes else [],
        requests=1 if asked else 0,
    )


def test_silence_raises_on_the_limit_th_request_in_a_row_with_every_answer() -> None:
    watch = SilenceWatch()
    for _ in range(SILENT_DECISIONS - 1):
        watch.observe(decision())
    with pytest.raises(CommitteeSilentError) as raised:
        watch.observe(decision())
    message = str(raised.value)
    assert f"answered {SILENT_DECISIONS} vote requests in a row" in message
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


def test_answers_with_no_vote_and_no_reason_count() -> None:
    """A request every member answered with an empty list leaves no vote and
    no reason, only its candidate short of approvals: it counts."""
    watch = SilenceWatch(limit=2)
    mute = replace(decision(), dropped_votes=[])
    watch.observe(mute)
    with pytest.raises(CommitteeSilentError, match="no vote and no reason"):
        watch.observe(mute)


def test_members_that_did_not_answer_neither_count_nor_reset() -> None:
    watch = SilenceWatch(limit=2)
    watch.observe(decision())
    for _ in range(10):  # an outage: no answer is no refusal
        watch.observe(replace(decision(), unreachable=[MEMBERS[0]]))
    assert watch.in_a_row == 1
    with pytest.raises(CommitteeSilentError):
        watch.observe(decision())


def test_a_short_outage_of_every_verifier_node_does_not_stop_the_run(
    tmp_path: Path,
) -> None:
    """Every verifier node offline for 15.5 s of grid time (a restart of their
    hosts): the grid answers "node is not connected" at once, so a fast run
    asks many times meanwhile; none of it counts, and the run goes on."""
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3], down=(19.5, 35.0))
    strategy = _remote_fedbuff(grid, tmp_path / "outage.db", None)
    result = simulate(strategy, grid, initial_arrays(), num_rounds=8).result
    assert isinstance(result, AsyncResult) and len(result.versions) == 8
    outage = [d for d in result.committee_decisions if d["accepted"] == 0]
    assert outage and all("not connected" in str(d["dropped_votes"]) for d in outage), (
        outage
    )
    with Ledger(tmp_path / "outage.db", create=False) as ledger:
        assert ledger.verify().ok


def test_a_run_stopped_by_refusing_members_resumes_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks, then every member refuses (the run stops, the chain intact),
    then the committee is fixed: the resumed run grows the chain again."""
    path = pov_run(tmp_path, verifiers(4), rounds=2)
    with Ledger(path, create=False) as ledger:
        before = len(ledger)
        assert before >= 2 and ledger.verify().ok

    def fedbuff() -> tuple[FedBuff, VirtualGrid]:
        grid = VirtualGrid(
            _node_app(), [DeviceProfile() for _ in range(5)], work_fn=constant_work(1.0)
        )
        committee = Committee(verifiers(4), threshold=Threshold(value=0))
        strategy = FedBuff(
            fraction_evaluate=0.0,
            buffer_size=5,
            staleness_fn=Constant(),
            server_lr=0.5,
            committee=committee,
            ledger=path,
            seed=0,
        )
        return strategy, grid

    def refuse(self: Verifier, **_: Any) -> list[dict[str, Any]]:
        raise RefusedRequest("down for maintenance")

    with monkeypatch.context() as patched:
        patched.setattr(Verifier, "vote", refuse)
        with pytest.raises(CommitteeSilentError, match="down for maintenance"):
            simulate(*fedbuff(), initial_arrays(), num_rounds=4)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == before and ledger.verify().ok
    simulate(*fedbuff(), initial_arrays(), num_rounds=4)
    out = io.StringIO()
    assert cli.main(["ledger", "verify", str(path)], out) == 0, out.getvalue()
    with Ledger(path, create=False) as ledger:
        assert len(ledger) > before


def test_a_request_counts_by_the_committees_count_not_by_reason_text() -> None:
    """Members that answered with no vote and no reason leave a decision with
    nothing but the committee's request count: it counts as asked whatever
    the candidate's reason says, and a decision with no request and no
    answer does not, even under a reason that reads like a vote's."""
    mute = CommitteeDecision(
        height=1,
        committee=list(MEMBERS),
        needed=2,
        votes=[],
        outcomes=[Outcome("d", 1, False, 0, "any wording")],
        requests=1,
    )
    unasked = replace(
        mute, requests=0, outcomes=[Outcome("d", 1, False, 0, "PoV: 0/2")]
    )
    assert vote_requested(mute)
    assert not vote_requested(unasked)
    watch = SilenceWatch()
    for _ in range(SILENT_DECISIONS - 1):
        watch.observe(mute)
        watch.observe(unasked)  # neither counts nor resets
    with pytest.raises(CommitteeSilentError, match="no vote and no reason"):
        watch.observe(mute)

"""A committee that answers but cannot reach a quorum stops the run (pov.outage).

Two of four verifier nodes refuse every vote request while the other two
vote: every member answers, so nothing is unreachable, and two members vote,
so nothing is silent; but no request reaches the quorum of 3.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp.strategy import FedAvg

from flchain_flwr import cli
from flchain_flwr.ledger import Ledger
from flchain_flwr.pov import (
    Behaviour,
    Committee,
    CommitteeDecision,
    PoVStrategy,
    Threshold,
    Verifier,
)
from flchain_flwr.pov.outage import (
    OUTAGE_LIMIT,
    CommitteeStalledError,
    CommitteeUnreachableError,
    OutageWatch,
)
from flchain_flwr.pov.silence import CommitteeSilentError
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import AsyncResult

from .test_pov import toy_score, verifiers
from .test_pov_chain import _remote_fedbuff
from .test_pov_outage import MEMBERS, _refusing_grid, _slow_training
from .toy import constant_work, initial_arrays, toy_client_app


def _verifies(path: Path) -> None:
    out = io.StringIO()
    assert cli.main(["ledger", "verify", str(path)], out) == 0, out.getvalue()


# ------------------------------------------------------------------ the watch
def _answered(voters: int, *, unreachable: int = 0) -> CommitteeDecision:
    """A request to four members (quorum 3) that ``voters`` of them voted on
    validly, ``unreachable`` did not answer and the rest refused."""
    gone = MEMBERS[voters : voters + unreachable]
    refused = MEMBERS[voters + unreachable :]
    return CommitteeDecision(
        height=1,
        committee=list(MEMBERS),
        needed=3,
        votes=[{"verifier": k, "verdict": False} for k in MEMBERS[:voters]],
        outcomes=[],
        dropped_votes=[f"verifier {k[:12]}…: node is not connected" for k in gone]
        + [f"verifier {k[:12]}…: refused: another rule" for k in refused],
        unreachable=list(gone),
    )


def test_answers_short_of_a_quorum_count_whatever_the_reason() -> None:
    """Two valid voters of four (rejecting, here) and two refusals: no member
    is unreachable, yet the stretch counts and ends in CommitteeStalledError,
    which names each side; a quorum of voters, rejecting all, resets it."""
    watch = OutageWatch(limit=100.0)
    watch.observe(_answered(2), sent=10.0, now=11.0)
    watch.observe(_answered(3), sent=20.0, now=21.0)  # rejecting, but a quorum
    assert watch.since is None
    watch.observe(_answered(2), sent=30.0, now=31.0)
    with pytest.raises(CommitteeStalledError) as raised:
        watch.observe(_answered(2), sent=130.0, now=131.0)
    assert type(raised.value) is CommitteeStalledError  # all answered
    message = str(raised.value)
    assert "since grid time 30.0 s, 101 s ago" in message
    assert "4 of 4 members answered, quorum 3; valid votes from 2: " in message
    voted, refused = message.split("valid votes from 2: ")[1].split("; refused")
    assert all(f"{k[:12]}…" in voted for k in MEMBERS[:2])
    assert all(f"{k[:12]}…" in refused for k in MEMBERS[2:])
    assert "unreachable: none" in message and "refused: another rule" in message
    with pytest.raises(CommitteeUnreachableError, match="unreachable: c"):
        watch.observe(_answered(2, unreachable=1), sent=140.0, now=141.0)
    assert issubclass(CommitteeUnreachableError, CommitteeStalledError)


def test_silent_requests_count_but_are_left_to_the_silence_rule() -> None:
    """Requests every member answered without a valid vote extend the stretch
    but never raise here (the silence rule stops them after 5 in a row); a
    request with 2 voters that follows them does."""
    watch = OutageWatch(limit=10.0)
    for t in range(0, 100, 10):
        watch.observe(_answered(0), sent=float(t), now=float(t) + 1.0)
    assert watch.since == 0.0
    with pytest.raises(CommitteeStalledError, match=r"since grid time 0\.0 s"):
        watch.observe(_answered(2), sent=100.0, now=101.0)


# ----------------------------------------------------------- FedBuff on the grid
def test_two_of_four_refusing_stop_the_run_with_who_refused_and_who_voted(
    tmp_path: Path,
) -> None:
    """From t=30 s verifiers 2 and 3 refuse every vote and 0 and 1 vote:
    beyond f < n/3, nothing can be approved. Before, neither watch counted
    it and the run ended quietly on FedBuff's idle timeout at 3631 s of grid
    time with 2 of 8 versions and 300 unanswerable requests; now it stops
    with the error once the default limit of 1800 s passes."""
    grid = _refusing_grid(
        tmp_path, {2, 3}, during=(30.0, math.inf), work_fn=_slow_training
    )
    path = tmp_path / "stalled.db"
    strategy = _remote_fedbuff(grid, path, None)
    with pytest.raises(CommitteeStalledError) as raised:
        simulate(strategy, grid, initial_arrays(), num_rounds=8)
    assert not isinstance(raised.value, CommitteeUnreachableError)
    message = str(raised.value)
    voted, refused = message.split("valid votes from 2: ")[1].split("; refused")
    for shard, side in [(0, voted), (1, voted), (2, refused), (3, refused)]:
        assert f"(node {grid.node_ids[3 + shard]})" in side, (shard, message)
    assert "4 of 4 members answered, quorum 3" in message
    assert "judges by another rule" in message and "unreachable: none" in message
    since = float(message.split("since grid time ")[1].split(" s")[0])
    assert 30.0 <= since <= 45.0  # the first request after the refusals began
    assert OUTAGE_LIMIT < grid.clock.now() - since <= OUTAGE_LIMIT + 20.0
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 3 and ledger.verify().ok  # the blocks before t=30
    _verifies(path)


@pytest.mark.parametrize(("limit", "finishes"), [(60.0, True), (15.0, False)])
def test_refusals_shorter_than_the_limit_let_the_run_finish(
    tmp_path: Path, limit: float, finishes: bool
) -> None:
    """Verifiers 2 and 3 refuse every vote from t=5 s to t=35 s: a 60 s
    limit lets the run finish all 8 versions, a 15 s one stops it."""
    grid = _refusing_grid(tmp_path, {2, 3}, during=(5.0, 35.0))
    path = tmp_path / "short.db"
    strategy = _remote_fedbuff(grid, path, None, outage_limit=limit)
    if not finishes:
        with pytest.raises(CommitteeStalledError, match="valid votes from 2"):
            simulate(strategy, grid, initial_arrays(), num_rounds=8)
        _verifies(path)
        return
    result = simulate(strategy, grid, initial_arrays(), num_rounds=8).result
    assert isinstance(result, AsyncResult) and len(result.versions) == 8
    assert any(d["accepted"] == 0 for d in result.committee_decisions)  # the stall
    _verifies(path)


def test_one_member_refusing_for_good_leaves_a_quorum_and_no_stall(
    tmp_path: Path,
) -> None:
    """One refusing member of four (f = 1 < 4/3): every request still has 3
    valid voters, so even a 1 s limit never stops the run."""
    grid = _refusing_grid(tmp_path, {3})
    path = tmp_path / "one.db"
    strategy = _remote_fedbuff(grid, path, None, outage_limit=1.0)
    result = simulate(strategy, grid, initial_arrays(), num_rounds=8).result
    assert isinstance(result, AsyncResult) and len(result.versions) == 8
    _verifies(path)


# ------------------------------------------------------------ PoVStrategy
def _sync_run(
    tmp_path: Path,
    garbage: list[int],
    limit: float,
    mute: Collection[int] = (),
    rejecting: Collection[int] = (),
) -> PoVStrategy:
    """Flower's FedAvg in PoVStrategy, 3 trainers, 1 s of grid time a round;
    the verifiers in ``garbage`` (of 4) sign their votes with random bytes,
    those in ``mute`` answer with no vote at all, those in ``rejecting`` sign
    a rejection of every update."""
    byzantine = dict.fromkeys(garbage, Behaviour.GARBAGE_SIGNATURE)
    byzantine |= dict.fromkeys(rejecting, Behaviour.REJECT_ALL)
    pool = [
        _Mute(toy_score, v.key, seed=i) if i in mute else v
        for i, v in enumerate(verifiers(4, byzantine))
    ]
    strategy = PoVStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3),
        Committee(pool, threshold=Threshold(value=0), outage_limit=limit),
        ledger=tmp_path / "sync.db",
    )
    grid = VirtualGrid(
        toy_client_app({}),
        [DeviceProfile() for _ in range(3)],
        work_fn=constant_work(1.0),
    )
    simulate(strategy, grid, initial_arrays(), num_rounds=20)
    return strategy


def test_the_synchronous_strategy_stops_when_no_quorum_votes_validly(
    tmp_path: Path,
) -> None:
    """Two of four in-process verifiers vote with invalid signatures: without
    the watch all 20 rounds trained and rejected every update; with a 5 s
    limit the run stops after the 7th round, naming the two."""
    with pytest.raises(CommitteeStalledError) as raised:
        _sync_run(tmp_path, [2, 3], limit=5.0)
    message = str(raised.value)
    refused = message.split("refused or voted invalidly: ")[1].split(";")[0]
    pool = verifiers(4)
    assert all(f"{pool[i].public_key[:12]}…" in refused for i in (2, 3))
    assert "valid votes from 2" in message and "signature" in message
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        assert len(ledger) == 1 and ledger.verify().ok  # the genesis block
    _verifies(tmp_path / "sync.db")


class _Mute(Verifier):
    """Answers every vote request with an empty list: no vote, no refusal."""

    def vote(self, **request: Any) -> list[dict[str, Any]]:
        del request
        return []


@pytest.mark.parametrize(
    ("mute", "error"),
    [({0, 1, 2, 3}, CommitteeSilentError), ({2, 3}, CommitteeStalledError)],
)
def test_members_that_answer_with_no_vote_at_all_count(
    tmp_path: Path, mute: set[int], error: type[Exception]
) -> None:
    """Members that answer every request with no vote and no reason are
    neither unreachable nor refusing. All four so: the silence rule stops
    the run after 5 rounds (before, neither watch counted such a request,
    which looked like none sent, and all 20 rounds trained and rejected
    every update); two of four: the outage limit does, naming them."""
    with pytest.raises(error) as raised:
        _sync_run(tmp_path, [], limit=5.0, mute=mute)
    if error is CommitteeSilentError:
        assert "5 vote requests in a row" in str(raised.value)
    else:
        refused = str(raised.value).split("refused or voted invalidly: ")[1]
        pool = verifiers(4)
        assert all(f"{pool[i].public_key[:12]}…" in refused for i in mute)
    _verifies(tmp_path / "sync.db")


def test_the_synchronous_strategy_runs_on_with_one_faulty_member(
    tmp_path: Path,
) -> None:
    """One of four signs with random bytes (f = 1 < 4/3): every round has 3
    valid voters (approving or not), so even a 1 s limit never stops it."""
    strategy = _sync_run(tmp_path, [3], limit=1.0)
    assert len(strategy.decisions) == 20
    assert all(len({v["verifier"] for v in d.votes}) == 3 for d in strategy.decisions)
    _verifies(tmp_path / "sync.db")


def test_a_third_rejecting_everything_with_valid_votes_goes_unseen(
    tmp_path: Path,
) -> None:
    """What the watch cannot see (docs/pov.md says so): two of four sign a
    rejection of every update. Each request has four valid voters, as a
    committee rejecting poison has, so even a 1 s limit never stops the run:
    all 20 rounds train and nothing is approved."""
    strategy = _sync_run(tmp_path, [], limit=1.0, rejecting={2, 3})
    assert len(strategy.decisions) == 20
    assert not any(o.accepted for d in strategy.decisions for o in d.outcomes)
    with Ledger(tmp_path / "sync.db", create=False) as ledger:
        assert len(ledger) == 1  # the genesis block

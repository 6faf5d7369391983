"""What one faulty committee member can do with its votes: never crash the
server, flood a decision, or get a vote into a block that ``verify`` (or
trust weighting) would refuse. Remote members on the virtual grid, as
deployed; and the leader's vote check (:func:`collect_votes`) on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flchain_flwr.ledger import Ledger, sign_vote
from flchain_flwr.ledger.consensus import weights_problem
from flchain_flwr.pov import (
    Committee,
    Verifier,
    collect_votes,
    discovery,
    queries,
    verifiernode,
)
from flchain_flwr.pov.decision import CommitteeDecision
from flchain_flwr.pov.queries import RemoteVerifierError, parse_votes
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.trust import trust_scores
from flchain_flwr.pov.voterequest import read_vote_request
from flchain_flwr.quoting import REASON_CHARS
from flchain_flwr.sim import DeviceProfile, VirtualGrid, simulate
from flchain_flwr.strategies import Constant, FedBuff

from .pov_replies import reply_candidate
from .test_pov import CHAIN, context, digest, key, model, toward_target, toy_score
from .test_remote_pov import _toy_verifier
from .test_trust import DIRECTION
from .toy import constant_work, initial_arrays, toy_client_app

NodeConfig = dict[str, int | float | str | bool]
SCRIPTED = {
    "deep-json": "[" * 100_000,
    "many-votes": "[" + ",".join(["{}"] * 20_000) + "]",
}
"""Scripted replies a faulty member sends instead of its votes."""
LONG = 1_000_000
"""Characters of the exception a "raise" member throws at each request."""


def _member_votes(
    msg: Message, context_: Context, score: float | None = None
) -> Message:
    """A member's validly signed votes: rejections, each at half the weight it
    was asked to judge the candidate at; or, with ``score``, approvals at the
    weight asked with that score."""
    verifier = _toy_verifier(context_)
    assert verifier is not None
    judged = read_vote_request(msg.content, lambda _chain, _hash: True)
    votes = [
        sign_vote(verifier.key, judged.context, digest_, False, 0.0, weight / 2)
        if score is None
        else sign_vote(verifier.key, judged.context, digest_, True, score, weight)
        for digest_, weight in zip(judged.digests, judged.weights, strict=True)
    ]
    config = ConfigRecord({"votes": json.dumps(votes)})
    return Message(RecordDict({"pov": config}), reply_to=msg)


def _verifier_grid(
    tmp_path: Path,
    faults: list[str],
    trainers: int = 1,
    extra: NodeConfig | None = None,
) -> VirtualGrid:
    """``trainers`` toy trainers and ``len(faults)`` verifier nodes; a verifier
    with a fault answers its vote requests with that scripted reply ("" =
    honest; "reweigh", "overscore": validly signed votes, see
    :func:`_member_votes`; "raise": an exception of :data:`LONG` characters,
    to its signature requests too)."""
    app = toy_client_app({})

    def answer(msg: Message, context_: Context) -> Message:
        fault = str(context_.node_config.get("fault", ""))
        if fault == "raise" and msg.metadata.message_type != queries.IDENTITY:
            raise ValueError("x" * LONG)
        if fault and msg.metadata.message_type == queries.VOTE:
            if fault == "reweigh":
                return _member_votes(msg, context_)
            if fault == "overscore":
                return _member_votes(msg, context_, score=2.0)
            config = ConfigRecord({"votes": SCRIPTED[fault]})
            return Message(RecordDict({"pov": config}), reply_to=msg)
        return verifiernode.answer_in_run(msg, context_, _toy_verifier(context_))

    for action in queries.ACTIONS:
        app.query(action)(answer)
    configs: list[NodeConfig] = [
        {"partition-id": pid, "num-partitions": trainers} for pid in range(trainers)
    ]
    for index, fault in enumerate(faults):
        configs.append(
            {
                "partition-id": 0,
                "num-partitions": 1,
                "role": "verifier",
                "verifier-key": str(tmp_path / f"verifier-{index}.key"),
                "verifier-shard": index,
                "fault": fault,
                **(extra or {}),
            }
        )
    return VirtualGrid(
        app,
        [DeviceProfile() for _ in configs],
        node_configs=configs,
        work_fn=constant_work(1.0),
    )


def _remote_committee(tmp_path: Path, faults: list[str]) -> RemoteCommittee:
    grid = _verifier_grid(tmp_path, faults)
    nodes = discovery.discover_verifiers(grid, expected=len(faults), timeout=30)
    return RemoteCommittee(grid, nodes, chain_id=CHAIN)


def _remote_decision(tmp_path: Path, faults: list[str]) -> CommitteeDecision:
    committee = _remote_committee(tmp_path, faults)
    return committee.decide(
        context=context(1, rule=committee.rule.digest),
        global_model=model(0.0),
        candidates=[reply_candidate(1, 0.5, 0.5), reply_candidate(2, 0.4, 0.5)],
        round_=0,
    )


def _reply(votes: str) -> Message:
    content = RecordDict({"pov": ConfigRecord({"votes": votes})})
    return Message(content, dst_node_id=1, message_type=queries.VOTE)


# ------------------------------------------------------------- reading replies
def test_a_verifier_reply_of_deeply_nested_json_is_a_dropped_vote_not_a_crash(
    tmp_path: Path,
) -> None:
    """``json.loads`` of a deeply nested list raises RecursionError, which
    used to reach the server through ``parse_votes`` and stop the decision."""
    decision = _remote_decision(tmp_path, ["", "", "", "deep-json"])
    assert any("unreadable votes" in d for d in decision.dropped_votes)
    assert [o.accepted for o in decision.outcomes] == [True, True]


def test_nesting_too_deep_to_parse_within_the_size_bound_is_unreadable() -> None:
    with pytest.raises(RemoteVerifierError, match="unreadable votes"):
        parse_votes(_reply("[" * 5_000), asked=10)


def test_one_verifier_cannot_flood_the_decision_with_junk_votes(
    tmp_path: Path,
) -> None:
    """A member asked about two candidates used to be able to send any number
    of votes; each was checked and each added its own line to the decision."""
    decision = _remote_decision(tmp_path, ["", "", "", "many-votes"])
    assert len(decision.dropped_votes) <= 100, len(decision.dropped_votes)
    assert [o.accepted for o in decision.outcomes] == [True, True]


def test_a_members_error_reason_cannot_flood_the_decision_record(
    tmp_path: Path,
) -> None:
    """An error reply's reason used to be copied whole into the decision's
    ``dropped_votes`` (the run's result, its log and the ``pov.silence``
    error): one faulty member of four added a megabyte per vote request."""
    decision = _remote_decision(tmp_path, ["", "", "", "raise"])
    assert [o.accepted for o in decision.outcomes] == [True, True]
    recorded = sum(len(reason) for reason in decision.dropped_votes)
    # the bound a member's votes have: VOTE_CHARS per vote asked for
    assert 0 < recorded <= queries.VOTE_CHARS * 2, recorded


def test_a_members_error_reason_cannot_flood_the_view_change_record(
    tmp_path: Path,
) -> None:
    """The signature requests (view changes here; block headers take the
    same path) quote a member's error reason clipped, as votes do."""
    committee = _remote_committee(tmp_path, ["", "", "", "raise"])
    members = list(committee.nodes)
    ctx = context(1, rule=committee.rule.digest, view=1)
    signed, problems = committee.view_change_signatures(members, ctx)
    assert (len(signed), len(problems)) == (3, 1)
    assert len(problems[0]) <= REASON_CHARS + 60, len(problems[0])  # + its prefix


def test_a_reply_larger_than_its_votes_can_be_is_refused_before_parsing() -> None:
    with pytest.raises(RemoteVerifierError, match="characters"):
        parse_votes(_reply(json.dumps(["x" * 5_000])), asked=2)


def test_votes_beyond_those_asked_for_are_dropped_with_one_reason() -> None:
    votes, excess = parse_votes(_reply(json.dumps([{}] * 50)), asked=2)
    assert votes == [{}, {}]
    assert excess is not None and "48" in excess


def test_an_honest_reply_is_read_whole() -> None:
    ctx = context(1)
    signed = [sign_vote(key(0), ctx, digest(i), True, -0.123456, 1 / 3) for i in (1, 2)]
    assert parse_votes(_reply(json.dumps(signed)), asked=2) == (signed, None)


# ------------------------------------------------- votes verify would refuse
def _signed(score: float = 0.5, weight: float = 0.25) -> dict[str, Any]:
    return sign_vote(key(0), context(1), digest(0), True, score, weight)


def test_the_leader_drops_a_vote_judged_at_a_weight_other_than_the_one_asked() -> None:
    good, other = _signed(weight=0.25), _signed(weight=0.125)
    members = [good["verifier"]]
    kept, dropped = collect_votes([other, good], context(1), members, {digest(0): 0.25})
    assert kept == [good]
    assert len(dropped) == 1 and "at weight 0.125" in dropped[0]
    # the rule is verify's: the dropped vote would fail it, the kept one not
    body = {
        "included": [{"digest": digest(0), "weight": 1.0, "num_examples": 1}],
        "votes": [other],
    }
    assert weights_problem(0.25, body) is not None
    assert weights_problem(0.25, {**body, "votes": kept}) is None


@pytest.mark.parametrize("score", [2.0, -1.5, 1.000001])
def test_under_trust_weighting_the_leader_drops_a_score_outside_minus_one_one(
    score: float,
) -> None:
    bad, good = _signed(score=score), _signed(score=1.0)
    members = [good["verifier"]]
    shares = {digest(0): 0.25}
    kept, dropped = collect_votes(
        [bad, good], context(1), members, shares, trust_weighting=True
    )
    assert kept == [good] and len(dropped) == 1 and "[-1, 1]" in dropped[0]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        trust_scores([bad], [digest(0)], 1)  # what it would have stopped
    # without trust weighting a score is only signed data
    kept, dropped = collect_votes([good], context(1), members, shares)
    assert kept == [good] and not dropped


def test_one_member_voting_at_another_weight_cannot_make_the_chain_unverifiable(
    tmp_path: Path,
) -> None:
    """``collect_votes`` used to check a vote's signature, member and
    candidate, not that it judged the share it was asked about; ``verify``
    does (``weights_problem``). One faulty member of four (within f = 1) got
    its vote into the block and the committed chain failed verification."""
    grid = _verifier_grid(tmp_path, ["", "", "", "reweigh"], trainers=3)
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    committee = RemoteCommittee(grid, nodes, chain_id=CHAIN)
    strategy = FedBuff(
        buffer_size=1,
        staleness_fn=Constant(),
        committee=committee,
        ledger=tmp_path / "chain.db",
        fraction_evaluate=0.0,
        seed=0,
    )
    result = simulate(strategy, grid, initial_arrays(), num_rounds=2).result
    assert len(result.versions) == 2
    with Ledger(tmp_path / "chain.db", create=False) as ledger:
        report = ledger.verify()
        assert report.ok, report


def test_one_member_scoring_out_of_range_cannot_stop_trust_weighted_blocks(
    tmp_path: Path,
) -> None:
    """With trust weighting (the app's default) a validly signed approval
    with a score outside [-1, 1] used to pass ``collect_votes``; then
    ``trust_scores`` raised and every approved update of the block was
    rejected: one faulty member of four (within f = 1) stopped every version."""
    trusting: NodeConfig = {"min-cosine": 0.0, "trust-weighting": True}
    grid = _verifier_grid(
        tmp_path, ["", "", "", "overscore"], trainers=3, extra=trusting
    )
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    committee = RemoteCommittee(
        grid, nodes, threshold=DIRECTION, trust_weighting=True, chain_id=CHAIN
    )
    strategy = FedBuff(
        buffer_size=3,
        staleness_fn=Constant(),
        committee=committee,
        fraction_evaluate=0.0,
        seed=0,
    )
    run = simulate(strategy, grid, initial_arrays(), num_rounds=2, timeout=120.0)
    result = run.result
    trust_rejections = [r.reason for r in result.rejected if "trust" in r.reason]
    assert len(result.versions) == 2 and not trust_rejections, (
        result.stop_reason,
        trust_rejections[:2],
    )


# ------------------------------------------------------- constructors' checks
def test_a_nan_remote_timeout_is_refused_like_a_negative_one(tmp_path: Path) -> None:
    """``RemoteCommittee`` refused ``timeout <= 0`` but not NaN (the app
    passes ``float(cfg["pov-remote-timeout"])`` straight in)."""
    grid = _verifier_grid(tmp_path, [""])
    nodes = discovery.discover_verifiers(grid, expected=1, timeout=30)
    for timeout in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            RemoteCommittee(grid, nodes, timeout=timeout)


@pytest.mark.parametrize("delay", [-1.0, float("nan"), float("inf")])
def test_a_nan_or_negative_consensus_delay_is_refused(delay: float) -> None:
    """NaN used to pass the committee's own ``consensus_delay < 0`` check."""
    pool = [Verifier(toy_score, key(i), reference_fn=toward_target) for i in range(4)]
    with pytest.raises(ValueError, match="consensus_delay"):
        Committee(pool, consensus_delay=delay)

"""Remote verifier nodes judge and replay what the trainer really sent (review
finding B): forged by a server that holds no verifier key, on the virtual grid."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, RecordDict

from flchain_flwr import cli
from flchain_flwr.arrays import NDArrays, to_arrayrecord
from flchain_flwr.ledger import Ledger, VoteContext, model_hash
from flchain_flwr.pov import (
    Candidate,
    CommitteeDecision,
    Rule,
    Threshold,
    discovery,
    queries,
    voterequest,
)
from flchain_flwr.pov.memory import MAX_MODELS, MemberMemory, load, store
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.voterequest import BASE_PREFIX, payload_blob
from flchain_flwr.sim import VirtualGrid, simulate
from flchain_flwr.strategies import Constant, FedBuff, serverstep

from .pov_replies import reply_candidate
from .test_pov import CHAIN, context, model
from .test_remote_pov import _grid
from .toy import initial_arrays

RULE = Rule(Threshold(value=0.0)).digest


def _committee(tmp_path: Path, n: int = 4) -> RemoteCommittee:
    grid = _grid(tmp_path, [{"tolerance": 0.0}] * n, attackers=set())
    nodes = discovery.discover_verifiers(grid, expected=n, timeout=30)
    return RemoteCommittee(grid, nodes, threshold=Threshold(value=0), chain_id=CHAIN)


def _at(height: int, parent: NDArrays) -> VoteContext:
    return replace(context(height, rule=RULE), parent_model=model_hash(parent))


def _ask(committee: RemoteCommittee, content: RecordDict) -> list[Message]:
    """One vote request to every verifier node, as the server sends it."""
    messages = [
        Message(content, node, queries.VOTE, ttl=60)
        for node in committee.nodes.values()
    ]
    return list(committee.grid.send_and_receive(messages, timeout=60))


def test_a_delta_swapped_under_an_honest_digest_gets_no_approval(
    tmp_path: Path,
) -> None:
    """The server names an honest reply's digest but sends a poisoned payload
    (and delta): every member refuses, with its reason recorded server-side."""
    committee = _committee(tmp_path)
    honest = reply_candidate(1, 0.5)
    poisoned = reply_candidate(1, -3.0)
    swapped = replace(poisoned, digest=honest.digest)

    def decide(height: int, candidate: Candidate) -> CommitteeDecision:
        return committee.decide(
            context=context(height, rule=committee.rule.digest),
            global_model=model(0.0),
            candidates=[candidate],
            round_=height - 1,
        )

    decision = decide(1, swapped)
    assert [o.accepted for o in decision.outcomes] == [False]
    assert decision.outcomes[0].approvals == 0 and decision.votes == []
    refusals = [d for d in decision.dropped_votes if "does not hash" in d]
    assert len(refusals) == 4, decision.dropped_votes
    fair = decide(2, honest)  # the honest reply, sent as it is, is approved
    assert [o.accepted for o in fair.outcomes] == [True]


def test_a_forged_or_unknown_base_model_is_refused(tmp_path: Path) -> None:
    """A full-weights reply is judged against its base only if the base hashes
    to a model of the chain the node saw (here: the parent it voted on at
    height 1); a base it never saw, or one that does not hash to its name, is
    refused."""
    committee = _committee(tmp_path, n=1)
    old, parent = model(0.0), model(0.2)
    first = voterequest.vote_request(_at(1, old), old, [reply_candidate(1, 0.1)], [1.0])
    assert not _ask(committee, first)[0].has_error()
    stale = reply_candidate(2, 0.3, base=old)  # trained on the height-1 model
    at_two = _at(2, parent)
    ok = _ask(committee, voterequest.vote_request(at_two, parent, [stale], [1.0]))[0]
    assert not ok.has_error(), ok.error.reason
    unknown = reply_candidate(3, 0.3, base=model(0.7))
    refused = _ask(
        committee, voterequest.vote_request(at_two, parent, [unknown], [1.0])
    )[0]
    assert refused.has_error() and "this verifier knows" in refused.error.reason
    forged = voterequest.vote_request(at_two, parent, [stale], [1.0])
    forged[BASE_PREFIX + model_hash(old)] = to_arrayrecord(model(0.7))
    refused = _ask(committee, forged)[0]
    assert refused.has_error() and "does not hash" in refused.error.reason


def _run(tmp_path: Path, rounds: int = 3) -> VirtualGrid:
    grid = _grid(tmp_path, [{"tolerance": 0.0}] * 4, attackers=set())
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    strategy = FedBuff(
        buffer_size=3,
        staleness_fn=Constant(),
        server_lr=0.3,  # the toy model stays short of its target: all approved
        committee=RemoteCommittee(grid, nodes, threshold=Threshold(value=0)),
        ledger=tmp_path / "chain.db",
        seed=0,
    )
    simulate(strategy, grid, initial_arrays(), num_rounds=rounds)
    return grid


def test_remote_members_replay_and_verify_reports_it(tmp_path: Path) -> None:
    grid = _run(tmp_path)
    path = tmp_path / "chain.db"
    with Ledger(path, create=False) as ledger:
        later = len(ledger) - 1
        assert later == 3
        stale = []
        for block in ledger.blocks():
            if block.height:
                signatures = ledger.header_signatures(block.height)
                assert signatures and all(s["replayed"] is True for s in signatures)
                stale += [u for u in block.body["included"] if u["staleness"] > 0]
    assert stale  # full-weight replies judged against an older base, replayed
    for node in grid.contexts.made.values():  # every header signed: none kept
        assert not any(name.startswith("pov-pending") for name in node.state)
    out = io.StringIO()
    assert cli.main(["ledger", "verify", str(path), "--replay"], out) == 0
    text = out.getvalue()
    assert f"in {later} of them a quorum of signers recomputed the model" in text


def test_a_member_refuses_a_header_whose_model_is_not_the_replayed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server (no verifier key) aggregates honestly judged updates but
    writes another model: every member's replay disagrees, so the block gets
    no quorum and is never written."""
    honest_step = serverstep.server_step

    def lying_step(*args: object, **kwargs: object) -> serverstep.StepResult | None:
        result = honest_step(*args, **kwargs)  # type: ignore[arg-type]
        if result is None:
            return None
        shifted = {k: v + np.float32(0.01) for k, v in result.model.items()}
        return replace(result, model=shifted)

    monkeypatch.setattr(serverstep, "server_step", lying_step)
    with pytest.raises(Exception, match="replay refuses the block: "):
        _run(tmp_path, rounds=1)
    with Ledger(tmp_path / "chain.db", create=False) as ledger:
        assert len(ledger) == 1  # the genesis block alone


def test_kept_payloads_are_bounded_to_the_pending_height() -> None:
    memory = MemberMemory()
    one, two = reply_candidate(1, 0.1), reply_candidate(2, 0.2)
    blobs = {
        c.digest: payload_blob(c.node_id, c.content or RecordDict()) for c in (one, two)
    }
    memory.keep(
        (CHAIN, 1, "ab" * 32, "p1"),
        ("arrays", "num-examples"),
        model(0.0),
        [(one.digest, blobs[one.digest], "")],
        {},
    )
    memory.keep(
        (CHAIN, 1, "ab" * 32, "p1"),
        ("arrays", "num-examples"),
        model(0.0),
        [(two.digest, blobs[two.digest], "")],
        {},
    )
    assert memory.pending is not None and len(memory.pending.payloads) == 2
    memory.keep(
        (CHAIN, 2, "cd" * 32, "p2"),
        ("arrays", "num-examples"),
        model(0.1),
        [(two.digest, blobs[two.digest], "")],
        {},
    )
    pending = memory.pending
    assert pending is not None and pending.height == 2
    assert list(pending.bases) == [two.digest] and len(pending.models) == 1
    state = RecordDict()
    store(memory, state)
    again = load(state)
    assert again.pending is not None and again.pending.payloads == pending.payloads
    assert again.pending.models.keys() == pending.models.keys()
    for i in range(MAX_MODELS + 5):
        memory.know(CHAIN, f"{i:064x}")
    assert len(memory.models[CHAIN]) == MAX_MODELS and not memory.knows(CHAIN, "p1")


def test_a_request_past_the_pending_bound_is_refused_before_any_vote() -> None:
    """A server cannot fill a verifier node's memory with candidates at one
    height: past ``max_pending_bytes`` the request is refused."""
    one, two = reply_candidate(1, 0.1), reply_candidate(2, 0.2)
    blob = payload_blob(one.node_id, one.content or RecordDict())
    position = (CHAIN, 1, "ab" * 32, "p1")
    parent = model(0.0)
    parent_bytes = sum(a.nbytes for a in parent.values())
    memory = MemberMemory(max_pending_bytes=parent_bytes + len(blob))
    assert memory.room_problem(position, parent, [blob], {}) is None
    memory.keep(
        position, ("arrays", "num-examples"), parent, [(one.digest, blob, "")], {}
    )
    other = payload_blob(two.node_id, two.content or RecordDict())
    problem = memory.room_problem(position, parent, [other], {})
    assert problem is not None and "above this node's" in problem
    # at another height the old candidates are dropped: there is room again
    assert memory.room_problem((CHAIN, 2, "cd" * 32, "p2"), parent, [other], {}) is None

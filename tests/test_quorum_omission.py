"""Regression: an assembler that leaves votes out cannot slash honest members.

Forges the review's attack: all four committee members approve a good update,
the block keeps two of the approvals, so the update misses its quorum and is
rejected, and the deposits slash the two approvals it kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flchain_flwr.ledger import PoVRules, PoVState
from flchain_flwr.pov.headers import HeaderSigner

from .ledger_helpers import KeyQuorum
from .test_pov import chain_vote, digest, pov_chain, verifiers
from .test_quorum import decide_zero_update


def test_approvals_kept_from_a_cut_quorum_are_not_slashed() -> None:
    pool = [v.public_key for v in verifiers(4)]
    state = PoVState(PoVRules(tuple(pool), 4, slash=1.0))
    members, d = state.committee("ab" * 32), digest(1)
    kept = [{"verifier": k, "candidate": d, "verdict": True} for k in members[:2]]
    assert state.settlement(members, kept) == []
    # a vote outvoted by a signed quorum of opposite votes still pays
    rejected = [
        {"verifier": k, "candidate": d, "verdict": i > 0} for i, k in enumerate(members)
    ]
    assert [e["verifier"] for e in state.settlement(members, rejected)] == [members[0]]


def test_verify_refuses_a_block_slashing_approvals_it_kept(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    head = ledger.head()
    assert head is not None
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    members, d = state.committee(head.hash), digest(77)
    kept = [chain_vote(ledger, committee, k, d) for k in members[:2]]
    slash = committee.rules.slash
    forged = [
        {
            "verifier": k,
            "contradictions": 1,
            "slashed": slash,
            "stake": state.stakes[k] - slash,
            "removed": state.stakes[k] - slash < committee.rules.floor,
        }
        for k in members[:2]
    ]
    leader = committee.verifiers[members[0]].key
    ledger.append(
        model=ledger.load_model(head),
        model_version=head.height + 1,
        base_version=head.height,
        config_digest="",
        included=[],
        rejected=[{"node_id": 1, "digest": d, "trained_on": head.height}],
        votes=kept,
        extra={"committee": members, "deposits": forged},
        signer=KeyQuorum(leader, [committee.verifiers[k].key for k in members]),
    )
    report = ledger.verify()
    assert not report.ok
    assert "deposit changes do not follow" in str(report)


def _omitting_block(tmp_path: Path, keep: int, deposits: str = "") -> str:
    """Ask the in-process members to cosign a block that keeps ``keep`` of
    the four approving votes on a good update; the error they give."""
    ledger, committee = pov_chain(tmp_path)
    head, parent, decision = decide_zero_update(ledger, committee)
    d = digest(70)
    assert decision.outcomes[0].accepted and len(decision.votes) == 4
    members, kept = decision.committee, decision.votes[:keep]
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    settled = state.settlement(members, kept)
    if deposits == "old-rule":  # the kept approvals "contradict" the rejection
        settled = [{"verifier": v["verifier"], "contradictions": 1} for v in kept]
    signer = HeaderSigner(committee, committee.signer(members[0]), members, 0)
    rejected = [{"node_id": 1, "digest": d, "trained_on": head.height, "reason": "x"}]
    with pytest.raises(RuntimeError) as err:
        ledger.append(
            model=parent,
            model_version=head.height + 1,
            base_version=head.height,
            config_digest="",
            included=[],
            rejected=rejected,
            votes=kept,
            extra={
                "committee": members,
                "deposits": settled,
            },
            signer=signer,
        )
    assert ledger.head() == head  # nothing written
    return str(err.value)


def test_members_refuse_a_header_that_leaves_their_vote_out(tmp_path: Path) -> None:
    problem = _omitting_block(tmp_path, keep=2)
    assert problem.count("leaves out this verifier's vote") == 2


def test_members_refuse_deposits_their_votes_do_not_condemn(tmp_path: Path) -> None:
    """The kept members refuse the old rule's deposits, slashing themselves."""
    problem = _omitting_block(tmp_path, keep=2, deposits="old-rule")
    assert problem.count("deposit changes do not follow from the votes") == 2

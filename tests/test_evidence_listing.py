"""Regression: ``verify`` lists equivocation evidence on every PoV chain.

Forges the review's case: a PoV chain whose genesis declares no quorum-signed
headers settles an equivocation record (the accused loses its whole stake),
and ``verify`` must name it, as it does on a quorum-signed chain.
"""

from __future__ import annotations

from pathlib import Path

from flchain_flwr.ledger import PoVState

from .test_pov import pov_chain
from .test_quorum import (
    LeaderOnly,
    _leader_key,
    _outsider,
    _two_headers,
    leader_signed_chain,
    next_block,
)


def test_evidence_on_a_leader_signed_chain_is_listed(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    old = leader_signed_chain(ledger, tmp_path / "old.db")
    accused = committee.verifiers[_outsider(old, committee)]
    record = _two_headers(accused.key, old.chain_id)
    leader = LeaderOnly(_leader_key(old, committee))
    next_block(old, committee, signer=leader, evidence=[record])
    report = old.verify()
    assert report.ok
    state = PoVState.replayed(committee.rules, (b.body for b in old.blocks()))
    assert state.stakes[accused.public_key] == 0.0
    assert len(report.equivocations) == 1
    assert accused.public_key in report.equivocations[0]
    assert "declares no quorum-signed headers)" in report.headers

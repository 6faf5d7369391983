"""Regression: ``verify`` lists equivocation evidence on every PoV chain.

Forges the review's case: a PoV chain whose genesis declares no quorum-signed
headers settles an equivocation record (the accused loses its whole stake),
and ``verify`` must name it, as it does on a quorum-signed chain.
"""

from __future__ import annotations

from pathlib import Path

from flchain_flwr.ledger import Ledger, PoVState
from flchain_flwr.ledger.statements import header_statement, sign_statement

from .test_pov import model, pov_chain
from .test_quorum import LeaderOnly, _leader_key, _outsider, _two_headers, next_block


def test_evidence_on_a_leader_signed_chain_is_listed(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    genesis = ledger.block(0)
    old = Ledger(tmp_path / "old.db", chain_id="old-chain")
    pov = {k: v for k, v in genesis.body["pov"].items() if k != "headers"}
    old.append(
        model=model(0.0),
        model_version=0,
        base_version=0,
        config_digest="",
        extra={"pov": pov, "committee_kind": "in-process"},
    )
    accused = committee.verifiers[_outsider(old, committee)]
    record = _two_headers(accused.key) | {"chain_id": old.chain_id}
    for i, block_hash in enumerate(("aa" * 32, "bb" * 32)):
        record["statements"][i]["signature"] = sign_statement(
            accused.key, header_statement(old.chain_id, 3, 0, block_hash, i == 0)
        )
    leader = LeaderOnly(_leader_key(old, committee))
    next_block(old, committee, signer=leader, evidence=[record])
    report = old.verify()
    assert report.ok
    state = PoVState.replayed(committee.rules, (b.body for b in old.blocks()))
    assert state.stakes[accused.public_key] == 0.0
    assert len(report.equivocations) == 1
    assert accused.public_key in report.equivocations[0]
    assert "declares no quorum-signed headers)" in report.headers

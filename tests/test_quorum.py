"""Quorum-signed headers, view-change certificates and equivocation evidence,
each tested by forging what someone holding some of the keys could write."""

from __future__ import annotations

import copy
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SignedMessage, SigningKey, VerifyKey

from flchain_flwr.ledger import Block, Ledger, PoVState, VoteContext
from flchain_flwr.ledger.canonical import BODY_TAG, encode, model_hash, sha256_hex
from flchain_flwr.ledger.evidence import (
    check_equivocation,
    equivocation,
    fork_evidence,
    header_signed,
    ledgers_fork_evidence,
    view_change_signed,
)
from flchain_flwr.ledger.quorum import check_header_quorum, check_view_changes
from flchain_flwr.ledger.replay import PendingReplay, replay
from flchain_flwr.ledger.statements import (
    header_statement,
    sign_statement,
    signature_ok,
    view_change_statement,
)
from flchain_flwr.pov import (
    Behaviour,
    Candidate,
    Committee,
    CommitteeDecision,
    RefusedRequest,
    Threshold,
    Verifier,
)
from flchain_flwr.pov.headers import HeaderSigner, cosign_header
from flchain_flwr.pov.views import sign_view_change, take_statement

from .ledger_helpers import KeyQuorum
from .test_pov import chain_vote, digest, model, pov_chain, verifiers
from .test_pov_chain import pov_run, rebuild, state_before, unchanged
from .test_pov_pending import _forge


class LeaderOnly:
    """A leader key alone: the block's header carries no committee signatures."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    @property
    def verify_key(self) -> VerifyKey:
        return self.key.verify_key

    def sign(self, smessage: bytes) -> SignedMessage:
        return self.key.sign(smessage)


def next_block(  # pylint: disable=too-many-arguments
    ledger: Ledger,
    committee: Committee,
    *,
    view: int = 0,
    certificates: list[dict[str, Any]] | None = None,
    signer: Any = None,
    evidence: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Append a rule-abiding block after the head at ``view`` (its committee
    signing it unless ``signer`` says otherwise); its committee."""
    head = ledger.head()
    assert head is not None
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    members = state.committee(head.hash, view)
    d = digest(77)
    votes = [chain_vote(ledger, committee, k, d, view=view) for k in members]
    keys = [committee.verifiers[k].key for k in members]
    extra: dict[str, Any] = {
        "committee": members,
        "deposits": state.settlement(members, votes, evidence or []),
    }
    if view:
        extra["view"] = view
    if certificates is not None:
        extra["view_changes"] = certificates
    if evidence:
        extra["evidence"] = evidence
    ledger.append(
        model=model(0.5),
        model_version=head.height + 1,
        base_version=head.height,
        config_digest="",
        included=[{"digest": d, "node_id": 1, "weight": 1.0, "num_examples": 1}],
        votes=votes,
        extra=extra,
        signer=signer or KeyQuorum(keys[0], keys, view),
    )
    return members


def test_every_block_of_a_pov_run_is_signed_by_a_replaying_quorum(
    tmp_path: Path,
) -> None:
    ledger, _ = pov_chain(tmp_path)
    report = ledger.verify()
    assert report.ok, report
    later = len(ledger) - 1
    assert f"all {later} blocks after the genesis block signed by more than 2/3" in (
        str(report)
    )
    assert f"in {later} of them a quorum of signers recomputed the model" in str(report)
    for block in ledger.blocks():
        signatures = ledger.header_signatures(block.height)
        if block.height == 0:
            assert signatures is None
            continue
        assert signatures is not None and len(signatures) >= 3
        assert all(s["replayed"] is True for s in signatures)
        assert all(s["verifier"] in block.body["committee"] for s in signatures)


def head_committee(
    ledger: Ledger, committee: Committee
) -> tuple[Block, list[str], list[SigningKey]]:
    """The head, and the next block's view-0 committee with its keys."""
    head = ledger.head()
    assert head is not None
    members = PoVState.replayed(
        committee.rules, (b.body for b in ledger.blocks())
    ).committee(head.hash)
    return head, members, [committee.verifiers[k].key for k in members]


def _outsider(ledger: Ledger, committee: Committee) -> str:
    _, members, _ = head_committee(ledger, committee)
    return next(k for k in committee.rules.pool if k not in members)


@pytest.mark.parametrize(
    ("forgery", "expected"),
    [
        ("leader-only", "carries no committee signatures (only the leader's)"),
        ("two-of-four", "signed by 2 of 4 committee members; more than 2/3 (3)"),
        ("non-member", "not a committee member"),
        ("not-in-pool", "not a committee member"),
        ("other-view", "header signature 0 is invalid"),
    ],
)
def test_a_header_without_a_quorum_of_its_committee_fails(
    tmp_path: Path, forgery: str, expected: str
) -> None:
    ledger, committee = pov_chain(tmp_path)
    head, _, keys = head_committee(ledger, committee)
    outsider = committee.verifiers[_outsider(ledger, committee)].key
    signer = {
        "leader-only": LeaderOnly(keys[0]),
        "two-of-four": KeyQuorum(keys[0], keys[:2]),
        "non-member": KeyQuorum(keys[0], [*keys[:2], outsider]),
        "not-in-pool": KeyQuorum(keys[0], [*keys[:2], SigningKey(b"\x09" * 32)]),
        "other-view": KeyQuorum(keys[0], keys, view=1),
    }[forgery]
    next_block(ledger, committee, signer=signer)
    report = ledger.verify()
    assert not report.ok and report.bad_height == head.height + 1, report
    assert expected in report.reason, report.reason


def _view_change(
    committee: Committee, ledger: Ledger, view: int, signers: list[str]
) -> dict[str, Any]:
    head = ledger.head()
    assert head is not None
    statement = view_change_statement(ledger.chain_id, head.height + 1, view, head.hash)
    return {
        "view": view,
        "signatures": [
            {
                "verifier": k,
                "signature": sign_statement(committee.verifiers[k].key, statement),
            }
            for k in signers
        ],
    }


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        ("none", "view 1 needs a view-change certificate for each of views 0..0"),
        ("two-of-four", "view 0 gave way on 2 of 4 members' signed view changes"),
        ("outsider", "not a committee member"),
        ("other-height", "view-0 change signature 0 is invalid"),
        ("valid", ""),
    ],
)
def test_a_block_at_a_later_view_needs_signed_proof_the_earlier_failed(
    tmp_path: Path, evidence: str, expected: str
) -> None:
    ledger, committee = pov_chain(tmp_path)
    head, members, _ = head_committee(ledger, committee)
    outsider = _outsider(ledger, committee)
    certificate = _view_change(committee, ledger, 0, members)
    if evidence == "two-of-four":
        certificate = _view_change(committee, ledger, 0, members[:2])
    elif evidence == "outsider":
        certificate = _view_change(committee, ledger, 0, [*members[:2], outsider])
    elif evidence == "other-height":
        first = certificate["signatures"][0]
        statement = view_change_statement(ledger.chain_id, head.height, 0, head.hash)
        key = committee.verifiers[first["verifier"]].key
        first["signature"] = sign_statement(key, statement)
    certificates = None if evidence == "none" else [certificate]
    next_block(ledger, committee, view=1, certificates=certificates)
    report = ledger.verify()
    if not expected:
        assert report.ok, report
        return
    assert not report.ok and report.bad_height == head.height + 1, report
    assert expected in report.reason, report.reason


def test_a_run_whose_leader_refuses_carries_view_changes_and_verifies(
    tmp_path: Path,
) -> None:
    pool = verifiers(7, {i: Behaviour.REFUSE_TO_LEAD for i in range(6)})
    path = pov_run(tmp_path, pool, rounds=6)
    with Ledger(path, create=False) as ledger:
        report = ledger.verify()
        assert report.ok, report
        blocks = [b for b in ledger.blocks() if b.height]
    changed = [b for b in blocks if b.body.get("view", 0)]
    assert changed, "the refusing verifier never drew view 0 (4**-6)"
    for b in changed:
        certificates = b.body["view_changes"]
        assert [c["view"] for c in certificates] == list(range(b.body["view"]))
        assert all(len(c["signatures"]) >= 5 for c in certificates)


@pytest.mark.parametrize("certificates", ["dropped", "two-signers"])
def test_members_refuse_a_header_without_proof_its_earlier_views_failed(
    tmp_path: Path, certificates: str
) -> None:
    """A member checks the block's view-change certificates before it signs,
    as ``verify`` does: else a server holding only the ledger key gets a
    quorum-signed block at a later view that fails ``verify`` (and members
    may never sign another at that height and view)."""
    pool = verifiers(7, {i: Behaviour.REFUSE_TO_LEAD for i in range(6)})
    path = pov_run(tmp_path, pool, rounds=6)
    with Ledger(path, create=False) as ledger:
        block = next(b for b in ledger.blocks() if b.body.get("view", 0))
        parent = ledger.block(block.height - 1)
        state = state_before(ledger, block.height)
    view, changes = block.body["view"], block.body["view_changes"]
    if certificates == "dropped":
        body = {k: v for k, v in block.body.items() if k != "view_changes"}
        expected = f"view {view} needs a view-change certificate for each of views"
    else:
        cut = {"view": 0, "signatures": changes[0]["signatures"][:2]}
        body = {**block.body, "view_changes": [cut, *changes[1:]]}
        expected = "view 0 gave way on 2 of "
    body_bytes = encode(block.format_version, body)
    forged = _forge(
        replace(block, body=body, body_bytes=body_bytes),
        pool,
        body_hash=sha256_hex(BODY_TAG, body_bytes),
    )
    rule = Committee(pool, threshold=Threshold(value=0)).rule.digest
    sign = {"view": view, "rule_digest": rule, "replayed": True, "state": state}
    for member in (v for v in pool if v.public_key in body["committee"]):
        _back_at(member, block, parent)
        with pytest.raises(RefusedRequest, match=re.escape(expected)):
            cosign_header(member, forged, **sign)  # type: ignore[arg-type]
        assert cosign_header(member, block, **sign)  # type: ignore[arg-type]


def _back_at(member: Verifier, last: Block, parent: Block) -> None:
    """``member`` back where it voted on ``last``, having signed nothing."""
    member.seen[str(last.header["chain_id"])] = (
        last.height,
        parent.hash,
        str(parent.header["model_hash"]),
    )
    member.statements.clear()


def test_members_refuse_a_header_whose_model_is_not_the_replay(
    tmp_path: Path,
) -> None:
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        last = ledger.head()
        assert last is not None
        parent = ledger.block(last.height - 1)
        header = dict(last.header, model_hash=model_hash(model(9.0)))
        forged = replace(last, header=header)
        assert PendingReplay(ledger).check(last) == (True, None)
        replayed, problem = PendingReplay(ledger).check(forged)
        assert not replayed and problem and "is not the recorded" in problem
        committee = Committee(pool, threshold=Threshold(value=0))
        members = last.body["committee"]
        for v in pool:
            _back_at(v, last, parent)
        signer = HeaderSigner(committee, pool[0].key, members, 0)
        with pytest.raises(RuntimeError, match="0 of 4 committee members signed"):
            signer.cosign(ledger, forged)
        signatures = signer.cosign(ledger, last)
        assert len(signatures) == 4 and all(s["replayed"] for s in signatures)


def test_a_forger_holding_every_key_still_fails_replay(tmp_path: Path) -> None:
    """A quorum's signatures say what its keys' holders claim; a chain whose
    model was changed and re-signed by every key verifies, but replay fails."""
    pool = verifiers(4)
    source = pov_run(tmp_path, pool, rounds=3)

    with Ledger(source, create=False) as original:
        last = len(original) - 1

    def edit(height: int, body: dict[str, Any], arrays: Any) -> Any:
        if height == last:
            arrays = {k: v + 1 for k, v in arrays.items()}
        return body, arrays

    same = rebuild(source, tmp_path / "same.db", pool, unchanged)
    assert same.verify().ok and replay(same).ok
    forged = rebuild(source, tmp_path / "forged.db", pool, edit)
    assert forged.verify().ok  # every signature is genuine
    report = replay(forged)
    assert not report.ok and report.bad_height == last, report


def test_a_member_never_signs_two_headers_or_a_header_and_a_view_change(
    tmp_path: Path,
) -> None:
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        last = ledger.head()
        assert last is not None
        parent = ledger.block(last.height - 1)
        state = state_before(ledger, last.height)
    member = next(v for v in pool if v.public_key in last.body["committee"])
    _back_at(member, last, parent)
    rule = Committee(pool, threshold=Threshold(value=0)).rule.digest
    sign = {"view": 0, "rule_digest": rule, "replayed": False, "state": state}
    cosign_header(member, last, **sign)  # type: ignore[arg-type]
    cosign_header(member, last, **sign)  # type: ignore[arg-type]  # the same: fine
    with pytest.raises(RefusedRequest, match="already signed header"):
        take_statement(member, str(last.header["chain_id"]), last.height, 0, "ee")
    context = VoteContext(
        str(last.header["chain_id"]),
        last.height,
        parent.hash,
        str(parent.header["model_hash"]),
        rule,
        0,
    )
    with pytest.raises(RefusedRequest, match="already signed header"):
        sign_view_change(member, context)
    assert sign_view_change(member, replace(context, view=1))
    with pytest.raises(RefusedRequest, match="is behind height"):
        cosign_header(member, last, **sign)  # type: ignore[arg-type]


def _two_headers(key: SigningKey, chain_id: str = "c") -> dict[str, Any]:
    """Evidence that ``key`` signed two headers at height 3 of ``chain_id``."""
    first = header_statement(chain_id, 3, 0, "aa" * 32, True)
    second = header_statement(chain_id, 3, 0, "bb" * 32, False)
    return equivocation(
        key.verify_key.encode().hex(),
        chain_id,
        3,
        0,
        header_signed("aa" * 32, True, sign_statement(key, first)),
        header_signed("bb" * 32, False, sign_statement(key, second)),
    )


def test_equivocation_evidence_checks_itself() -> None:
    key = SigningKey(b"\x05" * 32)
    record = _two_headers(key)
    assert check_equivocation(record, "c") is None
    assert "another chain" in str(check_equivocation(record, "d"))
    tampered = copy.deepcopy(record)
    tampered["statements"][1]["block"] = "cc" * 32
    assert "not signed by the accused" in str(check_equivocation(tampered))
    same = copy.deepcopy(record)
    same["statements"][1] = same["statements"][0]
    assert "same block" in str(check_equivocation(same))
    vc = view_change_statement("c", 3, 0, "dd" * 32)
    mixed = copy.deepcopy(record)
    mixed["statements"][1] = view_change_signed("dd" * 32, sign_statement(key, vc))
    assert check_equivocation(mixed) is None
    both = copy.deepcopy(mixed)
    both["statements"][0] = both["statements"][1]
    assert "do not contradict" in str(check_equivocation(both))
    framed = dict(record, verifier=SigningKey(b"\x06" * 32).verify_key.encode().hex())
    assert "not signed by the accused" in str(check_equivocation(framed))


def test_two_blocks_at_one_height_yield_evidence_against_the_overlap(
    tmp_path: Path,
) -> None:
    """Two blocks at one height, each signed by 3 of 4: the 2 members that
    signed both are caught, at one view or across a view change."""
    ledger, committee = pov_chain(tmp_path)
    head, members, keys = head_committee(ledger, committee)
    height = head.height + 1

    def signatures(block: str, signers: list[SigningKey], view: int) -> list[Any]:
        statement = header_statement(ledger.chain_id, height, view, block, False)
        return [
            {
                "verifier": k.verify_key.encode().hex(),
                "replayed": False,
                "signature": sign_statement(k, statement),
            }
            for k in signers
        ]

    a = ("aa" * 32, 0, signatures("aa" * 32, keys[:3], 0), [])
    b = ("bb" * 32, 0, signatures("bb" * 32, keys[1:], 0), [])
    records = fork_evidence(ledger.chain_id, height, a, b, head.hash)
    assert [r["verifier"] for r in records] == members[1:3]
    assert all(check_equivocation(r, ledger.chain_id) is None for r in records)
    gave_up = _view_change(committee, ledger, 0, members[1:])
    c = ("cc" * 32, 1, signatures("cc" * 32, keys[1:], 1), [gave_up])
    records = fork_evidence(ledger.chain_id, height, c, a, head.hash)
    assert [r["verifier"] for r in records] == members[1:3]
    assert all(check_equivocation(r, ledger.chain_id) is None for r in records)


def test_an_equivocator_is_slashed_only_on_valid_evidence(tmp_path: Path) -> None:
    ledger, committee = pov_chain(tmp_path)
    accused = committee.verifiers[_outsider(ledger, committee)]
    record = _two_headers(accused.key, ledger.chain_id)
    committee.report_equivocation(record)
    with pytest.raises(ValueError, match="already slashed"):
        committee.report_equivocation(record)
    next_block(ledger, committee, evidence=[record])
    report = ledger.verify()
    assert report.ok, report
    assert len(report.equivocations) == 1
    assert accused.public_key in str(report)
    state = PoVState.replayed(committee.rules, (b.body for b in ledger.blocks()))
    assert accused.public_key not in state.pool
    entry = ledger.head().body["deposits"][-1]  # type: ignore[union-attr]
    assert entry["verifier"] == accused.public_key and entry["stake"] == 0.0
    forged = copy.deepcopy(record)
    forged["statements"][1]["block"] = "cc" * 32
    ledger2, committee2 = pov_chain(tmp_path / "2")
    with pytest.raises(ValueError, match="not signed by the accused"):
        committee2.report_equivocation(forged)
    next_block(ledger2, committee2, evidence=[forged])
    report = ledger2.verify()
    assert not report.ok and "evidence 0" in report.reason, report


def leader_signed_chain(ledger: Ledger, path: Path) -> Ledger:
    """A PoV chain at ``path`` as written before quorum-signed headers: the
    genesis of ``ledger``'s committee without ``headers``."""
    pov = {k: v for k, v in ledger.block(0).body["pov"].items() if k != "headers"}
    old = Ledger(path, chain_id="old-chain")
    old.append(
        model=model(0.0),
        model_version=0,
        base_version=0,
        config_digest="",
        extra={"pov": pov, "committee_kind": "in-process"},
    )
    return old


def test_a_pov_chain_from_before_quorum_headers_verifies_and_says_so(
    tmp_path: Path,
) -> None:
    ledger, committee = pov_chain(tmp_path)
    old = leader_signed_chain(ledger, tmp_path / "old.db")
    next_block(old, committee, signer=LeaderOnly(_leader_key(old, committee)))
    report = old.verify()
    assert report.ok, report
    assert "signed by each block's leader alone" in str(report)
    assert old.header_signatures(1) is None


def _leader_key(ledger: Ledger, committee: Committee) -> SigningKey:
    return head_committee(ledger, committee)[2][0]


def decide_zero_update(
    ledger: Ledger, committee: Committee
) -> tuple[Block, dict[str, np.ndarray], CommitteeDecision]:
    """The head, its model, and the committee's decision on one update that
    changes nothing (digest 70) for the next block."""
    head = ledger.head()
    assert head is not None
    parent = ledger.load_model(head)
    decision = committee.decide(
        context=committee.position(ledger, parent, head.height + 1),
        global_model=parent,
        candidates=[
            Candidate(digest(70), 1, {k: np.zeros_like(v) for k, v in parent.items()})
        ],
        round_=head.height,
    )
    return head, parent, decision


def test_members_refuse_a_block_that_includes_what_they_did_not_approve(
    tmp_path: Path,
) -> None:
    """The whole path: the committee votes on one update, then the server
    tries to append a block including a second one; the members refuse to
    sign and nothing is written. The honest block is signed and verifies."""
    ledger, committee = pov_chain(tmp_path)
    head, parent, decision = decide_zero_update(ledger, committee)
    assert decision.outcomes[0].accepted
    fields, signer = committee.seal(
        decision.committee, decision.votes, decision.view, decision.view_changes
    )

    def entry(i: int) -> dict[str, Any]:
        return {"digest": digest(i), "node_id": 1, "weight": 1.0, "num_examples": 1}

    block = {
        "model": parent,
        "model_version": head.height + 1,
        "base_version": head.height,
        "config_digest": "",
        "votes": decision.votes,
        "extra": fields,
        "signer": signer,
    }
    with pytest.raises(RuntimeError, match="the included set must be the approved"):
        ledger.append(included=[entry(70), entry(71)], **block)
    assert len(ledger) == head.height + 1
    ledger.append(included=[entry(70)], **block)
    report = ledger.verify()
    assert report.ok, report
    signatures = ledger.header_signatures(head.height + 1)
    assert signatures is not None and len(signatures) == len(decision.committee)
    assert not any(s["replayed"] for s in signatures)  # no payloads to replay


def test_two_ledgers_forked_at_one_height_yield_evidence_that_slashes(
    tmp_path: Path,
) -> None:
    """A fork: the same chain copied, each copy extended by a different
    block signed by 3 of the 4 members. The two members that signed both
    are caught from the ledgers alone; the evidence then slashes them."""
    ledger, committee = pov_chain(tmp_path)
    head, members, keys = head_committee(ledger, committee)
    ledger.close()
    copy_path = tmp_path / "fork.db"
    shutil.copy(tmp_path / "chain.db", copy_path)
    shutil.copytree(tmp_path / "chain.db.models", tmp_path / "fork.db.models")
    shutil.copy(tmp_path / "chain.db.checkpoint", tmp_path / "fork.db.checkpoint")
    shutil.copy(tmp_path / "chain.db.key", tmp_path / "fork.db.key")
    one = Ledger(tmp_path / "chain.db", create=False)
    other = Ledger(copy_path, create=False)
    next_block(one, committee, signer=KeyQuorum(keys[0], keys[:3]))
    other.append(
        model=model(0.75),
        model_version=head.height + 1,
        base_version=head.height,
        config_digest="",
        extra={"committee": members, "deposits": []},
        signer=KeyQuorum(keys[0], keys[1:]),
    )
    assert one.verify().ok and other.verify().ok  # each alone verifies
    records = ledgers_fork_evidence(one, other)
    assert [r["verifier"] for r in records] == members[1:3]
    assert all(check_equivocation(r, one.chain_id) is None for r in records)
    next_block(one, committee, evidence=records)
    report = one.verify()
    assert report.ok and len(report.equivocations) == 2, report
    state = PoVState.replayed(committee.rules, (b.body for b in one.blocks()))
    assert not set(members[1:3]) & set(state.pool)


@pytest.mark.parametrize(
    "entry",
    [
        {"verifier": ["x"], "signature": "00"},
        {"verifier": {"k": 1}, "signature": "00"},
        {"verifier": None, "signature": "00"},
        {"verifier": "PLACEHOLDER", "signature": ["00"]},
    ],
    ids=["list", "object", "null", "list signature"],
)
def test_certificates_and_header_signatures_of_any_shape_give_a_reason(
    entry: dict[str, Any],
) -> None:
    """review12 #5: a signature entry naming its verifier as a JSON list
    raised TypeError (``key not in members``, an unhashable key), which
    crashed every resume of a ledger whose sealed view-change record held
    one. Any JSON value now gives a reason."""
    members = [v.public_key for v in verifiers(4)]
    entry = {k: members[0] if v == "PLACEHOLDER" else v for k, v in entry.items()}
    certificate = {"view": 0, "signatures": [entry]}
    problem = check_view_changes("c", 3, "ab" * 32, 1, members, [certificate])
    assert problem is not None and "view-0 change signature 0" in problem
    signed = [{**entry, "replayed": True}]
    problem = check_header_quorum("c", 3, 0, "cd" * 32, members, signed)
    assert problem is not None and "header signature 0" in problem
    wrong_view = {"view": [0] * 10_000, "signatures": []}
    problem = check_view_changes("c", 3, "ab" * 32, 1, members, [wrong_view])
    assert problem is not None and len(problem) < 100


def _condemning_decision(
    tmp_path: Path,
) -> tuple[Ledger, Committee, Block, dict[str, np.ndarray], CommitteeDecision]:
    """A chain, and its committee's decision on one update for the next
    block in which the last member, inverting its verdict, is outvoted by
    the other three (a quorum of 4): the block's votes condemn it."""
    ledger, committee = pov_chain(tmp_path)
    head = ledger.head()
    assert head is not None
    members = committee.state.committee(head.hash)
    committee.verifiers[members[-1]].behaviour = Behaviour.INVERT
    head, parent, decision = decide_zero_update(ledger, committee)
    assert decision.outcomes[0].accepted and decision.committee == members
    return ledger, committee, head, parent, decision


def _block_fields(head: Block, parent: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "model": parent,
        "model_version": head.height + 1,
        "base_version": head.height,
        "config_digest": "",
        "included": [
            {"digest": digest(70), "node_id": 1, "weight": 1.0, "num_examples": 1}
        ],
    }


def test_members_refuse_a_block_that_slashes_nobody_their_votes_condemn(
    tmp_path: Path,
) -> None:
    """review12 #2: members accepted EMPTY deposits where the votes condemn
    a member (``if slashed and slashed != expected``), which ``verify``
    rejects. Now they run ``verify``'s own check and refuse it; the honest
    deposits are signed and verify."""
    ledger, committee, head, parent, decision = _condemning_decision(tmp_path)
    fields, signer = committee.seal(decision.committee, decision.votes)
    assert [e["verifier"] for e in fields["deposits"]] == decision.committee[-1:]
    block = {**_block_fields(head, parent), "votes": decision.votes}
    with pytest.raises(RuntimeError) as refused:
        ledger.append(**block, extra={**fields, "deposits": []}, signer=signer)
    assert str(refused.value).count("deposit changes do not follow") >= 3
    assert ledger.head() == head  # nothing written
    ledger.append(**block, extra=fields, signer=signer)
    assert ledger.verify().ok


def test_members_refuse_a_block_whose_committee_is_not_the_draw(
    tmp_path: Path,
) -> None:
    """review12 #2: members checked only that they were in the body's
    committee, so a view-0 block naming the view-1 draw (led and signed by
    its first member) got its quorum, and ``verify`` then rejected it. Now
    they check it as ``verify`` does."""
    ledger, committee, head, parent, decision = _condemning_decision(tmp_path)
    drawn = decision.committee
    rotated = drawn[1:] + drawn[:1]  # the view-1 draw
    fields, _ = committee.seal(drawn, decision.votes)
    signer = HeaderSigner(committee, committee.signer(rotated[0]), rotated, 0)
    block = {**_block_fields(head, parent), "votes": decision.votes}
    with pytest.raises(RuntimeError) as refused:
        ledger.append(**block, extra={**fields, "committee": rotated}, signer=signer)
    assert str(refused.value).count("committee is not the one drawn") >= 3
    assert ledger.head() == head


def test_a_signature_is_good_only_in_the_one_spelling_writers_write() -> None:
    """Statement signatures and keys are lower-case hex, one rule for every
    chain (the trading chain's own copy refused an upper-case key that this
    one took): another spelling of a valid signature or key is refused."""
    key = SigningKey(b"\x05" * 32)
    public = bytes(key.verify_key).hex()
    signature = sign_statement(key, b"statement")
    assert signature_ok(public, b"statement", signature)
    for other_public, other_signature in (
        (public.upper(), signature),
        (public, signature.upper()),
        (f" {public}", signature),
        (public, f"{signature[:64]} {signature[64:]}"),
    ):
        assert not signature_ok(other_public, b"statement", other_signature)

"""A provenance bundle carries its block's header quorum signatures and
``verify_bundle`` checks them against the committee drawn from the genesis
pool: each forgery of them (too few, a key outside the committee, a member the
buyer does not trust, another block, a duplicate signer, stripped) fails;
signatures a forger re-signs with ``replayed: false`` pass, reported as such."""

from __future__ import annotations

from typing import Any

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.canonical import (
    BODY_TAG,
    HEADER_TAG,
    encode,
    parse_canonical,
    sha256_hex,
)
from flchain_flwr.ledger.provenance import ProvenanceError, verify_bundle
from flchain_flwr.ledger.provenance_block import (
    BlockCheckFailed,
    StoredBlock,
    check_training_block,
)
from flchain_flwr.ledger.statements import header_statement, sign_statement

from .test_provenance import Run, run  # noqa: F401  (the module's fixture)


def _bundle(run: Run) -> dict[str, Any]:  # noqa: F811
    value = parse_canonical(run.bundle, 2)
    assert isinstance(value, dict)
    return value


def _with(run: Run, signatures: Any) -> bytes:  # noqa: F811
    bundle = _bundle(run)
    if signatures is None:
        del bundle["training"]["header_signatures"]
    else:
        bundle["training"]["header_signatures"] = signatures
    return encode(2, bundle)


def _sign(run: Run, key: SigningKey, height: int, block: str, replayed: bool) -> Any:  # noqa: F811
    with Ledger(run.ledger, create=False) as ledger:
        chain_id = ledger.chain_id
    statement = header_statement(chain_id, height, 0, block, replayed)
    return {
        "verifier": key.verify_key.encode().hex(),
        "replayed": replayed,
        "signature": sign_statement(key, statement),
    }


def test_the_bundle_carries_a_replaying_quorum_and_says_so(run: Run) -> None:  # noqa: F811
    signatures = _bundle(run)["training"]["header_signatures"]
    with Ledger(run.ledger, create=False) as ledger:
        assert signatures == ledger.header_signatures(3)
        committee = ledger.block(3).body["committee"]
    assert len(signatures) >= 3 and all(s["replayed"] for s in signatures)
    report = str(verify_bundle(run.bundle, run.trust()))
    assert (
        f"block 3's header, and so its model hash, is signed by {len(signatures)} "
        f"of its {len(committee)} committee members" in report
    )
    assert f"{len(signatures)} of them say they recomputed the model" in report
    assert "not recomputed by the bundle" in report


def _keys(run: Run) -> dict[str, SigningKey]:  # noqa: F811
    return {v.public_key: v.key for v in run.pool}


@pytest.mark.parametrize(
    ("forgery", "expected"),
    [
        ("stripped", "the bundle carries none"),
        ("two", "signed by 2 of"),
        ("outsider", "not a committee member"),
        ("other-block", "is invalid"),
        ("duplicate", "a second one by"),
        ("flag-flipped", "is invalid"),
        ("not-a-list", "must be a list"),
        ("upper-case", "is invalid"),
        ("spaced", "is invalid"),
    ],
)
def test_a_forged_header_quorum_fails(
    run: Run,  # noqa: F811
    forgery: str,
    expected: str,
) -> None:
    signatures = _bundle(run)["training"]["header_signatures"]
    with Ledger(run.ledger, create=False) as ledger:
        other = ledger.block(2).hash
        committee = ledger.block(3).body["committee"]
    keys = _keys(run)
    first = keys[committee[0]]
    forged: Any = {
        "stripped": None,
        "two": signatures[:2],
        "outsider": [
            *signatures[:2],
            _sign(run, SigningKey(b"\x09" * 32), 3, _bundle_hash(run), True),
        ],
        "other-block": [_sign(run, first, 3, other, True), *signatures[1:]],
        "duplicate": [signatures[0], signatures[0], *signatures[1:]],
        "flag-flipped": [{**signatures[0], "replayed": False}, *signatures[1:]],
        "not-a-list": {"0": signatures[0]},
        # The same signatures respelled (no key needed; was accepted: found
        # by the second forge audit).
        "upper-case": [
            {**signatures[0], "signature": signatures[0]["signature"].upper()},
            *signatures[1:],
        ],
        "spaced": [
            {**signatures[0], "signature": signatures[0]["signature"] + " "},
            *signatures[1:],
        ],
    }[forgery]
    with pytest.raises(ProvenanceError, match=expected):
        verify_bundle(_with(run, forged), run.trust())


def _bundle_hash(run: Run) -> str:  # noqa: F811
    with Ledger(run.ledger, create=False) as ledger:
        return ledger.block(3).hash


def test_signers_the_buyer_does_not_trust_do_not_count(run: Run) -> None:  # noqa: F811
    """Three committee members' keys re-sign the header, one of them outside
    the pool keys the buyer trusts: the votes still count (the three trusted
    members approved), the header quorum does not."""
    with Ledger(run.ledger, create=False) as ledger:
        committee = ledger.block(3).body["committee"]
    assert len(committee) == 4
    keys = _keys(run)
    block = _bundle_hash(run)
    signers = [committee[0], committee[1], committee[3]]
    resigned = [_sign(run, keys[k], 3, block, True) for k in signers]
    trusted = frozenset(committee[:3])
    verify_bundle(_with(run, resigned), run.trust())  # all four trusted: fine
    with pytest.raises(ProvenanceError, match="2 of the header's signers are pool"):
        verify_bundle(_with(run, resigned), run.trust(pool=trusted))


def test_a_quorum_resigned_without_replay_passes_and_says_none_replayed(
    run: Run,  # noqa: F811
) -> None:
    """What the committee's keys (not the leader's alone) can write: the same
    block, signed with ``replayed: false``; accepted, and reported as such."""
    with Ledger(run.ledger, create=False) as ledger:
        committee = ledger.block(3).body["committee"]
    keys = _keys(run)
    block = _bundle_hash(run)
    resigned = [_sign(run, keys[k], 3, block, False) for k in committee]
    report = str(verify_bundle(_with(run, resigned), run.trust()))
    assert "0 of them say they recomputed the model" in report
    assert "no signer says it replayed" in report


def test_a_committee_block_whose_examples_are_text_fails(run: Run) -> None:  # noqa: F811
    """An included update's ``num_examples`` as text (``"5"``): the shares the
    votes were judged at read it as 5, so the votes still held; the block is
    not what any writer records (``verify`` fails it the same way)."""
    training = _bundle(run)["training"]
    block, genesis = (
        StoredBlock(
            str(training[n]["header"]).encode(),
            str(training[n]["body"]).encode(),
            str(training[n]["signature"]),
        )
        for n in ("block", "genesis")
    )
    parent = str(training["parent_header"]).encode()
    header, body = parse_canonical(block.header, 2), parse_canonical(block.body, 2)
    model, committee = header["model_hash"], body["committee"]
    check_training_block(block, parent, genesis, model, ())  # as recorded: fine
    update = body["included"][0]
    update["num_examples"] = str(update["num_examples"])
    forged_body = encode(2, body)
    header["body_hash"] = sha256_hex(BODY_TAG, forged_body)
    forged_header = encode(2, header)
    signature = _keys(run)[committee[0]].sign(HEADER_TAG + forged_header)
    forged = StoredBlock(forged_header, forged_body, signature.signature.hex())
    with pytest.raises(BlockCheckFailed, match="included update 0: num_examples"):
        check_training_block(forged, parent, genesis, model, ())

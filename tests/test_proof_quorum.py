"""``check-proof`` on a quorum-signed PoV chain: an update proof carries the
block's header signatures, its body and the genesis (leaf 0 of the same log),
and ``check_proof`` checks the committee's quorum; each forgery of that part
fails, and a proof stripped of it says the committee was not checked."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from flchain_flwr.cli import main as flchain
from flchain_flwr.ledger import InvalidProof, Ledger, check_proof
from flchain_flwr.ledger.canonical import BODY_TAG, encode, parse_canonical, sha256_hex
from flchain_flwr.ledger.quorum import check_header_quorum
from flchain_flwr.ledger.statements import header_statement, sign_statement
from flchain_flwr.pov import Committee

from .test_pov import pov_chain


@pytest.fixture(scope="module")
def chain(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], str, Ledger, Committee]:
    ledger, committee = pov_chain(tmp_path_factory.mktemp("proofq"))
    head = ledger.head()
    assert head is not None and head.height >= 2
    proof = ledger.prove_update(str(head.body["included"][0]["digest"]))
    return proof, bytes(ledger.signing_key.verify_key).hex(), ledger, committee


def _check(proof: dict[str, Any], key: str) -> str:
    return check_proof(proof, trusted_key=key, pov=True)


def test_a_proof_carries_and_checks_its_header_quorum(
    chain: tuple[dict[str, Any], str, Ledger, Committee],
) -> None:
    proof, key, ledger, _ = chain
    head = ledger.head()
    assert head is not None
    signatures = ledger.header_signatures(head.height)
    assert signatures is not None
    assert proof["quorum"]["header_signatures"] == signatures
    statement = _check(proof, key)
    assert (
        f"its header is signed by {len(signatures)} of its 4 committee members"
        in statement
    )
    assert f"{len(signatures)} of them saying they replayed" in statement
    assert "were not checked here" not in statement


def test_a_proof_stripped_of_its_quorum_says_the_committee_was_not_checked(
    chain: tuple[dict[str, Any], str, Ledger, Committee],
) -> None:
    proof, key, _, _ = chain
    stripped = {k: v for k, v in proof.items() if k != "quorum"}
    assert "were not checked here" in _check(stripped, key)


def _sign(chain_id: str, height: int, block: str, key: SigningKey) -> dict[str, Any]:
    statement = header_statement(chain_id, height, 0, block, True)
    return {
        "verifier": key.verify_key.encode().hex(),
        "replayed": True,
        "signature": sign_statement(key, statement),
    }


@pytest.mark.parametrize(
    ("forgery", "expected"),
    [
        ("two", "signed by 2 of 4"),
        ("outsider", "not a committee member"),
        ("not-in-pool", "not a committee member"),
        ("other-block", "header signature 0 is invalid"),
        ("duplicate", "a second one by"),
        ("other-body", "body is not the one the header names"),
        ("other-pool", "genesis body is not the one its header names"),
        ("other-genesis", "not of this genesis at leaf 0"),
        ("genesis-elsewhere", "not of this genesis at leaf 0"),
        ("no-signatures", "carries no committee signatures"),
    ],
)
def test_a_forged_header_quorum_in_a_proof_fails(
    chain: tuple[dict[str, Any], str, Ledger, Committee],
    forgery: str,
    expected: str,
) -> None:
    proof, key, ledger, committee = chain
    forged = copy.deepcopy(proof)
    part = forged["quorum"]
    height = int(proof["height"])
    members = ledger.block(height).body["committee"]
    outsider = next(k for k in committee.rules.pool if k not in members)
    signatures = part["header_signatures"]
    previous = ledger.block(height - 1)
    if forgery == "two":
        part["header_signatures"] = signatures[:2]
    elif forgery == "outsider":
        signer = committee.verifiers[outsider].key
        sig = _sign(ledger.chain_id, height, ledger.block(height).hash, signer)
        part["header_signatures"] = [*signatures[:2], sig]
    elif forgery == "not-in-pool":
        signer = SigningKey(b"\x09" * 32)
        sig = _sign(ledger.chain_id, height, ledger.block(height).hash, signer)
        part["header_signatures"] = [*signatures[:2], sig]
    elif forgery == "other-block":
        signer = committee.verifiers[str(signatures[0]["verifier"])].key
        sig = _sign(ledger.chain_id, height, previous.hash, signer)
        part["header_signatures"] = [sig, *signatures[1:]]
    elif forgery == "duplicate":
        part["header_signatures"] = [signatures[0], *signatures]
    elif forgery == "other-body":
        part["body"] = previous.body_bytes.decode("utf-8")
    elif forgery in ("other-genesis", "other-pool"):
        body = parse_canonical(part["genesis"]["body"].encode(), 2)
        body["pov"]["pool"] = [*body["pov"]["pool"][:-1], "ab" * 32]
        part["genesis"]["body"] = encode(2, body).decode()
        if forgery == "other-genesis":  # its header names the new body too
            header = parse_canonical(part["genesis"]["header"].encode(), 2)
            header["body_hash"] = sha256_hex(BODY_TAG, encode(2, body))
            part["genesis"]["header"] = encode(2, header).decode()
    elif forgery == "genesis-elsewhere":
        part["genesis"]["header"] = ledger.block(1).header_bytes.decode("utf-8")
    elif forgery == "no-signatures":
        part["header_signatures"] = None
    with pytest.raises(InvalidProof, match=expected):
        _check(forged, key)


def test_the_cli_checks_the_quorum_of_a_written_proof(
    chain: tuple[dict[str, Any], str, Ledger, Committee], tmp_path: Path
) -> None:
    proof, key, _, _ = chain
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(proof))
    forged = copy.deepcopy(proof)
    forged["quorum"]["header_signatures"] = forged["quorum"]["header_signatures"][:2]
    bad.write_text(json.dumps(forged))
    out = io.StringIO()
    base = ["ledger", "check-proof", "--trusted-key", key, "--pov"]
    assert flchain([*base, str(good)], out=out) == 0, out.getvalue()
    assert "committee members" in out.getvalue()
    out = io.StringIO()
    assert flchain([*base, str(bad)], out=out) == 1
    assert "signed by 2 of 4" in out.getvalue()


def test_show_and_export_carry_header_signatures_a_third_party_can_check(
    chain: tuple[dict[str, Any], str, Ledger, Committee],
) -> None:
    _, _, ledger, _ = chain
    out = io.StringIO()
    assert flchain(["ledger", "export", str(ledger.path)], out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "header_signatures" not in records[0]  # the genesis: none
    for record in records[1:]:
        assert {"height", "hash", "signature", "header", "body"} < set(record)
        body = record["body"]
        args = (record["header"]["chain_id"], record["height"], body.get("view", 0))
        committee = body["committee"]
        sigs = record["header_signatures"]
        assert check_header_quorum(*args, record["hash"], committee, sigs) is None
        assert check_header_quorum(*args, "0" * 64, committee, sigs) is not None
    out = io.StringIO()
    assert flchain(["ledger", "show", str(ledger.path), "--height", "1"], out=out) == 0
    assert json.loads(out.getvalue()) == records[1]

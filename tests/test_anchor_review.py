"""Regression tests for the defects an adversarial review of format 2,
checkpoints and ``check-proof`` found (issue 12).

Who holds what: the ledger's signer holds ``LEADER_KEY``; the attacker holds
only ``ATTACKER_KEY`` and can write every file of the ledger.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from flchain_flwr.cli import main
from flchain_flwr.ledger import (
    CheckpointNotWritten,
    InvalidProof,
    Ledger,
    LedgerError,
    VoteContext,
    check_proof,
    checkpointwriter,
    sign_vote,
)
from flchain_flwr.ledger import chain as chain_module
from flchain_flwr.ledger.canonical import (
    BODY_TAG,
    HEADER_TAG,
    encode,
    parse_canonical,
    sha256_hex,
)
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.rewards import credited
from flchain_flwr.ledger.votes import check_vote
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff
from flchain_flwr.strategies.weighting import example_weighting

from . import toy
from .ledger_helpers import LEADER_KEY, TRUSTED, build_ledger, checkpoint_at, digest_of
from .test_anchors import rewrite_body

ATTACKER_KEY = SigningKey(b"\x66" * 32)
MODEL = {"w": np.zeros(2, np.float32)}


def flchain(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["ledger", *argv], out=out)
    return code, out.getvalue() + capsys.readouterr().err


def append(ledger: Ledger, version: int, **fields: object) -> None:
    ledger.append(
        model=MODEL,
        model_version=version,
        base_version=max(0, version - 1),
        config_digest="c" * 64,
        **fields,  # type: ignore[arg-type]
    )


def insert_block(
    path: Path, key: SigningKey, included: list[str], chain_id: str = "test-chain"
) -> None:
    """Write a block on top of the head with SQL only, signed by ``key``: what
    someone with write access but not the ledger's key can do."""
    db = sqlite3.connect(path)
    height, prev = db.execute(
        "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
    ).fetchone()
    body = encode(
        2,
        {
            "included": [{"node_id": "7", "digest": d} for d in included],
            "rejected": [],
            "votes": [],
            "contributions": [],
        },
    )
    header = encode(
        2,
        {
            "format": "flchain-block/2",
            "chain_id": chain_id,
            "height": height + 1,
            "prev_hash": prev,
            "sim_time": 0,
            "model_version": height + 1,
            "base_version": height,
            "config_digest": "c" * 64,
            "model_hash": sha256_hex(b"anything"),
            "updates_root": merkle_root(included),
            "body_hash": sha256_hex(BODY_TAG, body),
            "leader": key.verify_key.encode().hex(),
        },
    )
    db.execute(
        "INSERT INTO blocks VALUES (?, ?, ?, ?, ?)",
        (
            height + 1,
            sha256_hex(HEADER_TAG, header),
            header,
            body,
            key.sign(HEADER_TAG + header).signature.hex(),
        ),
    )
    db.commit()
    db.close()


# ------------------------------------------- 1: doubles in [2**53, 1e21)
def test_format_2_reads_back_its_own_big_doubles() -> None:
    for value in (1e20, -1e20, 2.0**60, 9007199254740992.0, 1e21, 123.0):
        data = encode(2, {"n": value})
        back = parse_canonical(data, 2)
        assert back == {"n": value} and encode(2, back) == data
    assert encode(2, 1e20) == b"100000000000000000000"
    assert isinstance(parse_canonical(b"100000000000000000000", 2), float)


def test_a_vote_scoring_1e20_signs_and_checks(tmp_path: Path) -> None:
    context = VoteContext("c", 1, "a" * 64, "b" * 64, "d" * 64)
    vote = sign_vote(LEADER_KEY, context, digest_of(1), True, 1e20, weight=1e20)
    assert check_vote(context, vote) is None
    ledger = Ledger(tmp_path / "l.db", chain_id="c", signing_key=LEADER_KEY)
    append(ledger, 0)
    included = [{"node_id": 5, "digest": digest_of(1), "num_examples": 1e20}]
    old_vote = sign_vote(LEADER_KEY, VoteContext("c", 1), digest_of(1), True, 1e20)
    append(ledger, 1, included=included, votes=[old_vote], sim_time=1e20)
    append(ledger, 2)  # reading block 1 back (the head) works
    reopened = Ledger(ledger.path, signing_key=LEADER_KEY)
    assert reopened.block(1).body["included"][0]["num_examples"] == 1e20
    assert reopened.verify(trusted_key=TRUSTED).ok


def test_a_client_claiming_1e20_examples_does_not_brick_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = toy.examples_of
    monkeypatch.setattr(
        toy, "examples_of", lambda pid: 1e20 if pid == 0 else honest(pid)
    )
    path = tmp_path / "l.db"
    grid = VirtualGrid(
        toy.toy_client_app({}),
        [DeviceProfile(speed=s) for s in (1, 0.6, 0.3)],
        work_fn=toy.constant_work(1.0),
    )
    strategy = FedBuff(
        buffer_size=2,
        staleness_fn=Constant(),
        ledger=str(path),
        seed=0,
        example_weighting=example_weighting("claimed"),
    )
    strategy.start(grid, toy.initial_arrays(), num_rounds=3, timeout=60.0)
    ledger = Ledger(path, create=False)
    claims = [u["num_examples"] for b in ledger.blocks() for u in b.body["included"]]
    assert 1e20 in claims  # the claim reached the ledger, and reads back
    assert len(ledger) == 4 and ledger.verify().ok


# ------------------------------------------- 2: the head an append extends
def test_append_refuses_a_head_it_did_not_sign(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    ledger.close()
    before = (tmp_path / "l.db.checkpoint").read_bytes()
    insert_block(tmp_path / "l.db", ATTACKER_KEY, [digest_of(999)])
    server = Ledger(tmp_path / "l.db", signing_key=LEADER_KEY)
    with pytest.raises(LedgerError, match=r"refusing to extend block 5.*not by this"):
        append(server, 6)
    assert len(server) == 6  # nothing appended on top of the forgery
    assert (tmp_path / "l.db.checkpoint").read_bytes() == before  # nothing signed
    with pytest.raises(LedgerError, match=r"update digest 0+3e7 is not in any block"):
        # With the row removed, the forged update is nowhere, and the proof
        # of the attacker's own block fails against the trusted key.
        server.db.execute("DELETE FROM blocks WHERE height = 5")
        server.prove_update(digest_of(999))


def test_append_refuses_a_head_whose_header_was_changed(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    ledger.db.execute("UPDATE blocks SET hash = ? WHERE height = 4", ("0" * 64,))
    with pytest.raises(LedgerError, match="its hash does not match its header"):
        append(ledger, 5)
    assert len(ledger) == 5


def test_check_proof_of_a_block_not_signed_by_the_trusted_key_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The attack the head check closes, at the proof's end: even a checkpoint
    the trusted key signed over a block of another key does not make that
    block the trusted key's (outside PoV)."""
    ledger = build_ledger(tmp_path / "l.db")
    ledger.close()
    insert_block(tmp_path / "l.db", ATTACKER_KEY, [digest_of(999)])
    forged = Ledger(tmp_path / "l.db", signing_key=LEADER_KEY)
    # The key holder signs a checkpoint over it by hand (the ledger won't).
    forged.checkpoint_path.write_bytes(checkpoint_at(forged, 6))
    proof = forged.prove_update(digest_of(999))
    with pytest.raises(InvalidProof, match="not by the trusted key"):
        check_proof(proof, trusted_key=TRUSTED)
    statement = check_proof(proof, trusted_key=TRUSTED, pov=True)
    assert "were not checked here" in statement
    (tmp_path / "p.json").write_text(json.dumps(proof))
    code, text = flchain(
        "check-proof", str(tmp_path / "p.json"), "--trusted-key", TRUSTED, capsys=capsys
    )
    assert code == 1 and "not by the trusted key" in text


# ------------------------------------------- 3: two contradicting checkpoints
def test_the_key_never_signs_a_checkpoint_contradicting_the_last(
    tmp_path: Path,
) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    signed = ledger.checkpoint_path.read_bytes()
    with sqlite3.connect(ledger.path) as db:  # the attacker drops the last block
        db.execute("DELETE FROM blocks WHERE height = 4")
    with pytest.raises(LedgerError, match="contradict the size-5 checkpoint"):
        append(ledger, 4)  # this process remembers what it signed
    fresh = Ledger(ledger.path, signing_key=LEADER_KEY)
    with pytest.raises(LedgerError, match="blocks were removed"):
        append(fresh, 4)  # a new process reads the checkpoint file
    assert len(fresh) == 4 and ledger.checkpoint_path.read_bytes() == signed


def test_a_block_rewritten_below_the_head_is_not_signed_over(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    ledger.close()
    rewrite_body(
        Ledger(tmp_path / "l.db", signing_key=LEADER_KEY),
        2,
        lambda body: body["rejected"].clear(),
    )
    fresh = Ledger(tmp_path / "l.db", signing_key=LEADER_KEY)
    with pytest.raises(LedgerError, match="blocks were rewritten"):
        append(fresh, 5)


# ------------------------------------------- 4: which chain a proof is about
def test_a_proof_of_another_chain_of_the_same_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Ledger(tmp_path / "b.db", chain_id="other-chain", signing_key=LEADER_KEY)
    append(other, 0)
    append(other, 1, included=[{"node_id": 1, "digest": digest_of(501)}])
    proof = other.prove_update(digest_of(501))
    statement = check_proof(proof, trusted_key=TRUSTED)
    assert "'other-chain'" in statement and "give --chain-id" in statement
    with pytest.raises(InvalidProof, match="about chain 'other-chain', not"):
        check_proof(proof, trusted_key=TRUSTED, chain_id="test-chain")
    vkey = build_ledger(tmp_path / "v.db").trusted_verifier(TRUSTED).encode()
    with pytest.raises(InvalidProof, match="the trusted key is 'flchain-flwr/test"):
        check_proof(proof, trusted_key=vkey)
    (tmp_path / "p.json").write_text(json.dumps(proof))
    args = ("check-proof", str(tmp_path / "p.json"), "--trusted-key", TRUSTED)
    code, text = flchain(*args, "--chain-id", "test-chain", capsys=capsys)
    assert code == 1 and "not 'test-chain'" in text
    code, text = flchain(*args, "--chain-id", "other-chain", capsys=capsys)
    assert code == 0 and "fixed by the chain id asked for" in text


# ------------------------------------------- 5: consistency: which end
def test_a_consistency_proof_says_which_end_is_anchored(tmp_path: Path) -> None:
    victim = build_ledger(tmp_path / "v.db")
    held = checkpoint_at(victim, 3)
    genuine = victim.prove_consistency(3)
    victim.close()
    # The attacker extends the genuine first 3 blocks with blocks of their own.
    shutil.copy(tmp_path / "v.db", tmp_path / "a.db")
    with sqlite3.connect(tmp_path / "a.db") as db:
        db.execute("DELETE FROM blocks WHERE height >= 3")
    for height in range(3, 7):
        insert_block(tmp_path / "a.db", ATTACKER_KEY, [digest_of(900 + height)])
    forged = Ledger(tmp_path / "a.db", create=False).prove_consistency(3)
    with pytest.raises(InvalidProof, match="no 'checkpoint' signed by the trusted"):
        check_proof(forged, trusted_key=TRUSTED, checkpoint=held)
    alone = check_proof(forged, checkpoint=held)
    assert "only the prior end is anchored" in alone
    assert "the later ledger is the proof's word" in alone
    both = check_proof(genuine, trusted_key=TRUSTED, checkpoint=held)
    assert "the prior end is anchored by the checkpoint given" in both
    assert "the later end by the proof's checkpoint, signed by the trusted" in both


# ------------------------------------------- 6: what verify claims
def test_verify_wording_for_an_empty_ledger_and_the_checkpoint_beside_it(
    tmp_path: Path,
) -> None:
    empty = Ledger(tmp_path / "e.db", chain_id="test-chain")
    text = str(empty.verify(trusted_key=TRUSTED))
    assert "signed the genesis block" not in text and "signed by leader" not in text
    assert "the ledger has no blocks" in text
    ledger = build_ledger(tmp_path / "l.db")
    text = str(ledger.verify(trusted_key=TRUSTED))
    assert "beside the ledger" in text and "cannot detect a rollback" in text
    kept = tmp_path / "kept.checkpoint"
    shutil.copy(ledger.checkpoint_path, kept)
    assert "rollback" not in str(ledger.verify(trusted_key=TRUSTED, checkpoint=kept))


# ------------------------------------------- 7: format 1, no possible origin
def test_a_format_1_ledger_whose_chain_id_is_no_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with monkeypatch.context() as patch:  # such ids were legal before checkpoints
        patch.setattr(chain_module, "new_chain_origin", lambda chain_id: "x")
        ledger = Ledger(
            tmp_path / "l.db",
            chain_id="old run",
            signing_key=LEADER_KEY,
            format_version=1,
        )
    append(ledger, 0)
    append(ledger, 1)
    ledger.close()
    code, text = flchain(
        "verify", str(ledger.path), "--trusted-key", TRUSTED, capsys=capsys
    )
    assert code == 0 and "signed the genesis block and every block" in text
    assert "no checkpoint exists for this ledger" in text
    assert "run `flchain ledger verify`" not in text
    forged = Ledger(tmp_path / "f.db", chain_id="x", signing_key=ATTACKER_KEY)
    append(forged, 0)
    code, text = flchain(
        "verify",
        str(ledger.path),
        "--checkpoint",
        str(forged.checkpoint_path),
        capsys=capsys,
    )
    assert code == 1 and "cannot be a checkpoint origin" in text
    other = SigningKey(b"\x07" * 32).verify_key.encode().hex()
    code, text = flchain(
        "verify", str(ledger.path), "--trusted-key", other, capsys=capsys
    )
    assert code == 1 and "unexpected leader" in text


# ------------------------------------------- 8: format downgrade via meta
def test_metadata_that_contradicts_the_genesis_format_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_ledger(tmp_path / "l.db").close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        db.execute("UPDATE meta SET value = 'flchain-ledger/1' WHERE key = 'format'")
    with pytest.raises(LedgerError, match="genesis block is flchain-block/2"):
        Ledger(tmp_path / "l.db", signing_key=LEADER_KEY)
    code, text = flchain("verify", str(tmp_path / "l.db"), capsys=capsys)
    assert code == 2 and "refusing to open" in text


# ------------------------------------------- 9: contributions and digests
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda b: b["contributions"].append(dict(b["contributions"][0])),
            "credited 2 times but has 1 included",
        ),
        (lambda b: b["contributions"][0].update(score=1e9), "score 1000000000"),
        (lambda b: b["contributions"][0].update(relevance=-0.5), "relevance -0.5"),
        (lambda b: b["contributions"][0].update(score=0.3), "exceeds data_share"),
        (
            lambda b: b["included"].append(
                {**b["included"][0], "digest": b["included"][0]["digest"].upper()}
            ),
            "is not lower-case SHA-256 hex",
        ),
        (
            lambda b: b["rejected"].append({"node_id": "1", "digest": "AB" * 32}),
            "rejected digest",
        ),
    ],
)
def test_forged_contributions_and_digests_fail_verify(
    tmp_path: Path, change: object, reason: str
) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    rewrite_body(ledger, 3, change)
    report = ledger.verify()
    assert not report.ok and report.bad_height == 3 and reason in report.reason
    if "contribution" in reason or "credited" in reason or "score" in reason:
        assert credited(ledger.block(3).body) == []  # and rewards pay nothing


# ------------------------------------------- 10: a proof's malformed checkpoint
def test_a_proof_checkpoint_that_is_not_text_is_a_malformed_proof(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proof = build_ledger(tmp_path / "l.db").prove_update(digest_of(301))
    text = json.dumps(proof).replace('"checkpoint": "', '"checkpoint": "\\ud800', 1)
    (tmp_path / "p.json").write_text(text)
    code, out = flchain(
        "check-proof", str(tmp_path / "p.json"), "--trusted-key", TRUSTED, capsys=capsys
    )
    assert code == 2 and "malformed proof" in out and "ledger's data" not in out


# ------------------------------------------- 11: where the checkpoint goes
def test_an_unusable_checkpoint_path_is_refused_at_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerError, match="folder of the checkpoint"):
        Ledger(tmp_path / "l.db", checkpoint_path=tmp_path / "file" / "cp")
    (tmp_path / "dir").mkdir()
    with pytest.raises(LedgerError, match="is a directory"):
        Ledger(tmp_path / "m.db", checkpoint_path=tmp_path / "dir")
    made = Ledger(tmp_path / "n.db", checkpoint_path=tmp_path / "new" / "cp")
    append(made, 0)  # a missing folder is created
    assert (tmp_path / "new" / "cp").is_file()


def test_a_checkpoint_that_fails_after_the_commit_says_the_block_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = build_ledger(tmp_path / "l.db")

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(checkpointwriter, "write_checkpoint", disk_full)
        with pytest.raises(CheckpointNotWritten, match="block 5 IS committed"):
            append(ledger, 5)
    assert len(ledger) == 6
    append(ledger, 6)  # the next append writes one covering both
    assert "covers the first 7 of the 7 blocks" in str(
        ledger.verify(trusted_key=TRUSTED)
    )


# ------------------------------------------- 12: key file permissions
def test_a_key_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "shared.key"
    key.write_bytes(LEADER_KEY.encode().hex().encode())
    os.chmod(key, 0o644)
    ledger = Ledger(tmp_path / "l.db", key_path=key)
    with caplog.at_level(logging.WARNING):
        append(ledger, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(key) in warnings[0].getMessage()
    assert "0o644" in warnings[0].getMessage()
    os.chmod(key, 0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        append(Ledger(tmp_path / "m.db", key_path=key), 0)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]

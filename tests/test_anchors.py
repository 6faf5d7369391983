"""Format 2 (RFC 8785), checkpoints as trust anchors, and what verify claims.

Each security claim is tested by forging: who can forge what, holding which
keys. The ledger's signer holds ``LEADER_KEY``; an attacker holds only keys of
their own, and can rewrite every file the ledger consists of.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from flchain_flwr.cli import main
from flchain_flwr.ledger import InvalidProof, Ledger, LedgerError, check_proof
from flchain_flwr.ledger import verify as verify_module
from flchain_flwr.ledger.blockcheck import check_block
from flchain_flwr.ledger.canonical import (
    NotCanonical,
    canonical_json,
    encode,
    parse_canonical,
)
from flchain_flwr.ledger.checkpoint import read_checkpoint
from flchain_flwr.ledger.notes import VerifierKey
from flchain_flwr.ledger.rewards import credited, reward_shares
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff

from .ledger_helpers import (
    LEADER_KEY,
    TRUSTED,
    build_ledger,
    checkpoint_at,
    digest_of,
    resign_block,
)
from .toy import constant_work, initial_arrays, toy_client_app

V1_FIXTURE = Path(__file__).parent / "data" / "v1-ledger"
ATTACKER_KEY = SigningKey(b"\x66" * 32)


def flchain(*argv: str) -> tuple[int, str]:
    import io

    out = io.StringIO()
    code = main(["ledger", *argv], out=out)
    return code, out.getvalue()


def forged_ledger(
    path: Path, key: SigningKey = ATTACKER_KEY, blocks: int = 5
) -> Ledger:
    """The attacker's own ledger under the victim's chain id, signed by ``key``."""
    ledger = Ledger(path, chain_id="test-chain", signing_key=key)
    for height in range(blocks):
        included = (
            [{"node_id": 10, "digest": digest_of(100 * height)}] if height else []
        )
        ledger.append(
            model={"w": np.full(3, 1000.0, np.float32)},
            model_version=height,
            base_version=max(0, height - 1),
            config_digest="c" * 64,
            included=included,
        )
    return ledger


# ---------------------------------------------------------------- encoding
def test_format_2_is_rfc_8785_and_format_1_is_unchanged() -> None:
    value = {"b": 1.0, "a": [1e21, 1e-7, 0.1, -0.0], "é": "\u2028"}
    assert encode(2, value) == '{"a":[1e+21,1e-7,0.1,0],"b":1,"é":"\u2028"}'.encode()
    assert encode(1, value) == canonical_json(value)
    assert encode(1, value) == (
        '{"a":[1e+21,1e-07,0.1,-0.0],"b":1.0,"é":"\u2028"}'.encode()
    )
    assert parse_canonical(encode(2, value), 2) == value
    with pytest.raises(NotCanonical):
        parse_canonical(encode(1, value), 2)
    with pytest.raises(ValueError, match="unknown format version 3"):
        encode(3, value)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_have_no_encoding(version: int, bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode(version, {"x": [bad]})


def test_format_2_refuses_integers_beyond_a_double(tmp_path: Path) -> None:
    assert encode(2, 2**53 - 1) == b"9007199254740991"
    for bad in (2**53, -(2**53), 2**64 - 1, 10**400):
        with pytest.raises(ValueError, match=r"IEEE doubles.*store it as a string"):
            encode(2, {"n": bad})
    # Read as the double it rounds to (...992), which is not what is stored.
    with pytest.raises(NotCanonical, match="not in canonical form"):
        parse_canonical(b"9007199254740993", 2)
    ledger = Ledger(tmp_path / "l.db", chain_id="c", signing_key=LEADER_KEY)
    with pytest.raises(ValueError, match="IEEE doubles"):
        ledger.append(
            model={"w": np.zeros(2, np.float32)},
            model_version=0,
            base_version=0,
            config_digest="c" * 64,
            contributions=[{"node_id": 1, "relevance": 10**400}],
        )
    assert len(ledger) == 0  # refused before anything was committed


def test_format_2_blocks_hold_node_ids_as_text_and_no_wall_time(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db", chain_id="c", signing_key=LEADER_KEY)
    ledger.append(
        model={"w": np.zeros(2, np.float32)},
        model_version=0,
        base_version=0,
        config_digest="c" * 64,
    )
    block = ledger.append(
        model={"w": np.ones(2, np.float32)},
        model_version=1,
        base_version=0,
        config_digest="c" * 64,
        included=[{"node_id": 2**64 - 1, "digest": digest_of(1)}],
        contributions=[{"node_id": 2**64 - 1, "score": 1.0}],
        wall_time=1234.5,  # ignored: format 1 only
    )
    assert block.header["format"] == "flchain-block/2" and block.format_version == 2
    assert "wall_time" not in block.header
    assert block.body["included"][0]["node_id"] == str(2**64 - 1)
    assert b'"score":1}' in block.body_bytes  # RFC 8785 numbers
    assert ledger.verify().ok


# ------------------------------------------------------------ determinism
def seeded_run(path: Path, format_version: int) -> list[str]:
    grid = VirtualGrid(
        toy_client_app({}),
        [DeviceProfile(speed=s) for s in (1, 0.6, 0.3)],
        work_fn=constant_work(1.0),
    )
    ledger = Ledger(
        path,
        chain_id="same-chain",
        signing_key=LEADER_KEY,
        format_version=format_version,
    )
    strategy = FedBuff(buffer_size=2, staleness_fn=Constant(), ledger=ledger, seed=0)
    strategy.start(grid, initial_arrays(), num_rounds=3, timeout=60.0)
    hashes = ledger.block_hashes()
    ledger.close()
    return hashes


def test_two_runs_with_one_seed_write_identical_block_hashes(tmp_path: Path) -> None:
    first = seeded_run(tmp_path / "a.db", 2)
    second = seeded_run(tmp_path / "b.db", 2)
    assert len(first) == 4 and first == second
    # The control: format 1 hashes a wall time, so its runs differ.
    assert seeded_run(tmp_path / "c.db", 1) != seeded_run(tmp_path / "d.db", 1)


# ------------------------------------------------------------- v1 ledgers
def test_a_version_1_ledger_written_by_the_old_code_still_verifies(
    tmp_path: Path,
) -> None:
    # tests/data/v1-ledger was written by the code before format 2 (commit
    # 4f65ac5's tests/ledger_helpers.build_ledger, blocks=4).
    shutil.copytree(V1_FIXTURE, tmp_path / "v1")
    path = tmp_path / "v1" / "chain.db"
    with Ledger(path, create=False, signing_key=LEADER_KEY) as ledger:
        assert ledger.format_version == 1
        assert all(b.header["format"] == "flchain-block/1" for b in ledger.blocks())
        assert ledger.block(1).body["votes"]  # votes signed over version-1 bytes
        report = ledger.verify(trusted_key=TRUSTED)
        assert report.ok, report
        # Its blocks are proven and appended in format 1 still.
        ledger.append(
            model={"w": np.zeros((4, 3), np.float32), "b": np.zeros(2, np.int64)},
            model_version=4,
            base_version=3,
            config_digest="c" * 64,
        )
        assert ledger.head().header["format"] == "flchain-block/1"  # type: ignore[union-attr]
        assert "wall_time" in ledger.head().header  # type: ignore[union-attr]
        assert ledger.verify(trusted_key=TRUSTED).ok
        proof = ledger.prove_update(ledger.block(2).body["included"][0]["digest"])
        assert "is in block 2" in check_proof(proof, trusted_key=TRUSTED)
    with sqlite3.connect(path) as db:  # and a forged v1 block still fails
        db.execute("UPDATE blocks SET body = CAST(? AS BLOB) WHERE height = 2", ("{}",))
    with Ledger(path, create=False) as ledger:
        assert not ledger.verify().ok


# ------------------------------------------------------------- checkpoints
def test_each_append_writes_a_checkpoint_signed_by_the_ledger_key(
    tmp_path: Path,
) -> None:
    ledger = build_ledger(tmp_path / "l.db", blocks=3)
    vkey = VerifierKey(ledger.origin, bytes(LEADER_KEY.verify_key))
    found, signers = read_checkpoint(tmp_path / "l.db.checkpoint", [vkey])
    assert signers == (vkey,) and ledger.origin == "flchain-flwr/test-chain"
    assert found.size == 3 and found.root.hex() == checkpoint_root(ledger, 3)
    build_more(ledger)
    assert read_checkpoint(ledger.checkpoint_path, [vkey])[0].size == 4
    assert oct(stat.S_IMODE(os.stat(ledger.checkpoint_path).st_mode)) == "0o644"


def checkpoint_root(ledger: Ledger, size: int) -> str:
    from flchain_flwr.ledger.merkle import merkle_root

    return merkle_root(ledger.block_hashes()[:size])


def build_more(ledger: Ledger) -> None:
    ledger.append(
        model={"w": np.zeros(2, np.float32)},
        model_version=len(ledger),
        base_version=len(ledger) - 1,
        config_digest="c" * 64,
    )


def test_verify_without_an_anchor_says_so(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    report = ledger.verify()
    text = str(report)
    assert report.ok and "self-consistent; no trusted anchor given" in text
    assert TRUSTED in text  # full keys and head hashes are printed
    assert f"head: block 4, hash {ledger.block(4).hash}" in text


def test_verify_with_the_trusted_key_and_its_checkpoint(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    report = ledger.verify(trusted_key=TRUSTED)
    assert report.ok, report
    assert "trusted key flchain-flwr/test-chain+" in report.anchor
    assert "covers the first 5 of the 5 blocks" in report.anchor
    code, text = flchain("verify", str(ledger.path), "--trusted-key", TRUSTED)
    assert code == 0 and "checkpoint" in text and ledger.block(4).hash in text
    vkey = VerifierKey(ledger.origin, bytes(LEADER_KEY.verify_key)).encode()
    assert ledger.verify(trusted_key=vkey).ok  # the same key as a vkey


def test_a_vkey_named_for_another_chain_does_not_vouch_for_this_one(
    tmp_path: Path,
) -> None:
    # The signer runs two chains; a verifier holding the vkey of one (its name
    # fixes the chain, as in check-proof) is handed the other one with its
    # checkpoint removed. Nobody forged a signature, but verify must not say
    # the key of 'other-chain' vouches for a ledger of 'test-chain'.
    ledger = build_ledger(tmp_path / "l.db")
    ledger.checkpoint_path.unlink()
    other = VerifierKey("flchain-flwr/other-chain", bytes(LEADER_KEY.verify_key))
    report = ledger.verify(trusted_key=other.encode())
    assert not report.ok and report.bad_height is None
    assert "'flchain-flwr/other-chain'" in report.reason
    assert "'flchain-flwr/test-chain'" in report.reason
    code, text = flchain("verify", str(ledger.path), "--trusted-key", other.encode())
    assert code == 1 and text.startswith("FAILED at ledger: the trusted key")


def test_verify_while_the_server_appends_checks_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A live writer commits a block and then writes its checkpoint while a
    # reader verifies: the checkpoint verify uses must be one the blocks it
    # checked hold, never one of blocks it did not check.
    writer = build_ledger(tmp_path / "l.db")

    def check_then_append(ledger: Any, row: Any, height: int, *args: Any) -> Any:
        problem = check_block(ledger, row, height, *args)
        if height == 4:  # the last block the reader sees: the writer appends
            build_more(writer)
        return problem

    monkeypatch.setattr(verify_module, "check_block", check_then_append)
    with Ledger(writer.path, read_only=True) as reader:
        report = reader.verify(trusted_key=TRUSTED)
    assert report.ok and report.blocks == 5, report
    assert "covers the first 5 of the 5 blocks" in report.anchor
    assert len(writer) == 6


def test_a_ledger_rewritten_with_another_key_fails_against_the_trusted_key(
    tmp_path: Path,
) -> None:
    # The attacker rewrites every file (blocks, metadata, checkpoint) with
    # their own key: self-consistent, so verify without an anchor passes.
    forged = forged_ledger(tmp_path / "forged.db")
    assert forged.verify().ok
    report = forged.verify(trusted_key=TRUSTED)
    assert not report.ok and report.bad_height == 0
    assert report.reason == "signed by an unexpected leader"
    code, text = flchain("verify", str(forged.path), "--trusted-key", TRUSTED)
    assert code == 1 and text.startswith("FAILED at block 0: signed by an unexpected")


def test_a_checkpoint_signed_by_another_key_fails(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    bad = tmp_path / "bad.checkpoint"
    bad.write_bytes(checkpoint_at(ledger, 5, key=ATTACKER_KEY))
    report = ledger.verify(trusted_key=TRUSTED, checkpoint=bad)
    assert not report.ok and "not signed by flchain-flwr/test-chain+" in report.reason


def test_a_truncated_ledger_fails_against_its_checkpoint(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    kept = tmp_path / "kept.checkpoint"  # held apart from the ledger
    shutil.copy(ledger.checkpoint_path, kept)
    with sqlite3.connect(ledger.path) as db:
        db.execute("DELETE FROM blocks WHERE height >= 3")
    assert ledger.verify(trusted_key=TRUSTED, checkpoint=None).ok is False  # beside
    report = ledger.verify(checkpoint=kept)
    assert not report.ok
    assert "ledger has 3 blocks, the checkpoint 5: blocks were removed" in report.reason
    code, text = flchain(
        "verify", str(ledger.path), "--trusted-key", TRUSTED, "--checkpoint", str(kept)
    )
    assert code == 1 and "FAILED at ledger: checkpoint" in text
    assert "the checkpoint 5: blocks were removed" in text
    # Truncated and re-signed by someone holding the signer's key (the
    # ledger itself refuses to): consistent, but the checkpoint kept apart
    # still names the lost blocks.
    ledger.checkpoint_path.write_bytes(checkpoint_at(ledger, 3))
    assert ledger.verify(trusted_key=TRUSTED).ok  # the one beside it was replaced
    assert not ledger.verify(trusted_key=TRUSTED, checkpoint=kept).ok


def test_a_rewritten_block_fails_against_the_checkpoint(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    kept = tmp_path / "kept.checkpoint"
    shutil.copy(ledger.checkpoint_path, kept)
    # Rebuild the chain from scratch with the victim's id and the attacker's
    # key, metadata and all: it holds together, but not with the checkpoint.
    forged = forged_ledger(tmp_path / "forged.db")
    report = forged.verify(checkpoint=kept)
    assert not report.ok, report
    assert "not signed by" in report.reason  # the checkpoint's key is not theirs
    # Even with the signer's own key, rewriting block 3 changes the root (the
    # ledger refuses to sign that while a checkpoint of its key says otherwise:
    # the key holder has to delete it and start afresh).
    with sqlite3.connect(ledger.path) as db:
        db.execute("DELETE FROM blocks WHERE height >= 3")
    ledger.close()
    ledger.checkpoint_path.unlink()
    ledger = Ledger(ledger.path, signing_key=LEADER_KEY)
    ledger.append(
        model={"w": np.full(3, 1000.0, np.float32)},
        model_version=3,
        base_version=2,
        config_digest="c" * 64,
    )
    build_more(ledger)
    assert ledger.verify().ok  # self-consistent
    report = ledger.verify(trusted_key=TRUSTED, checkpoint=kept)
    assert not report.ok and "blocks were rewritten" in report.reason


# --------------------------------------------------------------- proofs
def test_check_proof_requires_an_anchor(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    proof = ledger.prove_update(digest_of(301))
    with pytest.raises(ValueError, match="needs a trusted key or a checkpoint"):
        check_proof(proof)
    proof_file = tmp_path / "p.json"
    proof_file.write_text(json.dumps(proof))
    assert flchain("check-proof", str(proof_file))[0] == 2
    with pytest.raises(LedgerError, match="invalid trusted key"):
        check_proof(proof, trusted_key="not+a+key")


def test_a_proof_from_the_attackers_own_ledger_fails(tmp_path: Path) -> None:
    victim = build_ledger(tmp_path / "victim.db")
    kept = tmp_path / "victim.checkpoint"
    shutil.copy(victim.checkpoint_path, kept)
    # The attacker's ledger has the victim's chain id and claims an update
    # the victim never included (digest_of(200) is in their block 2).
    forged = forged_ledger(tmp_path / "forged.db")
    proof = forged.prove_update(digest_of(200))
    assert proof["chain_id"] == victim.chain_id
    with pytest.raises(InvalidProof, match="not by the trusted key"):
        check_proof(proof, trusted_key=TRUSTED)
    with pytest.raises(InvalidProof, match="checkpoint rejected"):
        check_proof(proof, trusted_key=TRUSTED, pov=True)  # leaders rotate
    with pytest.raises(InvalidProof, match="is not the checkpoint's"):
        check_proof(proof, checkpoint=kept.read_bytes())
    # Dropping its checkpoint does not help: a key alone anchors nothing.
    stripped = {k: v for k, v in proof.items() if k != "checkpoint"}
    with pytest.raises(InvalidProof, match="'checkpoint'"):
        check_proof(stripped, trusted_key=TRUSTED, pov=True)
    proof_file = tmp_path / "p.json"
    proof_file.write_text(json.dumps(proof))
    code, text = flchain("check-proof", str(proof_file), "--trusted-key", TRUSTED)
    assert code == 1 and "not by the trusted key" in text
    code, text = flchain("check-proof", str(proof_file), "--checkpoint", str(kept))
    assert code == 1 and text.startswith("INVALID:")
    # The victim's own proof passes both ways.
    good = victim.prove_update(digest_of(301))
    assert "anchored by the proof's checkpoint" in check_proof(
        good, trusted_key=TRUSTED
    )
    assert "anchored by the checkpoint given" in check_proof(
        good, checkpoint=kept.read_bytes()
    )


def test_a_proof_with_a_forged_header_signature_fails(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    proof = ledger.prove_update(digest_of(301))
    proof["signature"] = ATTACKER_KEY.sign(b"x").signature.hex()
    with pytest.raises(InvalidProof, match="header's signature"):
        check_proof(proof, trusted_key=TRUSTED)


# -------------------------------------------------------- body integrity
def rewrite_body(
    ledger: Ledger, height: int, change: Callable[[dict[str, Any]], None]
) -> None:
    """Re-sign block ``height`` (and re-link the rest) after ``change(body)``:
    what the signer, or anyone holding its key, can do."""
    resign_block(ledger, height, lambda _, body: change(body))


def test_an_update_included_twice_fails_verify(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    rewrite_body(ledger, 3, lambda b: b["included"].append(dict(b["included"][0])))
    report = ledger.verify()
    assert not report.ok and report.bad_height == 3
    assert report.reason == f"update {digest_of(300)} is included twice"
    code, text = flchain("verify", str(ledger.path))
    assert code == 1 and text.startswith("FAILED at block 3: update ")


def test_a_contribution_to_a_node_not_included_fails_and_is_not_paid(
    tmp_path: Path,
) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    outsider = {"node_id": "77", "data_share": 1, "relevance": 1, "score": 100}
    rewrite_body(ledger, 2, lambda b: b["contributions"].append(outsider))
    report = ledger.verify()
    assert not report.ok and report.bad_height == 2
    assert "credits node '77', which is not in the block's included set" in str(report)
    shares = reward_shares(credited(b.body) for b in ledger.blocks())
    assert 77 not in {s.node_id for s in shares} and shares
    code, text = flchain("rewards", str(ledger.path), "--json")
    assert code == 0 and 77 not in {r["node_id"] for r in json.loads(text)}


# ------------------------------------------------------------------ keys
def test_keys_live_where_they_are_told_and_are_private(tmp_path: Path) -> None:
    keys = tmp_path / "secrets"
    keys.mkdir()
    ledger = Ledger(tmp_path / "data" / "l.db", key_path=keys / "ledger.key")
    build_more_first(ledger)
    assert not (tmp_path / "data" / "l.db.key").exists()
    mode = stat.S_IMODE(os.stat(keys / "ledger.key").st_mode)
    assert mode == 0o600
    again = Ledger(tmp_path / "data" / "l.db", key_path=keys / "ledger.key")
    assert again.signing_key.encode() == ledger.signing_key.encode()
    trusted = ledger.signing_key.verify_key.encode().hex()
    assert again.verify(trusted_key=trusted).ok


def build_more_first(ledger: Ledger) -> None:
    ledger.append(
        model={"w": np.zeros(2, np.float32)},
        model_version=0,
        base_version=0,
        config_digest="c" * 64,
    )


def test_a_chain_id_that_cannot_name_a_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot be an origin"):
        Ledger(tmp_path / "l.db", chain_id="two words")


# ------------------------------------------------------- honest wording
def test_an_in_process_committee_is_reported_as_one_process(tmp_path: Path) -> None:
    from flchain_flwr.pov import Committee, Threshold

    from .test_pov import verifiers

    n = 3
    grid = VirtualGrid(
        toy_client_app({}),
        [DeviceProfile() for _ in range(n)],
        work_fn=constant_work(1.0),
    )
    committee = Committee(verifiers(4), threshold=Threshold(value=0))
    strategy = FedBuff(
        buffer_size=n,
        staleness_fn=Constant(),
        committee=committee,
        seed=0,
        ledger=tmp_path / "pov.db",
    )
    strategy.start(grid, initial_arrays(), num_rounds=2, timeout=60.0)
    with Ledger(tmp_path / "pov.db", create=False) as ledger:
        assert ledger.block(0).body["committee_kind"] == "in-process"
        report = ledger.verify()
        assert report.ok and report.pov, report
        assert "whose every key the server process held" in str(report)
        assert "by their PoV committees" not in str(report)
    remote = [
        SigningKey(bytes([50 + i]) * 32).verify_key.encode().hex() for i in range(2)
    ]
    kinds = [
        Committee(local, remote_members=members).kind
        for local, members in ((verifiers(2), remote), ([], remote))
    ]
    assert kinds == ["mixed", "remote"]


def test_run_config_names_where_the_key_and_checkpoint_live(tmp_path: Path) -> None:
    from flchain_flwr.strategies.config import fedbuff_from_run_config

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    cfg = {
        "ledger-path": str(tmp_path / "runs" / "l.db"),
        "ledger-key": str(secrets / "ledger.key"),
        "ledger-checkpoint": str(tmp_path / "published" / "l.checkpoint"),
    }
    (tmp_path / "published").mkdir()
    strategy = fedbuff_from_run_config(cfg, staleness_fn=Constant(), seed=0)
    grid = VirtualGrid(
        toy_client_app({}), [DeviceProfile()] * 2, work_fn=constant_work(1.0)
    )
    strategy.start(grid, initial_arrays(), num_rounds=1, timeout=60.0)
    assert isinstance(strategy.ledger, Ledger)
    strategy.ledger.close()
    assert (secrets / "ledger.key").is_file()
    assert not (tmp_path / "runs" / "l.db.key").exists()
    assert not (tmp_path / "runs" / "l.db.checkpoint").exists()
    key = SigningKey((secrets / "ledger.key").read_bytes().strip(), encoder=HexEncoder)
    with Ledger(tmp_path / "runs" / "l.db", create=False) as ledger:
        report = ledger.verify(
            trusted_key=key.verify_key.encode().hex(),
            checkpoint=tmp_path / "published" / "l.checkpoint",
        )
        assert report.ok and report.blocks >= 2, report


def test_the_incremental_log_root_is_the_merkle_root() -> None:
    from flchain_flwr.ledger.checkpoint import LogFrontier
    from flchain_flwr.ledger.merkle import merkle_root

    leaves = [digest_of(i * 7919) for i in range(40)]
    frontier = LogFrontier()
    for size in range(41):
        assert frontier.size == size
        assert frontier.root().hex() == merkle_root(leaves[:size]), size
        if size < 40:
            frontier.append(leaves[size])


def test_an_update_proof_against_an_older_checkpoint(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "l.db", blocks=4)
    kept = tmp_path / "kept.checkpoint"
    shutil.copy(ledger.checkpoint_path, kept)  # 4 blocks
    build_more(ledger)
    build_more(ledger)
    latest = ledger.prove_update(digest_of(200))
    assert latest["block"]["size"] == 6 and "checkpoint" in latest
    with pytest.raises(InvalidProof, match="is not the checkpoint's"):
        check_proof(latest, checkpoint=kept.read_bytes())
    older = ledger.prove_update(digest_of(200), size=4)
    assert older["block"]["size"] == 4 and "checkpoint" not in older
    assert "4-block log" in check_proof(older, checkpoint=kept.read_bytes())
    with pytest.raises(LedgerError, match="not in the first 2 blocks"):
        ledger.prove_update(digest_of(200), size=2)
    code, text = flchain(
        "proof", str(ledger.path), "--update", digest_of(200), "--size", "4"
    )
    assert code == 0 and json.loads(text) == older

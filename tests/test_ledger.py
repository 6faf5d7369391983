"""The ledger: blocks, encodings, blobs, Merkle proofs, votes, tamper evidence."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.logger import FLOWER_LOGGER
from nacl.signing import SigningKey

from flchain_flwr.ledger import (
    InvalidProof,
    Ledger,
    LedgerError,
    VoteContext,
    check_proof,
    decode_model,
    model_hash,
    sign_vote,
    update_digest,
)
from flchain_flwr.ledger.canonical import NotCanonical, canonical_json, parse_canonical
from flchain_flwr.ledger.checkpoint import MAX_CHAIN_ID_CHARS
from flchain_flwr.ledger.trading import TradingChain

from .ledger_helpers import TRUSTED, build_ledger, checkpoint_at, digest_of, flchain


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return build_ledger(tmp_path / "chain.db", blocks=6)


def tamper(ledger: Ledger, sql: str, *params: object) -> None:
    """Change stored data behind the ledger's back, in another connection."""
    with sqlite3.connect(ledger.path) as db:
        db.execute(sql, params)


# ------------------------------------------------------------------- basics
def test_a_fresh_ledger_verifies(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok and report.blocks == 6
    assert str(report).startswith("ok: 6 blocks verified, signed by leader ")
    assert report.leader == ledger.block(0).header["leader"]
    assert [b.height for b in ledger.blocks()] == list(range(6))
    genesis = ledger.block(0)
    assert genesis.header["prev_hash"] == "0" * 64
    assert ledger.block(3).header["prev_hash"] == ledger.block(2).hash


def test_blocks_survive_reopening(tmp_path: Path) -> None:
    build_ledger(tmp_path / "c.db", blocks=3).close()
    with Ledger(tmp_path / "c.db", create=False) as again:
        assert len(again) == 3 and again.verify().ok and again.chain_id == "test-chain"


def test_opening_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger(tmp_path / "missing.db", create=False)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="is not a flchain ledger"):
        Ledger(tmp_path / "junk.db")
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE things (x)")
    with pytest.raises(LedgerError, match="is not a flchain ledger"):
        Ledger(tmp_path / "other.db")
    build_ledger(tmp_path / "c.db", blocks=1).close()
    with pytest.raises(LedgerError, match="holds chain 'test-chain', not 'other'"):
        Ledger(tmp_path / "c.db", chain_id="other")
    with pytest.raises(LedgerError, match="no block at height 9"):
        Ledger(tmp_path / "c.db").block(9)


def test_a_new_chain_refuses_a_chain_id_verifier_nodes_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Verifier nodes keep their locks by chain id, up to MAX_CHAIN_ID_CHARS
    characters (pov/lockstate.py): a longer one is refused when a ledger, a
    main chain or a trading chain is made, not at the first remote vote; an
    empty one too (the main chain's origin would be the bare prefix)."""
    long = "c" * (MAX_CHAIN_ID_CHARS + 1)
    with pytest.raises(LedgerError, match="1 to 128 characters long, not 129"):
        Ledger(tmp_path / "long.db", chain_id=long)
    assert not (tmp_path / "long.db").exists()
    ledger = Ledger(tmp_path / "long.db", chain_id="c" * MAX_CHAIN_ID_CHARS)
    assert ledger.chain_id == "c" * MAX_CHAIN_ID_CHARS
    ledger.close()
    with pytest.raises(LedgerError, match="1 to 128 characters long, not 129"):
        TradingChain(tmp_path / "trade.db", chain_id=long)
    code, witness = flchain("witness", "init", str(tmp_path / "w"), "--name", "w.x")
    assert code == 0
    capsys.readouterr()
    for bad, length in ((long, 129), ("", 0)):
        code, _ = flchain(
            "main", "init", str(tmp_path / "main.db"), "--chain-id", bad,
            "--key", str(tmp_path / "main.key"), "--witness", witness.strip(),
            "--quorum", "1",
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and f"1 to 128 characters long, not {length}" in err, err
        assert not (tmp_path / "main.db").exists()


class _Collect(logging.Handler):
    """Keeps the messages logged to it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_missing_folders_above_a_new_ledger_are_created_and_the_path_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    collect = _Collect()
    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.addHandler(collect)
    FLOWER_LOGGER.setLevel(logging.INFO)
    try:
        # docs/ledger.md's example, one folder deeper: none of the folders exist yet.
        with Ledger("runs/nested/ledger.db") as ledger:
            ledger.append(
                model={"w": np.zeros(2, np.float32)},
                model_version=0,
                base_version=0,
                config_digest="x",
            )
            chain_id = ledger.chain_id
    finally:
        FLOWER_LOGGER.removeHandler(collect)
        FLOWER_LOGGER.setLevel(level)
    absolute = tmp_path.resolve() / "runs" / "nested" / "ledger.db"
    assert ledger.path == absolute and absolute.is_file()
    assert (absolute.parent / "ledger.db.models").is_dir()
    assert f"Ledger: {absolute} (chain {chain_id})" in collect.messages
    monkeypatch.chdir(absolute.parent.parent)  # elsewhere: same ledger by its path
    with Ledger(absolute, create=False) as again:
        assert len(again) == 1 and again.verify().ok


@pytest.mark.parametrize("below", ["ledger.db", "sub/dir/ledger.db"])
def test_a_ledger_folder_that_is_a_file_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: str
) -> None:
    (tmp_path / "runs").write_text("a regular file, not a folder")
    monkeypatch.chdir(tmp_path)
    path = tmp_path.resolve() / "runs" / below
    with pytest.raises(OSError) as caught:
        Ledger(Path("runs") / below)
    message = str(caught.value)
    assert f"for the ledger {path}" in message
    assert f"{tmp_path.resolve() / 'runs'} is a file" in message
    assert "not a flchain ledger" not in message
    assert (tmp_path / "runs").read_text() == "a regular file, not a folder"


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders anyway"
)
def test_a_read_only_folder_is_reported_as_not_writable(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            Ledger(folder / "ledger.db")
        assert not (folder / "ledger.db").exists()
    finally:
        folder.chmod(0o755)


def test_signing_key_is_created_beside_the_ledger_with_private_permissions(
    tmp_path: Path,
) -> None:
    with Ledger(tmp_path / "k.db") as ledger:
        ledger.append(
            model={"w": np.zeros(2, np.float32)},
            model_version=0,
            base_version=0,
            config_digest="x",
        )
    key_file = tmp_path / "k.db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    with Ledger(tmp_path / "k.db") as again:  # same key reloaded
        again.append(
            model={"w": np.ones(2, np.float32)},
            model_version=1,
            base_version=0,
            config_digest="x",
        )
        assert again.verify().ok


# --------------------------------------------------------------- encodings
def test_canonical_json_is_strict() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(NotCanonical):
        parse_canonical(b'{"b":1, "a":2}')
    with pytest.raises(NotCanonical):
        parse_canonical(b"\xff")
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def _reply(w: np.ndarray, n: int = 5) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w)}),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )


def test_update_digest_is_stable_and_covers_everything_received() -> None:
    w = np.arange(6, dtype=np.float32)
    base = update_digest(_reply(w))
    assert update_digest(_reply(w.copy())) == base
    assert update_digest(_reply(w + np.float32(1e-7))) != base
    assert update_digest(_reply(w, n=6)) != base
    assert update_digest(_reply(w.astype(np.float64))) != base
    tagged = _reply(w)
    tagged["flchain"] = ConfigRecord({"update-kind": "delta"})
    assert update_digest(tagged) != base


def test_model_blobs_round_trip_and_are_named_by_their_hash(ledger: Ledger) -> None:
    head = ledger.head()
    assert head is not None
    model = ledger.load_model(head)
    assert model_hash(model) == head.header["model_hash"]
    blob = ledger.blobs.get(head.header["model_hash"])
    decoded = decode_model(blob)
    assert decoded.keys() == model.keys()
    np.testing.assert_array_equal(decoded["w"], model["w"])
    assert decoded["b"].dtype == np.int64
    with pytest.raises(ValueError):
        decode_model(blob + b"x")
    with pytest.raises(ValueError):
        decode_model(blob[:-1])


# ------------------------------------------------------------------ proofs
def test_every_included_update_has_a_valid_inclusion_proof(ledger: Ledger) -> None:
    count = 0
    for block in ledger.blocks():
        for update in block.body["included"]:
            proof = json.loads(json.dumps(ledger.prove_update(update["digest"])))
            assert f"is in block {block.height}" in check_proof(
                proof, trusted_key=TRUSTED
            )
            count += 1
    assert count == sum(h % 4 for h in range(6))


def test_consistency_proofs_for_every_pair_of_sizes(ledger: Ledger) -> None:
    for prior in range(1, 7):
        for later in range(prior, 7):
            proof = ledger.prove_consistency(prior, later)
            assert "extends" in check_proof(
                proof, checkpoint=checkpoint_at(ledger, later)
            )
    with pytest.raises(LedgerError):
        ledger.prove_consistency(0)
    with pytest.raises(LedgerError):
        ledger.prove_consistency(3, 9)


def test_forged_proofs_are_invalid(ledger: Ledger) -> None:
    proof = ledger.prove_update(digest_of(500))
    forged = json.loads(json.dumps(proof))
    forged["update"]["leaf"] = digest_of(12345)
    with pytest.raises(InvalidProof):
        check_proof(forged, trusted_key=TRUSTED)
    forged = json.loads(json.dumps(proof))
    forged["header"] = forged["header"].replace('"height":5', '"height":4')
    with pytest.raises(InvalidProof):
        check_proof(forged, trusted_key=TRUSTED)
    forged = json.loads(json.dumps(proof))
    forged["block"]["proof"]["path"][1] = "00" * 32
    with pytest.raises(InvalidProof):
        check_proof(forged, trusted_key=TRUSTED)
    consistency = ledger.prove_consistency(2, 6)
    consistency["prior_root"] = "11" * 32
    with pytest.raises(InvalidProof):
        check_proof(consistency, trusted_key=TRUSTED)
    with pytest.raises(InvalidProof):
        check_proof({"type": "inclusion-of-nothing"}, trusted_key=TRUSTED)
    with pytest.raises(LedgerError, match="is not in any block"):
        ledger.prove_update(digest_of(424242))


def test_truncation_is_caught_by_a_consistency_check_against_a_published_root(
    ledger: Ledger,
) -> None:
    published = ledger.prove_consistency(6)["later_root"]
    tamper(ledger, "DELETE FROM blocks WHERE height = 5")
    assert ledger.verify().ok  # a prefix of a chain is a valid chain ...
    with pytest.raises(LedgerError):  # ... but it cannot prove it extends the root
        ledger.prove_consistency(6)
    assert ledger.prove_consistency(5)["later_root"] != published


# ------------------------------------------------------------------- votes
def test_forged_and_altered_votes_are_detected(ledger: Ledger) -> None:
    block = ledger.block(3)
    body = block.body
    intruder = SigningKey(b"\x09" * 32)
    forged = sign_vote(
        intruder,
        VoteContext("test-chain", 3),
        body["included"][0]["digest"],
        True,
        0.9,
    )
    forged["verifier"] = body["votes"][0]["verifier"]  # claims to be a real verifier
    body["votes"][0] = forged
    _rewrite_body(ledger, 3, body)
    report = ledger.verify()
    assert not report.ok and report.bad_height == 3


def test_a_vote_replayed_into_another_block_is_invalid(ledger: Ledger) -> None:
    vote = ledger.block(1).body["votes"][0]
    body = ledger.block(5).body
    body["votes"].append(vote)  # signed for height 1, not 5
    _rewrite_body(ledger, 5, body)
    report = ledger.verify()
    assert report.bad_height == 5


def _rewrite_body(ledger: Ledger, height: int, body: dict[str, object]) -> None:
    """A careful forger: re-canonicalises the body (but cannot re-sign the header)."""
    tamper(
        ledger,
        "UPDATE blocks SET body = ? WHERE height = ?",
        canonical_json(body),
        height,
    )


# -------------------------------------------------------- tamper evidence
@pytest.mark.parametrize("column", ["hash", "header", "body", "signature"])
def test_a_flipped_byte_in_any_stored_field_is_named(
    ledger: Ledger, column: str
) -> None:
    raw = ledger.db.execute(f"SELECT {column} FROM blocks WHERE height = 2").fetchone()[
        0
    ]
    data = bytearray(raw if isinstance(raw, bytes) else raw.encode())
    data[len(data) // 2] ^= 0x01
    value = bytes(data) if isinstance(raw, bytes) else data.decode(errors="replace")
    tamper(ledger, f"UPDATE blocks SET {column} = ? WHERE height = 2", value)
    report = ledger.verify()
    assert not report.ok and report.bad_height == 2, report
    assert str(report).startswith("FAILED at block 2:")


def test_deleted_block_is_named(ledger: Ledger) -> None:
    tamper(ledger, "DELETE FROM blocks WHERE height = 3")
    report = ledger.verify()
    assert report.bad_height == 4 and "block 3 is missing" in report.reason


def test_reordered_blocks_are_caught(ledger: Ledger) -> None:
    rows = ledger.db.execute(
        "SELECT height, hash, header, body, signature FROM blocks "
        "WHERE height IN (2, 3)"
    ).fetchall()
    for (h, *_), (_, *content) in zip(rows, reversed(rows), strict=True):
        tamper(
            ledger,
            "UPDATE blocks SET hash=?, header=?, body=?, signature=? WHERE height=?",
            *content,
            h,
        )
    report = ledger.verify()
    assert report.bad_height == 2 and "height" in report.reason


def test_swapped_model_blob_is_caught(ledger: Ledger) -> None:
    target = ledger.block(4).header["model_hash"]
    other = ledger.block(1).header["model_hash"]
    ledger.blobs.path_of(target).write_bytes(ledger.blobs.get(other))
    report = ledger.verify()
    assert report.bad_height == 4 and "does not hash to its name" in report.reason
    assert ledger.verify(check_models=False).ok


def test_missing_model_blob_is_caught(ledger: Ledger) -> None:
    ledger.blobs.path_of(ledger.block(5).header["model_hash"]).unlink()
    report = ledger.verify()
    assert report.bad_height == 5 and "missing" in report.reason


def test_signature_from_another_block_is_caught(ledger: Ledger) -> None:
    other = ledger.block(1).signature
    tamper(ledger, "UPDATE blocks SET signature = ? WHERE height = 4", other)
    report = ledger.verify()
    assert report.bad_height == 4 and report.reason == "leader signature is invalid"


def test_a_chain_re_signed_by_another_leader_is_caught(ledger: Ledger) -> None:
    tamper(ledger, "UPDATE meta SET value = ? WHERE key = 'leader_key'", "ab" * 32)
    assert ledger.verify().reason == "signed by an unexpected leader"
    trusted = ledger.block(0).header["leader"]
    assert ledger.verify(trusted_key=trusted).ok


def test_fuzz_random_bit_flips_in_stored_fields_are_always_caught(
    tmp_path: Path,
) -> None:
    rng = random.Random(1234)
    reference = build_ledger(tmp_path / "ref.db", blocks=6)
    rows = reference.db.execute(
        "SELECT height, hash, header, body, signature FROM blocks"
    ).fetchall()
    reference.close()
    columns = ["hash", "header", "body", "signature"]
    for trial in range(300):
        path = tmp_path / f"fuzz{trial % 3}.db"
        ledger = build_ledger(path, blocks=6) if trial < 3 else Ledger(path)
        height = rng.randrange(6)
        col = rng.randrange(4)
        original = rows[height][col + 1]
        data = bytearray(original if isinstance(original, bytes) else original.encode())
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        value = (
            bytes(data)
            if isinstance(original, bytes)
            else data.decode(errors="replace")
        )
        tamper(
            ledger,
            f"UPDATE blocks SET {columns[col]} = ? WHERE height = ?",
            value,
            height,
        )
        report = ledger.verify()
        assert not report.ok and report.bad_height == height, (
            trial,
            columns[col],
            pos,
            report,
        )
        tamper(
            ledger,
            f"UPDATE blocks SET {columns[col]} = ? WHERE height = ?",
            original,
            height,
        )  # restore for the next trial
        assert ledger.verify().ok
        ledger.close()


# Regressions found in review -------------------------------------------------
def test_a_proof_of_the_wrong_kind_cannot_stand_in(ledger: Ledger) -> None:
    proof = ledger.prove_update(digest_of(500))
    swapped = json.loads(json.dumps(proof))
    swapped["update"] = {
        **ledger.prove_consistency(1, 1),
        "leaf": "f" * 64,
        "root": proof["update"]["root"],
    }
    with pytest.raises(InvalidProof, match="expected an inclusion proof"):
        check_proof(swapped, trusted_key=TRUSTED)
    resized = json.loads(json.dumps(proof))
    resized["block"]["size"] = 999
    with pytest.raises(InvalidProof):
        check_proof(resized, trusted_key=TRUSTED)


def test_a_missing_leader_key_is_a_failure_not_a_free_pass(ledger: Ledger) -> None:
    tamper(ledger, "DELETE FROM meta WHERE key = 'leader_key'")
    report = ledger.verify()
    assert not report.ok and "leader key is missing" in report.reason
    assert ledger.verify(trusted_key=ledger.block(0).header["leader"]).ok


def test_verify_survives_a_corrupt_height_column(ledger: Ledger) -> None:
    with sqlite3.connect(ledger.path) as db:  # a forger rebuilds the table untyped
        db.executescript(
            "ALTER TABLE blocks RENAME TO old;"
            "CREATE TABLE blocks (height, hash, header, body, signature);"
            "INSERT INTO blocks SELECT * FROM old; DROP TABLE old;"
            "UPDATE blocks SET height = 'x' WHERE height = 5;"
        )
    report = ledger.verify()
    assert not report.ok and report.bad_height is None


def test_update_digest_is_total() -> None:
    content = _reply(np.arange(3, dtype=np.float32))
    content["metrics"]["loss"] = float("nan")
    content["cfg"] = ConfigRecord({"note": "\udcff", "inf": float("inf")})
    first = update_digest(content)
    content["metrics"]["loss"] = float("inf")
    assert update_digest(content) != first

"""Test vectors of ledger format 2: a block, a format-2 vote on it, a checkpoint,
a committee member's statements and a trainer's signature over a reply.

``python -m tests.vectors`` (from the repository root) rewrites
``tests/data/test-vectors.json`` from the code; ``tests/test_vectors.py``
checks that the code still produces exactly that file, and that the file holds
together on its own (hashes, signatures, RFC 8785 bytes) without the ledger's
code. docs/test-vectors.md explains each field.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger, VoteContext, sign_vote
from flchain_flwr.ledger.canonical import sha256_hex
from flchain_flwr.ledger.consensus import rule_digest
from flchain_flwr.ledger.notes import SignerKey
from flchain_flwr.ledger.statements import (
    header_statement,
    trainer_statement,
    view_change_statement,
)
from flchain_flwr.ledger.votes import vote_payload

VECTORS = Path(__file__).parent / "data" / "test-vectors.json"
LEADER_SEED = bytes([1]) * 32
VERIFIER_SEED = bytes([2]) * 32
TRAINER_SEED = bytes([3]) * 32
CHAIN_ID = "test-vectors"
UPDATE = "ab" * 32
RULE = {"metric": "accuracy", "mode": "absolute", "value": 0.5}
"""A judging rule; a vote signs its digest."""


def make_vectors() -> dict[str, Any]:
    """Build a two-block format-2 ledger from fixed seeds; describe it."""
    leader = SigningKey(LEADER_SEED)
    verifier = SigningKey(VERIFIER_SEED)
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(
            Path(folder) / "v.db", chain_id=CHAIN_ID, signing_key=leader, create=True
        )
        genesis = ledger.append(
            model={"w": np.zeros(2, np.float32)},
            model_version=0,
            base_version=0,
            config_digest=ledger.config_digest({"server_lr": 1.0}),
            config={"server_lr": 1.0},
        )
        context = VoteContext(
            CHAIN_ID,
            1,
            prev_hash=genesis.hash,
            parent_model=str(genesis.header["model_hash"]),
            rule=rule_digest(RULE),
        )
        vote = sign_vote(verifier, context, UPDATE, True, 0.5, 0.25)
        block = ledger.append(
            model={"w": np.array([0.5, -1.25], np.float32)},
            model_version=1,
            base_version=0,
            config_digest=ledger.config_digest({"server_lr": 1.0}),
            included=[
                {
                    "node_id": 12345678901234567890,
                    "digest": UPDATE,
                    "staleness": 0,
                    "weight": 1.0,
                    "num_examples": 1e20,  # a double RFC 8785 writes as digits
                }
            ],
            contributions=[
                {
                    "node_id": 12345678901234567890,
                    "data_share": 1.0,
                    "relevance": 0.75,
                    "score": 0.75,
                }
            ],
            sim_time=2.5,
        )
        checkpoint = ledger.checkpoint_path.read_text(encoding="utf-8")
        hashes = ledger.block_hashes()
        origin = ledger.origin
        ledger.close()
    payload = vote_payload(context, UPDATE, True, 0.5, 0.25)
    header_sig = header_statement(CHAIN_ID, 1, 0, block.hash, True)
    view_change = view_change_statement(CHAIN_ID, 1, 0, genesis.hash)
    trainer = SigningKey(TRAINER_SEED)
    trained = trainer_statement(
        12345678901234567890, UPDATE, str(genesis.header["model_hash"])
    )
    return {
        "keys": {
            "leader_seed_hex": LEADER_SEED.hex(),
            "leader_public_hex": leader.verify_key.encode().hex(),
            "verifier_seed_hex": VERIFIER_SEED.hex(),
            "verifier_public_hex": verifier.verify_key.encode().hex(),
            "trainer_seed_hex": TRAINER_SEED.hex(),
            "trainer_public_hex": trainer.verify_key.encode().hex(),
            "checkpoint_vkey": SignerKey(origin, leader).verifier.encode(),
        },
        "block": {
            "height": block.height,
            "header_tag": "flchain-block-header/1\n",
            "body_tag": "flchain-block-body/1\n",
            "header": block.header_bytes.decode("utf-8"),
            "body": block.body_bytes.decode("utf-8"),
            "body_hash": block.header["body_hash"],
            "hash": block.hash,
            "signature_hex": block.signature,
            "prev_hash": block.header["prev_hash"],
        },
        "vote": {
            "rule": RULE,
            "stored": vote,
            "payload": payload.decode("utf-8"),
            "payload_sha256": sha256_hex(payload),
            "signature_hex": vote["signature"],
            "tag": payload[: payload.index(b"\n") + 1].decode("utf-8"),
        },
        "checkpoint": {
            "origin": origin,
            "block_hashes": hashes,
            "note": checkpoint,
        },
        "header_signature": {
            "statement": header_sig.decode("utf-8"),
            "signature_hex": verifier.sign(header_sig).signature.hex(),
        },
        "view_change": {
            "statement": view_change.decode("utf-8"),
            "signature_hex": verifier.sign(view_change).signature.hex(),
        },
        "trainer_signature": {
            "statement": trained.decode("utf-8"),
            "signature_hex": trainer.sign(trained).signature.hex(),
        },
    }


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(make_vectors(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {VECTORS}")

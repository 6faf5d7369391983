"""Build small ledgers for tests."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from nacl.signing import SignedMessage, SigningKey, VerifyKey

from flchain_flwr.cli import main
from flchain_flwr.ledger import Block, Ledger, VoteContext, sign_vote
from flchain_flwr.ledger.canonical import BODY_TAG, HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.checkpoint import ledger_checkpoint, sign_checkpoint
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.notes import SignerKey
from flchain_flwr.ledger.statements import header_statement

LEADER_KEY = SigningKey(b"\x01" * 32)
"""The key :func:`build_ledger` signs with."""
TRUSTED = LEADER_KEY.verify_key.encode().hex()
"""Its public key, in hex: what a verifier gets out of band."""


def digest_of(i: int) -> str:
    return f"{i:064x}"


def flchain(*argv: str) -> tuple[int, str]:
    """The CLI, run in this process: its exit code and its standard output."""
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def init_main(folder: Path) -> tuple[Path, str, str]:
    """``flchain witness init`` of ``folder/w``, then ``flchain main init`` of
    ``folder/main.db`` (key ``folder/main.key``) with that witness as its
    quorum of one: the main chain's path, its vkey and the witness's."""
    code, witness = flchain("witness", "init", str(folder / "w"), "--name", "w.x")
    assert code == 0
    path = folder / "main.db"
    code, main_key = flchain(
        "main", "init", str(path), "--chain-id", "main", "--key",
        str(folder / "main.key"), "--witness", witness.strip(), "--quorum", "1",
    )  # fmt: skip
    assert code == 0
    return path, main_key.strip(), witness.strip()


def build_ledger(
    path: Path, blocks: int = 5, *, with_votes: bool = True, format_version: int = 2
) -> Ledger:
    """A ledger with a genesis block and ``blocks - 1`` aggregation blocks."""
    ledger = Ledger(
        path,
        chain_id="test-chain",
        signing_key=LEADER_KEY,
        format_version=format_version,
    )
    verifiers = [SigningKey(bytes([i + 2]) * 32) for i in range(3)]
    rng = np.random.default_rng(0)
    for height in range(blocks):
        model: dict[str, np.ndarray[Any, Any]] = {
            "w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": np.full(2, height, np.int64),
        }
        included: list[dict[str, Any]] = [
            {
                "node_id": 10 + k,
                "digest": digest_of(100 * height + k),
                "staleness": k,
                "weight": 1.0 / (1 + k),
                "num_examples": 5 + k,
            }
            for k in range(height % 4)
        ]
        votes = []
        if with_votes and included:
            votes = [
                sign_vote(
                    v,
                    VoteContext("test-chain", height),
                    included[0]["digest"],
                    True,
                    0.9,
                )
                for v in verifiers
            ]
        ledger.append(
            model=model,
            model_version=height,
            base_version=max(0, height - 1),
            config_digest="c" * 64,
            included=included,
            rejected=[
                {"node_id": 99, "digest": digest_of(7), "reason": "holds NaN or Inf"}
            ]
            if height == 2
            else [],
            votes=votes,
            contributions=[
                {
                    "node_id": u["node_id"],
                    "data_share": 0.5,
                    "relevance": 0.5,
                    "score": 0.25,
                }
                for u in included
            ],
            sim_time=float(height),
            wall_time=1_000.0 + height,
        )
    return ledger


Edit = Callable[[dict[str, Any], dict[str, Any]], None]
"""A change to a block's parsed header and body, in place."""


def resign_block(ledger: Ledger, height: int, edit: Edit) -> None:
    """Apply ``edit`` to block ``height``'s header and body, then re-hash,
    re-link and re-sign it and the blocks after it with :data:`LEADER_KEY`
    (format 2): what the signer, or anyone holding its key, can write. The
    Merkle root follows the included digests while they can be read."""
    rows = ledger.db.execute(
        "SELECT height, header, body FROM blocks WHERE height >= ? ORDER BY height",
        (height,),
    ).fetchall()
    prev = ledger.block(height - 1).hash if height else "0" * 64
    for h, header_raw, body_raw in rows:
        header, body = json.loads(header_raw), json.loads(body_raw)
        if h == height:
            edit(header, body)
        body_bytes = encode(2, body)
        header["prev_hash"] = prev
        header["body_hash"] = sha256_hex(BODY_TAG, body_bytes)
        # no readable included digests: the old root stays
        with contextlib.suppress(KeyError, TypeError, ValueError):
            header["updates_root"] = merkle_root(
                [u["digest"] for u in body["included"]]
            )
        header_bytes = encode(2, header)
        prev = sha256_hex(HEADER_TAG, header_bytes)
        signature = LEADER_KEY.sign(HEADER_TAG + header_bytes).signature.hex()
        ledger.db.execute(
            "UPDATE blocks SET header = ?, body = ?, hash = ?, signature = ? "
            "WHERE height = ?",
            (header_bytes, body_bytes, prev, signature, h),
        )


def checkpoint_at(ledger: Ledger, size: int, key: SigningKey = LEADER_KEY) -> bytes:
    """A checkpoint of the ledger's first ``size`` blocks, signed by ``key``."""
    checkpoint = ledger_checkpoint(ledger.origin, ledger.block_hashes(), size)
    return sign_checkpoint(checkpoint, [SignerKey(ledger.origin, key)]).encode()


class KeyQuorum:
    """A leader key and committee keys that sign any header they are given,
    with no checks: what someone holding these keys can write (a
    :class:`~flchain_flwr.ledger.quorum.HeaderCosigner`)."""

    def __init__(
        self,
        leader: SigningKey,
        members: list[SigningKey],
        view: int = 0,
        replayed: bool = False,
    ) -> None:
        self.leader, self.members = leader, members
        self.view, self.replayed = view, replayed

    @property
    def verify_key(self) -> VerifyKey:
        return self.leader.verify_key

    def sign(self, smessage: bytes) -> SignedMessage:
        return self.leader.sign(smessage)

    def cosign(self, ledger: Ledger, block: Block) -> list[dict[str, Any]]:
        statement = header_statement(
            ledger.chain_id, block.height, self.view, block.hash, self.replayed
        )
        return [
            {
                "verifier": key.verify_key.encode().hex(),
                "replayed": self.replayed,
                "signature": key.sign(statement).signature.hex(),
            }
            for key in self.members
        ]

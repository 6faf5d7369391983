"""Offline check of a proof that an anchor block is in a main chain.

:meth:`~flchain_flwr.ledger.mainchain.MainChain.prove_anchor` writes::

    {"type": "anchor-in-main", "main_chain": <chain id>,
     "genesis": <genesis record>, "genesis_inclusion": <inclusion proof>,
     "block": <anchor record>, "inclusion": <inclusion proof>,
     "checkpoint": <the main chain's signed checkpoint>}

Who can forge what: holding only the main chain's public key, a checker
accepts the proof only if that key signed the checkpoint, both records are
leaves of its log (so the key vouches for the policy at genesis and for the
anchor block), the subchain key signed the anchored checkpoint and a quorum
of the policy's witnesses cosigned it. Forging an accepted proof for a
checkpoint the witnesses never cosigned needs ``quorum`` witness keys; one
whose policy is not the genesis's needs the main chain's key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .anchorblock import (
    AnchorBlock,
    AnchorCheck,
    AnchorError,
    AnchorPolicy,
    block_hash,
    check_anchor,
    parse_block,
)
from .checkpoint import CheckpointError, ledger_origin, open_checkpoint
from .merkle import InvalidProof, MalformedProof, proof_field, verify_proof
from .notes import NoteError, VerifierKey


@dataclass(frozen=True)
class AnchorProof:
    """What a valid anchor proof establishes."""

    block: AnchorBlock
    policy: AnchorPolicy
    check: AnchorCheck
    main_size: int

    def __str__(self) -> str:
        return (
            f"anchor block {self.block.height} of main chain "
            f"{self.block.fields['chain_id']} (in its signed {self.main_size}-block "
            f"checkpoint): {self.check}; policy {self.policy.quorum} of "
            f"{len(self.policy.witnesses)} witnesses"
        )


def check_anchor_proof(
    proof: Mapping[str, Any],
    main_key: VerifierKey,
    log_key: VerifierKey | None = None,
) -> AnchorProof:
    """Check an ``anchor-in-main`` proof offline.

    Parameters
    ----------
    proof : Mapping
        The proof (parsed JSON).
    main_key : VerifierKey
        The main chain's checkpoint key, got out of band (its name is the main
        chain's origin).
    log_key : VerifierKey, optional
        The subchain key you trust (by default the one the block names).

    Raises
    ------
    MalformedProof
        If it is not an anchor proof at all (a field missing or mistyped).
    AnchorError
        If it does not hold; the message says what.
    """
    try:
        if proof_field(proof, "type", str) != "anchor-in-main":
            raise AnchorError("not an anchor-in-main proof")
        note = proof_field(proof, "checkpoint", str)
        main, _ = open_checkpoint(note, [main_key])
        records = []
        for record_name, inclusion_name, index in (
            ("genesis", "genesis_inclusion", 0),
            ("block", "inclusion", None),
        ):
            record = proof_field(proof, record_name, str).encode("utf-8")
            inclusion = proof_field(proof, inclusion_name, dict)
            verify_proof(inclusion, "inclusion")
            block = parse_block(record)
            if inclusion["leaf"] != block_hash(record):
                raise AnchorError(
                    f"the {record_name} inclusion proof is of another leaf"
                )
            if inclusion["index"] != (block.height if index is None else index):
                raise AnchorError(f"the {record_name} is not at its height")
            if (inclusion["size"], inclusion["root"]) != (main.size, main.root.hex()):
                raise AnchorError(
                    f"the {record_name} inclusion proof is not of the checkpoint's log"
                )
            if ledger_origin(str(block.fields["chain_id"])) != main_key.name:
                raise AnchorError(f"the {record_name} is of another main chain")
            records.append(block)
    except (NoteError, CheckpointError) as exc:
        raise AnchorError(f"main-chain checkpoint: {exc}") from None
    except MalformedProof:  # not a proof at all: the caller's bad input
        raise
    except InvalidProof as exc:
        raise AnchorError(f"inclusion proof: {exc}") from None
    genesis, block = records
    if genesis.kind != "genesis":
        raise AnchorError("the record at height 0 is not a genesis block")
    policy = AnchorPolicy.from_json(genesis.fields["policy"])
    return AnchorProof(block, policy, check_anchor(block, policy, log_key), main.size)

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
whose policy is not the genesis's needs the main chain's key. The main
checkpoint's own cosignatures by policy witnesses are checked too
(:attr:`AnchorProof.main_witnessing`; a forged line fails the proof); whether
they must make a quorum, and how recent, is the caller's demand
(:meth:`~.mainwitness.MainWitnessing.require`): with it, a proof from a forked
or truncated main chain also needs ``quorum`` witness keys.
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
from .checkpoint import (
    CheckpointError,
    ledger_origin,
    open_checkpoint,
    parse_checkpoint,
)
from .mainchain import MainChain
from .maindb import MainChainError
from .mainwitness import MainWitnessing, main_witnessing
from .merkle import (
    InvalidProof,
    MalformedProof,
    inclusion_proof,
    proof_field,
    verify_proof,
)
from .notes import NoteError, SignedNote, VerifierKey, parse_note, read_note


@dataclass(frozen=True)
class AnchorProof:
    """What a valid anchor proof establishes."""

    block: AnchorBlock
    policy: AnchorPolicy
    check: AnchorCheck
    main_size: int
    main_witnessing: MainWitnessing
    """The policy witnesses' cosignatures on the main checkpoint itself
    (:meth:`MainWitnessing.require` says whether they make a quorum)."""

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
    check = check_anchor(block, policy, log_key)
    witnessing = main_witnessing(parse_note(note), policy)
    return AnchorProof(block, policy, check, main.size, witnessing)


def prove_anchor(
    main: MainChain, height: int, note: SignedNote | None = None
) -> dict[str, Any]:
    """A self-contained proof that block ``height`` is in ``main``.

    It holds the genesis record (the policy) and the anchor record, each with
    an inclusion proof in the log of the checkpoint's size, and the main
    chain's signed checkpoint: ``note``, else the one on file (with its
    witness cosignatures) if it covers the block, else a fresh one if the key
    is held. Check it offline with :func:`check_anchor_proof`.
    """
    if note is None:
        note = _stored_checkpoint(main, height)
    if note is None:
        note = main.signed_checkpoint()
    size = parse_checkpoint(note.text).size
    hashes = main.block_hashes()[:size]
    if not 0 < height < size:
        raise MainChainError(
            f"block {height} is not an anchor block in the checkpoint's {size} blocks"
        )
    return {
        "type": "anchor-in-main",
        "main_chain": main.chain_id,
        "genesis": main.block(0).record.decode("utf-8"),
        "genesis_inclusion": inclusion_proof(hashes, 0),
        "block": main.block(height).record.decode("utf-8"),
        "inclusion": inclusion_proof(hashes, height),
        "checkpoint": str(note),
    }


def _stored_checkpoint(main: MainChain, height: int) -> SignedNote | None:
    """The main checkpoint on file if it is the main key's and covers
    ``height``; else ``None`` if the key is held to sign a fresh one."""
    try:
        note = read_note(main.checkpoint_path)
        checkpoint, _ = open_checkpoint(note, [main.public_key])
        if height < checkpoint.size:
            return note
    except (OSError, NoteError, CheckpointError):
        pass
    if main.has_key:
        return None
    raise MainChainError(
        f"the main checkpoint on file {main.checkpoint_path} does not cover "
        f"block {height}, and signing a fresh one needs the main chain's key"
    )

"""Making proofs from a ledger: an update is in a block and the block in
the log (:func:`prove_update`), or the log at one size is a prefix of a later
one (:func:`prove_consistency`). :mod:`.proofcheck` checks them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .blocks import LedgerError
from .canonical import is_hex
from .checkpoint import parse_checkpoint
from .merkle import consistency_proof, inclusion_proof
from .notes import read_note
from .proof_quorum import quorum_proof_part

if TYPE_CHECKING:
    from .chain import Ledger


def prove_update(
    ledger: Ledger, digest: str, size: int | None = None
) -> dict[str, Any]:
    """Proof that an update is in a block, and that the block is in the log.

    Self-contained: the block header (whose hash the checker recomputes and
    whose ``updates_root`` anchors the update proof) and its signature, an
    inclusion proof of the block hash in the Merkle log of the block
    hashes, and the signed checkpoint of that log (the one at
    ``checkpoint_path``, when it covers the block; the log is then of its
    size, else of every block and there is no checkpoint). ``size`` asks
    for the log of the first ``size`` blocks instead (to check against a
    checkpoint of that size one holds; the stored one is included if it
    has that size).
    """
    block, index = ledger.find_update(digest)
    leaves = [str(u["digest"]) for u in block.body["included"]]
    hashes = ledger.block_hashes()
    note, stored = _stored_checkpoint(ledger, len(hashes))
    if size is not None and not block.height < size <= len(hashes):
        raise LedgerError(
            f"block {block.height} is not in the first {size} blocks "
            f"(the ledger has {len(hashes)})"
        )
    if size is None:
        size = stored if stored > block.height else len(hashes)
    if stored != size:
        note = None
    _check_log_leaves(hashes[:size])
    proof = {
        "type": "update-in-block",
        "chain_id": ledger.chain_id,
        "height": block.height,
        "header": block.header_bytes.decode("utf-8"),
        "signature": block.signature,
        "update": inclusion_proof(leaves, index),
        "block": inclusion_proof(hashes[:size], block.height),
        **quorum_proof_part(ledger, block, hashes[:size]),
    }
    return proof if note is None else {**proof, "checkpoint": note}


def _stored_checkpoint(ledger: Ledger, blocks: int) -> tuple[str | None, int]:
    """The note text and size of the checkpoint at ``checkpoint_path`` if it
    is a checkpoint of at most ``blocks`` blocks, else ``(None, 0)`` (its
    signature and root are for the proof's checker to check)."""
    try:
        note = read_note(ledger.checkpoint_path)
        found = parse_checkpoint(note.text)
    except (OSError, ValueError):  # missing, not a file, unreadable, not one
        return None, 0
    text = note.encode().decode("utf-8")
    return (text, found.size) if found.size <= blocks else (None, 0)


def prove_consistency(
    ledger: Ledger, prior_size: int, later_size: int | None = None
) -> dict[str, Any]:
    """Proof that the ledger at ``prior_size`` blocks is a prefix of a later one."""
    hashes = ledger.block_hashes()
    later = len(hashes) if later_size is None else later_size
    _check_log_leaves(hashes[:later])
    try:
        proof = consistency_proof(hashes, prior_size, later)
    except ValueError as exc:
        raise LedgerError(str(exc)) from None
    note, size = _stored_checkpoint(ledger, len(hashes))
    if note is not None and size == later:
        return {"chain_id": ledger.chain_id, **proof, "checkpoint": note}
    return {"chain_id": ledger.chain_id, **proof}


def _check_log_leaves(hashes: Sequence[str]) -> None:
    """``LedgerError`` unless every block hash a proof is about to use is a
    SHA-256 hex digest (a damaged ledger may hold anything)."""
    for position, digest in enumerate(hashes):
        if not is_hex(digest, 64):
            raise LedgerError(
                f"block hash {position} (counting from 0, by height) is not "
                "a SHA-256 hex digest; run `flchain ledger verify`"
            )

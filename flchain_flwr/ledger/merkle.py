"""RFC 9162-style Merkle trees (pymerkle): roots and self-contained proofs.

Leaves are 32-byte digests (update digests inside a block, block hashes in the
chain's log). pymerkle hashes a leaf as ``sha256(0x00 || data)`` and a node as
``sha256(0x01 || left || right)``: leaf and node domains are separated, so a
node can never pass as a leaf (merkletools' second-preimage weakness).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymerkle import (
    ConsistencyProof,
    InclusionProof,
    InmemoryTree,
    InvalidProof,
    verify_consistency,
    verify_inclusion,
)

ALGORITHM = "sha256"

__all__ = [
    "InvalidProof",
    "consistency_proof",
    "inclusion_proof",
    "merkle_root",
    "verify_proof",
]


def _tree(leaves: Sequence[str]) -> InmemoryTree:
    tree = InmemoryTree(algorithm=ALGORITHM)
    for leaf in leaves:
        tree.append_entry(bytes.fromhex(leaf))
    return tree


def merkle_root(leaves: Sequence[str]) -> str:
    """Hex root over hex leaves, in order (the empty tree's root for none)."""
    return str(_tree(leaves).get_root().hex())


def inclusion_proof(leaves: Sequence[str], index: int) -> dict[str, Any]:
    """A self-contained proof that ``leaves[index]`` is in the tree of ``leaves``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    tree = _tree(leaves)
    return {
        "type": "inclusion",
        "leaf": leaves[index],
        "index": index,
        "size": len(leaves),
        "root": tree.get_root().hex(),
        "proof": tree.prove_inclusion(index + 1).serialize(),
    }


def consistency_proof(
    leaves: Sequence[str], prior_size: int, later_size: int
) -> dict[str, Any]:
    """A self-contained proof that the first ``prior_size`` leaves are a prefix."""
    if not 0 < prior_size <= later_size <= len(leaves):
        raise ValueError(
            f"need 0 < prior ({prior_size}) <= later ({later_size}) <= {len(leaves)}"
        )
    tree = _tree(leaves[:later_size])
    return {
        "type": "consistency",
        "prior_size": prior_size,
        "later_size": later_size,
        "prior_root": tree.get_root(prior_size).hex(),
        "later_root": tree.get_root().hex(),
        "proof": tree.prove_consistency(prior_size, later_size).serialize(),
    }


def verify_proof(proof: dict[str, Any], expected_type: str | None = None) -> None:
    """Check a proof made by this module, offline; raise ``InvalidProof`` if bad.

    ``expected_type`` (``"inclusion"`` or ``"consistency"``) refuses a proof of
    the other kind standing in for the one a caller needs.
    """
    try:
        kind = proof["type"]
        if expected_type is not None and kind != expected_type:
            raise InvalidProof(f"expected an {expected_type} proof, got {kind!r}")
        body = proof["proof"]
        meta = body["metadata"]
        if meta.get("algorithm") != ALGORITHM or meta.get("security") is not True:
            raise InvalidProof("proof must use sha256 with domain separation")
        if kind == "inclusion":
            if (meta["index"], meta["size"]) != (proof["index"] + 1, proof["size"]):
                raise InvalidProof("proof metadata does not match the claimed position")
            leaf_hash = _tree([proof["leaf"]]).get_leaf(1)
            verify_inclusion(
                leaf_hash,
                bytes.fromhex(proof["root"]),
                InclusionProof.deserialize(body),
                index=proof["index"] + 1,
                size=proof["size"],
            )
        elif kind == "consistency":
            if (meta["prior_size"], meta["size"]) != (
                proof["prior_size"],
                proof["later_size"],
            ):
                raise InvalidProof("proof metadata does not match the claimed sizes")
            verify_consistency(
                bytes.fromhex(proof["prior_root"]),
                bytes.fromhex(proof["later_root"]),
                ConsistencyProof.deserialize(body),
                prior_size=proof["prior_size"],
                later_size=proof["later_size"],
            )
        else:
            raise InvalidProof(f"unknown proof type {kind!r}")
    except InvalidProof:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InvalidProof(f"malformed proof: {exc!r}") from None

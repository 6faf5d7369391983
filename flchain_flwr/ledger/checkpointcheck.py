"""Checking a checkpoint against a ledger, and against a later checkpoint.

A checkpoint (:mod:`.checkpoint`) kept away from the ledger pins its first
``size`` blocks: :func:`check_against_ledger` finds a ledger cut short,
rewritten or forked below that size, and :func:`check_consistency` checks
with a consistency proof that one checkpoint's log extends another's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .checkpoint import EMPTY_ROOT, Checkpoint
from .merkle import InvalidProof, merkle_root, verify_proof


class CheckpointMismatch(Exception):
    """A well-formed checkpoint does not match a ledger or another checkpoint:
    the log was cut short, rewritten or forked."""


def check_against_ledger(
    checkpoint: Checkpoint,
    origin: str,
    block_hashes: Sequence[str],
    unit: str = "blocks",
) -> None:
    """Check that a ledger holds the log a checkpoint describes.

    Parameters
    ----------
    checkpoint : Checkpoint
        A checkpoint, already verified (:func:`~.checkpoint.open_checkpoint`).
    origin : str
        The ledger's origin.
    block_hashes : Sequence[str]
        The ledger's hex block hashes by height.
    unit : str (default: "blocks")
        What the ledger's log holds, as the errors name them (a trading
        chain's: ``"entries"``).

    Raises
    ------
    CheckpointMismatch
        If the origins differ, the ledger has fewer blocks than the checkpoint
        (cut short), or its first ``size`` blocks have another root
        (rewritten or forked).
    """
    if checkpoint.origin != origin:
        raise CheckpointMismatch(
            f"checkpoint is for {checkpoint.origin!r}, the ledger is {origin!r}"
        )
    if len(block_hashes) < checkpoint.size:
        raise CheckpointMismatch(removed(len(block_hashes), checkpoint.size, unit))
    actual = bytes.fromhex(merkle_root(list(block_hashes[: checkpoint.size])))
    if actual != checkpoint.root:
        raise CheckpointMismatch(
            rewritten(checkpoint.size, actual, checkpoint.root, unit)
        )


_SINGULAR = {"blocks": "block", "entries": "entry"}


def _count(number: int, unit: str) -> str:
    """``"1 block"``, ``"2 blocks"``: ``unit`` is the plural."""
    return f"{number} {_SINGULAR.get(unit, unit) if number == 1 else unit}"


def removed(held: int, size: int, unit: str = "blocks") -> str:
    """Why a ledger of ``held`` entries cannot hold a checkpoint of ``size``."""
    return (
        f"ledger has {_count(held, unit)}, the checkpoint {size}: {unit} were removed"
    )


def rewritten(size: int, actual: bytes, root: bytes, unit: str = "blocks") -> str:
    """Why a ledger whose first ``size`` entries have root ``actual`` does not
    hold a checkpoint of root ``root``."""
    return (
        f"the ledger's first {_count(size, unit)} {'has' if size == 1 else 'have'} "
        f"root {actual.hex()}, the "
        f"checkpoint {root.hex()}: {unit} were rewritten"
    )


def check_consistency(
    older: Checkpoint, newer: Checkpoint, proof: Mapping[str, Any] | None = None
) -> None:
    """Check that ``newer``'s log extends ``older``'s (append-only).

    Parameters
    ----------
    older, newer : Checkpoint
        Two checkpoints of one origin, ``older.size <= newer.size``.
    proof : Mapping[str, Any], optional
        A consistency proof from ``older.size`` to ``newer.size``
        (:func:`~flchain_flwr.ledger.merkle.consistency_proof`, or
        ``Ledger.prove_consistency``). Not needed when the older tree is empty
        or the sizes are equal.

    Raises
    ------
    CheckpointMismatch
        If the origins differ, ``older`` is larger, equal sizes have different
        roots, an empty tree has a root other than
        :data:`~.checkpoint.EMPTY_ROOT`, or the proof is missing, about other
        trees, or invalid.
    """
    if older.origin != newer.origin:
        raise CheckpointMismatch(
            f"checkpoints of different logs: {older.origin!r}, {newer.origin!r}"
        )
    if older.size > newer.size:
        raise CheckpointMismatch(
            f"the older checkpoint ({older.size}) is larger than the newer "
            f"({newer.size})"
        )
    for checkpoint in (older, newer):
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            raise CheckpointMismatch("an empty tree's root must be SHA-256('')")
    if older.size == newer.size:
        if older.root != newer.root:
            raise CheckpointMismatch(
                f"two different roots for size {older.size}: the log forked"
            )
        return
    if older.size == 0:
        return
    if proof is None:
        raise CheckpointMismatch(
            f"a consistency proof from size {older.size} to {newer.size} is needed"
        )
    claimed = (
        proof.get("type"),
        proof.get("prior_size"),
        proof.get("later_size"),
        proof.get("prior_root"),
        proof.get("later_root"),
    )
    expected = (
        "consistency",
        older.size,
        newer.size,
        older.root.hex(),
        newer.root.hex(),
    )
    if claimed != expected:
        raise CheckpointMismatch("the consistency proof is about other trees")
    try:
        verify_proof(dict(proof), "consistency")
    except InvalidProof as exc:
        raise CheckpointMismatch(
            f"size {newer.size} does not extend size {older.size}: {exc}"
        ) from None

"""Verification of a whole main chain (:meth:`MainChain.verify
<flchain_flwr.ledger.mainchain.MainChain.verify>`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .anchorblock import AnchorBlock, AnchorError, check_anchor
from .canonical import ZERO_HASH
from .checkpoint import Checkpoint, open_checkpoint
from .checkpointcheck import CheckpointMismatch, check_against_ledger, check_consistency
from .mainchain import MainChain
from .maindb import AnchorRefused, MainChainError
from .mainwitness import main_witnessing
from .notes import NoteError, SignedNote, read_note_or_error


@dataclass(frozen=True)
class MainVerified:
    """What :func:`verify_main_chain` checked: all of it (``statement``), the
    part that says who cosigned the checkpoint it checked (``witnessing``),
    and the blocks it checked (``blocks``), in height order."""

    statement: str
    witnessing: str
    blocks: list[AnchorBlock]


def verify_main_chain(
    main: MainChain,
    checkpoint: SignedNote | None = None,
    pinned: SignedNote | None = None,
    witnessed: WitnessRule | None = None,
) -> MainVerified:
    """Check every block and the signed checkpoint of ``main``; what was checked.

    The checkpoint on file only shows the chain is self-consistent: whoever
    can write the files may delete the latest blocks and put back an older
    checkpoint the key signed (every anchor proof carries one). ``pinned``, a
    main-chain checkpoint the verifier kept, closes that: the chain must
    hold it (as many blocks, the same root), so it was not rolled back below
    it or rewritten before it. ``witnessed`` demands a quorum of the policy's
    witnesses on the checkpoint (and with ``max_age`` that a quorum of them is
    recent): a fork or truncation of the main chain then needs the witnesses
    to cosign it, which they refuse (:mod:`.mainwitness`). The checkpoint
    on file is read before the blocks and checked against the blocks
    checked, so a main chain a live anchorer appends to is checked as one
    snapshot.

    Raises
    ------
    AnchorRefused
        Naming the first block or checkpoint that fails.
    """
    prev = ZERO_HASH
    last: dict[str, AnchorBlock] = {}
    count = 0
    # Before the blocks: a writer commits a block before writing its checkpoint.
    note: SignedNote | OSError | NoteError
    note = checkpoint or read_note_or_error(main.checkpoint_path)
    try:
        blocks = list(main.blocks())  # each row's columns checked against its record
    except MainChainError as exc:
        raise AnchorRefused(str(exc)) from None
    hashes = [block.hash for block in blocks]  # checked below, one query
    for block in blocks:
        where = f"main-chain block {block.height}"
        if block.height != count or block.fields["prev_hash"] != prev:
            raise AnchorRefused(f"{where}: height or prev_hash link broken")
        if block.fields["chain_id"] != main.chain_id:
            raise AnchorRefused(f"{where}: belongs to another main chain")
        if (block.kind == "genesis") != (count == 0):
            raise AnchorRefused(f"{where}: a {block.kind} block at that height")
        if block.kind == "anchor":
            try:
                found = check_anchor(block, main.policy)
            except AnchorError as exc:
                raise AnchorRefused(str(exc)) from None
            before = last.get(found.checkpoint.origin)
            if before is not None:
                if before.log_key != block.log_key:
                    raise AnchorRefused(f"{where}: the origin's key changed")
                try:
                    check_consistency(
                        before.checkpoint,
                        found.checkpoint,
                        block.fields.get("consistency"),
                    )
                except CheckpointMismatch as exc:
                    raise AnchorRefused(f"{where}: {exc}") from None
            last[found.checkpoint.origin] = block
        prev, count = block.hash, count + 1
    try:
        if isinstance(note, Exception):
            raise note
        signed, _ = open_checkpoint(note, [main.public_key])
        check_against_ledger(signed, main.origin, hashes)
    except (OSError, ValueError, CheckpointMismatch) as exc:
        raise AnchorRefused(f"main-chain checkpoint: {exc}") from None
    try:
        witnessing = main_witnessing(note, main.policy)
        cosigned = (
            witnessing.require(witnessed.max_age, witnessed.now)
            if witnessed is not None
            else witnessing.describe()
        )
    except AnchorError as exc:
        raise AnchorRefused(str(exc)) from None
    held = (
        "not pinned to a checkpoint kept elsewhere (a rollback to an older "
        "signed checkpoint is not detected)"
    )
    if pinned is not None:
        try:
            kept, _ = open_checkpoint(pinned, [main.public_key])
            check_against_ledger(kept, main.origin, hashes)
        except (ValueError, CheckpointMismatch) as exc:
            raise AnchorRefused(f"the pinned main-chain checkpoint: {exc}") from None
        held = f"it holds the pinned checkpoint of {kept.size} blocks"
    statement = (
        f"main chain {main.chain_id}: {count} blocks, {len(last)} origins, "
        f"every anchor signed by its subchain key and cosigned by "
        f"{main.policy.quorum} of {len(main.policy.witnesses)} policy "
        f"witnesses, each origin append-only; its checkpoint signed by "
        f"{main.public_key.encode()} covers {signed.size} blocks; {cosigned}; "
        f"{held}"
    )
    return MainVerified(statement, cosigned, blocks)


@dataclass(frozen=True)
class WitnessRule:
    """A verifier's demand on the main checkpoint: a quorum of the policy's
    witnesses, with ``max_age`` a quorum at most that many seconds older than
    ``now`` (POSIX seconds: the verifier's clock)."""

    max_age: float | None = None
    now: float | None = None


def check_against_previous(
    main: MainChain,
    block: AnchorBlock,
    checkpoint: Checkpoint,
    consistency: Mapping[str, Any] | None,
) -> None:
    """A new anchor's checkpoint against its origin's last anchor in ``main``:
    the same key, and consistent (``AnchorRefused`` saying which fails)."""
    last = main.last_anchor(checkpoint.origin)
    if last is None:
        return
    if last.log_key != block.log_key:
        raise AnchorRefused(
            f"{checkpoint.origin} was anchored with key {last.log_key}, not "
            f"{block.log_key}"
        )
    try:
        check_consistency(last.checkpoint, checkpoint, consistency)
    except CheckpointMismatch as exc:
        raise AnchorRefused(
            f"{checkpoint.origin} at size {checkpoint.size} contradicts its "
            f"anchor at main-chain height {last.height} (size "
            f"{last.checkpoint.size}): {exc}"
        ) from None

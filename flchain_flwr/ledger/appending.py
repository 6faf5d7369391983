"""Appending to a ledger: the checks before a block, its transaction, its checkpoint.

:meth:`~.chain.Ledger.append` (a new aggregation block) and
:meth:`~.chain.Ledger.append_block` (a block as it is) call these functions
with the ledger's :class:`~.checkpointwriter.CheckpointWriter` and
:class:`~.headcheck.HeadCheck`. Before anything is written, the checkpoint's
location is checked; a new block's model and the blobs its body names are
then stored (:mod:`.newblock`), so they are in place before its transaction
starts. The transaction (``BEGIN IMMEDIATE``: the one writer) reads the head,
checks it and that the blocks still hold the last checkpoint the ledger's key
signed, builds the block on it, has the committee sign its header when the
signer gathers their signatures, and inserts it; any failure rolls it back.
After the commit the pending-block record (:mod:`.pending`) and the
view-change record (:mod:`.viewchanges`) are removed and the checkpoint
written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from logging import WARNING
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import RecordDict
from flwr.supercore import log

from .blocks import (
    Block,
    BlockSigner,
    LedgerError,
    header_problem,
    ids_as_text,
    included_problem,
)
from .canonical import encode_round_trip
from .checkpoint import CheckpointError
from .checkpointwriter import CheckpointWriter
from .headcheck import HeadCheck
from .ledgerdb import insert_block, set_meta
from .newblock import BlockDraft, aggregation_body
from .pending import clear_pending
from .quorum import HeaderCosigner, store_signatures
from .serverstate import ServerState
from .viewchanges import clear_view_changes

if TYPE_CHECKING:
    from .chain import Ledger


# pylint: disable=too-many-arguments,too-many-locals
def append_aggregation(
    ledger: Ledger,
    checkpoints: CheckpointWriter,
    head_check: HeadCheck,
    *,
    model: Mapping[str, np.ndarray],
    model_version: int,
    base_version: int,
    config_digest: str,
    included: Sequence[Mapping[str, Any]],
    rejected: Sequence[Mapping[str, Any]],
    votes: Sequence[Mapping[str, Any]],
    contributions: Sequence[Mapping[str, Any]],
    sim_time: float,
    wall_time: float | None,
    extra: Mapping[str, Any] | None,
    signer: BlockSigner | None,
    config: Mapping[str, Any] | None,
    server_state: ServerState | None,
    payloads: Sequence[RecordDict] | None,
) -> Block:
    """Store the model and the body's blobs, then commit one signed block on
    the head (what :meth:`~.chain.Ledger.append` does; see there)."""
    fields = {
        "sim_time": sim_time,
        "model_version": model_version,
        "base_version": base_version,
        "config_digest": config_digest,
    }
    # what verify would refuse (node ids checked as format 2 stores them)
    problem = header_problem(fields) or included_problem(ids_as_text(included))
    if problem is not None:
        raise ValueError(f"the block would not verify: {problem}")
    if config is not None and ledger.config_digest(config) != config_digest:
        raise ValueError("config does not hash to config_digest")
    if payloads is not None and len(payloads) != len(included):
        raise ValueError(f"{len(payloads)} payloads for {len(included)} updates")
    origin = _checked_origin(ledger, checkpoints)
    model_hash = ledger.blobs.put_model(model)
    version = ledger.format_version
    body = aggregation_body(
        ledger.blobs,
        version,
        included=included,
        rejected=rejected,
        votes=votes,
        contributions=contributions,
        extra=extra,
        config=config,
        server_state=server_state,
        payloads=payloads,
    )
    draft = BlockDraft(
        version,
        ledger.chain_id,
        {**fields, "model_hash": model_hash},
        included,
        body,
        encode_round_trip(version, body),
        signer or ledger.signing_key,
        wall_time,
    )
    return _commit(ledger, checkpoints, head_check, draft.on, draft.key, origin)


def append_as_is(
    ledger: Ledger,
    checkpoints: CheckpointWriter,
    head_check: HeadCheck,
    block: Block,
    cosigner: BlockSigner,
) -> Block:
    """Commit ``block``'s exact bytes with ``cosigner``'s header signatures
    (what :meth:`~.chain.Ledger.append_block` does; see there)."""
    if not isinstance(cosigner, HeaderCosigner):
        raise TypeError("a block is appended as it is only with its committee")
    origin = _checked_origin(ledger, checkpoints)

    def make(head: Block | None) -> Block:
        if head is None or (block.height, block.header.get("prev_hash")) != (
            head.height + 1,
            head.hash,
        ):
            raise LedgerError(f"block {block.height} does not extend the head")
        return block

    return _commit(ledger, checkpoints, head_check, make, cosigner, origin)


def _checked_origin(ledger: Ledger, checkpoints: CheckpointWriter) -> str | None:
    """The ledger's checkpoint origin, its checkpoint's location checked; or
    ``None`` (a WARNING) for a ledger made before checkpoints whose chain id
    cannot be an origin: it gets none."""
    try:
        origin = ledger.origin
    except CheckpointError as exc:
        log(WARNING, "Ledger %s: no checkpoint written: %s", ledger.path, exc)
        return None
    checkpoints.check_location()
    return origin


# pylint: disable=too-many-arguments
def _commit(
    ledger: Ledger,
    checkpoints: CheckpointWriter,
    head_check: HeadCheck,
    make: Callable[[Block | None], Block],
    key: BlockSigner,
    origin: str | None,
) -> Block:
    """Commit the block ``make`` builds on the head, in one transaction,
    with its committee's signatures if ``key`` gathers them; then its
    checkpoint. A pending block recorded for the committee, and the view-change
    certificates recorded at its height, are cleared."""
    db = ledger.db
    db.execute("BEGIN IMMEDIATE")
    try:
        head = ledger.head()
        if head is not None:
            head_check.check(ledger, head, key)
        log_before = (
            None
            if origin is None
            else checkpoints.log_up_to(head, origin, ledger.block_hashes)
        )
        block = make(head)
        if isinstance(key, HeaderCosigner):  # the committee signs it too
            quorum = key.cosign(ledger, block)
            store_signatures(db, block.height, quorum)
            block = replace(block, quorum=quorum)
        if head is None:  # the publisher who opened the chain
            set_meta(db, "leader_key", str(block.header["leader"]))
        insert_block(db, block)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    clear_pending(ledger)
    clear_view_changes(ledger)
    if log_before is not None:
        checkpoints.write(block, log_before, ledger.origin)
    return block

"""Verifying a whole ledger: every block, then the anchors it was given
(a trusted key, a checkpoint), and the report saying what was checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .blockcheck import ChainRules, check_block
from .blocks import COMMITTEES
from .canonical import ZERO_HASH
from .checkpoint import ORIGIN_PREFIX, CheckpointError, open_checkpoint
from .checkpointcheck import CheckpointMismatch, check_against_ledger
from .keys import parse_trusted_key
from .ledgerdb import get_meta, rows
from .notes import NoteError, SignedNote, VerifierKey, read_note_or_error

if TYPE_CHECKING:
    from .chain import Ledger


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :meth:`Ledger.verify`: ``ok``, or the first bad block and why."""

    ok: bool
    blocks: int
    bad_height: int | None = None
    reason: str = ""
    leader: str = ""
    """The leader key every block was checked against (hex); on a PoV chain the
    publisher who signed the genesis block."""
    pov: bool = False
    """Whether the chain follows PoV rules (rotating, committee-signed blocks)."""
    head: str = ""
    """The last verified block's hash."""
    anchor: str = ""
    """What outside the ledger the chain was checked against ("" = nothing)."""
    committee_kind: str | None = None
    """A PoV genesis block's ``committee_kind`` (``None``: not recorded)."""
    headers: str = ""
    """How a PoV chain's headers were signed ("": not a PoV chain)."""
    equivocations: tuple[str, ...] = ()
    """Equivocation evidence the chain's blocks carry (each settled)."""
    models: bool = True
    """Whether the model, server-state and update payload blobs were hashed."""
    included: int = 0
    """Included updates in the blocks verified."""
    trainers: int = 0
    """Of those, the ones whose entry names a trainer key."""

    def __str__(self) -> str:
        if not self.ok:
            where = "ledger" if self.bad_height is None else f"block {self.bad_height}"
            return f"FAILED at {where}: {self.reason}"
        if self.pov:
            committees = COMMITTEES.get(
                str(self.committee_kind),
                "their PoV committees (the ledger does not record whether one "
                "process held their keys)",
            )
            line = (
                f"ok: {self.blocks} blocks verified, genesis signed by "
                f"{self.leader}, later blocks by {committees}"
            )
        else:
            signed = (
                f", signed by leader {self.leader}"
                if self.leader and self.blocks
                else ""
            )
            line = f"ok: {self.blocks} blocks verified{signed}"
        if self.pov and self.headers:
            line += f"\nheaders: {self.headers}"
        for finding in self.equivocations:
            line += f"\nequivocation: {finding}"
        if self.trainers:  # chains without trainer keys report as before
            line += (
                f"\ntrainers: {self.trainers} of {self.included} included updates "
                "name a trainer key, each node id keeping the first key included "
                "under it and no signed update included twice; their signatures "
                "are in the stored payloads, which only --replay checks"
            )
        if not self.models:
            line += "\nmodel blobs: not checked (--no-models)"
        head = f"head: block {self.blocks - 1}, hash {self.head}" if self.blocks else ""
        anchor = self.anchor or (
            "self-consistent; no trusted anchor given (anyone can write a ledger "
            "that passes these checks: give --trusted-key or --checkpoint)"
        )
        return "\n".join(filter(None, (line, head, f"anchor: {anchor}")))


def verify_ledger(
    ledger: Ledger,
    *,
    trusted_key: str | None = None,
    checkpoint: str | Path | None = None,
    check_models: bool = True,
) -> VerifyReport:
    """Check every block; report the first one that fails and why.

    Checks: canonical encodings, header hash, height sequence, chain id,
    previous-hash links, body hash, Merkle root of included updates, leader
    signature (against the genesis leader, or ``trusted_key``), every vote's
    signature, that no update digest is included twice in a block, nor a
    signed update's in the chain (:mod:`.included`), and contributions
    credit only included nodes, that a recorded ``config`` hashes to the
    header's ``config_digest``, that a ``server_state`` record is well
    formed, and (``check_models``) that each model blob, each server-state
    blob and each stored update payload hashes to its name. Blocks without
    the optional fields (older ledgers) are checked as before. An included
    update's ``trainer`` must be a hex key, and a node id's included updates
    keep the first trainer key included under it
    (:func:`~.trainers.included_trainers_problem`); the signatures themselves
    are in the payloads, which :func:`~flchain_flwr.ledger.replay.replay`
    checks as it recomputes the models.

    Without ``trusted_key`` or ``checkpoint`` this proves only that the
    ledger is self-consistent. ``trusted_key`` (hex Ed25519 key or vkey, see
    :meth:`~.chain.Ledger.trusted_verifier`) must have signed the genesis block
    (and, outside PoV, every block) and the checkpoint used. ``checkpoint`` (a
    signed checkpoint file held outside the ledger; with ``trusted_key``,
    the one at ``checkpoint_path`` if none is given) must be signed by the
    trusted key (else by the genesis leader: then the file itself is the
    anchor) and the ledger's first ``size`` blocks must have its root. The
    checkpoint is read before the blocks and checked against the blocks
    checked, which are read in one query: a ledger a live writer appends to
    (each block committed before its checkpoint) is checked as one snapshot.
    On a PoV chain (the genesis body declares a verifier pool) every later
    block must be signed by the leader of the committee drawn from the
    previous block's hash, include updates only with a quorum of that
    committee's votes, and record the deposit changes its votes imply (see
    :mod:`flchain_flwr.ledger.consensus`).
    """
    count = 0
    try:
        origin: str | None = ledger.origin
    except CheckpointError:  # a format-1 ledger made before checkpoints
        origin = None
    anchor_key = None
    if trusted_key is not None:
        anchor_key = parse_trusted_key(trusted_key, origin or ORIGIN_PREFIX + "-")
        # A vkey's name fixes its chain (as in check-proof); a hex key takes
        # this ledger's origin. A format-1 ledger has no origin to compare.
        if origin is not None and anchor_key.name != origin:
            return VerifyReport(
                False,
                0,
                None,
                f"the trusted key is {anchor_key.name[:100]!r}'s, this ledger "
                f"is {origin!r}'s",
            )
    beside = False
    if checkpoint is None and anchor_key and ledger.checkpoint_path.is_file():
        checkpoint, beside = ledger.checkpoint_path, True
    # Before the blocks: a writer commits a block before writing its checkpoint.
    kept = None if checkpoint is None else read_note_or_error(checkpoint)
    hashes: list[str] = []
    try:
        leader = (
            anchor_key.public_key.hex()
            if anchor_key is not None
            else get_meta(ledger.db, "leader_key")
        )
        if leader is None and len(ledger):
            return VerifyReport(
                False, 0, None, "the leader key is missing from the metadata"
            )
        prev_hash = ZERO_HASH
        chain = ChainRules(leader)
        for expected_height, row in enumerate(rows(ledger.db)):
            try:
                problem = check_block(
                    ledger, row, expected_height, prev_hash, chain, check_models
                )
            except Exception as exc:  # any corruption is a finding, not a crash
                problem = f"block cannot be checked: {exc!r}"
            if problem is not None:
                height = row[0] if isinstance(row[0], int) else None
                return VerifyReport(False, count, height, problem, leader or "")
            prev_hash = str(row[1])
            hashes.append(prev_hash)
            count += 1
    except Exception as exc:  # an unreadable database is a finding, not a crash
        return VerifyReport(False, count, None, f"database unreadable: {exc!r}")
    anchor = ""
    if anchor_key is not None and origin is None:
        anchor = f"trusted key {leader} signed the genesis block" + (
            "" if chain.pov is not None else " and every block"
        )
    elif anchor_key is not None:
        anchor = f"trusted key {anchor_key.encode()} signed the genesis block"
        anchor += "" if chain.pov is not None else " and every block"
    if anchor_key is not None and count == 0:
        anchor = (
            f"trusted key {leader} given, but the ledger has no blocks: it "
            "signed nothing here"
        )
    if checkpoint is not None and origin is None:
        return VerifyReport(
            False,
            count,
            None,
            f"checkpoint {checkpoint}: this ledger's chain id "
            f"{ledger.chain_id!r} cannot be a checkpoint origin (a format-1 "
            "ledger made before checkpoints), so no checkpoint is of it",
            leader or "",
        )
    if kept is not None:
        try:
            signer = anchor_key or VerifierKey(
                ledger.origin, bytes.fromhex(leader or "")
            )
        except ValueError:
            return VerifyReport(
                False, count, None, "no key to check the checkpoint's signature"
            )
        try:
            size = _check_checkpoint(ledger, kept, signer, hashes)
        except CheckpointMismatch as exc:
            return VerifyReport(False, count, None, f"checkpoint {checkpoint}: {exc}")
        trust = (
            "the trusted key"
            if anchor_key is not None
            else "the genesis leader (the file itself is the anchor)"
        )
        if beside:
            trust += (
                " (the one beside the ledger, among the ledger's own files: "
                "an older genuine checkpoint put back with the ledger cut "
                "short to match would pass, so this cannot detect a "
                "rollback; keep a checkpoint apart and give --checkpoint)"
            )
        anchor = "; ".join(
            filter(
                None,
                (
                    anchor,
                    f"checkpoint {checkpoint} signed by {trust} covers the "
                    f"first {size} of the {count} blocks",
                ),
            )
        )
    elif anchor_key is not None and origin is None:
        anchor += (
            f"; no checkpoint exists for this ledger (its chain id "
            f"{ledger.chain_id!r} cannot be a checkpoint origin), so a ledger "
            "cut short would not be noticed"
        )
    elif anchor_key is not None:
        anchor += "; no checkpoint, so a ledger cut short would not be noticed"
    return VerifyReport(
        True,
        count,
        leader=leader or "",
        pov=chain.pov is not None,
        head=prev_hash if count else "",
        anchor=anchor,
        committee_kind=chain.committee_kind,
        headers=_headers_line(chain, count),
        equivocations=tuple(chain.evidence),
        models=check_models,
        included=chain.included,
        trainers=chain.named,
    )


def _check_checkpoint(
    ledger: Ledger,
    kept: SignedNote | OSError | NoteError,
    signer: VerifierKey,
    hashes: Sequence[str],
) -> int:
    """Check the signed checkpoint read (:func:`~.notes.read_note_or_error`) against
    ``signer`` and the block hashes checked; its size, or
    ``CheckpointMismatch`` saying why not."""
    if isinstance(kept, OSError):
        raise CheckpointMismatch(f"cannot be read: {kept.strerror or kept}")
    try:
        if isinstance(kept, NoteError):
            raise kept
        found, _ = open_checkpoint(kept, [signer])
    except NoteError as exc:
        raise CheckpointMismatch(f"not signed by {signer.encode()}: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointMismatch(f"not a checkpoint: {exc}") from None
    check_against_ledger(found, ledger.origin, hashes)
    return found.size


def _headers_line(chain: ChainRules, count: int) -> str:
    """How a PoV chain's headers were signed, for :class:`VerifyReport`."""
    if chain.pov is None:
        return ""
    if not chain.pov.signed_headers:
        return (
            "signed by each block's leader alone (the genesis declares no "
            "quorum-signed headers), so its model "
            "hashes, included sets and contributions rest on one key per block"
        )
    later = max(0, count - 1)
    return (
        f"all {later} blocks after the genesis block signed by more than 2/3 "
        f"of their committee (checked against the genesis pool keys); in "
        f"{chain.replayed} of them a quorum of signers recomputed the model by "
        "replay, in the rest they checked continuity, the votes and the "
        "included set only"
    )

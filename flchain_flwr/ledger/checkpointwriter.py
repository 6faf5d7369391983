"""The signed checkpoint a ledger writes after each block it appends.

After each committed block, :class:`~.chain.Ledger` signs a C2SP checkpoint
of its block log with the ledger's key and puts it at its checkpoint path
(:mod:`.checkpoint` holds the format). :class:`CheckpointWriter` is that
step and what it remembers between blocks: before a block is committed it
checks that the checkpoint can be written there, and that the blocks still
hold the last checkpoint the key signed (so that the key never signs two
checkpoints that contradict each other: a ledger whose blocks were removed
or rewritten is refused, not re-signed); after the commit it extends the
Merkle log by the new block, signs and writes. A checkpoint that cannot be
written after the commit is :class:`CheckpointNotWritten`: the block is in,
and the next append writes a checkpoint covering it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from logging import WARNING
from pathlib import Path

from flwr.supercore import log

from .blocks import Block, LedgerError
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    LogFrontier,
    open_checkpoint,
    sign_checkpoint,
    write_checkpoint,
)
from .checkpointcheck import CheckpointMismatch, check_against_ledger
from .keys import KeyFile
from .notes import NoteError, SignerKey, VerifierKey


class CheckpointNotWritten(LedgerError):
    """A block IS committed, but the checkpoint after it could not be written."""


class CheckpointWriter:
    """Signs and writes the checkpoint after each block of one ledger.

    Parameters
    ----------
    ledger_path : Path
        The ledger file (named in messages).
    path : Path
        Where the checkpoint is written.
    key : KeyFile
        The ledger's signing key (loaded only when a checkpoint needs it).
    durable : bool
        fsync the checkpoint file.
    """

    def __init__(
        self, ledger_path: Path, path: Path, key: KeyFile, durable: bool
    ) -> None:
        self.ledger_path = ledger_path
        self.path = path
        self._key = key
        self.durable = durable
        self._frontier: LogFrontier | None = None
        self._frontier_head = ""
        """The block hash the log frontier ends with."""
        self._last_signed: Checkpoint | None = None
        """The last checkpoint this process signed."""

    def check_location(self) -> None:
        """``LedgerError`` unless a checkpoint can be written at :attr:`path`
        (its folder is created if missing): checked before a block is
        committed, so that writing it afterwards does not fail."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create the folder of the checkpoint {path}: "
                f"{exc.strerror or exc}"
            ) from None
        if path.is_dir():
            raise LedgerError(f"the checkpoint path {path} is a directory")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise LedgerError(
                f"cannot write the checkpoint {path}: folder {path.parent} is "
                "not writable"
            )

    def signed_before(self, origin: str) -> Checkpoint | None:
        """The last checkpoint of this log the ledger's key signed: the one this
        process signed, else the one at :attr:`path` if it verifies under the
        ledger's key (``None`` if neither: nothing to be consistent with)."""
        if self._last_signed is not None:
            return self._last_signed
        try:
            note = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerError(
                f"cannot read the checkpoint {self.path}: {exc.strerror or exc}"
            ) from None
        own = VerifierKey(origin, bytes(self._key.key.verify_key))
        try:
            found, _ = open_checkpoint(note, [own])
        except (NoteError, CheckpointError) as exc:
            log(
                WARNING,
                "Ledger %s: the checkpoint %s is not one this ledger's key signed "
                "(%s); it will be replaced",
                self.ledger_path,
                self.path,
                exc,
            )
            return None
        return found

    def log_up_to(
        self,
        head: Block | None,
        origin: str,
        block_hashes: Callable[[], list[str]],
    ) -> LogFrontier:
        """The Merkle log of the blocks up to ``head`` (``block_hashes`` reads
        them when this process has not followed the log block by block),
        checked to extend the last checkpoint the ledger's key signed.

        Raises
        ------
        LedgerError
            If the blocks no longer hold that checkpoint's log (blocks were
            removed or rewritten since it was signed).
        """
        frontier = self._frontier
        if (
            frontier is not None
            and head is not None
            and frontier.size == head.height + 1
            and self._frontier_head == head.hash
        ):
            return frontier  # what this process signed, extended block by block
        hashes = [] if head is None else block_hashes()
        signed = self.signed_before(origin)
        if signed is not None:
            try:
                check_against_ledger(signed, origin, hashes)
            except CheckpointMismatch as exc:
                raise LedgerError(
                    f"refusing to sign a checkpoint of {self.ledger_path}: it would "
                    f"contradict the size-{signed.size} checkpoint this key "
                    f"signed before ({exc}); restore the ledger"
                ) from None
        return LogFrontier(hashes)

    def write(self, block: Block, frontier: LogFrontier, origin: str) -> None:
        """Add the block just committed to the log, sign a checkpoint of it with
        the ledger's key and put it at :attr:`path` atomically (fsynced if
        :attr:`durable`).

        Raises
        ------
        CheckpointNotWritten
            If the file cannot be written (the block is committed).
        """
        frontier.append(block.hash)
        self._frontier, self._frontier_head = frontier, block.hash
        checkpoint = Checkpoint(origin, frontier.size, frontier.root())
        note = sign_checkpoint(checkpoint, [SignerKey(origin, self._key.key)])
        self._last_signed = checkpoint
        try:
            write_checkpoint(self.path, note, durable=self.durable)
        except OSError as exc:
            raise CheckpointNotWritten(
                f"block {block.height} IS committed, but its checkpoint could not "
                f"be written to {self.path}: {exc.strerror or exc} "
                "(the next append writes one)"
            ) from None

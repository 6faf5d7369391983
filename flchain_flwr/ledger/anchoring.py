"""Anchoring a training ledger (a subchain) in a main chain, and checking it.

:func:`anchor_ledger` takes the ledger's signed checkpoint (the one each append
writes), asks every witness to cosign it (with a consistency proof from the
size that witness last cosigned), and appends it to the main chain once a
quorum of the policy's witnesses did. :class:`Anchorer` does this every N
blocks or T seconds of (virtual) time. Checking a ledger against its anchors
(``flchain ledger verify --anchored-in``) is :mod:`.anchorcheck`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from logging import WARNING
from typing import Protocol

from flwr.supercore import log

from .anchorblock import AnchorBlock
from .blocks import LedgerError
from .chain import Ledger
from .checkpoint import CheckpointError, open_checkpoint
from .cosignature import add_cosignature
from .logprover import LogProver
from .mainchain import MainChain
from .maindb import AnchorRefused, MainChainError
from .notes import (
    NoteError,
    NoteSignature,
    SignedNote,
    VerifierKey,
    read_note,
)
from .witness import CosignRequest, WitnessError, WitnessRefused

ProveHashes = Callable[[int, int], Sequence[bytes]]
"""``prove(old, new)``: RFC 9162 ``PROOF(old, new)`` of the log being anchored."""


class WitnessClient(Protocol):
    """Anything that answers an ``add-checkpoint`` request: a local
    :class:`~.witness.Witness`, or a witness SuperNode reached over Flower."""

    def add_checkpoint(self, request: CosignRequest) -> NoteSignature:
        """The witness's cosignature line, or :class:`~.witness.WitnessRefused`."""
        ...


def ledger_size(ledger: Ledger) -> int:
    """How many blocks the ledger holds (by its primary key: no table scan)."""
    row = ledger.db.execute("SELECT MAX(height) FROM blocks").fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def log_key_of(ledger: Ledger) -> VerifierKey:
    """The ledger's checkpoint key: its genesis leader's, named after its origin."""
    try:
        genesis = ledger.block(0)
    except LedgerError:
        raise LedgerError(f"{ledger.path} has no blocks: nothing to anchor") from None
    leader = str(genesis.header["leader"])
    return VerifierKey(ledger.origin, bytes.fromhex(leader))


def cosigned_checkpoint(
    ledger: Ledger,
    witnesses: Sequence[WitnessClient],
    quorum: int,
    prover: LogProver | None = None,
    sizes: dict[int, int] | None = None,
) -> tuple[SignedNote, list[str]]:
    """The ledger's current checkpoint with every cosignature the witnesses
    give, and the refusals (``"witness <i>: <reason>"``), by
    :func:`collect_cosignatures` (the checkpoint read before the blocks its
    proofs are made from, so a ledger a server appends to can be anchored).

    Raises ``AnchorRefused`` if fewer than ``quorum`` cosigned. ``prover``
    (kept between calls) makes the proofs; ``sizes`` (kept between calls too)
    holds the size each witness, by index, last cosigned, so the first try is
    usually right.
    """
    key = log_key_of(ledger)
    if prover is None:
        prover = LogProver()
    try:
        note = read_note(ledger.checkpoint_path)
        checkpoint, _ = open_checkpoint(note, [key])
    except (OSError, NoteError, CheckpointError) as exc:
        raise AnchorRefused(
            f"the ledger's checkpoint {ledger.checkpoint_path}: {exc}"
        ) from None
    # After the checkpoint: a live writer commits a block before its checkpoint.
    prover.sync(ledger)
    return collect_cosignatures(
        note, checkpoint.size, key, witnesses, quorum, prover.hashes, sizes
    )


def collect_cosignatures(
    note: SignedNote,
    size: int,
    log_key: VerifierKey,
    witnesses: Sequence[WitnessClient],
    quorum: int,
    prove: ProveHashes,
    sizes: dict[int, int] | None = None,
) -> tuple[SignedNote, list[str]]:
    """Ask every witness to cosign ``note`` (a checkpoint of ``size``, signed
    by ``log_key``); the note with every cosignature given, and the refusals
    (``"witness <i>: <reason>"``).

    A witness is asked from the size ``sizes`` remembers for it (by index;
    else 0) with the proof ``prove(old, size)`` gives, and once more from the
    size a 409 answer names (tlog-witness's way to learn it). ``sizes`` is
    updated with every witness that cosigned.

    Raises
    ------
    AnchorRefused
        If fewer than ``quorum`` witnesses cosigned.
    """
    sizes = {} if sizes is None else sizes
    signed, refusals = note, []
    for index, witness in enumerate(witnesses):
        old = sizes.get(index, 0) if sizes.get(index, 0) <= size else 0
        for _ in range(2):
            try:
                proof = tuple(prove(old, size)) if old <= size else ()
            except (LedgerError, ValueError) as exc:  # no proof between the sizes
                refusals.append(f"witness {index}: {exc}")
                break
            try:
                line = witness.add_checkpoint(
                    CosignRequest(old, str(note), proof, log_key.encode())
                )
            except WitnessRefused as exc:
                if exc.status == 409 and exc.size is not None and exc.size != old:
                    old = exc.size
                    continue
                refusals.append(f"witness {index}: {exc.reason}")
                break
            except (OSError, WitnessError) as exc:  # a witness that cannot work
                refusals.append(f"witness {index}: {exc}")
                break
            signed = add_cosignature(signed, line)
            sizes[index] = size
            break
    count = len(signed.signatures) - len(note.signatures)
    if count < quorum:
        raise AnchorRefused(
            f"{count} witnesses cosigned, the quorum is {quorum}: "
            + "; ".join(refusals)
        )
    return signed, refusals


def anchor_ledger(
    ledger: Ledger,
    main: MainChain,
    witnesses: Sequence[WitnessClient],
    prover: LogProver | None = None,
    sizes: dict[int, int] | None = None,
) -> AnchorBlock:
    """Anchor the ledger's current checkpoint in ``main``; the new block
    (``prover``, ``sizes``: see :func:`cosigned_checkpoint`).

    Raises
    ------
    AnchorRefused
        If the witnesses' quorum or the main chain refuses (nothing appended).
    """
    prover = prover or LogProver()
    note, refusals = cosigned_checkpoint(
        ledger, witnesses, main.policy.quorum, prover, sizes
    )
    for refusal in refusals:
        log(WARNING, "Anchoring %s: %s", ledger.origin, refusal)
    previous = main.last_anchor(ledger.origin)
    size = int(note.text.split("\n")[1])
    last = previous.checkpoint.size if previous is not None else 0
    proof = prover.prove(last, size) if 0 < last < size else None
    return main.anchor(note, log_key_of(ledger), proof)


class Anchorer:
    """Anchor a ledger every ``every_blocks`` blocks and/or ``every_seconds``
    of the run's (virtual) time, and once more at the end of a run.

    Parameters
    ----------
    main : MainChain
        The main chain, opened with its signing key.
    witnesses : Sequence[WitnessClient]
        The witnesses to ask.
    every_blocks : int, optional
        Anchor when this many blocks were added since the last anchor.
    every_seconds : float, optional
        Anchor when this much run time passed since the last anchor.
    """

    def __init__(
        self,
        main: MainChain,
        witnesses: Sequence[WitnessClient],
        *,
        every_blocks: int | None = None,
        every_seconds: float | None = None,
    ) -> None:
        if every_blocks is None and every_seconds is None:
            raise ValueError("anchoring needs every_blocks or every_seconds")
        if every_blocks is not None and every_blocks < 1:
            raise ValueError(f"every_blocks must be >= 1, not {every_blocks}")
        if every_seconds is not None and not every_seconds > 0:
            raise ValueError(f"every_seconds must be > 0, not {every_seconds}")
        self.main = main
        self.witnesses = list(witnesses)
        self.every_blocks = every_blocks
        self.every_seconds = every_seconds
        self._size = 0
        self._time = 0.0
        self.anchored: list[AnchorBlock] = []
        self._prover = LogProver()
        self._sizes: dict[int, int] = {}
        self.failures: list[str] = []

    def due(self, size: int, time: float) -> bool:
        """Whether a ledger of ``size`` blocks at run time ``time`` is due."""
        if self.every_blocks is not None and size - self._size >= self.every_blocks:
            return True
        return (
            self.every_seconds is not None and time - self._time >= self.every_seconds
        )

    def after_block(self, ledger: Ledger, time: float) -> AnchorBlock | None:
        """Anchor if due (a refusal is logged and kept in :attr:`failures`;
        training goes on and the next block tries again)."""
        if not self.due(ledger_size(ledger), time):
            return None
        return self.anchor_now(ledger, time)

    def anchor_now(self, ledger: Ledger, time: float) -> AnchorBlock | None:
        """Anchor the ledger's current checkpoint now (unless already anchored
        at this size)."""
        size = ledger_size(ledger)
        if size == self._size and self.anchored:
            return None
        try:
            block = anchor_ledger(
                ledger, self.main, self.witnesses, self._prover, self._sizes
            )
        except (AnchorRefused, MainChainError, LedgerError, sqlite3.Error) as exc:
            log(
                WARNING,
                "Anchoring %s at %d blocks failed: %s",
                ledger.origin,
                size,
                exc,
            )
            self.failures.append(str(exc))
            return None
        self._size, self._time = size, time
        self.anchored.append(block)
        return block

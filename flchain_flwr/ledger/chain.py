"""The hash-chained ledger: blocks in SQLite, models in a content-addressed store.

One block per accepted aggregation (height 0 is the genesis block holding the
initial model). A block is stored as its canonical header and body bytes, its
hash and the leader's Ed25519 signature, in the encoding its header's
``format`` names (:mod:`.blocks`): ``flchain-block/2`` has no ``wall_time``
(the block hash seeds the next PoV committee, so nothing free to choose may
enter it); ``flchain-block/1`` (older ledgers, still read and verified) has one.
The header commits to everything else: the previous block's hash, the body's
hash, the Merkle root of the included update digests and the new global
model's hash. Each block is one SQLite transaction (WAL mode), and its blobs
are in place before that transaction starts, so a process killed at any
moment leaves a ledger whose every committed block verifies. After each block
the ledger writes a signed C2SP checkpoint of its block log (see
:mod:`flchain_flwr.ledger.checkpoint`), by default to ``<path>.checkpoint``.

Two optional body fields let a run be resumed exactly (ledgers written before
them lack both, and still verify): ``config``, the strategy's settings (in the
genesis block, and in the first block made after a resume with changed
settings), whose canonical JSON hashes to the header's ``config_digest``, so a
resume can name the settings that differ; and ``server_state``, the server's
state after the block (:mod:`.serverstate`).

This module is the :class:`Ledger`: opening it, and the methods that append,
verify and prove. The rest lives beside it: reading its blocks in its base
class :class:`~.ledgerreader.LedgerReader`, appending a block (the checks
before, its transaction, its checkpoint) in :mod:`.appending`, the SQLite file
and its rows in :mod:`.ledgerdb`, a new block's body and header in
:mod:`.newblock`, the checkpoint written after each block in
:mod:`.checkpointwriter`, block types in :mod:`.blocks`, votes in
:mod:`.votes`, keys in :mod:`.keys`, the check of the head before an append
in :mod:`.headcheck`, verification in :mod:`.verify` and :mod:`.blockcheck`,
proofs in :mod:`.proofs` and :mod:`.proofcheck`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict
from flwr.supercore import log
from nacl.signing import SigningKey

from . import proofs
from .appending import append_aggregation, append_as_is
from .blobs import BlobStore
from .blocks import LEDGER_FORMATS, Block, BlockSigner, LedgerError, digest_of
from .canonical import LATEST_FORMAT
from .checkpoint import CheckpointError, ledger_origin, new_chain_origin
from .checkpointwriter import CheckpointWriter
from .headcheck import HeadCheck
from .inputfile import irregular_problem, resolved
from .keys import KeyFile, parse_trusted_key
from .ledgerdb import make_folder_for, open_database
from .ledgerreader import LedgerReader
from .notes import VerifierKey
from .serverstate import ServerState
from .verify import VerifyReport, verify_ledger


# pylint: disable=too-many-instance-attributes
class Ledger(LedgerReader):
    """An append-only chain of aggregation blocks.

    Parameters
    ----------
    path : str | Path
        The SQLite file. Models live beside it in ``<path>.models/``; the leader's
        signing key, unless given, in ``key_path`` (created on first append).
        A relative path is taken against the current directory (under
        ``flwr run``, the SuperLink's); the absolute one is kept and logged.
        Missing folders above a new ledger are created.
    chain_id : str, optional
        Identifies the chain; fixed at creation (a random id if not given). Opening
        an existing ledger with another id is an error. A new ledger's id must
        be usable in a checkpoint's origin (no spaces, '+' or control
        characters) and 1 to 128 characters long.
    signing_key : nacl.signing.SigningKey, optional
        The leader's key for signing headers and checkpoints.
    key_path : str | Path, optional
        Where the signing key lives when not given (default ``<path>.key``,
        beside the ledger: fine for a simulation; in deployment keep it
        elsewhere, see docs/deployment.md).
    checkpoint_path : str | Path, optional
        Where each append writes the signed checkpoint of the block log
        (default ``<path>.checkpoint``).
    format_version : int (default: LATEST_FORMAT)
        The encoding of a new ledger's blocks (an existing ledger keeps its own).
    create : bool (default: True)
        Create the ledger if the file does not exist; with ``False`` a missing
        file is an error.
    read_only : bool (default: False)
        Only read the ledger (what reading tools want; implies ``create=False``):
        the file is never written, nor is a ``-wal`` or ``-journal`` beside it
        folded into it (see :mod:`.sqlfile`); :meth:`append` is refused.
    durable : bool (default: False)
        fsync blobs and use ``synchronous=FULL``: survive power loss, not just a
        killed process (which the default already survives).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chain_id: str | None = None,
        signing_key: SigningKey | None = None,
        create: bool = True,
        durable: bool = False,
        key_path: str | Path | None = None,
        checkpoint_path: str | Path | None = None,
        format_version: int = LATEST_FORMAT,
        read_only: bool = False,
    ) -> None:
        self.path = resolved(path)
        self.read_only = read_only
        create = create and not read_only
        problem = irregular_problem(self.path)
        if problem is not None:  # SQLite would wait forever on a FIFO
            raise LedgerError(problem)
        if not create and not self.path.is_file():
            raise LedgerError(f"no ledger at {self.path}")
        existed = self.path.exists()
        if not existed and chain_id is not None:  # before any folder is made
            try:
                new_chain_origin(chain_id)
            except CheckpointError as exc:
                raise LedgerError(str(exc)) from None
        if not existed:
            make_folder_for(self.path)
        self.blobs = BlobStore(
            self.path.with_name(self.path.name + ".models"), durable=durable
        )
        self._key = (
            KeyFile(Path(key_path), signing_key)
            if key_path
            else KeyFile.beside(self.path, signing_key)
        )
        self.checkpoint_path = resolved(
            checkpoint_path or self.path.with_name(self.path.name + ".checkpoint")
        )
        self.durable = durable
        self._checkpoints = CheckpointWriter(
            self.path, self.checkpoint_path, self._key, durable
        )
        """Writes the checkpoint after each block."""
        if f"flchain-ledger/{format_version}" not in LEDGER_FORMATS:
            raise ValueError(f"unknown ledger format version {format_version!r}")
        self.db, self.chain_id, self.format_version = open_database(
            self.path,
            existed=existed,
            create=create,
            durable=durable,
            chain_id=chain_id,
            format_version=format_version,
            read_only=read_only,
        )
        """The chain id, and the encoding version of the blocks this ledger
        writes: the genesis block's (the metadata must agree with it)."""
        self._head_check = HeadCheck()
        """Checks the head before an append (remembers the verifier pool)."""
        if create:
            try:
                self._checkpoints.check_location()
            except LedgerError:
                self.db.close()
                raise
            log(INFO, "Ledger: %s (chain %s)", self.path, self.chain_id)

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def signing_key(self) -> SigningKey:
        """The leader's key (loaded or created at ``key_path`` on first use)."""
        return self._key.key

    def config_digest(self, config: Mapping[str, Any]) -> str:
        """The ``config_digest`` of ``config`` in this ledger's blocks: SHA-256 of
        its canonical JSON in the ledger's encoding."""
        return digest_of(config, self.format_version)

    @property
    def origin(self) -> str:
        """The checkpoint origin, and the checkpoint key's name:
        ``flchain-flwr/<chain id>``."""
        return ledger_origin(self.chain_id)

    # ---------------------------------------------------------------- appending
    # pylint: disable=too-many-arguments
    def append(
        self,
        *,
        model: Mapping[str, np.ndarray],
        model_version: int,
        base_version: int,
        config_digest: str,
        included: Sequence[Mapping[str, Any]] = (),
        rejected: Sequence[Mapping[str, Any]] = (),
        votes: Sequence[Mapping[str, Any]] = (),
        contributions: Sequence[Mapping[str, Any]] = (),
        sim_time: float = 0.0,
        wall_time: float | None = None,
        extra: Mapping[str, Any] | None = None,
        signer: BlockSigner | None = None,
        config: Mapping[str, Any] | None = None,
        server_state: ServerState | None = None,
        payloads: Sequence[RecordDict] | None = None,
    ) -> Block:
        """Store the model, then commit one signed block in one transaction.

        ``included`` entries need a ``digest`` (hex SHA-256 of the update as
        received, see :func:`~flchain_flwr.ledger.canonical.update_digest`); their
        digests, in order, are the leaves of the block's Merkle root. ``extra``
        adds body fields (PoV: ``pov`` in the genesis block, ``committee`` and
        ``deposits`` after it); ``signer`` signs instead of the ledger's own key
        (a PoV block's rotating leader; it is called inside the block's
        transaction, so a remote signer holds the write lock while it waits).
        ``config`` records the settings behind ``config_digest`` (it must hash
        to it); ``server_state``'s blobs are stored beside the model, before
        the block, and its record goes into the body (see the module's
        docstring). ``wall_time`` goes only into format-1 headers. ``payloads``,
        one per included entry, are the replies as received: each is stored
        beside the model and its blob's hash becomes the entry's ``payload``
        (what ``verify --replay`` replays). After the block is committed, a
        signed checkpoint of the log is written to ``checkpoint_path``.

        Raises
        ------
        ValueError
            If a value has no encoding that reads back (nothing is committed).
        LedgerError
            Before committing anything, if the head block is not intact or not
            signed by whom it must be, if the blocks no longer hold the last
            checkpoint the ledger's key signed, or if no checkpoint can be
            written at ``checkpoint_path``.
        CheckpointNotWritten
            If the block is committed but writing its checkpoint failed.
        """
        self._check_writable()
        return append_aggregation(
            self,
            self._checkpoints,
            self._head_check,
            model=model,
            model_version=model_version,
            base_version=base_version,
            config_digest=config_digest,
            included=included,
            rejected=rejected,
            votes=votes,
            contributions=contributions,
            sim_time=sim_time,
            wall_time=wall_time,
            extra=extra,
            signer=signer,
            config=config,
            server_state=server_state,
            payloads=payloads,
        )

    def append_block(self, block: Block, cosigner: BlockSigner) -> Block:
        """Commit ``block`` as it is (its exact bytes and leader signature),
        with ``cosigner``'s header signatures: a locked block re-proposed
        after a restart (:mod:`flchain_flwr.pov.pending`; ``cosigner`` is a
        :class:`~.quorum.HeaderCosigner` naming the block's leader). ``LedgerError``
        if it does not extend the head."""
        self._check_writable()
        return append_as_is(self, self._checkpoints, self._head_check, block, cosigner)

    def _check_writable(self) -> None:
        if self.read_only:
            raise LedgerError(f"{self.path} is open read-only: nothing is appended")

    # ---------------------------------------------------------------- verifying
    def trusted_verifier(self, key: str) -> VerifierKey:
        """A trusted key given as text: a signed-note vkey, or the hex Ed25519
        public key of the ledger's signer (named after :attr:`origin`).

        Raises
        ------
        LedgerError
            If ``key`` is neither.
        """
        return parse_trusted_key(key, self.origin)

    def verify(
        self,
        *,
        trusted_key: str | None = None,
        checkpoint: str | Path | None = None,
        check_models: bool = True,
    ) -> VerifyReport:
        """Check every block; report the first one that fails and why (see
        :func:`~.verify.verify_ledger`)."""
        return verify_ledger(
            self,
            trusted_key=trusted_key,
            checkpoint=checkpoint,
            check_models=check_models,
        )

    # ------------------------------------------------------------------- proofs
    def prove_update(self, digest: str, size: int | None = None) -> dict[str, Any]:
        """Proof that an update is in a block, and that the block is in the log
        (see :func:`~.proofs.prove_update`)."""
        return proofs.prove_update(self, digest, size)

    def prove_consistency(
        self, prior_size: int, later_size: int | None = None
    ) -> dict[str, Any]:
        """Proof that the ledger at ``prior_size`` blocks is a prefix of a later
        one (see :func:`~.proofs.prove_consistency`)."""
        return proofs.prove_consistency(self, prior_size, later_size)

"""The main chain: a log of anchor blocks, with its own signed checkpoint.

A :class:`MainChain` is an SQLite file of main-chain blocks
(:mod:`~flchain_flwr.ledger.anchorblock`): a genesis block declaring the
witness policy, then one anchor block per anchored subchain checkpoint. It
holds no model data and no update digests: only origins, sizes, roots,
signatures and cosignatures. Its leaves (block hashes) form an RFC 6962 log
whose checkpoint the main chain's key signs (origin ``flchain-flwr/<chain
id>``), so one anchor block's inclusion can be proven offline
(:meth:`MainChain.prove_anchor`, :func:`~.anchorproof.check_anchor_proof`).

:meth:`MainChain.anchor` appends a block only if the subchain's key signed
the checkpoint, a quorum of the policy's witnesses cosigned it, the key is
the one the origin was first anchored with, and the checkpoint is consistent
with the origin's previous anchor (equal root at equal size; a valid
consistency proof otherwise). Several processes may anchor into one main
chain: each append is one SQLite ``BEGIN IMMEDIATE`` transaction. Opened with
the policy's ``witnesses``, each anchor also has the main chain's own
checkpoint cosigned (:mod:`.mainwitness`).

The SQLite file itself (creating and opening it, its rows as blocks, the
append transaction) and the errors are in :mod:`.maindb`; checking a whole
chain is :mod:`.mainverify`, proving an anchor :mod:`.anchorproof`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from logging import WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.supercore import log
from nacl.signing import SigningKey

from .anchorblock import AnchorBlock, AnchorError, AnchorPolicy
from .checkpoint import Checkpoint, LogFrontier, sign_checkpoint, write_checkpoint
from .inputfile import irregular_problem, resolved
from .maindb import (
    AnchorRefused,
    MainChainError,
    append_anchor,
    block_at,
    blocks_by_origin,
    create_main_db,
    every_block,
    open_main_db,
)
from .mainwitness import cosign_main_checkpoint
from .notes import SignedNote, SignerKey, VerifierKey, parse_note

if TYPE_CHECKING:
    from .anchoring import WitnessClient
    from .mainverify import WitnessRule


class MainChain:
    """A main chain of anchor blocks (open an existing one; see :meth:`create`).

    Parameters
    ----------
    path : str | Path
        The SQLite file.
    signing_key : nacl.signing.SigningKey, optional
        The main chain's key: needed to anchor and to sign checkpoints; it must
        be the one the chain was created with. Readers need none.
    checkpoint_path : str | Path, optional
        Where each anchor writes the main chain's signed checkpoint (default
        ``<path>.checkpoint``).
    witnesses : Sequence[WitnessClient], optional
        The policy's witnesses: after each anchor they are asked to cosign
        the main chain's own checkpoint (:meth:`cosign_checkpoint`).
    read_only : bool (default: False)
        Only read the main chain (what reading tools want): the file is never
        written, nor is a ``-wal`` beside it folded into it (see
        :mod:`.sqlfile`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        signing_key: SigningKey | None = None,
        checkpoint_path: str | Path | None = None,
        witnesses: Sequence[WitnessClient] = (),
        read_only: bool = False,
    ) -> None:
        self.path = resolved(path)
        self.witnesses = list(witnesses)
        self.witness_refusals: list[str] = []
        self._sizes: dict[int, int] = {}
        problem = irregular_problem(self.path)
        if problem is not None:  # SQLite would wait forever on a FIFO
            raise MainChainError(problem)
        if not self.path.is_file():
            raise MainChainError(f"no main chain at {self.path}")
        self.checkpoint_path = Path(
            checkpoint_path or self.path.with_name(self.path.name + ".checkpoint")
        )
        self.db, self.chain_id, self.public_key, genesis = open_main_db(
            self.path, read_only=read_only
        )
        try:
            if (
                signing_key is not None
                and bytes(signing_key.verify_key) != self.public_key.public_key
            ):
                raise MainChainError(f"{self.path}: that is not the main chain's key")
            try:
                self.policy = AnchorPolicy.from_json(genesis.fields["policy"])
            except AnchorError as exc:
                raise MainChainError(f"{self.path}: genesis policy: {exc}") from None
        except BaseException:
            self.db.close()
            raise
        self._signing_key = signing_key

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        chain_id: str,
        policy: AnchorPolicy,
        signing_key: SigningKey,
        checkpoint_path: str | Path | None = None,
    ) -> MainChain:
        """Create a main chain with its genesis block (policy) and checkpoint.

        Raises
        ------
        MainChainError
            If ``path`` exists or the chain id cannot be an origin.
        """
        create_main_db(Path(path), chain_id, policy, signing_key)
        chain = cls(path, signing_key=signing_key, checkpoint_path=checkpoint_path)
        try:
            chain._write_checkpoint()
        except BaseException:
            chain.close()
            raise
        return chain

    # ----------------------------------------------------------------- reading
    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> MainChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    @property
    def has_key(self) -> bool:
        """Whether the chain was opened with its signing key."""
        return self._signing_key is not None

    @property
    def origin(self) -> str:
        """The main chain's checkpoint origin (and its key's name)."""
        return self.public_key.name

    def block(self, height: int) -> AnchorBlock:
        """The block at ``height``; ``MainChainError`` if there is none or it
        is malformed."""
        return block_at(self.db, height)

    def blocks(self) -> Iterator[AnchorBlock]:
        """Every block, by height (each row checked against its record)."""
        return every_block(self.db)

    def block_hashes(self) -> list[str]:
        """The leaves of the main chain's log, by height."""
        rows = self.db.execute("SELECT hash FROM blocks ORDER BY height").fetchall()
        return [str(row[0]) for row in rows]

    def anchors_for(self, origin: str) -> list[AnchorBlock]:
        """Every anchor block of a subchain origin, oldest first.

        Selected by the origin inside each record (SQLite's ``json_extract``,
        which reads canonical JSON as :func:`~.anchorblock.parse_block` does),
        never by the unsigned ``origin`` column, which
        :func:`~.maindb.parse_row` checks against the record: editing that
        column cannot hide an anchor. (A record that is not canonical JSON
        fails :meth:`verify`.)
        """
        return blocks_by_origin(self.db, origin, "ORDER BY height")

    def last_anchor(self, origin: str) -> AnchorBlock | None:
        """The latest anchor block of a subchain origin (``None`` if none),
        selected as :meth:`anchors_for` selects."""
        found = blocks_by_origin(self.db, origin, "ORDER BY height DESC LIMIT 1")
        return found[0] if found else None

    def origins(self) -> list[str]:
        """Every subchain origin anchored here, in order of first anchor."""
        found = (block.origin for block in self.blocks())
        return list(dict.fromkeys(o for o in found if o is not None))

    # ---------------------------------------------------------------- anchoring
    def anchor(
        self,
        note: SignedNote | str | bytes,
        log_key: VerifierKey,
        consistency: Mapping[str, Any] | None = None,
    ) -> AnchorBlock:
        """Append an anchor block for a subchain checkpoint.

        Parameters
        ----------
        note : SignedNote | str | bytes
            The subchain's checkpoint, signed by ``log_key`` and cosigned by at
            least ``policy.quorum`` policy witnesses.
        log_key : VerifierKey
            The subchain's checkpoint key (named after its origin); an origin
            keeps the key it was first anchored with.
        consistency : Mapping, optional
            A consistency proof from the origin's last anchored size to this
            one (``Ledger.prove_consistency``); needed when both are non-empty
            and differ.

        Returns
        -------
        AnchorBlock
            The new block.

        Raises
        ------
        AnchorRefused
            If a check fails (nothing is appended).
        MainChainError
            If the chain was opened without its signing key.
        """
        if self._signing_key is None:
            raise MainChainError("anchoring needs the main chain's signing key")
        try:
            signed = note if isinstance(note, SignedNote) else parse_note(note)
        except ValueError as exc:
            raise AnchorRefused(f"not a signed checkpoint: {exc}") from None

        def check_previous(block: AnchorBlock, checkpoint: Checkpoint) -> None:
            from .mainverify import check_against_previous  # it imports this module

            check_against_previous(self, block, checkpoint, consistency)

        block = append_anchor(
            self.db,
            self.chain_id,
            self.policy,
            signed,
            log_key,
            consistency,
            check_previous,
        )
        if self.witnesses:
            self.cosign_checkpoint()
        else:
            self._write_checkpoint()
        return block

    def verify(
        self,
        checkpoint: SignedNote | None = None,
        pinned: SignedNote | None = None,
        witnessed: WitnessRule | None = None,
    ) -> str:
        """Check the whole main chain; return what was checked.

        Heights and ``prev_hash`` links, the genesis policy, every anchor
        block (:func:`~.anchorblock.check_anchor`), each origin's anchors
        consistent with the one before (same key; the stored consistency
        proof), and the main chain's signed checkpoint (``checkpoint``, else
        the one at ``checkpoint_path``) against its log; with ``pinned`` (a
        main-chain checkpoint kept elsewhere) also that the chain holds it, so
        it was not rolled back below it; with ``witnessed``, that a quorum of
        the policy's witnesses cosigned the checkpoint (recently, with
        ``witnessed.max_age``).

        Raises
        ------
        AnchorRefused
            Naming the first block or checkpoint that fails.
        """
        from .mainverify import verify_main_chain  # here: it imports this module

        return verify_main_chain(self, checkpoint, pinned, witnessed).statement

    # ---------------------------------------------------------- checkpoints
    def signed_checkpoint(self) -> SignedNote:
        """A checkpoint of every block, signed now with the main chain's key."""
        if self._signing_key is None:
            raise MainChainError("signing a checkpoint needs the main chain's key")
        frontier = LogFrontier(self.block_hashes())
        checkpoint = Checkpoint(self.origin, frontier.size, frontier.root())
        return sign_checkpoint(checkpoint, [SignerKey(self.origin, self._signing_key)])

    def _write_checkpoint(self) -> None:
        write_checkpoint(self.checkpoint_path, self.signed_checkpoint())

    def prove_anchor(
        self, height: int, note: SignedNote | None = None
    ) -> dict[str, Any]:
        """A self-contained proof that block ``height`` is in the main chain
        (:func:`~.anchorproof.prove_anchor`; ``note``: the main checkpoint to
        prove it in, by default the cosigned one on file)."""
        from .anchorproof import prove_anchor  # here: it imports this module

        return prove_anchor(self, height, note)

    # ------------------------------------------------------------- witnessing
    def cosign_checkpoint(self) -> SignedNote:
        """Sign the checkpoint now, have :attr:`witnesses` cosign it and store
        it (:func:`~.mainwitness.cosign_main_checkpoint`); refusals are logged
        and kept in :attr:`witness_refusals`."""
        note, refusals = cosign_main_checkpoint(self, self.witnesses, self._sizes)
        for refusal in refusals:
            log(WARNING, "Cosigning main chain %s: %s", self.chain_id, refusal)
        self.witness_refusals = refusals
        return note

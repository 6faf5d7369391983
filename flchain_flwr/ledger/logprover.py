"""Consistency proofs of a growing ledger from one Merkle tree kept in memory.

``Ledger.prove_consistency`` rebuilds the Merkle tree of every block hash for
each proof (about 0.35 s at 10,000 blocks); anchoring asks for a proof every
few blocks, so :class:`LogProver` keeps the tree and adds only the new
blocks' hashes. Its proofs are exactly :func:`~.merkle.consistency_proof`'s
(the same pymerkle tree, the same JSON), checked by
:func:`~.checkpointcheck.check_consistency`; :meth:`LogProver.hashes` gives the
RFC 9162 hash-list proofs witnesses take (:mod:`~.rfc6962`).
"""

from __future__ import annotations

from typing import Any

from pymerkle import InmemoryTree

from .blocks import LedgerError
from .chain import Ledger
from .merkle import ALGORITHM
from .rfc6962 import ConsistencyError, HashTree


class LogProver:
    """The Merkle log of one ledger's block hashes, kept up to date."""

    def __init__(self) -> None:
        self._tree = InmemoryTree(algorithm=ALGORITHM)
        self._hashes: list[str] = []
        self._rfc = HashTree()

    @property
    def size(self) -> int:
        """How many block hashes the tree holds."""
        return len(self._hashes)

    def sync(self, ledger: Ledger) -> None:
        """Add the ledger's new block hashes (rebuild if the ones held changed).

        Reads only the rows above the last one held, and that one to check it.
        """
        held = len(self._hashes)
        rows = ledger.db.execute(
            "SELECT hash FROM blocks WHERE height >= ? ORDER BY height",
            (max(0, held - 1),),
        ).fetchall()
        hashes = [str(row[0]) for row in rows]
        if held and (not hashes or hashes[0] != self._hashes[-1]):
            self._tree = InmemoryTree(algorithm=ALGORITHM)
            self._hashes = []
            self._rfc = HashTree()
            self.sync(ledger)
            return
        for digest in hashes[1:] if held else hashes:
            try:
                entry = bytes.fromhex(digest)
                self._tree.append_entry(entry)
            except ValueError:
                raise LedgerError(
                    f"block hash {len(self._hashes)} is not hex; run `flchain "
                    "ledger verify`"
                ) from None
            self._rfc.append(entry)
            self._hashes.append(digest)

    def prove(self, prior_size: int, later_size: int) -> dict[str, Any]:
        """A consistency proof from ``prior_size`` to ``later_size`` blocks.

        Raises
        ------
        LedgerError
            Unless ``0 < prior_size <= later_size <= size``.
        """
        if not 0 < prior_size <= later_size <= self.size:
            raise LedgerError(
                f"need 0 < prior ({prior_size}) <= later ({later_size}) <= {self.size}"
            )
        tree = self._tree
        return {
            "type": "consistency",
            "prior_size": prior_size,
            "later_size": later_size,
            "prior_root": tree.get_root(prior_size).hex(),
            "later_root": tree.get_root(later_size).hex(),
            "proof": tree.prove_consistency(prior_size, later_size).serialize(),
        }

    def hashes(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 ``PROOF(old, new)`` (empty when ``old`` is 0 or ``new``).

        Raises
        ------
        LedgerError
            Unless ``0 <= old <= new <= size``.
        """
        try:
            return self._rfc.consistency(old, new)
        except ConsistencyError as exc:
            raise LedgerError(str(exc)) from None

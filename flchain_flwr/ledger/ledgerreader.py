"""Reading a ledger: its blocks by height, and what they record.

:class:`LedgerReader` is the base of :class:`~.chain.Ledger`, which opens the
ledger and sets its SQLite connection and model store; the reader gives the
blocks (from the rows of :mod:`.ledgerdb`), the models and server states they
name, the settings behind their ``config_digest``, their hashes (the leaves
of the chain's Merkle log), the committee's header signatures, and the block
that includes an update.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..quoting import clip
from .blobs import BlobStore
from .blocks import Block, LedgerError
from .ledgerdb import (
    BLOCK_ROW,
    MAX_HEIGHT,
    reading,
    recorded_config,
    row_to_block,
    rows,
)
from .quorum import load_signatures
from .serverstate import ServerState, load_server_state


class LedgerReader:
    """The blocks of an open ledger, read from its SQLite file and model store.

    :class:`~.chain.Ledger` opens the ledger and sets the attributes below.
    """

    path: Path
    """The SQLite file (an absolute path)."""
    db: sqlite3.Connection
    """The connection to it."""
    blobs: BlobStore
    """The content-addressed store beside it (``<path>.models/``)."""

    def __len__(self) -> int:
        with reading(self.path):
            row = self.db.execute("SELECT COUNT(*) FROM blocks").fetchone()
        return int(row[0])

    def blocks(self) -> Iterator[Block]:
        """Every block, by height."""
        with reading(self.path):
            for row in rows(self.db):
                yield row_to_block(row)

    def block(self, height: int) -> Block:
        """The block at ``height``; ``LedgerError`` if there is none."""
        row = None
        if 0 <= height <= MAX_HEIGHT:  # beyond, SQLite cannot even take the number
            with reading(self.path):
                query = f"{BLOCK_ROW} WHERE height = ?"
                row = self.db.execute(query, (height,)).fetchone()
        if row is None:
            raise LedgerError(
                f"no block at height {height} (ledger has {len(self)} blocks)"
            )
        return row_to_block(row)

    def head(self) -> Block | None:
        """The last block, or ``None`` for an empty ledger."""
        query = f"{BLOCK_ROW} ORDER BY height DESC LIMIT 1"
        row = self.db.execute(query).fetchone()
        return None if row is None else row_to_block(row)

    def load_model(self, block: Block) -> dict[str, np.ndarray]:
        """The global model a block references, from the content-addressed store."""
        return self.blobs.load_model(str(block.header["model_hash"]))

    def server_state(self, block: Block) -> ServerState | None:
        """The server state ``block`` records (``None`` if it records none).

        Raises
        ------
        ValueError
            If the record is malformed or a blob it names is missing or corrupt.
        """
        return load_server_state(self.blobs, block.body)

    def recorded_config(self, block: Block) -> dict[str, Any] | None:
        """The settings behind ``block``'s ``config_digest``, if they are recorded.

        They are in the body of the first block written with that digest (the
        genesis block, or the first after a resume with changed settings), so
        the search goes back from ``block`` while the digest stays the same.
        ``None`` for ledgers written before settings were recorded.
        """
        with reading(self.path):
            return recorded_config(self.db, block)

    def block_hashes(self) -> list[str]:
        """Block hashes by height: the leaves of the chain's Merkle log."""
        with reading(self.path):
            return [
                str(r[0])
                for r in self.db.execute("SELECT hash FROM blocks ORDER BY height")
            ]

    def header_signatures(self, height: int) -> list[Any] | None:
        """The committee's signatures over block ``height``'s header (``None``
        if none are stored: not a quorum-signed chain, or stripped)."""
        with reading(self.path):
            try:
                return load_signatures(self.db, height)
            except ValueError as exc:
                raise LedgerError(
                    f"block {height}'s header signatures are corrupt ({exc})"
                ) from None

    def find_update(self, digest: str) -> tuple[Block, int]:
        """The block including an update digest, and its index in that block."""
        for block in self.blocks():
            for index, update in enumerate(block.body["included"]):
                if update["digest"] == digest:
                    return block, index
        raise LedgerError(f"update digest {clip(digest, 80)} is not in any block")

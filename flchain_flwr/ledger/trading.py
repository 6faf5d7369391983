"""A model-trading subchain: signed trade records in SQLite, with C2SP
checkpoints.

The market's operator appends the statements of :mod:`.trade_records` one
entry (:mod:`.trade_entry`) at a time, each after :meth:`TradeBook.check`
accepted it (signature, references, no replay); each entry's hash is its leaf
in the chain's Merkle log, exactly as a training ledger's block hashes are in
its log. After each entry the operator's key (named after the origin,
``flchain-flwr/<chain id>``) signs a C2SP checkpoint of the log, by default to
``<path>.checkpoint``: the trading subchain is anchored in a main chain like
any training subchain (``origin``, ``block_hashes()`` and the checkpoint file
are what anchoring reads). The operator cannot forge a party's statement;
it can refuse to record one, and, holding its key, sign a checkpoint of a
rewritten log, which a checkpoint anchored and cosigned earlier exposes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

from nacl.signing import SigningKey

from .blocks import LedgerError
from .canonical import ZERO_HASH, NotCanonical, parse_canonical
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    LogFrontier,
    ledger_origin,
    new_chain_origin,
    open_checkpoint,
    read_checkpoint,
    sign_checkpoint,
    write_checkpoint,
)
from .checkpointcheck import CheckpointMismatch, check_against_ledger
from .inputfile import irregular_problem, resolved
from .keys import KeyFile
from .merkle import consistency_proof
from .notes import NoteError, SignerKey, VerifierKey, read_note_or_error
from .sqlfile import connect, sqlite_message, unreadable
from .sqlschema import foreign_schema
from .trade_entry import (
    ENTRY_FORMAT,
    TradeEntry,
    encode_entry,
    entry_hash,
    entry_problem,
)
from .trade_records import TradeBook, TradeRefused

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE entries (idx INTEGER PRIMARY KEY, "
    "hash TEXT NOT NULL, record_id TEXT NOT NULL UNIQUE, entry BLOB NOT NULL)",
)


class MarketCheck(NamedTuple):
    """What :meth:`TradingChain.verify` checked, from one read of the entries."""

    entries: int
    """How many entries were checked."""
    anchored: str
    """What the checkpoint on file anchored."""
    book: TradeBook
    """The offers, purchases and receipts those entries record."""


class TradingChain:
    """A market's append-only log of trade statements.

    Parameters
    ----------
    path : str | Path
        The SQLite file (created with its folder if missing).
    chain_id : str, optional
        Fixed at creation (required then); the origin is ``flchain-flwr/<id>``.
    signing_key : SigningKey, optional
        The operator's key; else the one at ``<path>.key`` (created).
    checkpoint_path : str | Path, optional
        Where each append writes the signed checkpoint (``<path>.checkpoint``).
    create : bool (default: True)
        With ``False`` a missing file is an error.
    read_only : bool (default: False)
        Only read the chain (what reading tools want; implies ``create=False``):
        the file is never written, nor is a ``-journal`` beside it rolled back
        into it (see :mod:`.sqlfile`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chain_id: str | None = None,
        signing_key: SigningKey | None = None,
        checkpoint_path: str | Path | None = None,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = resolved(path)
        self.read_only = read_only
        problem = irregular_problem(self.path)
        if problem is not None:  # SQLite would wait forever on a FIFO
            raise LedgerError(problem)
        create = create and not read_only
        if not self.path.is_file() and (not create or chain_id is None):
            raise LedgerError(f"no trading chain at {self.path}")
        self.checkpoint_path = Path(
            checkpoint_path or self.path.with_name(self.path.name + ".checkpoint")
        )
        self._key = KeyFile.beside(self.path, signing_key)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = connect(self.path, read_only=read_only)
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path} is not a trading chain: {exc}") from None
        try:
            self.chain_id: str = self._identity(chain_id)
            self.origin: str = ledger_origin(self.chain_id)
        except (sqlite3.Error, CheckpointError) as exc:
            self.db.close()
            if unreadable(exc):
                raise LedgerError(
                    f"cannot read the trading chain {self.path}: {sqlite_message(exc)}"
                ) from None
            raise LedgerError(
                f"{self.path} is not a trading chain: {sqlite_message(exc)}"
            ) from None
        except BaseException:
            self.db.close()
            raise
        self._cached: tuple[tuple[int, str], TradeBook] | None = None
        """The book after the entries it names (count, last hash): checked
        once, extended by each append of this process."""

    def _identity(self, chain_id: str | None) -> str:
        """The stored chain id, once the file is checked to be a trading
        chain (created first if it is empty and ``chain_id`` is given)."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        foreign = foreign_schema(self.db)  # before anything reads a table
        if foreign is not None:
            raise LedgerError(f"{self.path} is not a trading chain: {foreign}")
        if not tables and chain_id is not None:
            new_chain_origin(chain_id)  # a usable origin, or CheckpointError
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO meta VALUES ('format', ?), ('chain_id', ?)",
                    (ENTRY_FORMAT, chain_id),
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            tables = {"meta", "entries"}
        stored = self._meta("chain_id") if {"meta", "entries"} <= tables else None
        if stored is None or self._meta("format") != ENTRY_FORMAT:
            raise LedgerError(f"{self.path} is not a trading chain")
        if chain_id is not None and chain_id != stored:
            raise LedgerError(f"{self.path} holds chain {stored!r}, not {chain_id!r}")
        return stored

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> TradingChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def signing_key(self) -> SigningKey:
        """The operator's key (loaded or created beside the file)."""
        return self._key.key

    @property
    def verifier(self) -> VerifierKey:
        """The operator's checkpoint key, as a signed-note verifier key."""
        return VerifierKey(self.origin, bytes(self.signing_key.verify_key))

    @property
    def market(self) -> str:
        """What every statement's ``market`` must be: the operator's vkey
        (:meth:`VerifierKey.encode`), so the market is its origin *and* its
        operator's key, and a statement signed for it cannot be replayed into
        another market of the same chain id. The key the file records, if
        any (reading it loads no secret key), else the operator's own (none
        when read-only: a chain that records no key has no entry to check,
        and a reader creates no key beside it)."""
        recorded = self.recorded_verifier()
        if recorded is None and self.read_only:
            return ""
        return (recorded or self.verifier).encode()

    def recorded_verifier(self) -> VerifierKey | None:
        """The operator key the file records (at its first entry), without
        loading the secret key; ``None`` before any entry."""
        stored = self._meta("operator_key")
        if stored is None:
            return None
        try:
            return VerifierKey(self.origin, bytes.fromhex(stored))
        except ValueError as exc:
            raise LedgerError(f"{self.path}: malformed operator key: {exc}") from None

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def entries(self) -> Iterator[TradeEntry]:
        """Every entry, by index."""
        rows = self.db.execute(
            "SELECT idx, hash, record_id, entry FROM entries ORDER BY idx"
        ).fetchall()
        for index, digest, record_id, entry in rows:
            yield TradeEntry(int(index), str(digest), str(record_id), bytes(entry))

    def block_hashes(self) -> list[str]:
        """Entry hashes by index: the leaves of the chain's Merkle log."""
        return [entry.hash for entry in self.entries()]

    def book(self) -> TradeBook:
        """What the market holds, rebuilt from the stored entries (each
        checked again on the way)."""
        book = TradeBook(self.market)
        for entry in self.entries():
            statement = entry.statement
            book.record(statement, book.check(statement, entry.signature))
        return book

    def append(self, statement: Mapping[str, Any], signature: str) -> TradeEntry:
        """Check a signed statement against the market, record it in one SQLite
        transaction, then sign and write the checkpoint of the log.

        Raises
        ------
        TradeRefused
            If :meth:`TradeBook.check` refuses it (nothing is written).
        LedgerError
            If the stored log no longer holds the checkpoint on file.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            hashes = self.block_hashes()
            self._check_signed_log(hashes)
            key = (len(hashes), hashes[-1] if hashes else ZERO_HASH)
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, self.book())
            book = self._cached[1]
            record_id = book.check(statement, signature)
            index = len(hashes)
            prev = hashes[-1] if hashes else ZERO_HASH
            entry = encode_entry(self.origin, index, prev, statement, signature)
            digest = entry_hash(entry)
            self.db.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?)",
                (index, digest, record_id, entry),
            )
            self.db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('operator_key', ?)",
                (bytes(self.signing_key.verify_key).hex(),),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        book.record(statement, record_id)
        self._cached = ((index + 1, digest), book)
        frontier = LogFrontier([*hashes, digest])
        note = sign_checkpoint(
            Checkpoint(self.origin, frontier.size, frontier.root()),
            [SignerKey(self.origin, self.signing_key)],
        )
        write_checkpoint(self.checkpoint_path, note)
        return TradeEntry(index, digest, record_id, entry)

    def _check_signed_log(self, hashes: list[str]) -> None:
        """``LedgerError`` if the checkpoint on file, signed by this key,
        covers a log the stored entries no longer hold (the key must never
        sign two checkpoints that contradict each other)."""
        if not self.checkpoint_path.is_file():
            return
        try:
            signed, _ = read_checkpoint(self.checkpoint_path, [self.verifier])
        except (NoteError, CheckpointError):
            return  # not ours: it is replaced
        try:
            check_against_ledger(signed, self.origin, hashes, unit="entries")
        except CheckpointMismatch as exc:
            raise LedgerError(
                f"refusing to extend {self.path}: {exc} since its last checkpoint"
            ) from None

    def prove_consistency(self, prior: int, later: int | None = None) -> dict[str, Any]:
        """A consistency proof between two sizes of the log (as the training
        ledger's ``prove_consistency``)."""
        hashes = self.block_hashes()
        try:
            return consistency_proof(
                hashes, prior, len(hashes) if later is None else later
            )
        except ValueError as exc:
            raise LedgerError(str(exc)) from None

    def verify(self, trusted: VerifierKey | None = None) -> MarketCheck:
        """Check every entry again from scratch, and the checkpoint on file.

        Each entry must be canonical, in sequence, linked to the previous one,
        for this market (its statement's ``market`` the operator's vkey:
        ``trusted``, else the recorded one), and hold a statement the records
        before it accept.
        The checkpoint must be signed by ``trusted`` (default: the operator
        key the file records, which proves only self-consistency) and cover a
        prefix; it is read before the entries, so a chain the operator
        appends to meanwhile is checked as one snapshot. Nothing is written
        (no key is created).

        Returns
        -------
        MarketCheck
            The number of entries, what the checkpoint anchored, and the
            book those entries make (so a caller counts what was checked).

        Raises
        ------
        TradeRefused
            Naming the first entry that fails, or the checkpoint.
        """
        try:
            key = trusted or self.recorded_verifier()
        except LedgerError as exc:
            raise TradeRefused(str(exc)) from None
        if key is None and len(self):
            raise TradeRefused("the file records no operator key: give a trusted key")
        book = TradeBook("" if key is None else key.encode())
        # Before the entries: the operator commits one, then writes its checkpoint.
        kept = read_note_or_error(self.checkpoint_path)
        prev, hashes = ZERO_HASH, []
        for position, entry in enumerate(self.entries()):
            try:
                value = parse_canonical(entry.entry, 2)
            except NotCanonical as exc:
                raise TradeRefused(f"entry {position}: {exc}") from None
            problem = entry_problem(value, entry, self.origin, position, prev)
            if problem is None:
                try:
                    record_id = book.check(value["statement"], value["signature"])
                    if record_id != entry.record_id:
                        problem = "its stored record id is not its statement's"
                    book.record(value["statement"], record_id)
                except TradeRefused as exc:
                    problem = str(exc)
            if problem is not None:
                raise TradeRefused(f"entry {position}: {problem}")
            prev = entry.hash
            hashes.append(entry.hash)
        if not hashes or key is None:
            return MarketCheck(0, "no entries, so no checkpoint", book)
        try:
            if isinstance(kept, Exception):
                raise kept
            found, _ = open_checkpoint(kept, [key])
            check_against_ledger(found, self.origin, hashes, unit="entries")
        except (OSError, NoteError, CheckpointError, CheckpointMismatch) as exc:
            raise TradeRefused(f"checkpoint {self.checkpoint_path}: {exc}") from None
        return MarketCheck(
            len(hashes), f"checkpoint of {found.size} entries signed by {key}", book
        )

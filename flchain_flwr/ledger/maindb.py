"""The main chain's SQLite file: creating it, opening it, its rows as blocks.

A main chain is one SQLite database (WAL mode) with two tables: ``meta``, text
by key (the format, the chain id, the main chain's public key), and
``blocks``, one row an anchor block (height, hash, the subchain origin, the
canonical record). Only the record is signed: :func:`parse_row` checks that
the hash and origin columns say what the record says. :func:`append_anchor`
appends one anchor block in a ``BEGIN IMMEDIATE`` transaction, so that
several processes may anchor into one file. :class:`~.mainchain.MainChain`
is built on these functions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from nacl.signing import SigningKey

from .anchorblock import (
    AnchorBlock,
    AnchorError,
    AnchorPolicy,
    anchor_record,
    check_anchor,
    genesis_record,
    parse_block,
)
from .checkpoint import Checkpoint, ledger_origin, new_chain_origin
from .notes import SignedNote, VerifierKey
from .sqlfile import connect, sqlite_message, unreadable
from .sqlschema import foreign_schema

MAIN_FORMAT: Final = "flchain-main/1"
"""The ``format`` a main chain's ``meta`` table names."""
BLOCK_ROW: Final = "SELECT height, record, hash, origin FROM blocks"
"""The query of whole ``blocks`` rows, in :func:`parse_row`'s order."""
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE blocks (height INTEGER PRIMARY KEY, hash TEXT NOT NULL, "
    "origin TEXT, record BLOB NOT NULL)",
    "CREATE INDEX blocks_origin ON blocks (origin, height)",
)


class MainChainError(Exception):
    """A main chain cannot be opened, read or written."""


class AnchorRefused(MainChainError):
    """An anchor was not appended: its checkpoint, signatures or consistency
    with the origin's previous anchor do not hold (the message says which)."""


def create_main_db(
    target: Path, chain_id: str, policy: AnchorPolicy, signing_key: SigningKey
) -> None:
    """Write a new main chain's file: its schema, identity and genesis block.

    Raises
    ------
    MainChainError
        If ``target`` exists or the chain id cannot be an origin.
    """
    if target.exists():
        raise MainChainError(f"{target} exists already")
    try:
        new_chain_origin(chain_id)
    except ValueError as exc:
        raise MainChainError(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    record = genesis_record(chain_id, policy)
    db = sqlite3.connect(target, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            db.execute(statement)
        meta = {
            "format": MAIN_FORMAT,
            "chain_id": chain_id,
            "key": bytes(signing_key.verify_key).hex(),
        }
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        genesis = parse_block(record, 0)
        db.execute("INSERT INTO blocks VALUES (0, ?, NULL, ?)", (genesis.hash, record))
        db.execute("COMMIT")
    finally:
        db.close()


def open_main_db(
    path: Path, *, read_only: bool = False
) -> tuple[sqlite3.Connection, str, VerifierKey, AnchorBlock]:
    """Open the main chain at ``path``: its connection, chain id, public key
    (named after its origin) and genesis block; with ``read_only``, without
    ever writing it (:func:`~.sqlfile.connect`).

    Raises
    ------
    MainChainError
        If the file is not a main chain or cannot be read (the connection is
        closed again).
    """
    try:  # used by one thread at a time, any thread
        db = connect(path, read_only=read_only, check_same_thread=False)
    except sqlite3.Error as exc:
        raise MainChainError(f"cannot read the main chain {path}: {exc}") from None
    try:
        foreign = foreign_schema(db)  # before anything reads a table
        if foreign is not None:
            raise MainChainError(foreign)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != MAIN_FORMAT:
            raise MainChainError(f"its format is not {MAIN_FORMAT}")
        chain_id = str(meta["chain_id"])
        public_key = VerifierKey(ledger_origin(chain_id), bytes.fromhex(meta["key"]))
        genesis = block_at(db, 0)
    except (sqlite3.Error, MainChainError, KeyError, ValueError) as exc:
        db.close()
        if unreadable(exc):
            raise MainChainError(
                f"cannot read the main chain {path}: {sqlite_message(exc)}"
            ) from None
        raise MainChainError(f"{path} is not a main chain ({exc})") from None
    except BaseException:
        db.close()
        raise
    return db, chain_id, public_key, genesis


def parse_row(height: int, row: tuple[Any, ...]) -> AnchorBlock:
    """The block in ``row`` (record, hash, origin column); every unsigned
    column must say what the record says (``MainChainError`` otherwise)."""
    try:
        block = parse_block(bytes(row[0]), height)
    except AnchorError as exc:
        raise MainChainError(f"main-chain block {height}: {exc}") from None
    if block.hash != row[1]:
        raise MainChainError(f"main-chain block {height}: its hash does not match")
    if block.origin != row[2]:
        raise MainChainError(
            f"main-chain block {height}: its origin column says "
            f"{str(row[2])[:80]!r}, its record {block.origin!r}"
        )
    return block


def block_at(db: sqlite3.Connection, height: int) -> AnchorBlock:
    """The block at ``height``; ``MainChainError`` if there is none or it is
    malformed."""
    row = db.execute(
        "SELECT record, hash, origin FROM blocks WHERE height = ?", (height,)
    ).fetchone()
    if row is None:
        raise MainChainError(f"no main-chain block at height {height}")
    return parse_row(height, row)


def every_block(db: sqlite3.Connection) -> Iterator[AnchorBlock]:
    """Every block, by height (each row checked against its record)."""
    rows = db.execute(f"{BLOCK_ROW} ORDER BY height")
    for height, *row in rows.fetchall():
        yield parse_row(int(height), tuple(row))


def blocks_by_origin(
    db: sqlite3.Connection, origin: str, order: str
) -> list[AnchorBlock]:
    """The blocks whose record names ``origin`` (never selected by the
    unsigned origin column), in ``order`` (an SQL ``ORDER BY`` clause)."""
    try:
        rows = db.execute(
            f"{BLOCK_ROW} WHERE json_extract(CAST(record AS TEXT), '$.origin') = ? "
            + order,
            (origin,),
        ).fetchall()
    except sqlite3.OperationalError as exc:  # a record that is not JSON, a lock
        raise MainChainError(
            f"cannot select the anchors of {origin} ({exc}); run `flchain main verify`"
        ) from None
    return [parse_row(int(height), tuple(row)) for height, *row in rows]


# pylint: disable=too-many-arguments
def append_anchor(
    db: sqlite3.Connection,
    chain_id: str,
    policy: AnchorPolicy,
    signed: SignedNote,
    log_key: VerifierKey,
    consistency: Mapping[str, Any] | None,
    check_previous: Callable[[AnchorBlock, Checkpoint], None],
) -> AnchorBlock:
    """Append the anchor block for ``signed`` after the head, in one
    ``BEGIN IMMEDIATE`` transaction (rolled back if anything fails).

    The block must pass :func:`~.anchorblock.check_anchor` under ``policy``
    and ``check_previous`` (against the origin's last anchor, read in the
    same transaction).

    Raises
    ------
    AnchorRefused
        If a check fails (nothing is appended).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        head = db.execute(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        height, prev_hash = int(head[0]) + 1, str(head[1])
        record = anchor_record(
            chain_id, height, prev_hash, signed, log_key, consistency
        )
        block = parse_block(record, height)
        try:
            found = check_anchor(block, policy)
        except AnchorError as exc:
            raise AnchorRefused(str(exc)) from None
        check_previous(block, found.checkpoint)
        db.execute(
            "INSERT INTO blocks VALUES (?, ?, ?, ?)",
            (height, block.hash, block.origin, record),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return block

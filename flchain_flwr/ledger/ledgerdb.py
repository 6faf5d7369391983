"""The ledger's SQLite file: creating it, checking it, and its rows as blocks.

A ledger is one SQLite database (WAL mode) with two tables: ``meta``, text
by key (the ledger format, the chain id, the key of the leader who opened
the chain), and ``blocks``, one row a block (height, hash, the canonical
header and body bytes, the leader's signature). This module creates a new
file (the folders above it, then schema and identity in one transaction),
opens an existing one, read-only for a reader (:mod:`.sqlfile`), refuses
one that is not a ledger, or whose metadata contradicts its genesis block,
and maps a ``blocks`` row to a
:class:`~.blocks.Block`. SQLite's errors while reading become a
:class:`~.blocks.LedgerError` naming the file. :class:`~.chain.Ledger` is
built on these functions.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from .blocks import (
    BLOCK_FORMATS,
    CONFIG_FIELD,
    LEDGER_FORMATS,
    Block,
    LedgerError,
    digest_of,
    parse_block,
)
from .canonical import NotCanonical, parse_json
from .sqlfile import connect, sqlite_message, unreadable
from .sqlschema import foreign_schema

MAX_HEIGHT: Final = 2**63 - 1
"""SQLite's largest integer: no block can be higher."""
BLOCK_ROW: Final = "SELECT height, hash, header, body, signature FROM blocks"
"""The query of whole ``blocks`` rows, in :func:`row_to_block`'s order."""
_COLUMNS: Final = {
    "meta": ("key", "value"),
    "blocks": ("height", "hash", "header", "body", "signature"),
}
"""The columns :data:`_SCHEMA` creates: what an existing ledger must have."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    header BLOB NOT NULL,
    body BLOB NOT NULL,
    signature TEXT NOT NULL
);
"""


def make_folder_for(path: Path) -> None:
    """Create the missing folders above a new ledger file ``path`` (absolute) and
    check that the file can be created there; say exactly what is wrong if not."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next(
            (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
            None,
        )
        reason = f"{blocker} is a file" if blocker else exc.strerror or str(exc)
        # OSError(errno, ...) keeps the subclass (NotADirectoryError, ...).
        raise OSError(
            exc.errno, f"cannot create folder {folder} for the ledger {path}: {reason}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot create the ledger {path}: folder {folder} is not writable"
        )


# pylint: disable=too-many-arguments
def open_database(
    path: Path,
    *,
    existed: bool,
    create: bool,
    durable: bool,
    chain_id: str | None,
    format_version: int,
    read_only: bool = False,
) -> tuple[sqlite3.Connection, str, int]:
    """Open (or, if empty and ``create``, initialise) the ledger at ``path``;
    with ``read_only``, without ever writing it (:func:`~.sqlfile.connect`).

    Returns the connection, the stored chain id and the ledger's format
    version; ``chain_id``, if given, must be the stored one. The connection
    is closed again if the ledger is refused.

    Raises
    ------
    OSError
        If a new file cannot be created.
    LedgerError
        If the file is not a flchain ledger, is damaged, cannot be read,
        holds another chain, or its metadata contradicts its genesis block.
    """
    try:
        db = connect(path, read_only=read_only)
    except sqlite3.Error as exc:
        raise _open_error(path, existed, exc) from None
    try:
        tables = _tables(db, path, existed)
        if not read_only:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        if not tables:
            if not create:
                raise LedgerError(f"{path} is not a flchain ledger (empty file)")
            _initialise(db, chain_id, format_version)
        stored, version = _identity(db, path, tables, chain_id)
    except BaseException:
        db.close()
        raise
    return db, stored, version


def _tables(db: sqlite3.Connection, path: Path, existed: bool) -> set[str]:
    """The names in the file's schema: SQLite's first read of it, which
    says whether it is an SQLite database at all."""
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise _open_error(path, existed, exc) from None


def _open_error(path: Path, existed: bool, exc: Exception) -> Exception:
    """What SQLite refusing to open the file at ``path``, or to read its
    schema, means: a new file cannot be created (``OSError``); an existing
    one cannot be read (:func:`~.sqlfile.unreadable`) or is not a ledger at
    all (``LedgerError``)."""
    if not existed:
        return OSError(f"cannot create the ledger {path}: {exc}")
    if unreadable(exc):
        return LedgerError(f"cannot read the ledger {path}: {sqlite_message(exc)}")
    return LedgerError(f"{path} is not a flchain ledger ({sqlite_message(exc)})")


def _initialise(
    db: sqlite3.Connection, chain_id: str | None, format_version: int
) -> None:
    """Write a new ledger's schema and identity, in WAL mode."""
    db.execute("PRAGMA journal_mode=WAL")  # persistent in the file
    db.execute("BEGIN IMMEDIATE")  # schema and identity: all or nothing
    try:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            db.execute(statement)
        set_meta(db, "format", f"flchain-ledger/{format_version}")
        set_meta(db, "chain_id", chain_id or uuid.uuid4().hex)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _identity(
    db: sqlite3.Connection, path: Path, tables: set[str], chain_id: str | None
) -> tuple[str, int]:
    """The stored chain id and format version of the ledger, checked: a
    ledger's schema, the chain id asked for, and a genesis block of the
    format the metadata names."""
    try:  # SQLite's own errors: a damaged file, text that is not UTF-8
        problem = _not_a_ledger(db, tables) if tables else None
        stored = None if problem else get_meta(db, "chain_id")
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise LedgerError(
            f"cannot read the ledger {path}: {sqlite_message(exc)}"
        ) from exc
    if problem is not None:
        raise LedgerError(f"{path} is not a flchain ledger ({problem})")
    if stored is None:
        raise LedgerError(f"{path} has no chain id")
    if chain_id is not None and chain_id != stored:
        raise LedgerError(f"{path} holds chain {stored!r}, not {chain_id!r}")
    version = LEDGER_FORMATS[str(get_meta(db, "format"))]
    genesis = _genesis_format(db)
    if genesis is not None and genesis != version:
        raise LedgerError(
            f"{path}: its metadata says flchain-ledger/{version}"
            f" but its genesis block is flchain-block/{genesis}: the metadata "
            "was changed (a format downgrade?); refusing to open it"
        )
    return stored, version


def _genesis_format(db: sqlite3.Connection) -> int | None:
    """The encoding version the genesis header names (``None``: no genesis
    block, or one too damaged to say; ``verify`` reports that)."""
    try:
        row = db.execute("SELECT header FROM blocks WHERE height = 0").fetchone()
        loose = None if row is None else parse_json(bytes(row[0]))
    except (sqlite3.Error, UnicodeDecodeError, TypeError, NotCanonical):
        return None
    name = loose.get("format") if isinstance(loose, dict) else None
    return BLOCK_FORMATS.get(name) if isinstance(name, str) else None


def _not_a_ledger(db: sqlite3.Connection, tables: set[str]) -> str | None:
    """Why an existing database is not a flchain ledger, or ``None`` (SQLite's
    errors pass through)."""
    foreign = foreign_schema(db)  # before anything reads a table
    if foreign is not None:
        return foreign
    for table, columns in _COLUMNS.items():
        if table not in tables:
            return f"it has no {table} table"
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = [column for column in columns if column not in present]
        if missing:
            return f"its {table} table lacks the column(s) {', '.join(missing)}"
    if get_meta(db, "format") not in LEDGER_FORMATS:
        return f"its format is not one of {', '.join(LEDGER_FORMATS)}"
    return None


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn SQLite's errors while reading (a damaged file, text that is not
    UTF-8) into a ``LedgerError`` naming the file ``path``."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise LedgerError(
            f"cannot read the ledger {path}: {sqlite_message(exc)}"
        ) from exc


def get_meta(db: sqlite3.Connection, key: str) -> str | None:
    """The ``meta`` value at ``key`` (``None`` if there is none)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    """Set the ``meta`` value at ``key``."""
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def row_to_block(row: tuple[Any, ...]) -> Block:
    """The block a ``blocks`` row holds; ``LedgerError`` if it is corrupt."""
    height, digest, header, body, signature = row
    try:
        header, body = bytes(header), bytes(body)
        parsed_header, parsed_body = parse_block(header, body)
        if not isinstance(parsed_header, dict) or not isinstance(parsed_body, dict):
            raise NotCanonical("header or body is not a JSON object")
        return Block(
            height=int(height),
            hash=str(digest),
            header_bytes=header,
            body_bytes=body,
            signature=str(signature),
            header=parsed_header,
            body=parsed_body,
        )
    except (TypeError, ValueError) as exc:
        raise LedgerError(
            f"block {height!r} is corrupt ({exc}); run `flchain ledger verify`"
        ) from None


def rows(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    """Every ``blocks`` row, by height (the query runs on the first ``next``)."""
    cursor = db.execute(f"{BLOCK_ROW} ORDER BY height")
    # Not `yield from`: closing this generator would then close the cursor,
    # which fails (in a destructor, as a traceback) once a caller that left
    # the loop early has closed the ledger.
    for row in cursor:  # noqa: UP028
        yield row


def recorded_config(db: sqlite3.Connection, block: Block) -> dict[str, Any] | None:
    """The settings behind ``block``'s ``config_digest``: the ``config`` of
    the first block with that digest, searched back from ``block`` (``None``
    if none records it; SQLite's errors pass through)."""
    digest = block.header["config_digest"]
    query = f"{BLOCK_ROW} WHERE height <= ? ORDER BY height DESC"
    for row in db.execute(query, (block.height,)):
        earlier = row_to_block(row)
        if earlier.header["config_digest"] != digest:
            break
        config = earlier.body.get(CONFIG_FIELD)
        if (
            isinstance(config, dict)
            and digest_of(config, earlier.format_version) == digest
        ):
            return config
    return None


def insert_block(db: sqlite3.Connection, block: Block) -> None:
    """Insert ``block``'s row (inside the caller's transaction)."""
    db.execute(
        "INSERT INTO blocks (height, hash, header, body, signature) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            block.height,
            block.hash,
            block.header_bytes,
            block.body_bytes,
            block.signature,
        ),
    )

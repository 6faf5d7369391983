"""Opening a flchain SQLite file: read-write for its writer, read-only for a
reader.

A ledger, main chain or trading chain given to a command that only reads it
is evidence, not the reader's to change. :func:`connect` with ``read_only``
opens it with SQLite's ``mode=ro``, so SQLite never writes it: a
``-journal`` left by a writer killed mid-transaction is not rolled back
into it (SQLite cannot read the file without that, so the read is refused
and both stay as they are), and a ``-wal`` is read, never checkpointed into
it. A WAL-mode file (a ledger, a main chain) is readable only through its
``-wal`` and ``-shm``: where neither is beside it, SQLite creates them (an
empty ``-wal`` and its index) and, read-only, leaves them; in a folder the
reader cannot write, it cannot read the file unless both are there (refused,
saying why). SQLite's ``immutable=1`` would avoid both, but reads without
locks: a file a live writer changes would be read torn.
Only a regular file is opened (:func:`~.inputfile.irregular_problem`,
checked by the caller first): on a FIFO SQLite would wait forever.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from .inputfile import resolved

_READ_ONLY: Final = {
    "SQLITE_READONLY_ROLLBACK": "a -journal beside it holds a transaction a "
    "writer left unfinished, which only a writer may roll back; read-only, both "
    "are left as they are",
    "SQLITE_READONLY_DIRECTORY": "SQLite reads a WAL-mode file only through "
    "the -wal and -shm beside it, and they are missing in a folder it cannot "
    "write",
    "SQLITE_READONLY_RECOVERY": "the -wal beside it must be recovered, which "
    "only a writer may do",
}
"""What SQLite's refusals of a file opened read-only mean here."""
_UNREADABLE: Final = (
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_PERM",
)
"""The prefixes of SQLite's error names that say a file could not be read,
not what it holds."""


def connect(
    path: Path,
    *,
    read_only: bool,
    timeout: float = 30.0,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` in autocommit mode; with
    ``read_only``, one that never writes the file (the path quoted as a
    ``file:`` URI, whatever characters it holds)."""
    if read_only:
        return sqlite3.connect(
            f"{resolved(path).as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            timeout=timeout,
            check_same_thread=check_same_thread,
        )
    return sqlite3.connect(
        path,
        isolation_level=None,
        timeout=timeout,
        check_same_thread=check_same_thread,
    )


def sqlite_message(exc: Exception) -> str:
    """SQLite's error message, with what it means when reading read-only
    refused the file. Python's sqlite3 raises ``UnicodeDecodeError`` instead
    when that message is not UTF-8 itself (it quotes a damaged schema): then
    its bytes, the undecodable ones replaced."""
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        return exc.object.decode("utf-8", "replace")
    meaning = _READ_ONLY.get(getattr(exc, "sqlite_errorname", ""))
    return str(exc) if meaning is None else f"{meaning} (SQLite: {exc})"


def unreadable(exc: Exception) -> bool:
    """Whether SQLite's error ``exc`` says the file could not be read (a
    read-only refusal, a lock, an I/O error), rather than that its content is
    not what was expected."""
    return str(getattr(exc, "sqlite_errorname", "")).startswith(_UNREADABLE)

"""What no flchain SQLite file (a ledger, a main chain, a trading chain) holds.

Each is made of plain tables only. A view runs its own query whenever it is
read, so a view named like one of the tables (``blocks AS WITH RECURSIVE
...``) would make every reader, ``verify`` first, run a query that never
ends; a trigger runs its own statements whenever a table is written; a
virtual table reads through a module. A file holding any of them is refused
before anything reads it (:func:`foreign_schema`).
"""

from __future__ import annotations

import sqlite3
from typing import Final

_FOREIGN: Final = (
    "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger') "
    "OR (type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%') ORDER BY name LIMIT 1"
)


def foreign_schema(db: sqlite3.Connection) -> str | None:
    """Why the database cannot be a flchain file for what its schema holds (a
    view, a trigger or a virtual table, named), or ``None``. SQLite's errors
    pass through."""
    row = db.execute(_FOREIGN).fetchone()
    if row is None:
        return None
    kind = "virtual table" if row[0] == "table" else str(row[0])
    return f"it holds the {kind} {str(row[1])[:40]!r}, which no flchain file has"

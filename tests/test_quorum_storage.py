"""Regression: a corrupt ``header_signatures`` cell is a clear verify failure.

Forges the review's cases: block 2's stored header signatures rewritten as
TEXT, and as an integer of 2**62 (``bytes(n)`` would allocate n bytes).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from flchain_flwr.ledger import Ledger

from .test_pov import pov_chain


@pytest.mark.parametrize(
    "value",
    ["CAST(signatures AS TEXT)", "4611686018427387904"],
)
def test_a_signatures_cell_that_is_not_bytes_fails_verify(
    tmp_path: Path, value: str
) -> None:
    ledger, _ = pov_chain(tmp_path)
    path = ledger.path
    ledger.close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE header_signatures SET signatures = {value} WHERE height=2")
    db.close()
    report = Ledger(path).verify()
    assert not report.ok and report.bad_height == 2
    assert "corrupt header signatures" in report.reason

"""benchmarks/_pool.py: cells side by side give what they give one by one."""

from __future__ import annotations

import operator
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from _pool import run_cells


def test_parallel_cells_match_sequential_ones() -> None:
    cells = [(2, 10), (3, 5), (7, 2), (5, 3)]
    one = list(run_cells(operator.pow, cells, jobs=1))
    assert one == [(c, c[0] ** c[1]) for c in cells]  # here, in order
    two = dict(run_cells(operator.pow, cells, jobs=2))  # spawned workers
    assert two == dict(one)


def test_a_failing_cell_raises_in_the_caller() -> None:
    with pytest.raises(ZeroDivisionError):
        list(run_cells(operator.truediv, [(1, 1), (1, 0)], jobs=2))

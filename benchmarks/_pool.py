"""Run a benchmark's independent cells side by side in worker processes.

A cell is one call ``fn(*cell)`` whose result depends on its arguments only
(seeded, simulated time), so running cells in parallel changes when they
finish, not what they measure. Results come back as cells finish; with
``jobs <= 1`` the cells run here, one after the other, in the given order.
Workers are spawned (not forked from a process that already ran torch) and
take cells in the given order, so the first cells finish first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any


def run_cells(
    fn: Callable[..., Any],
    cells: Sequence[tuple[Any, ...]],
    jobs: int,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Yield ``(cell, fn(*cell))`` for every cell, as each finishes.

    ``fn`` and ``initializer`` (run once per worker, e.g. to set log levels)
    must be module-level functions, and the cells picklable, when ``jobs > 1``.
    """
    if jobs <= 1 or len(cells) <= 1:
        for cell in cells:
            yield cell, fn(*cell)
        return
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(cells)),
        mp_context=get_context("spawn"),
        initializer=initializer,
    ) as pool:
        futures = {pool.submit(fn, *cell): cell for cell in cells}
        for future in as_completed(futures):
            yield futures[future], future.result()

"""A wrapped strategy's state saved and put back (PoVStrategy's retry)."""

from __future__ import annotations

import threading

import numpy as np

from flchain_flwr.strategies.snapshot import Snapshot


class _Evaluator:
    """The user's own object, whose bound method a strategy holds."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self) -> int:
        self.calls += 1
        return self.calls


class _Strategy:
    def __init__(self, evaluator: _Evaluator) -> None:
        self.momentum = np.zeros(3)
        self.history: list[int] = []
        self.evaluate_fn = evaluator.evaluate


def test_a_restore_puts_state_back_and_keeps_the_users_callables() -> None:
    evaluator = _Evaluator()
    strategy = _Strategy(evaluator)
    saved = Snapshot.of(strategy)
    strategy.momentum += 1.0
    strategy.history.append(1)
    saved.restore(strategy)
    assert np.array_equal(strategy.momentum, np.zeros(3)) and strategy.history == []
    # the callback still reaches the user's object, not a copy of it
    strategy.evaluate_fn()
    assert evaluator.calls == 1
    strategy.momentum += 2.0
    saved.restore(strategy)  # usable again
    assert np.array_equal(strategy.momentum, np.zeros(3))


def test_a_strategy_that_cannot_be_copied_says_why() -> None:
    strategy = _Strategy(_Evaluator())
    strategy.lock = threading.Lock()  # type: ignore[attr-defined]
    saved = Snapshot.of(strategy)
    assert saved.attributes is None and "cannot be copied" in saved.problem

"""``verify`` and the rewards refuse the same contributions: one check,
:func:`~flchain_flwr.ledger.rewards.contribution_problem`. Each case forges a
block's contributions and re-signs it with the leader's key (what its holder
can write)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flchain_flwr.ledger.rewards import credited

from .ledger_helpers import build_ledger
from .test_anchors import rewrite_body


def _non_canonical_id(body: dict[str, Any]) -> None:
    """Name node 10 as "010" in its included entry and its contribution."""
    body["included"][0]["node_id"] = "010"
    body["contributions"][0]["node_id"] = "010"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda b: b["contributions"].append("node 10"),
            "contributions: an entry is not a JSON object",
        ),
        (
            lambda b: b.update(contributions={"10": 1}),
            "contributions: not a JSON array",
        ),
        (_non_canonical_id, "included update 0: node_id '010' is not a node id"),
    ],
)
def test_verify_and_rewards_refuse_the_same_forged_contributions(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    ledger = build_ledger(tmp_path / "l.db")
    assert ledger.verify().ok and credited(ledger.block(3).body)  # pays, unforged
    rewrite_body(ledger, 3, change)
    report = ledger.verify()
    assert not report.ok and report.bad_height == 3 and reason in report.reason
    assert credited(ledger.block(3).body) == []


def test_a_cosine_rounded_above_one_is_recorded_as_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On large models the dot product and the two norms round differently,
    # so the cosine of parallel vectors can come out a hair above 1 (a crash
    # test once recorded 1.000000000001, which `verify` refuses). Norms that
    # are 1e-11 short stand in for that rounding here.
    from flchain_flwr.ledger import rewards

    exact = np.linalg.norm
    monkeypatch.setattr(
        np.linalg, "norm", lambda x, *a, **k: exact(x, *a, **k) * (1 - 1e-11)
    )
    delta = {"w": np.arange(1.0, 7.0)}
    (entry,) = rewards.contributions([5], [delta], [10.0], delta)
    assert entry["relevance"] == 1.0 and entry["score"] == 1.0
    body = {"included": [{"node_id": "5"}], "contributions": [entry]}
    assert rewards.contribution_problem(body) is None

"""The stragglers benchmark's summary: paired seeds, lower-bound speed-ups."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

stragglers = pytest.importorskip("stragglers")


def row(
    name: str, seed: int, time_to_target: float | None, gap: float
) -> dict[str, Any]:
    return {
        "strategy": name,
        "seed": seed,
        "budget": 500.0,
        "time_to_target": time_to_target,
        "final_accuracy": 0.5,
        "tier_accuracy": [0.9, 0.5, 0.9 - gap / 100],
        "worst_tier_gap": gap,
        "weight_share": [0.5, 0.3, 0.2],
        "data_share": [0.4, 0.3, 0.3],
        "versions": 10,
        "wall_seconds": 1.0,
    }


def test_headline_uses_only_seeds_where_both_finished() -> None:
    rows = [row("fedbuff", 0, 80.0, 90.0), row("fedbuff", 1, 90.0, 70.0)]
    rows.append(row("+all", 0, 100.0, 40.0))
    assert stragglers.headline(rows) == (40.0, 90.0, [0])
    assert stragglers.headline(rows[:2]) == (None, None, [])


def test_speedup_is_a_lower_bound_where_fedavg_missed_the_target() -> None:
    rows = [row("fedavg", 0, None, 30.0), row("+all", 0, 100.0, 40.0)]
    rows += [row("fedavg-os", 0, 250.0, 30.0), row("fedbuff", 0, None, 90.0)]
    speedups = stragglers.summarise(rows)["speedups"]
    assert speedups["+all vs fedavg"] == {"value": 5.0, "at_least": True, "seeds": [0]}
    assert speedups["+all vs fedavg-os"] == {
        "value": 2.5,
        "at_least": False,
        "seeds": [0],
    }
    # FedBuff missed it: no ratio, not a made-up one
    assert speedups["fedbuff vs fedavg-os"]["value"] is None


def test_reuse_keeps_planned_cells_of_a_run_with_the_same_settings(
    tmp_path: Path,
) -> None:
    import argparse
    import json

    args = argparse.Namespace(nodes=100, lr=0.05, seeds=3, first_seed=0, jobs=2)
    earlier = tmp_path / "seed1.json"
    settings = {**vars(args), "seeds": 1, "first_seed": 1, "jobs": 1}
    runs = [row("fedbuff", 1, 80.0, 60.0), row("+memory", 1, None, 70.0)]
    earlier.write_text(json.dumps({"settings": settings, "runs": runs}))
    args.reuse = [earlier]
    kept = stragglers.reused_rows(args, [("fedbuff", 0), ("fedbuff", 1)])
    assert kept == [runs[0]]  # +memory is not planned here
    args.lr = 0.1
    with pytest.raises(ValueError, match=r"lr is 0\.05 there, 0\.1 here"):
        stragglers.reused_rows(args, [("fedbuff", 1)])
    earlier.write_text("{}")
    with pytest.raises(ValueError, match="not a stragglers result"):
        stragglers.reused_rows(args, [("fedbuff", 1)])

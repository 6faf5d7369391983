"""The robustness benchmark's summary: the all-rejected floor and the drop
beyond it, on scripted rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from flchain_flwr.data import fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from _robustness_report import all_rejected_floor, drops, summarize


def row(seed: int, attack: str, accuracy: float, accepted: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "defence": "pov",
        "attack": attack,
        "final_accuracy": accuracy,
        "poisoned_updates": 0 if attack == "none" else 120,
        "poisoned_acceptance_rate": accepted,
        "honest_false_rejection_rate": 0.0,
        "honest_updates": 280,
    }


def test_the_floor_averages_the_attacks_of_which_nothing_was_accepted() -> None:
    rows = [
        row(0, "none", 0.80, 0.0),
        row(0, "sign-flip", 0.77, 0.0),  # drop 3, nothing accepted
        row(0, "scaling", 0.75, 0.0),  # drop 5, nothing accepted
        row(0, "cosine-edge", 0.74, 0.2),  # drop 6, some accepted: not the floor
        row(1, "none", 0.70, 0.0),
        row(1, "cosine-edge", 0.69, 0.1),  # seed 1 has no floor cell
    ]
    floor = all_rejected_floor(rows, drops(rows, "pov"))
    assert set(floor) == {0}
    assert floor[0]["points"] == pytest.approx(4.0)
    assert sorted(floor[0]["attacks"]) == ["scaling", "sign-flip"]
    summary = summarize(rows)
    assert summary["pov_worst_case_drop_points"] == pytest.approx(6.0)
    excess = summary["pov_worst_excess_drop"]
    assert excess["points"] == pytest.approx(2.0)  # cosine-edge: 6 - 4
    assert (excess["seed"], excess["attack"]) == (0, "cosine-edge")
    assert "tail" not in summary  # no row recorded a tail mean


def test_the_tail_summary_repeats_the_drops_on_the_tail_means() -> None:
    rows = [
        {**row(0, "none", 0.80, 0.0), "tail_accuracy": 0.78},
        {**row(0, "sign-flip", 0.77, 0.0), "tail_accuracy": 0.77},  # floor 1
        {**row(0, "cosine-edge", 0.74, 0.2), "tail_accuracy": 0.755},  # 2.5
        {**row(0, "scaling", 0.75, 0.0)},  # no tail mean: left out of the tail
    ]
    summary = summarize(rows)
    assert summary["pov_worst_case_drop_points"] == pytest.approx(6.0)
    tail = summary["tail"]
    worst = tail["worst_case_drop"]["pov"]
    assert worst["points"] == pytest.approx(2.5)
    assert worst["attack"] == "cosine-edge"
    assert set(tail["drop_points"]["pov"]["0"]) == {"sign-flip", "cosine-edge"}
    assert tail["pov_all_rejected_floor"]["0"]["points"] == pytest.approx(1.0)
    assert tail["pov_worst_excess_drop"]["points"] == pytest.approx(1.5)


def test_the_tail_mean_needs_as_many_versions_as_it_averages() -> None:
    from robustness import tail_mean

    curve = [0.1, 0.5, 0.6, 0.7]
    assert tail_mean(curve, 2) == pytest.approx(0.65)
    assert tail_mean(curve, 4) == pytest.approx(0.475)
    assert tail_mean(curve, 5) is None
    assert tail_mean(curve, 0) is None


def test_a_rerun_at_another_alpha_does_not_add_to_or_report_the_old_split(
    tmp_path: Path,
) -> None:
    import argparse
    import shutil

    from robustness import load_rows, other_split

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    for name, alpha in (("robustness", 0.5), ("partial/robustness-iid", 100.0)):
        output = tmp_path / f"{Path(name).name}.json"
        shutil.copy(results / f"{name}.json", output)  # the first has no alpha
        rows = load_rows(results / f"{name}.rows.jsonl")
        assert rows
        for asked in (0.5, 100.0):
            args = argparse.Namespace(output=str(output), alpha=asked)
            problem = other_split(args, rows)
            assert (problem is None) == (asked == alpha), (name, asked)
        nothing_yet = argparse.Namespace(output=str(output), alpha=3.0)
        assert other_split(nothing_yet, []) is None
    fresh = argparse.Namespace(output=str(tmp_path / "new.json"), alpha=3.0)
    assert other_split(fresh, rows) is None


def test_recording_the_curve_leaves_torch_rng_as_it_was() -> None:
    import torch
    from flwr.app import ArrayRecord, MetricRecord
    from robustness import curve_recorder

    def reseeding_evaluator(version: int, arrays: ArrayRecord) -> MetricRecord:
        torch.manual_seed(0)  # as the app's evaluator does (it builds a model)
        return MetricRecord({"accuracy": 0.5 + version / 100})

    curve: dict[int, float] = {}
    record = curve_recorder(reseeding_evaluator, curve)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    record(1, ArrayRecord())
    record(2, ArrayRecord())
    assert torch.equal(torch.rand(3), expected)
    assert curve == {1: 0.51, 2: 0.52}


def test_the_drop_from_fedavg_counts_what_pov_costs_without_attack() -> None:
    fedavg_none = {**row(0, "none", 0.84, 0.0), "defence": "fedavg"}
    rows = [
        {**row(0, "none", 0.80, 0.0), "tail_accuracy": 0.79},
        {**row(0, "sign-flip", 0.79, 0.0), "tail_accuracy": 0.785},
    ]
    assert "pov_drop_from_fedavg_no_attack" not in summarize(rows)  # no FedAvg
    summary = summarize([*rows, {**fedavg_none, "tail_accuracy": 0.83}])
    # PoV's own drop is 1 point; against FedAvg's 84 % it is 5, and PoV's
    # no-attack cell alone already 4 below.
    assert summary["pov_worst_case_drop_points"] == pytest.approx(1.0)
    found = summary["pov_drop_from_fedavg_no_attack"]
    assert (found["points"], found["attack"]) == (pytest.approx(5.0), "sign-flip")
    assert found["drop_points"]["0"]["none"] == pytest.approx(4.0)
    tail = summary["tail"]["pov_drop_from_fedavg_no_attack"]
    assert tail["points"] == pytest.approx(4.5)  # 83 - 78.5


@pytest.mark.skipif(
    fashion_mnist.local_dir() is None, reason="Debian's dataset-fashion-mnist absent"
)
def test_a_flower_baseline_cell_repeats_whatever_the_global_random_state() -> None:
    """Flower's FedAvg samples nodes with the global ``random``; the adaptive
    attackers' pool, and the sum's order, follow that order."""
    import argparse
    import random

    from robustness import run_one

    args = argparse.Namespace(
        nodes=4,
        fraction=0.5,
        versions=2,
        train_subset=400,
        alpha=0.5,
        min_cosine=0.0,
        max_norm_ratio=None,
        verifiers=1,
        trusted=20,
        tail=1,
    )
    curves = []
    for state in (1, 2):  # a run id each: the colluders' pool is per run
        random.seed(state)
        row = run_one("fedavg", "min-max", args, seed=0, run_id=8 + state)
        curves.append(row["accuracy_curve"])
    assert len(curves[0]) == 2
    assert curves[0] == curves[1]

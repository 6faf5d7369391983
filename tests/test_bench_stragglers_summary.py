"""The stragglers benchmark's summary: paired seeds, lower-bound speed-ups."""

from __future__ import annotations

import argparse
import json
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
        "curve": [[500.0, 0.5, [0.9, 0.5, 0.9 - gap / 100]]],
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
    args = argparse.Namespace(nodes=100, lr=0.05, seeds=3, first_seed=0, jobs=2)
    earlier = tmp_path / "seed1.json"
    settings = {**vars(args), "seeds": 1, "first_seed": 1, "jobs": 1}
    runs = [row("fedavg", 1, 300.0, 30.0), row("fedbuff", 1, 80.0, 60.0)]
    runs.append(row("+memory", 1, None, 70.0))
    earlier.write_text(json.dumps({"settings": settings, "runs": runs}))
    args.reuse = [earlier]
    planned = [("fedavg", 0), ("fedbuff", 0), ("fedavg", 1), ("fedbuff", 1)]
    kept = stragglers.reused_rows(args, planned)
    assert kept == runs[:2]  # +memory is not planned here
    args.lr = 0.1
    with pytest.raises(ValueError, match=r"lr is 0\.05 there, 0\.1 here"):
        stragglers.reused_rows(args, [("fedbuff", 1)])
    earlier.write_text("{}")
    with pytest.raises(ValueError, match="not a stragglers result"):
        stragglers.reused_rows(args, [("fedbuff", 1)])


DEFAULTS: dict[str, Any] = {
    "nodes": 15,
    "rounds": 6,
    "seeds": 1,
    "first_seed": 0,
    "strategies": "fedavg,fedbuff",
    "target": 0.4,
    "alpha": 0.5,
    "tier_classes": "0,1,2,3;4,5,6;7,8,9",
    "train_subset": 12_000,
    "test_subset": 1_000,
    "local_steps": 3,
    "lr": 0.05,
    "buffer_size": 3,
    "keep": 0.7,
    "fairness_max": 4.0,
    "target_staleness": 1.5,
    "memory_age": 100,
    "seconds_per_example": 0.01,
    "bandwidth": 8e6,
    "jitter": 0.2,
    "eval_every": 20.0,
    "personal_alpha": 0.0,
    "out": "elsewhere.json",
    "jobs": 1,
    "reuse": [],
}
"""``stragglers.py``'s settings at its defaults (buffer size resolved)."""


def _result(path: Path, runs: list[dict[str, Any]]) -> Path:
    for r in runs:
        r["curve"] = [
            [0.0, 0.1, [0.1, 0.1, 0.1]],
            [r["budget"], 0.5, r["tier_accuracy"]],
        ]
    path.write_text(json.dumps({"settings": DEFAULTS, "runs": runs}))
    return path


def test_a_run_whose_every_cell_is_reused_still_writes_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merging finished results (say a seed-0 file and a seed-1 file) into one
    reruns nothing, and still writes ``--out``."""
    earlier = _result(
        tmp_path / "earlier.json",
        [row("fedavg", 0, None, 30.0), row("fedbuff", 0, 80.0, 60.0)],
    )
    out = tmp_path / "merged.json"

    def no_cell(*_: Any) -> None:
        raise AssertionError("every cell is reused: nothing should run")

    monkeypatch.setattr(stragglers, "run_one", no_cell)
    argv = ["stragglers.py", "--seeds", "1", "--strategies", "fedavg,fedbuff"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--reuse", str(earlier), "--out", str(out)]
    )
    stragglers.main()
    assert out.exists()
    assert json.loads(out.read_text())["missing"] == []


def test_reused_cells_of_one_seed_share_one_fedavg_budget(tmp_path: Path) -> None:
    """Each row was finished against its own run's FedAvg budget (time to
    target censored at it, final accuracy taken at it): two files whose
    FedAvg of seed 0 lasted differently are not merged."""
    a = _result(
        tmp_path / "a.json",
        [row("fedavg", 0, None, 30.0), row("fedbuff", 0, 80.0, 60.0)],
    )
    late = [row("fedavg", 0, None, 30.0), row("+all", 0, 650.0, 40.0)]
    for r in late:
        r["budget"] = 700.0
    b = _result(tmp_path / "b.json", late)
    args = argparse.Namespace(**{**DEFAULTS, "reuse": [a, b]})
    planned = [("fedavg", 0), ("fedbuff", 0), ("+all", 0)]
    with pytest.raises(ValueError, match="different budgets"):
        stragglers.reused_rows(args, planned)


def test_a_reused_row_without_its_fedavg_is_not_kept_beside_a_rerun_fedavg(
    tmp_path: Path,
) -> None:
    """A file holding +all seed 0 but not FedAvg seed 0 (a hand-merged or
    trimmed file) is refused: a rerun FedAvg could set another budget."""
    lone = _result(tmp_path / "lone.json", [row("+all", 0, 100.0, 40.0)])
    args = argparse.Namespace(**{**DEFAULTS, "reuse": [lone]})
    with pytest.raises(ValueError, match="its FedAvg's is None"):
        stragglers.reused_rows(args, [("fedavg", 0), ("+all", 0)])


@pytest.mark.parametrize("shape", ["list", "row-without-strategy", "string"])
def test_a_reuse_file_of_another_shape_is_a_clear_error(
    tmp_path: Path, shape: str
) -> None:
    """A JSON list, a row without "strategy" or a string: the one-line
    refusal (parser.error), not a traceback."""
    settings = {k: v for k, v in DEFAULTS.items() if k not in stragglers.SETTINGS_FREE}
    text = {
        "list": "[]",
        "row-without-strategy": json.dumps({"settings": settings, "runs": [{}]}),
        "string": '"x"',
    }[shape]
    path = tmp_path / "odd.json"
    path.write_text(text)
    args = argparse.Namespace(**{**DEFAULTS, "reuse": [path]})
    with pytest.raises(ValueError, match="not a stragglers result"):
        stragglers.reused_rows(args, [("fedavg", 0)])


def test_joined_policies_name_a_strategy_and_refused_pairs_stop_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``+fedsa+fairness`` runs both policies; a typo, a repeated policy or a
    pair FedBuff refuses (fairness beside the update memory) is one line
    before anything runs."""
    args = argparse.Namespace(**DEFAULTS)
    both = stragglers.strategy_for("+fedsa+fairness", args, None, 0)
    assert both.fairness is not None and both.scheduling is not None
    assert both.update_memory is None and both.buffer_tuning is None
    assert stragglers.is_strategy("+fedsa+fairness")
    for name in ("+fedsa+fedsa", "+fedsa+typo", "fedsa+fairness", "+", "++fedsa"):
        assert not stragglers.is_strategy(name), name
    assert not stragglers.is_strategy("+fedsa:2+bafl")  # only nova takes a cap
    assert not stragglers.is_strategy("+bafl+nova+nova:2")
    capped = stragglers.strategy_for("+bafl+nova:2", args, None, 0)
    assert capped.work_normalisation is not None
    assert capped.work_normalisation.spec == "fednova:2"
    plain = stragglers.strategy_for("+bafl+nova", args, None, 0)
    assert plain.work_normalisation is not None
    assert plain.work_normalisation.spec == "fednova"

    def no_cell(*_: Any) -> None:
        raise AssertionError("a refused strategy must stop the run first")

    monkeypatch.setattr(stragglers, "run_one", no_cell)
    for name, reason in (
        ("+fedsa+typo", "unknown strategies"),
        ("+fairness+memory", "+fairness+memory: "),
        ("+bafl+nova:0.5", "+bafl+nova:0.5: "),
    ):
        argv = ["stragglers.py", "--strategies", f"fedbuff,{name}"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as stop:
            stragglers.main()
        assert stop.value.code == 2
        assert reason in capsys.readouterr().err


def test_lowest_gap_names_the_variant_with_the_smallest_mean_gap() -> None:
    """Only FedBuff variants that finished every seed plain FedBuff did compete;
    FedAvg's gap (often small: it is poor everywhere) never counts."""
    rows = [row("fedbuff", 0, 80.0, 60.0), row("fedbuff", 1, 80.0, 62.0)]
    rows += [row("fedavg", 0, None, 5.0), row("fedavg", 1, None, 5.0)]
    rows += [row("+fedsa+fairness", 0, 140.0, 10.0)]  # seed 1 missing
    rows += [row("+fairness", 0, 100.0, 40.0), row("+fairness", 1, 100.0, 44.0)]
    assert stragglers.lowest_gap(rows) == ("+fairness", 42.0, [0, 1])
    rows.append(row("+fedsa+fairness", 1, 140.0, 12.0))
    assert stragglers.lowest_gap(rows) == ("+fedsa+fairness", 11.0, [0, 1])
    assert stragglers.lowest_gap(rows[2:4]) is None
    # a collapsed model (one class everywhere) has a small gap, and does not count
    for seed in (0, 1):
        rows.append(row("+fedsa+memory", seed, None, 3.0) | {"final_accuracy": 0.1})
    assert stragglers.lowest_gap(rows) == ("+fedsa+fairness", 11.0, [0, 1])


def test_late_gap_averages_the_gaps_of_the_last_window_of_the_budget() -> None:
    """Evaluations before the window, or past the budget, do not count."""
    late = row("fedbuff", 0, 80.0, 60.0)
    late["curve"] = [
        (100.0, 0.5, [0.9, 0.1, 0.5]),  # before the window: gap 80
        (400.0, 0.5, [0.9, 0.5, 0.7]),  # gap 40
        (500.0, 0.5, [0.6, 0.5, 0.5]),  # gap 10
        (520.0, 0.5, [0.9, 0.0, 0.0]),  # past the budget (500)
    ]
    assert stragglers.late_gap(late) == pytest.approx(25.0)
    assert (
        stragglers.summarise([late])["strategies"]["fedbuff"]["late_gap_mean"] == 25.0
    )

"""Semi-asynchronous FedBuff against Flower's own FedAvg, in simulated time.

Setting: the digits app (real sklearn digits, small CNN), >= 20 nodes split by
Dirichlet(alpha=0.3) over labels, device speeds in tiers 1x / 4x / 10x slower
(bandwidth scaled alike), the same virtual-clock grid for every strategy:

- ``fedavg``: Flower's FedAvg, unchanged (each round waits for the slowest node);
- ``fedbuff``: ours, K = a quarter of the nodes, FedBuff staleness 1/sqrt(1+s);
- ``fedasync``: ours, K = 1, polynomial staleness (a=0.5), mixing 0.6 (FedAsync).

FedAvg runs ``--rounds`` rounds; its simulated duration is the time budget every
other strategy gets. Reported per strategy and seed: simulated time to
``--target`` accuracy on the server's held-out test set, final accuracy at the
budget, versions produced. Headline: FedAvg's time to target over FedBuff's.

FedBuff and FedAsync run with the settings the published results used (FedBuff's
defaults then: no federated evaluation, claimed example counts, the seeded
shuffle of free nodes, the "delta" state rule), so those results reproduce.

JSON to benchmarks/results/async_vs_sync.json, a PNG of accuracy against simulated
time beside it; the last line printed is ``async_vs_sync speedup: <x>``.
``--strategies`` and ``--seed-list`` run a part of it (FedAvg always runs: it
sets the time budget) into async_vs_sync_partial.json unless ``--out`` says
otherwise; ``--compare`` checks the runs against an earlier results file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from _common import APP_DIR, RESULTS, write_results
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import FedAvg, Strategy

from flchain_flwr.sim import (
    VirtualGrid,
    app_run_config,
    examples_work,
    simulate,
    spread,
    tiered,
)
from flchain_flwr.strategies import (
    AsyncResult,
    Claimed,
    FedBuff,
    Polynomial,
    ShuffleAll,
    mean_staleness,
)

STRATEGIES = ("fedavg", "fedbuff", "fedasync")

# The app's central_evaluator, typed here: the app package ships no py.typed, so
# mypy sees it as Any when it checks this file without the app's sources.
Evaluator = Callable[[int, ArrayRecord], MetricRecord]


def published_settings() -> dict[str, Any]:
    """FedBuff's defaults when the published results were measured (they changed
    since): set explicitly so that those results stay reproducible."""
    return {
        "fraction_evaluate": 0.0,  # published results: no federated evaluation
        "min_evaluate_nodes": 1,  # published results' default (unused at fraction 0)
        "evaluate_every": 1,  # published results' default (unused at fraction 0)
        "example_weighting": Claimed(),  # published results: claimed example counts
        "scheduling": ShuffleAll(),  # published results: seeded shuffle of free nodes
        "state_rule": "delta",  # published results' rule (the CNN has no state arrays)
    }


def time_to_target(curve: list[tuple[float, float]], target: float) -> float | None:
    """First simulated time at which accuracy reaches ``target`` (None if never)."""
    return next((t for t, acc in curve if acc >= target), None)


def accuracy_at(curve: list[tuple[float, float]], budget: float) -> float:
    """Accuracy of the last model produced within ``budget`` seconds."""
    return [acc for t, acc in curve if t <= budget + 1e-9][-1]


def run_one(
    name: str,
    strategy: Strategy,
    *,
    num_rounds: int,
    seed: int,
    num_nodes: int,
    config: dict[str, Any],
    seconds_per_example: float,
) -> dict[str, Any]:
    """One strategy, one seed: accuracy against simulated time."""
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import central_evaluator
    from flchain_cnn.task import new_model

    grid = VirtualGrid(
        client_app,
        tiered(num_nodes, (1.0, 4.0, 10.0), uplink_bps=8e6, downlink_bps=8e6),
        run_config={**config, "seed": seed},  # partition and local shuffles per seed
        seed=seed,
        work_fn=examples_work(seconds_per_example),
    )
    curve: list[tuple[float, float]] = []
    central_evaluate: Evaluator = central_evaluator("digits")

    def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = central_evaluate(version, arrays)
        curve.append((grid.clock.now(), float(cast(float, metrics["accuracy"]))))
        return metrics

    # Flower's FedAvg samples its nodes with the global `random` (unseeded, the
    # order of each round's messages): seeded, its runs repeat bit for bit.
    random.seed(seed)
    started = time.perf_counter()
    run = simulate(
        strategy,
        grid,
        ArrayRecord(new_model("digits", seed).state_dict()),
        num_rounds=num_rounds,
        evaluate_fn=evaluate,
    )
    result = run.result
    row: dict[str, Any] = {
        "strategy": name,
        "seed": seed,
        "curve": curve,
        "simulated_seconds": run.simulated_seconds,
        "wall_seconds": time.perf_counter() - started,
        "versions": len(curve) - 1,
        "bytes_up": run.grid.totals()["bytes_up"],
    }
    if isinstance(result, AsyncResult):
        row["mean_staleness"] = mean_staleness(result)
        row["rejected"] = len(result.rejected)
        row["stop_reason"] = result.stop_reason
    return row


def strategies(num_nodes: int, budget: float | None, seed: int) -> dict[str, Strategy]:
    """The contenders; ``budget`` (simulated seconds) caps the async ones."""
    quarter = max(1, num_nodes // 4)
    return {
        "fedbuff": FedBuff(
            buffer_size=quarter,
            time_budget=budget,
            max_staleness=100,
            min_available_nodes=num_nodes,
            seed=seed,
            **published_settings(),
        ),
        "fedasync": FedBuff(
            buffer_size=1,
            staleness_fn=Polynomial(a=0.5),
            server_lr=0.6,
            time_budget=budget,
            max_staleness=100,
            min_available_nodes=num_nodes,
            seed=seed,
            **published_settings(),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20, help="FedAvg rounds")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument(
        "--seed-list",
        type=_int_list,
        default=None,
        help="comma-separated seeds to run instead of 0 .. --seeds - 1",
    )
    parser.add_argument(
        "--strategies",
        type=_strategy_list,
        default=list(STRATEGIES),
        help="comma-separated subset of fedavg,fedbuff,fedasync to report "
        "(fedavg always runs: its duration is the time budget)",
    )
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--seconds-per-example", type=float, default=0.01)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default: async_vs_sync.json for the full benchmark, "
        "async_vs_sync_partial.json for a part of it)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="an earlier results JSON: report, per run in both, whether versions, "
        "time to target, final accuracy and the accuracy curve are identical",
    )
    args = parser.parse_args()
    if args.nodes < 20:
        parser.error("the benchmark is defined for >= 20 nodes")
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    standard = range(parser.get_default("seeds"))
    partial = seeds != list(standard) or set(args.strategies) != set(STRATEGIES)
    if args.out is None:
        name = "async_vs_sync_partial.json" if partial else "async_vs_sync.json"
        args.out = RESULTS / name
    FLOWER_LOGGER.setLevel(logging.WARNING)
    config = app_run_config(APP_DIR, {"dirichlet-alpha": args.alpha})
    common = dict(
        num_nodes=args.nodes,
        config=config,
        seconds_per_example=args.seconds_per_example,
    )

    rows: list[dict[str, Any]] = []
    for seed in seeds:
        fedavg = run_one(
            "fedavg",
            FedAvg(
                fraction_evaluate=0.0,
                min_available_nodes=args.nodes,
                min_train_nodes=args.nodes,
            ),
            num_rounds=args.rounds,
            seed=seed,
            **common,
        )
        budget = fedavg["simulated_seconds"]
        seed_rows = [fedavg] if "fedavg" in args.strategies else []
        for name, strategy in strategies(args.nodes, budget, seed).items():
            if name in args.strategies:
                seed_rows.append(
                    run_one(name, strategy, num_rounds=100_000, seed=seed, **common)
                )
        for row in seed_rows:
            row["budget"] = budget
            row["time_to_target"] = time_to_target(row["curve"], args.target)
            row["final_accuracy"] = accuracy_at(row["curve"], budget)
            print(
                f"seed {seed} {row['strategy']:>8}: versions {row['versions']:4d}, "
                f"final acc {row['final_accuracy']:.4f}, time to {args.target:.0%} "
                f"{row['time_to_target']}, wall {row['wall_seconds']:.1f}s",
                flush=True,
            )
        rows.extend(seed_rows)

    summary = summarise(rows, args.target)
    write_results(
        args.out,
        "async_vs_sync",
        args,
        headline=("async_vs_sync speedup", summary["speedup"]),
        device_speed_spread=spread(tiered(args.nodes, (1.0, 4.0, 10.0))),
        summary=summary,
        numerics=numerics(),
        runs=rows,
    )

    plot(rows, args.target, args.out.with_suffix(".png"))
    if args.compare is not None:
        compare(rows, args.compare)
    for name, s in summary["strategies"].items():
        print(
            f"{name:>8}: time to target {s['time_to_target_mean']}, "
            f"final accuracy {s['final_accuracy_mean']:.4f}"
        )
    print(f"speedup per seed: {summary['speedup_per_seed']}")
    print(f"fedasync speedup: {summary['fedasync_speedup']}")
    print(f"async_vs_sync speedup: {summary['speedup']}")


def numerics() -> dict[str, str | None]:
    """What the models' floating-point results depend on beyond the code: on the
    same code and seed, simulated times and versions repeat on any machine, but
    accuracies repeat only where PyTorch (and oneDNN) pick the same kernels."""
    import torch

    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _strategy_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"choose from {','.join(STRATEGIES)}; got {text!r}"
        )
    return names


COMPARED = ("versions", "time_to_target", "final_accuracy", "budget", "curve")


def compare(rows: list[dict[str, Any]], reference: Path) -> bool:
    """Print, per (strategy, seed) in both ``rows`` and ``reference``, which of
    :data:`COMPARED` differ; True when none do. JSON round-trips floats exactly,
    so equal means bit-identical."""
    earlier = {
        (r["strategy"], r["seed"]): r for r in json.loads(reference.read_text())["runs"]
    }
    same = True
    for row in rows:
        old = earlier.get((row["strategy"], row["seed"]))
        if old is None:
            print(f"compare: {row['strategy']} seed {row['seed']}: not in {reference}")
            continue
        new = json.loads(json.dumps({key: row[key] for key in COMPARED}))
        differ = [key for key in COMPARED if new[key] != old.get(key)]
        same = same and not differ
        print(
            f"compare: {row['strategy']} seed {row['seed']}: "
            + (
                "identical "
                if not differ
                else "DIFFERENT " + ", ".join(f"{k}" for k in differ) + "; "
            )
            + ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in COMPARED[:4])
        )
    return same


def summarise(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Means over seeds; speedup = FedAvg time to target / FedBuff time to target."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["strategy"], []).append(row)

    def mean_time(name: str) -> float | None:
        times = [r["time_to_target"] for r in by.get(name, [])]
        return None if not times or None in times else statistics.mean(times)

    def ratio(name: str) -> float | None:
        ours, theirs = mean_time(name), mean_time("fedavg")
        return None if ours is None or theirs is None else round(theirs / ours, 2)

    def mean_accuracy(name: str) -> float | None:
        group = by.get(name, [])
        return statistics.mean(r["final_accuracy"] for r in group) if group else None

    per_seed = (
        [
            round(a["time_to_target"] / b["time_to_target"], 2)
            if a["time_to_target"] and b["time_to_target"]
            else None
            for a, b in zip(by.get("fedavg", []), by.get("fedbuff", []), strict=True)
        ]
        if len(by.get("fedavg", [])) == len(by.get("fedbuff", []))
        else []
    )
    ours, theirs = mean_accuracy("fedbuff"), mean_accuracy("fedavg")
    return {
        "target_accuracy": target,
        "strategies": {
            name: {
                "time_to_target_mean": mean_time(name),
                "final_accuracy_mean": statistics.mean(
                    r["final_accuracy"] for r in group
                ),
                "versions_mean": statistics.mean(r["versions"] for r in group),
            }
            for name, group in by.items()
        },
        "final_accuracy_gap_points": (
            None if ours is None or theirs is None else round(100 * (ours - theirs), 2)
        ),
        "speedup_per_seed": per_seed,
        "fedasync_speedup": ratio("fedasync"),
        "speedup": ratio("fedbuff"),
    }


def plot(rows: list[dict[str, Any]], target: float, path: Path) -> None:
    """Accuracy against simulated time, one line per strategy and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"fedavg": "tab:red", "fedbuff": "tab:blue", "fedasync": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 5))
    seen: set[str] = set()
    for row in rows:
        t, acc = zip(*row["curve"], strict=True)
        label = None if row["strategy"] in seen else row["strategy"]
        seen.add(row["strategy"])
        ax.plot(
            t, acc, color=colours.get(row["strategy"], "grey"), alpha=0.7, label=label
        )
    ax.axhline(target, color="black", linestyle="--", linewidth=0.8, label="target")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits, 20 nodes, Dirichlet 0.3, speeds 1x/4x/10x")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

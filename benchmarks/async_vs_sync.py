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

JSON to benchmarks/results/async_vs_sync.json, a PNG of accuracy against simulated
time beside it; the last line printed is ``async_vs_sync speedup: <x>``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
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
from flchain_flwr.strategies import AsyncResult, FedBuff, Polynomial, mean_staleness


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
    central_evaluate = central_evaluator("digits")

    def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = central_evaluate(version, arrays)
        curve.append((grid.clock.now(), float(cast(float, metrics["accuracy"]))))
        return metrics

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
        ),
        "fedasync": FedBuff(
            buffer_size=1,
            staleness_fn=Polynomial(a=0.5),
            server_lr=0.6,
            time_budget=budget,
            max_staleness=100,
            min_available_nodes=num_nodes,
            seed=seed,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20, help="FedAvg rounds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--seconds-per-example", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=RESULTS / "async_vs_sync.json")
    args = parser.parse_args()
    if args.nodes < 20:
        parser.error("the benchmark is defined for >= 20 nodes")
    FLOWER_LOGGER.setLevel(logging.WARNING)
    config = app_run_config(APP_DIR, {"dirichlet-alpha": args.alpha})
    common = dict(
        num_nodes=args.nodes,
        config=config,
        seconds_per_example=args.seconds_per_example,
    )

    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
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
        rows.append(fedavg)
        budget = fedavg["simulated_seconds"]
        for name, strategy in strategies(args.nodes, budget, seed).items():
            rows.append(
                run_one(name, strategy, num_rounds=100_000, seed=seed, **common)
            )
        for row in rows[-3:]:
            row["budget"] = budget
            row["time_to_target"] = time_to_target(row["curve"], args.target)
            row["final_accuracy"] = accuracy_at(row["curve"], budget)
            print(
                f"seed {seed} {row['strategy']:>8}: versions {row['versions']:4d}, "
                f"final acc {row['final_accuracy']:.4f}, time to {args.target:.0%} "
                f"{row['time_to_target']}, wall {row['wall_seconds']:.1f}s",
                flush=True,
            )

    summary = summarise(rows, args.target)
    write_results(
        args.out,
        "async_vs_sync",
        args,
        device_speed_spread=spread(tiered(args.nodes, (1.0, 4.0, 10.0))),
        summary=summary,
        runs=rows,
    )

    plot(rows, args.target, args.out.with_suffix(".png"))
    for name, s in summary["strategies"].items():
        print(
            f"{name:>8}: time to target {s['time_to_target_mean']}, "
            f"final accuracy {s['final_accuracy_mean']:.4f}"
        )
    print(f"speedup per seed: {summary['speedup_per_seed']}")
    print(f"fedasync speedup: {summary['fedasync_speedup']}")
    print(f"async_vs_sync speedup: {summary['speedup']}")


def summarise(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Means over seeds; speedup = FedAvg time to target / FedBuff time to target."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["strategy"], []).append(row)

    def mean_time(name: str) -> float | None:
        times = [r["time_to_target"] for r in by[name]]
        return None if None in times else statistics.mean(times)

    def ratio(name: str) -> float | None:
        ours, theirs = mean_time(name), mean_time("fedavg")
        return None if ours is None or theirs is None else round(theirs / ours, 2)

    per_seed = [
        round(a["time_to_target"] / b["time_to_target"], 2)
        if a["time_to_target"] and b["time_to_target"]
        else None
        for a, b in zip(by["fedavg"], by["fedbuff"], strict=True)
    ]
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
        "final_accuracy_gap_points": round(
            100
            * (
                statistics.mean(r["final_accuracy"] for r in by["fedbuff"])
                - statistics.mean(r["final_accuracy"] for r in by["fedavg"])
            ),
            2,
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

"""Stragglers and non-IID device tiers: FedAvg, over-selection, FedBuff and policies.

Setting: Fashion-MNIST with the app's small CNN, ``--nodes`` nodes (the issue
asks for 100: ``--nodes 100 --rounds 15 --out results/stragglers_100nodes.json``;
the default of 15, five per tier, gives ``stragglers.json``) in three
device tiers (1x, 5x, 20x slower, compute and bandwidth, round-robin), each
tier holding its own classes (``--tier-classes``, Dirichlet within the tier),
on the virtual-clock grid. Every node trains ``--local-steps`` minibatches per
message; simulated compute is ``--seconds-per-example`` per example trained.

Compared, on the same grid and time budget (FedAvg's ``--rounds`` rounds):

- ``fedavg``: Flower's FedAvg, every node each round (waits for the slowest);
- ``fedavg-os``: Flower's FedAvg, each round keeping the fastest 70 % of the
  replies and dropping the rest (over-selection, as production sync FL does);
- ``fedbuff``: FedBuff, K = nodes / 5 (3 for 15 nodes), all nodes training,
  FedBuff's 1/sqrt(1+s);
- ``+fedsa``, ``+bafl``, ``+tuning``, ``+fairness``, ``+memory``, ``+nova``:
  FedBuff with one straggler policy (:mod:`~flchain_flwr.strategies.fedsa`,
  ``bafl``, ``tuning``, ``fairness``, ``memory``: MIFA's update memory, at
  ``--memory-age`` versions; ``nova``: FedNova's work normalisation, which
  acts only beside ``bafl``, e.g. ``+bafl+nova``; ``nova:<max>`` caps its
  factors, e.g. ``+bafl+nova:2``); ``+all``: every policy
  together but fairness, which FedBuff refuses beside the update memory, and
  work normalisation; any other combination is named by joining policies,
  e.g. ``+fedsa+fairness``.

Settings chosen on seed 0 from a 30-node probe of plain FedBuff and FedAvg
only (before any policy ran): the target accuracy (plain FedBuff reached
44 % there, FedAvg stayed near 15 %), the tuning's target staleness (half of
plain FedBuff's mean there, 2.7). Every FedBuff variant runs with
``max_staleness=None``: with the default ("auto", max(20, 4 ceil(nodes / K)))
a 100-node run with K = 10 drops every update of the 20x tier (staleness about
80 > 40), which is a choice of limit, not of policy.

Reported per strategy and seed: simulated time to ``--target`` accuracy on the
test subset, final accuracy, accuracy on each tier's classes, the worst-tier
gap (best tier minus worst tier, points), each tier's share of the aggregated
weight against its share of the data; per pair, the ratio of mean times to
target, a lower bound (``at_least``) where FedAvg missed the target within
the budget (its time then counts as the budget). JSON to
benchmarks/results/stragglers.json and a PNG of per-tier accuracy against
simulated time; the last line printed is ``stragglers: worst-tier gap
<points> (plain FedBuff <points>, seeds [...])``, over the seeds where both
finished.

Cost: a 100-node FedBuff cell trains about 31 nodes per simulated second
(most of them the fast tier's), some 30 ms of CPU each, so about a CPU second
per simulated second. ``--jobs N`` runs cells in N processes (results
unchanged: each cell is seeded and simulated): first every seed's FedAvg
(its budget), then every other cell across seeds, main strategies first.
The JSON is rewritten after every cell, with ``partial``, ``completed`` and
``missing``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    APP_DIR,
    FASHION_MNIST,
    RESULTS,
    require_fashion_mnist,
    write_results,
)
from _personal import personal_tiers
from _pool import run_cells
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import FedAvg, Strategy

from flchain_flwr.data import parse_tier_classes
from flchain_flwr.sim import (
    VirtualGrid,
    app_run_config,
    examples_work,
    simulate,
    tiered,
)
from flchain_flwr.strategies import (
    AdaptiveLocalWork,
    AdaptiveScheduling,
    AsyncResult,
    FedBuff,
    FedSALearningRate,
    InverseParticipation,
    StalenessTarget,
    UpdateMemory,
    WorkNormalisation,
    mean_staleness,
)
from flchain_flwr.strategies.adaptive import ConfigAdjuster
from flchain_flwr.strategies.nova import work_normalisation

SLOWDOWNS = (1.0, 5.0, 20.0)
POLICIES = ("fedsa", "bafl", "tuning", "fairness", "memory", "nova")
ALL = ("fedsa", "bafl", "tuning", "memory")
"""``+all``: every policy but fairness, which memory compensates twice over, and
nova (added after the grids that ``+all`` names were run)."""
STRATEGIES = ("fedavg", "fedavg-os", "fedbuff", *(f"+{p}" for p in POLICIES), "+all")
"""``+fairness+memory`` ran once (``stragglers.json``, commit 61bef3f): the model
collapsed on every seed, and FedBuff now refuses the pair."""

MAIN = ("fedavg", "fedavg-os", "fedbuff", "+all", "+fairness")
"""Run for every seed before the other policies: the headline's and the targets'
comparisons, and the policy docs/stragglers.md recommends first."""


def policies_of(name: str) -> tuple[str, ...]:
    """The straggler policies a contender's name turns on (none for FedAvg
    and plain FedBuff; ``+all``: :data:`ALL`; ``+a+b``: ``a`` and ``b``)."""
    if name == "+all":
        return ALL
    return tuple(name[1:].split("+")) if name.startswith("+") else ()


def is_strategy(name: str) -> bool:
    """One of :data:`STRATEGIES`, or ``+`` and distinct policies joined by ``+``
    (``nova`` may carry a cap, ``nova:<max>``)."""
    parts = [p.partition(":") for p in policies_of(name)]
    bases = [base for base, _, _ in parts]
    return name in STRATEGIES or (
        len(bases) > 1
        and len(set(bases)) == len(bases)
        and set(bases) <= set(POLICIES)
        and all(base == "nova" or not colon for base, colon, _ in parts)
    )


def normalisation_of(policies: tuple[str, ...]) -> WorkNormalisation | None:
    """``nova``: uncapped FedNova; ``nova:<max>``: capped at ``max``
    (:func:`~flchain_flwr.strategies.nova.work_normalisation`); else None."""
    for policy in policies:
        base, colon, cap = policy.partition(":")
        if base == "nova":
            return work_normalisation("fednova" + colon + cap)
    return None


class KeepFastest(VirtualGrid):
    """A virtual grid whose synchronous rounds keep the fastest ``keep`` of the
    replies (over-selection; ``keep=1`` waits for all) and record which nodes
    each round aggregated, with their example counts (FedAvg's weights)."""

    keep: float = 1.0
    rounds: list[tuple[float, list[tuple[int, float]]]]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then advance simulated time until ``keep`` of the replies are in."""
        waiting = set(self.push_messages(messages))
        wanted = math.ceil(self.keep * len(waiting))
        replies: list[Message] = []
        while waiting and len(replies) < wanted:
            got = sorted(
                self.pull_messages(waiting), key=lambda m: m.metadata.created_at
            )
            replies.extend(got[: wanted - len(replies)])
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting and len(replies) < wanted:
                before = self.clock.time
                self.clock.wait(self.next_event_time())
                if self.clock.time == before and not self._ready_any(waiting):
                    break
        kept = [
            (m.metadata.src_node_id, _examples(m))
            for m in replies
            if m.has_content() and not m.has_error()
        ]
        if kept:  # FedAvg's evaluation rounds (fraction 0) send nothing
            self.rounds.append((self.clock.time, kept))
        return replies


def _examples(reply: Message) -> float:
    for record in reply.content.metric_records.values():
        value = record.get("num-examples")
        if isinstance(value, int | float):
            return float(value)
    return 0.0


def strategy_for(name: str, args: argparse.Namespace, budget: float | None, seed: int):  # type: ignore[no-untyped-def]
    """The contender ``name`` (FedBuff variants capped at ``budget`` seconds)."""
    if name.startswith("fedavg"):
        return FedAvg(
            fraction_evaluate=0.0,
            min_available_nodes=args.nodes,
            min_train_nodes=args.nodes,
        )
    policies = policies_of(name)
    adjusters: list[ConfigAdjuster] = []
    if "fedsa" in policies:
        adjusters.append(FedSALearningRate(args.lr))
    if "bafl" in policies:
        adjusters.append(AdaptiveLocalWork(args.local_steps, "local-steps"))
    return FedBuff(
        buffer_size=args.buffer_size,
        max_staleness=None,
        fraction_evaluate=0.0,
        min_available_nodes=args.nodes,
        time_budget=budget,
        seed=seed,
        scheduling=AdaptiveScheduling(adjusters, work_key="local-steps")
        if adjusters
        else None,
        fairness=InverseParticipation(args.fairness_max)
        if "fairness" in policies
        else None,
        work_normalisation=normalisation_of(policies),
        update_memory=UpdateMemory(args.memory_age) if "memory" in policies else None,
        buffer_tuning=StalenessTarget(
            args.target_staleness,
            max(1, args.buffer_size // 2),
            5 * args.buffer_size,
            2.0,
        )
        if "tuning" in policies
        else None,
    )


class TierEvaluator:
    """Accuracy of a model on the test subset, overall and on each tier's classes."""

    def __init__(self, config: dict[str, Any], tiers: list[list[int]]) -> None:
        from flchain_cnn.task import load_test, new_model

        self.x, self.y = load_test("fashion-mnist", False, int(config["test-subset"]))
        self.masks = [np.isin(self.y, classes) for classes in tiers]
        self.net = new_model("fashion-mnist", 0, "small")

    def __call__(self, arrays: ArrayRecord) -> tuple[float, list[float]]:
        import torch

        torch.set_num_threads(1)
        self.net.load_state_dict(arrays.to_torch_state_dict())
        self.net.eval()
        with torch.no_grad():
            pred = self.net(torch.from_numpy(self.x)).argmax(dim=1).numpy()
        right = pred == self.y
        return float(right.mean()), [float(right[m].mean()) for m in self.masks]


def run_one(
    name: str, args: argparse.Namespace, seed: int, budget: float | None
) -> dict[str, Any]:
    """One strategy, one seed: overall and per-tier accuracy against simulated time.

    While it runs, each point of the curve is also appended to
    :func:`progress_path` (deleted when the run finishes), so a run stopped
    by time still leaves what it measured.
    """
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.task import _partitions, new_model

    progress = progress_path(args.out, name, seed)
    progress.unlink(missing_ok=True)  # a stopped earlier run's

    tiers = parse_tier_classes(args.tier_classes)
    config = run_config(args, seed)
    grid = KeepFastest(
        client_app,
        tiered(
            args.nodes,
            SLOWDOWNS,
            uplink_bps=args.bandwidth,
            downlink_bps=args.bandwidth,
            jitter=args.jitter,
        ),
        run_config=config,
        seed=seed,
        work_fn=examples_work(args.seconds_per_example, "examples-trained"),
    )
    grid.keep = args.keep if name == "fedavg-os" else 1.0
    grid.rounds = []
    tier_of = {n: grid.partition_of[n] % len(tiers) for n in grid.node_ids}
    evaluator = TierEvaluator(config, tiers)
    curve: list[tuple[float, float, list[float]]] = []
    last = [-math.inf]

    def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord | None:
        now = grid.clock.now()
        final = budget is not None and now >= budget - args.eval_every / 10
        if now - last[0] < args.eval_every and version > 0 and not final:
            return None  # FedBuff makes versions faster than we need to look
        last[0] = now
        overall, per_tier = evaluator(arrays)
        curve.append((now, overall, per_tier))
        with progress.open("a") as out:
            out.write(json.dumps([now, overall, per_tier]) + "\n")
        return MetricRecord({"accuracy": overall})

    random.seed(seed)  # Flower's FedAvg samples with the global `random`
    started = time.perf_counter()
    strategy: Strategy = strategy_for(name, args, budget, seed)
    run = simulate(
        strategy,
        grid,
        ArrayRecord(new_model("fashion-mnist", seed, "small").state_dict()),
        # FedAvg with over-selection has no time budget: rounds enough to pass
        # FedAvg's duration (it is measured up to it)
        num_rounds=args.rounds
        if budget is None
        else 2 * args.rounds
        if name == "fedavg-os"
        else 1_000_000,
        evaluate_fn=evaluate,
    )
    result = run.result
    progress.unlink(missing_ok=True)
    personal = None
    # fedavg-os runs past the budget: its last model is not the one measured
    if args.personal_alpha > 0 and name != "fedavg-os" and result is not None:
        personal = personal_tiers(grid, result.arrays, tier_of, config, len(tiers))
    weight = [0.0] * len(tiers)
    if isinstance(result, AsyncResult):
        for node, share in result.weight_share.items():
            weight[tier_of[node]] += share
    else:
        for at, replies in grid.rounds:
            if budget is not None and at > budget:
                break  # over-selection's rounds past FedAvg's budget
            total = sum(n for _, n in replies) or 1.0
            for node, n in replies:
                weight[tier_of[node]] += n / total
    parts = _partitions(
        "fashion-mnist",
        False,
        args.train_subset,
        args.nodes,
        args.alpha,
        seed,
        args.tier_classes,
    )
    data = [0.0] * len(tiers)
    for index, part in enumerate(parts):
        data[index % len(tiers)] += len(part)
    row: dict[str, Any] = {
        "strategy": name,
        "seed": seed,
        "curve": curve,
        "simulated_seconds": run.simulated_seconds,
        "wall_seconds": time.perf_counter() - started,
        "weight_share": [w / (sum(weight) or 1.0) for w in weight],
        "data_share": [d / sum(data) for d in data],
    }
    if personal is not None:
        row["personal"] = personal
    if isinstance(result, AsyncResult):
        row["versions"] = len(result.versions)
        row["mean_staleness"] = mean_staleness(result)
        row["stop_reason"] = result.stop_reason
        sizes = [v.buffer_size for v in result.versions if v.buffer_size is not None]
        if sizes:
            row["buffer_sizes"] = {"first": sizes[0], "last": sizes[-1]}
            row["buffer_size_mean"] = statistics.mean(sizes)
    else:
        row["versions"] = len(grid.rounds)
    return row


def seeds_of(args: argparse.Namespace) -> list[int]:
    """The seeds a run covers: ``--seeds`` of them from ``--first-seed``."""
    return list(range(args.first_seed, args.first_seed + args.seeds))


def progress_path(out: Path, name: str, seed: int) -> Path:
    """Where a running cell appends its curve: ``<out>.<name>.seed<seed>.jsonl``."""
    return out.with_name(f"{out.stem}.{name.lstrip('+')}.seed{seed}.jsonl")


def run_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The app's run config for this benchmark."""
    return app_run_config(
        APP_DIR,
        {
            **FASHION_MNIST,
            "model": "small",
            "dirichlet-alpha": args.alpha,
            "tier-classes": args.tier_classes,
            "train-subset": args.train_subset,
            "test-subset": args.test_subset,
            "local-steps": args.local_steps,
            "lr": args.lr,
            "seed": seed,
            "personal-alpha": args.personal_alpha,
        },
    )


def finish(row: dict[str, Any], budget: float, target: float) -> None:
    """Time to target, final accuracies and the worst-tier gap, into ``row``."""
    row["budget"] = budget
    row["time_to_target"] = next(
        (t for t, acc, _ in row["curve"] if acc >= target and t <= budget), None
    )
    _, overall, per_tier = [c for c in row["curve"] if c[0] <= budget + 1e-9][-1]
    row["final_accuracy"] = overall
    row["tier_accuracy"] = per_tier
    row["worst_tier_accuracy"] = min(per_tier)
    row["worst_tier_gap"] = 100 * (max(per_tier) - min(per_tier))


LATE_WINDOW = 120.0
"""Simulated seconds before the budget over which :func:`late_gap` averages."""


def late_gap(row: dict[str, Any]) -> float:
    """The worst-tier gap (points) averaged over the evaluations of the last
    :data:`LATE_WINDOW` s of the budget: per-tier accuracy swings by tens of
    points between versions, so one final evaluation can flatter or wrong a
    policy (FedBuff variants are evaluated every ``--eval-every`` s, FedAvg
    after each round)."""
    budget = row["budget"]
    late = [c[2] for c in row["curve"] if budget - LATE_WINDOW <= c[0] <= budget + 1e-9]
    return 100 * float(statistics.mean(max(tiers) - min(tiers) for tiers in late))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds per strategy, and the targets' checks."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["strategy"], []).append(row)

    def mean(name: str, key: str) -> float | None:
        values = [r[key] for r in by.get(name, [])]
        if not values or any(v is None for v in values):
            return None
        return round(float(statistics.mean(values)), 4)

    def per_tier(name: str, key: str) -> list[float]:
        group = by[name]
        return [
            round(statistics.mean(r[key][t] for r in group), 4)
            for t in range(len(group[0][key]))
        ]

    def speedup(over: str, name: str) -> dict[str, Any]:
        """Mean time to target of ``over`` / of ``name``, on the seeds both
        finished. Where ``over`` missed the target within the budget, its time
        counts as the budget and the ratio is a lower bound (``at_least``);
        None where ``name`` missed it on one of them."""
        runs = {n: {r["seed"]: r for r in by.get(n, [])} for n in (over, name)}
        seeds = sorted(set(runs[over]) & set(runs[name]))
        a = [runs[over][s]["time_to_target"] for s in seeds]
        b = [runs[name][s]["time_to_target"] for s in seeds]
        censored = None in a
        if censored:
            a = [
                t if t is not None else runs[over][s]["budget"]
                for s, t in zip(seeds, a, strict=True)
            ]
        value = None
        if seeds and None not in b:
            value = round(statistics.mean(a) / statistics.mean(b), 2)
        return {"value": value, "at_least": censored, "seeds": seeds}

    return {
        "strategies": {
            name: {
                "time_to_target_mean": mean(name, "time_to_target"),
                "reached_target": sum(r["time_to_target"] is not None for r in group),
                "final_accuracy_mean": mean(name, "final_accuracy"),
                "tier_accuracy_mean": per_tier(name, "tier_accuracy"),
                "worst_tier_gap_mean": mean(name, "worst_tier_gap"),
                "worst_tier_gap_per_seed": [
                    round(r["worst_tier_gap"], 2) for r in group
                ],
                "late_gap_mean": round(statistics.mean(map(late_gap, group)), 4),
                "late_gap_per_seed": [round(late_gap(r), 2) for r in group],
                "weight_share_mean": per_tier(name, "weight_share"),
                "data_share_mean": per_tier(name, "data_share"),
                "versions_mean": mean(name, "versions"),
                **personal_means(group),
                "wall_seconds_mean": mean(name, "wall_seconds"),
            }
            for name, group in by.items()
        },
        "speedups": {
            f"{name} vs {over}": speedup(over, name)
            for name in by
            if not name.startswith("fedavg")
            for over in ("fedavg", "fedavg-os")
        },
    }


def personal_means(group: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tier, the mean over seeds of the global model's and the personalised
    mix's accuracy on the nodes' local test sets (when measured)."""
    rows = [r["personal"] for r in group if "personal" in r]
    if not rows:
        return {}
    return {
        f"{key}_mean": [
            round(statistics.mean(r[key][t] for r in rows), 4)
            for t in range(len(rows[0][key]))
        ]
        for key in ("global_tier_accuracy", "personal_tier_accuracy")
    }


def plot(rows: list[dict[str, Any]], tiers: list[list[int]], path: Path) -> None:
    """Per-tier accuracy against simulated time, one panel per tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["fedavg", "fedavg-os", "fedbuff", "+fairness", "+all"]
    best = lowest_gap(rows)
    if best is not None and best[0] not in shown:
        shown.append(best[0])
    palette = ("tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:green")
    colours = dict(zip(shown, (*palette, "tab:brown"), strict=False))
    fig, axes = plt.subplots(1, len(tiers), figsize=(5 * len(tiers), 4), sharey=True)
    for t, ax in enumerate(axes):
        seen: set[str] = set()
        for row in rows:
            if row["strategy"] not in shown:
                continue
            times = [c[0] for c in row["curve"]]
            acc = [c[2][t] for c in row["curve"]]
            label = None if row["strategy"] in seen else row["strategy"]
            seen.add(row["strategy"])
            ax.plot(times, acc, color=colours[row["strategy"]], alpha=0.6, label=label)
        ax.set_title(f"tier {t} ({SLOWDOWNS[t]:g}x slower): classes {tiers[t]}")
        ax.set_xlabel("simulated time (s)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy on the tier's classes")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=6, help="FedAvg rounds")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds from this one on"
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--target", type=float, default=0.4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--tier-classes", default="0,1,2,3;4,5,6;7,8,9")
    parser.add_argument("--train-subset", type=int, default=12_000)
    parser.add_argument("--test-subset", type=int, default=1_000)
    parser.add_argument("--local-steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--buffer-size", type=int, default=0, help="0: nodes / 5")
    parser.add_argument("--keep", type=float, default=0.7, help="fedavg-os")
    parser.add_argument("--fairness-max", type=float, default=4.0)
    parser.add_argument("--target-staleness", type=float, default=1.5)
    parser.add_argument(
        "--memory-age", type=int, default=100, help="+memory: versions remembered"
    )
    parser.add_argument("--seconds-per-example", type=float, default=0.01)
    parser.add_argument("--bandwidth", type=float, default=8e6, help="bits/s, 1x tier")
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument(
        "--eval-every", type=float, default=20.0, help="simulated seconds"
    )
    parser.add_argument(
        "--personal-alpha",
        type=float,
        default=0.0,
        help="> 0: also report each tier's personalised accuracy (_personal.py)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "stragglers.json")
    parser.add_argument(
        "--jobs", type=int, default=1, help="cells run side by side (processes)"
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="an earlier result JSON with the same settings: its finished cells "
        "are kept, not rerun (repeatable)",
    )
    args = parser.parse_args()
    names = [n for n in args.strategies.split(",") if n]
    unknown = sorted(n for n in set(names) if not is_strategy(n))
    if unknown:
        parser.error(
            f"unknown strategies {unknown}; choose from {STRATEGIES} or join "
            f"policies {POLICIES} with '+' (e.g. +fedsa+fairness)"
        )
    args.buffer_size = args.buffer_size or max(1, args.nodes // 5)
    for name in names:  # FedBuff's own refusals (a pair it rejects), before any run
        try:
            strategy_for(name, args, None, 0)
        except ValueError as error:
            parser.error(f"{name}: {error}")
    require_fashion_mnist()
    FLOWER_LOGGER.setLevel(logging.WARNING)
    tiers = parse_tier_classes(args.tier_classes)

    # Seed by seed: FedAvg (its duration is the seed's budget), then the
    # comparisons the headline and the targets need; then each other policy,
    # seed by seed. Results are written after every run, so a run cut short
    # by time leaves what it measured (the JSON lists which runs completed
    # and which are missing).
    main_names = [n for n in names if n in MAIN]
    others = [n for n in names if n not in MAIN]
    stages = [(seed, main_names) for seed in seeds_of(args)]
    stages += [(seed, others) for seed in seeds_of(args) if others]
    planned: list[tuple[str, int]] = []  # FedAvg always runs: it sets the budget
    for seed, group in stages:
        if ("fedavg", seed) not in planned:
            planned.append(("fedavg", seed))
        planned += [(n, seed) for n in group if n != "fedavg"]
    try:
        rows = reused_rows(args, planned)
    except ValueError as error:
        parser.error(str(error))
    budgets = {r["seed"]: r["budget"] for r in rows if r["strategy"] == "fedavg"}
    done = {(r["strategy"], r["seed"]) for r in rows}
    load = {"start": os.getloadavg()}
    if rows:
        save(rows, tiers, args, planned, load)
    # FedAvg first, every seed (it sets the seed's budget); then the rest in
    # one pool, across seeds, in the stages' order
    fedavgs = [("fedavg", args, seed, None) for seed in seeds_of(args)]
    fedavgs = [cell for cell in fedavgs if cell[2] not in budgets]
    for _, row in run_cells(run_one, fedavgs, args.jobs, quiet):
        budgets[row["seed"]] = row["simulated_seconds"]
        report(row, budgets[row["seed"]], args, rows)
        save(rows, tiers, args, planned, load)
    cells = [
        (n, args, seed, budgets[seed])
        for seed, group in stages
        for n in group
        if n != "fedavg" and (n, seed) not in done
    ]
    for _, row in run_cells(run_one, cells, args.jobs, quiet):
        report(row, budgets[row["seed"]], args, rows)
        save(rows, tiers, args, planned, load)
    summary = summarise(rows)
    for name, stats in summary["strategies"].items():
        print(
            f"{name:>10}: time to target {stats['time_to_target_mean']}, final "
            f"{stats['final_accuracy_mean']}, tiers {stats['tier_accuracy_mean']}, "
            f"gap {stats['worst_tier_gap_mean']} (last {LATE_WINDOW:g} s: "
            f"{stats['late_gap_mean']}), weight {stats['weight_share_mean']} "
            f"vs data {stats['data_share_mean']}"
        )
    for pair, ratio in summary["speedups"].items():
        bound = ">= " if ratio["at_least"] else ""
        print(
            f"time to target, {pair}: {bound}{ratio['value']}x (seeds {ratio['seeds']})"
        )
    best = lowest_gap(rows)
    if best is not None:
        print(f"lowest worst-tier gap: {best[0]} {best[1]} (seeds {best[2]})")
    gap, baseline, seeds = headline(rows)
    print(f"stragglers: worst-tier gap {gap} (plain FedBuff {baseline}, seeds {seeds})")


SETTINGS_FREE = {"seeds", "first_seed", "strategies", "out", "jobs", "reuse"}
"""Settings that may differ between a run and the results it reuses."""


def reused_rows(
    args: argparse.Namespace, planned: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """The finished cells of ``--reuse`` files that this run plans.

    ValueError (naming the file and why) unless every other setting matches,
    and unless each kept cell's seed has its FedAvg cell (the seed's time
    budget) in the same file, with the budget the cell was judged against.
    """
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    ours = {k: v for k, v in vars(args).items() if k not in SETTINGS_FREE}
    for path in args.reuse:
        try:
            document = json.loads(path.read_text())
            theirs, runs = document["settings"], document["runs"]
            cells = [((r["strategy"], r["seed"]), r, r["budget"]) for r in runs]
            budgets = {c[1]: b for c, _, b in cells if c[0] == "fedavg"}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"--reuse {path}: not a stragglers result ({error!r})"
            ) from error
        for key, value in ours.items():
            if theirs.get(key) != value:
                raise ValueError(
                    f"--reuse {path}: {key} is {theirs.get(key)!r} there, "
                    f"{value!r} here"
                )
        for cell, row, budget in cells:
            if cell[1] not in budgets or budgets[cell[1]] != budget:
                raise ValueError(
                    f"--reuse {path}: {cell[0]} seed {cell[1]} was judged "
                    f"against a budget of {budget!r}, its FedAvg's is "
                    f"{budgets.get(cell[1])!r}"
                )
            if cell in planned:
                rows.setdefault(cell, row)
    kept_budget = {s: r["budget"] for (n, s), r in rows.items() if n == "fedavg"}
    for (name, seed), row in rows.items():
        if kept_budget.get(seed) != row["budget"]:
            raise ValueError(
                f"--reuse: {name} seed {seed} and the FedAvg kept for that seed "
                "come from files with different budgets"
            )
    return list(rows.values())


def quiet() -> None:
    """Flower's log at WARNING (once per worker process)."""
    FLOWER_LOGGER.setLevel(logging.WARNING)


def report(
    row: dict[str, Any], budget: float, args: argparse.Namespace, rows: list[Any]
) -> None:
    """Finish ``row``, print it, add it to ``rows``."""
    finish(row, budget, args.target)
    print(
        f"seed {row['seed']} {row['strategy']:>10}: acc {row['final_accuracy']:.4f} "
        f"tiers {[round(a, 3) for a in row['tier_accuracy']]} gap "
        f"{row['worst_tier_gap']:.1f} t->{args.target:.0%} {row['time_to_target']} "
        f"weight {[round(w, 3) for w in row['weight_share']]} "
        f"data {[round(d, 3) for d in row['data_share']]} "
        f"wall {row['wall_seconds']:.0f}s",
        flush=True,
    )
    if "personal" in row:
        p = row["personal"]
        print(
            f"    on local test sets: global {_rounded(p['global_tier_accuracy'])} "
            f"personalised (alpha {p['alpha']:g}) "
            f"{_rounded(p['personal_tier_accuracy'])}",
            flush=True,
        )
    rows.append(row)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def headline(
    rows: list[dict[str, Any]],
) -> tuple[float | None, float | None, list[int]]:
    """The worst-tier gap with the policies of ``+all`` (:data:`ALL`) and plain
    FedBuff's (mean points), over the seeds where both finished (listed)."""
    gaps: dict[str, dict[int, float]] = {"+all": {}, "fedbuff": {}}
    for row in rows:
        if row["strategy"] in gaps:
            gaps[row["strategy"]][row["seed"]] = row["worst_tier_gap"]
    seeds = sorted(set(gaps["+all"]) & set(gaps["fedbuff"]))
    if not seeds:
        return None, None, []
    gap, baseline = (
        round(statistics.mean(gaps[name][s] for s in seeds), 4)
        for name in ("+all", "fedbuff")
    )
    return gap, baseline, seeds


def lowest_gap(rows: list[dict[str, Any]]) -> tuple[str, float, list[int]] | None:
    """The FedBuff variant with the lowest mean worst-tier gap (mean points)
    among those that finished every seed plain FedBuff finished (listed) with
    a mean final accuracy no worse than plain FedBuff's there (the issue's
    condition: a model that collapsed to one class has a small gap too)."""
    seeds: dict[str, dict[int, tuple[float, float]]] = {}
    for row in rows:
        cell = (row["worst_tier_gap"], row["final_accuracy"])
        seeds.setdefault(row["strategy"], {})[row["seed"]] = cell
    wanted = set(seeds.get("fedbuff", {}))
    if not wanted:
        return None
    floor = statistics.mean(seeds["fedbuff"][s][1] for s in wanted)
    means = [
        (round(statistics.mean(cells[s][0] for s in wanted), 4), name)
        for name, cells in seeds.items()
        if name.startswith(("fedbuff", "+"))
        and wanted <= set(cells)
        and statistics.mean(cells[s][1] for s in wanted) >= floor
    ]
    if not means:
        return None
    gap, name = min(means)
    return name, gap, sorted(wanted)


def save(
    rows: list[dict[str, Any]],
    tiers: list[list[int]],
    args: argparse.Namespace,
    planned: list[tuple[str, int]],
    load: dict[str, tuple[float, float, float]],
) -> None:
    """Write the JSON (headline with its baseline) and the PNG of ``rows``,
    in ``planned`` order, with the cells still missing."""
    rank = {cell: i for i, cell in enumerate(planned)}
    rows.sort(key=lambda r: rank[r["strategy"], r["seed"]])
    done = {(r["strategy"], r["seed"]) for r in rows}
    missing = [f"{n} seed {s}" for n, s in planned if (n, s) not in done]
    gap, baseline, seeds = headline(rows)
    label = f"stragglers: worst-tier gap with {'+'.join(ALL)} (points)"
    if seeds != seeds_of(args):
        label += f", seeds {seeds} only"
    load["now"] = os.getloadavg()
    write_results(
        args.out,
        "stragglers",
        args,
        headline=(label, gap),
        partial=bool(missing),
        completed=[f"{r['strategy']} seed {r['seed']}" for r in rows],
        missing=missing,
        load_average=load,
        summary=summarise(rows),
        runs=rows,
    )
    document = json.loads(args.out.read_text())
    document["headline"]["baseline"] = baseline
    document["headline"]["seeds"] = seeds
    best = lowest_gap(rows)
    if best is not None:
        document["headline"]["lowest_gap"] = dict(
            zip(("strategy", "value", "seeds"), best, strict=True)
        )
    args.out.write_text(json.dumps(document, indent=2))
    plot(rows, tiers, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

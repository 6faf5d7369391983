"""PoV against poisoning attacks, side by side with Flower's robust strategies.

Setting: Fashion-MNIST (Debian's dataset-fashion-mnist), the app's small CNN,
``--nodes`` nodes split by Dirichlet(0.5), ``--fraction`` of them attackers
(fixed by seed), one local epoch per round, the same virtual-clock grid for every
defence, ``--versions`` global versions each. Attacks: none, sign flip, scaling
(x10), Gaussian noise, label flipping, ALIE (z from Baruch et al.'s formula) and
IPM (epsilon 0.1), from :mod:`flchain_flwr.sim.attacks`.

Defences:

- ``pov``: ours, FedBuff with K = all nodes (one version per round of updates)
  and a PoV committee: ``--verifiers`` verifiers, each holding its own
  ``--trusted`` examples from the end of the test set, ``--committee`` of them
  drawn per block. Each member trains a reference update from the global model
  on its trusted examples (the clients' SGD settings, ``--reference-epochs``
  epochs) and approves a candidate whose cosine with it is above
  ``--min-cosine`` (FLTrust's rule, 0); ``--metric loss`` adds the loss test
  (global + the candidate's share of the step at most ``--tolerance`` worse).
  The median pre-filter drops updates above 4x the batch's median norm
  (``--median-direction`` adds its direction test against the coordinate-wise
  median, which IPM moves);
- ``pov-fedavg``: Flower's FedAvg wrapped in :class:`PoVStrategy` (same committee
  settings): PoV for a synchronous user;
- ``fedavg``, ``krum``, ``multikrum`` (selects n - f), ``fedmedian``,
  ``fedtrimmedavg`` (beta = f / n) and ``bulyan``: Flower's own strategies, told
  the true number of attackers f where they take it. Bulyan needs n >= 4f + 3
  and is reported as not applicable otherwise.

Reported: final accuracy on the test set (without the verifiers' examples) per
(defence, attack); for PoV the honest-update false-rejection rate and the
poisoned-update acceptance rate. Headline: PoV's worst-case accuracy drop from
its own no-attack accuracy. JSON to benchmarks/results/robustness.json, a heat
map beside it; the last line printed is ``pov worst-case accuracy drop: <pts>``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    APP_DIR,
    FASHION_MNIST,
    RESULTS,
    require_fashion_mnist,
    write_results,
)
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Result,
    Strategy,
)
from nacl.signing import SigningKey

from flchain_flwr.pov import (
    Committee,
    MedianFilter,
    PoVStrategy,
    Threshold,
    Verifier,
)
from flchain_flwr.sim import VirtualGrid, app_run_config, simulate, uniform
from flchain_flwr.sim.attacks import Attack, alie_z, attacker_node_configs
from flchain_flwr.strategies import (
    AsyncResult,
    Claimed,
    Constant,
    FedBuff,
    ShuffleAll,
)

# The app's central_evaluator, typed here: the app package ships no py.typed, so
# mypy sees it as Any when it checks this file without the app's sources.
Evaluator = Callable[[int, ArrayRecord], MetricRecord]

ATTACKS: list[str] = ["none", *(a.value for a in Attack)]
DEFENCES = [
    "pov",
    "pov-fedavg",
    "fedavg",
    "krum",
    "multikrum",
    "fedmedian",
    "fedtrimmedavg",
    "bulyan",
]
ROBUST_BASELINES = ["krum", "multikrum", "fedmedian", "fedtrimmedavg", "bulyan"]
PARAMETERS_PER_ATTACK: dict[str, dict[str, float]] = {
    "sign-flip": {"scale": 1.0},
    "scaling": {"scale": 10.0},
    "gaussian-noise": {"noise_std": 0.1},
    "ipm": {"epsilon": 0.1},
}


def committee(args: argparse.Namespace) -> Committee:
    """The verifier pool: own trusted shards; keys derived from the seed so the
    committee rotation (and so the whole benchmark) is reproducible."""
    from flchain_cnn.task import load_trusted, reference_trainer, scorer

    shards = load_trusted("fashion-mnist", args.verifiers, args.trusted)
    verifiers = [
        Verifier(
            scorer("fashion-mnist", "small", x, y),
            SigningKey(hashlib.sha256(f"bench/{args.seed}/{i}".encode()).digest()),
            reference_fn=reference_trainer(
                "fashion-mnist",
                "small",
                x,
                y,
                epochs=args.reference_epochs,
                lr=float(FASHION_MNIST["lr"]),
                batch_size=int(FASHION_MNIST["batch-size"]),
                seed=i,
            ),
        )
        for i, (x, y) in enumerate(shards)
    ]
    return Committee(
        verifiers,
        committee_size=args.committee,
        threshold=Threshold(
            metric=args.metric,
            value=args.tolerance,
            min_cosine=args.min_cosine if args.min_cosine >= -1 else None,
        ),
        scoring=args.scoring,
        prefilters=(
            [MedianFilter(min_cosine=0.0 if args.median_direction else None)]
            if args.median_filter
            else []
        ),
    )


def strategy_for(defence: str, args: argparse.Namespace, f: int) -> Strategy | None:
    """The strategy for one defence (None: not applicable with f attackers)."""
    n = args.nodes
    common: dict[str, Any] = {
        "fraction_evaluate": 0.0,
        "min_train_nodes": n,
        "min_available_nodes": n,
    }
    match defence:
        case "pov":
            return FedBuff(
                buffer_size=n,
                staleness_fn=Constant(),
                committee=committee(args),
                seed=args.seed,
                fraction_evaluate=0.0,  # published results: no federated evaluation
                min_evaluate_nodes=1,  # published results' default (unused at 0)
                evaluate_every=1,  # published results' default (unused at fraction 0)
                max_staleness=None,  # published results: no staleness limit
                example_weighting=Claimed(),  # published results: claimed counts
                scheduling=ShuffleAll(),  # published results: seeded shuffle of nodes
                state_rule="delta",  # published results' rule (no state arrays)
            )
        case "pov-fedavg":
            return PoVStrategy(FedAvg(**common), committee(args))
        case "fedavg":
            return FedAvg(**common)
        case "krum":
            return Krum(num_malicious_nodes=f, **common)
        case "multikrum":
            return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f, **common)
        case "fedmedian":
            return FedMedian(**common)
        case "fedtrimmedavg":
            return FedTrimmedAvg(beta=max(f / n, 0.1), **common)
        case "bulyan":
            if n < 4 * f + 3:
                return None
            return Bulyan(num_malicious_nodes=f, **common)
    raise ValueError(f"unknown defence {defence!r}")


def pov_outcomes(strategy: Strategy, result: Result) -> list[tuple[int, bool]]:
    """(node id, accepted) for every update one PoV run took."""
    if isinstance(strategy, PoVStrategy):
        return [(o.node_id, o.accepted) for d in strategy.decisions for o in d.outcomes]
    assert isinstance(result, AsyncResult)
    accepted = [
        (node_id, True)
        for node_id, count in result.participation.items()
        for _ in range(count)
    ]
    return accepted + [(r.node_id, False) for r in result.rejected]


def rejection_rates(
    outcomes: list[tuple[int, bool]], grid: VirtualGrid, malicious: set[int]
) -> dict[str, float]:
    """Honest false-rejection and poisoned acceptance rates."""
    accepted = {True: 0, False: 0}
    rejected = {True: 0, False: 0}
    for node_id, ok in outcomes:
        bad = grid.partition_of[node_id] in malicious
        (accepted if ok else rejected)[bad] += 1
    return {
        "honest_false_rejection_rate": rejected[False]
        / max(accepted[False] + rejected[False], 1),
        "poisoned_acceptance_rate": accepted[True]
        / max(accepted[True] + rejected[True], 1),
        "honest_updates": accepted[False] + rejected[False],
        "poisoned_updates": accepted[True] + rejected[True],
    }


# pylint: disable=too-many-locals
def run_one(
    defence: str, attack: str, args: argparse.Namespace, run_id: int
) -> dict[str, Any]:
    """One (defence, attack) cell."""
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import central_evaluator
    from flchain_cnn.task import new_model

    n = args.nodes
    f = round(args.fraction * n) if attack != "none" else 0
    params: dict[str, float] = dict(PARAMETERS_PER_ATTACK.get(attack, {}))
    if attack == "alie":
        params["z"] = alie_z(n, f)
    configs = attacker_node_configs(
        n,
        args.fraction,
        None if attack == "none" else attack,
        seed=args.seed,
        **params,
    )
    malicious = {i for i, c in enumerate(configs) if "attack" in c}
    strategy = strategy_for(defence, args, round(args.fraction * n))
    row: dict[str, Any] = {"defence": defence, "attack": attack, "attackers": f}
    if strategy is None:
        row["final_accuracy"] = None
        row["note"] = f"not applicable: needs n >= 4f + 3 (n={n}, f={f})"
        print(f"{defence:>14} x {attack:<15} n/a", flush=True)
        return row
    config = app_run_config(
        APP_DIR,
        {
            **FASHION_MNIST,
            "model": "small",
            "train-subset": args.train_subset,
            "seed": args.seed,
        },
    )
    grid = VirtualGrid(
        client_app,
        uniform(n),
        node_configs=configs,
        run_config=config,
        seed=args.seed,
        run_id=run_id,
    )
    reserved = args.verifiers * args.trusted
    evaluate: Evaluator = central_evaluator(
        "fashion-mnist", size="small", reserved=reserved
    )
    started = time.perf_counter()
    run = simulate(
        strategy,
        grid,
        ArrayRecord(new_model("fashion-mnist", args.seed, "small").state_dict()),
        num_rounds=args.versions,
    )
    assert run.result is not None
    metrics = evaluate(args.versions, run.result.arrays)
    row["final_accuracy"] = float(metrics["accuracy"])  # type: ignore[arg-type]
    row["wall_seconds"] = time.perf_counter() - started
    if isinstance(strategy, FedBuff | PoVStrategy):
        outcomes = pov_outcomes(strategy, run.result)
        row.update(rejection_rates(outcomes, grid, malicious))
    if isinstance(run.result, AsyncResult):
        row["versions"] = len(run.result.versions)
    print(
        f"{defence:>14} x {attack:<15} acc {row['final_accuracy']:.4f}"
        + (
            f"  FRR {row['honest_false_rejection_rate']:.3f}"
            f"  poison-accept {row['poisoned_acceptance_rate']:.3f}"
            if "honest_false_rejection_rate" in row
            else ""
        )
        + f"  ({row['wall_seconds']:.0f}s)",
        flush=True,
    )
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst cases per defence and the headline figures."""
    acc = {
        (r["defence"], r["attack"]): r["final_accuracy"]
        for r in rows
        if r["final_accuracy"] is not None
    }
    defences = sorted({d for d, _ in acc})
    worst = {
        d: min(v for (dd, a), v in acc.items() if dd == d and a != "none")
        for d in defences
        if any(dd == d and a != "none" for dd, a in acc)
    }
    summary: dict[str, Any] = {"worst_case_accuracy": worst}
    if ("pov", "none") in acc and "pov" in worst:
        summary["pov_no_attack_accuracy"] = acc[("pov", "none")]
        summary["pov_worst_case_drop_points"] = 100 * (
            acc[("pov", "none")] - worst["pov"]
        )
        robust = [worst[d] for d in ROBUST_BASELINES if d in worst]
        if robust:
            summary["best_flower_robust_worst_case"] = max(robust)
            summary["pov_beats_best_flower_robust"] = worst["pov"] >= max(robust)
        pov_rows = [r for r in rows if r["defence"] == "pov" and r["attack"] != "none"]
        honest = sum(r["honest_updates"] for r in pov_rows)
        summary["pov_honest_false_rejection_rate"] = sum(
            r["honest_false_rejection_rate"] * r["honest_updates"] for r in pov_rows
        ) / max(honest, 1)
    return summary


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Heat map of final accuracy, defences x attacks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    defences = [d for d in DEFENCES if any(r["defence"] == d for r in rows)]
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in rows)]
    grid = np.full((len(defences), len(attacks)), np.nan)
    for r in rows:
        if r["final_accuracy"] is not None:
            grid[defences.index(r["defence"]), attacks.index(r["attack"])] = (
                100 * r["final_accuracy"]
            )
    fig, ax = plt.subplots(figsize=(1.3 * len(attacks) + 2, 0.55 * len(defences) + 1.5))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
    ax.set_yticks(range(len(defences)), defences)
    for i in range(len(defences)):
        for j in range(len(attacks)):
            text = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label="final accuracy (%)")
    ax.set_title("Fashion-MNIST, 30 % attackers: final accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--train-subset", type=int, default=12000)
    parser.add_argument("--verifiers", type=int, default=7)
    parser.add_argument("--committee", type=int, default=4)
    parser.add_argument("--trusted", type=int, default=100)
    parser.add_argument(
        "--metric", choices=["accuracy", "loss", "none"], default="none"
    )
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=0.0,
        help="direction test: cosine with the verifier's reference above this; "
        "below -1 turns it off",
    )
    parser.add_argument("--reference-epochs", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--scoring", choices=["share", "full"], default="share")
    parser.add_argument(
        "--median-filter", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--median-direction", action=argparse.BooleanOptionalAction, default=False
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--defences", nargs="+", default=DEFENCES, choices=DEFENCES)
    parser.add_argument("--output", default=str(RESULTS / "robustness.json"))
    args = parser.parse_args()
    require_fashion_mnist()
    FLOWER_LOGGER.setLevel(logging.ERROR)

    rows = []
    run_id = 1
    for attack in args.attacks:
        for defence in args.defences:
            rows.append(run_one(defence, attack, args, run_id))
            run_id += 1
    summary = summarize(rows)
    write_results(
        Path(args.output),
        "robustness",
        args,
        headline=(
            "pov worst-case accuracy drop (points)",
            summary.get("pov_worst_case_drop_points"),
        ),
        rows=rows,
        summary=summary,
    )
    plot(rows, str(args.output).replace(".json", ".png"))
    for key, value in summary.items():
        print(f"{key}: {value}")
    if "pov_worst_case_drop_points" in summary:
        print(
            f"pov worst-case accuracy drop: {summary['pov_worst_case_drop_points']:.2f}"
        )


if __name__ == "__main__":
    main()

"""PoV against poisoning attacks, side by side with Flower's robust strategies.

Setting: Fashion-MNIST (Debian's dataset-fashion-mnist), the app's small CNN,
``--nodes`` nodes split by Dirichlet(``--alpha``, default 0.5), ``--fraction``
of them attackers (fixed by seed), one local epoch per round, the same
virtual-clock grid for every defence, ``--versions`` global versions each, for
every seed in ``--seeds``.
Attacks, from :mod:`flchain_flwr.sim.attacks`: none, sign flip, scaling (x10),
Gaussian noise, label flipping, ALIE (z from Baruch et al.'s formula), IPM
(epsilon 0.1), and the adaptive ones: min-max and min-sum (Shejwalkar &
Houmansadr, NDSS 2021, inverse-std perturbation), cosine-edge (told the run's
``--min-cosine`` and its norm limit, the smaller of the median filter's 4x and
the rule's ``--max-norm-ratio``: cosine 0.1 above the threshold with the
colluders' mean, 0.9 of the norm limit) and inflation (the
cosine-edge update claiming 1e6 examples). All colluders pool their own honest
updates; none sees an honest node's update.

Defences:

- ``pov``: ours, FedBuff with K = all nodes (one version per round of updates)
  and a PoV committee: ``--verifiers`` verifiers, each holding its own
  ``--trusted`` examples from the end of the test set, ``--committee`` of them
  drawn per block. Each member trains a reference update from the global model
  on its trusted examples (the clients' SGD settings, ``--reference-epochs``
  epochs) and approves a candidate whose cosine with it is above
  ``--min-cosine`` (FLTrust's rule, 0); ``--metric loss`` adds the loss test
  (global + the candidate's share of the step at most ``--tolerance`` worse);
  ``--max-norm-ratio`` adds the rule's norm bound (a candidate's norm at most
  that many times the median norm of the candidates judged with it).
  The median pre-filter drops updates above 4x the batch's median norm
  (``--median-direction`` adds its direction test against the coordinate-wise
  median, which IPM moves);
- ``pov-fedavg``: Flower's FedAvg wrapped in :class:`PoVStrategy` (same committee
  settings): PoV for a synchronous user;
- ``fedavg``, ``krum``, ``multikrum`` (selects n - f), ``fedmedian``,
  ``fedtrimmedavg`` (beta = f / n) and ``bulyan``: Flower's own strategies, told
  the true number of attackers f where they take it. Bulyan needs n >= 4f + 3
  and is reported as not applicable otherwise.

The PoV defences (``pov`` and ``pov-fedavg``) take the app's default claim
policy (``example-weighting``, "median:4:1000") unless ``--example-weighting``
names another; Flower's strategies weight by the claim as they do.
``--trust-weighting`` turns on the committee's trust weighting
(:mod:`flchain_flwr.pov.trust`).

Reported: final accuracy on the test set (without the verifiers' examples) per
(seed, defence, attack), the accuracy after every version, and their mean over
the last ``--tail`` versions; for PoV the honest-update false-rejection rate and
the poisoned-update acceptance rate. Headline: the worst, over seeds and attacks,
of PoV's final-accuracy drop from its own no-attack accuracy on the same seed
(the same worst case over the tail means is reported beside it: one version's
accuracy on a non-IID split swings by points from version to version). Each
finished cell is appended to a rows file (``--rows``) and a rerun skips the cells
it holds, so a stopped run resumes. JSON to benchmarks/results/robustness.json,
heat maps beside it; the last line printed is ``pov worst-case accuracy drop:
<pts>``.
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
from typing import Any

import torch
from _common import (
    APP_DIR,
    FASHION_MNIST,
    RESULTS,
    require_fashion_mnist,
    write_results,
)
from _robustness_report import ATTACKS, DEFENCES, plot, summarize
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

from flchain_flwr.pov import (
    Committee,
    MedianFilter,
    PoVStrategy,
    Threshold,
    Verifier,
)
from flchain_flwr.pov.simkeys import seeded_verifier_key
from flchain_flwr.sim import VirtualGrid, app_run_config, simulate, uniform
from flchain_flwr.sim.attacks import attacker_node_configs
from flchain_flwr.sim.poisoning import alie_z
from flchain_flwr.strategies import (
    AsyncResult,
    Constant,
    FedBuff,
    ShuffleAll,
)
from flchain_flwr.strategies.weighting import example_weighting

# The app's central_evaluator, typed here: the app package ships no py.typed, so
# mypy sees it as Any when it checks this file without the app's sources.
Evaluator = Callable[[int, ArrayRecord], MetricRecord]

APP_WEIGHTING = str(app_run_config(APP_DIR)["example-weighting"])
"""The app's default claim policy, which the PoV defence takes."""
NORM_LIMIT = MedianFilter().max_norm_ratio
"""The median pre-filter's norm limit (x the batch's median norm)."""


def attack_parameters(attack: str, args: argparse.Namespace) -> dict[str, Any]:
    """The ``attack-*`` node config of one attack. The defence-aware attacks are
    told the run's own direction threshold and norm limit."""
    n, f = args.nodes, round(args.fraction * args.nodes)
    aware = {
        "min_cosine": max(args.min_cosine, -1.0),
        "max_norm_ratio": min(NORM_LIMIT, args.max_norm_ratio or NORM_LIMIT),
        "margin": 0.1,
        "norm_slack": 0.9,
    }
    match attack:
        case "sign-flip":
            return {"scale": 1.0}
        case "scaling":
            return {"scale": 10.0}
        case "gaussian-noise":
            return {"noise_std": 0.1}
        case "alie":
            return {"z": alie_z(n, f)}
        case "ipm":
            return {"epsilon": 0.1}
        case "min-max" | "min-sum":
            return {"perturbation": "std"}
        case "cosine-edge":
            return aware
        case "inflation":
            return {**aware, "claim": 1_000_000}
    return {}


def committee(args: argparse.Namespace, seed: int) -> Committee:
    """The verifier pool: own trusted shards; keys derived from the seed so the
    committee rotation (and so the whole benchmark) is reproducible."""
    from flchain_cnn.task import load_trusted
    from flchain_cnn.verifiers import reference_trainer, scorer

    shards = load_trusted("fashion-mnist", args.verifiers, args.trusted)
    verifiers = [
        Verifier(
            scorer("fashion-mnist", "small", x, y),
            seeded_verifier_key(seed, i, domain=b"bench/"),
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
            max_norm_ratio=args.max_norm_ratio,
        ),
        scoring=args.scoring,
        trust_weighting=args.trust_weighting,
        prefilters=(
            [MedianFilter(min_cosine=0.0 if args.median_direction else None)]
            if args.median_filter
            else []
        ),
    )


def strategy_for(
    defence: str, args: argparse.Namespace, f: int, seed: int
) -> Strategy | None:
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
                committee=committee(args, seed),
                seed=seed,
                fraction_evaluate=0.0,  # published results: no federated evaluation
                min_evaluate_nodes=1,  # published results' default (unused at 0)
                evaluate_every=1,  # published results' default (unused at fraction 0)
                max_staleness=None,  # published results: no staleness limit
                example_weighting=example_weighting(args.example_weighting),
                scheduling=ShuffleAll(),  # published results: seeded shuffle of nodes
                state_rule="delta",  # published results' rule (no state arrays)
            )
        case "pov-fedavg":
            return PoVStrategy(
                FedAvg(**common),
                committee(args, seed),
                example_weighting=example_weighting(args.example_weighting),
            )
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
    defence: str, attack: str, args: argparse.Namespace, seed: int, run_id: int
) -> dict[str, Any]:
    """One (seed, defence, attack) cell."""
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import central_evaluator
    from flchain_cnn.task import new_model

    n = args.nodes
    f = round(args.fraction * n) if attack != "none" else 0
    configs = attacker_node_configs(
        n,
        args.fraction,
        None if attack == "none" else attack,
        seed=seed,
        **attack_parameters(attack, args),
    )
    malicious = {i for i, c in enumerate(configs) if "attack" in c}
    strategy = strategy_for(defence, args, round(args.fraction * n), seed)
    row: dict[str, Any] = {
        "seed": seed,
        "defence": defence,
        "attack": attack,
        "attackers": f,
    }
    if strategy is None:
        row["final_accuracy"] = None
        row["note"] = f"not applicable: needs n >= 4f + 3 (n={n}, f={f})"
        print(f"seed {seed} {defence:>14} x {attack:<15} n/a", flush=True)
        return row
    config = app_run_config(
        APP_DIR,
        {
            **FASHION_MNIST,
            "dirichlet-alpha": args.alpha,
            "model": "small",
            "train-subset": args.train_subset,
            "seed": seed,
        },
    )
    grid = VirtualGrid(
        client_app,
        uniform(n),
        node_configs=configs,
        run_config=config,
        seed=seed,
        run_id=run_id,
    )
    reserved = args.verifiers * args.trusted
    evaluate: Evaluator = central_evaluator(
        "fashion-mnist", size="small", reserved=reserved
    )
    curve: dict[int, float] = {}
    random.seed(seed)  # Flower's strategies sample (and so order) nodes with it
    started = time.perf_counter()
    run = simulate(
        strategy,
        grid,
        ArrayRecord(new_model("fashion-mnist", seed, "small").state_dict()),
        num_rounds=args.versions,
        evaluate_fn=curve_recorder(evaluate, curve),
    )
    assert run.result is not None
    metrics = evaluate(args.versions, run.result.arrays)
    row["final_accuracy"] = float(metrics["accuracy"])  # type: ignore[arg-type]
    row["accuracy_curve"] = [curve[v] for v in sorted(curve) if v > 0]
    row["tail_accuracy"] = tail_mean(row["accuracy_curve"], args.tail)
    row["wall_seconds"] = time.perf_counter() - started
    row["load_average"] = list(os.getloadavg())  # the shared machine's, at the end
    if isinstance(strategy, FedBuff | PoVStrategy):
        outcomes = pov_outcomes(strategy, run.result)
        row.update(rejection_rates(outcomes, grid, malicious))
    if isinstance(run.result, AsyncResult):
        row["versions"] = len(run.result.versions)
    print(
        f"seed {seed} {defence:>14} x {attack:<15} acc {row['final_accuracy']:.4f}"
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


def curve_recorder(
    evaluate: Evaluator, curve: dict[int, float]
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """An ``evaluate_fn`` that records each version's accuracy in ``curve``.

    The app's evaluator seeds torch's global RNG (it builds a fresh model), so
    the RNG state is put back: recording the curve must not change the run."""

    def record(version: int, arrays: ArrayRecord) -> MetricRecord:
        state = torch.random.get_rng_state()
        try:
            metrics = evaluate(version, arrays)
        finally:
            torch.random.set_rng_state(state)
        curve[version] = float(metrics["accuracy"])  # type: ignore[arg-type]
        return metrics

    return record


def tail_mean(curve: list[float], tail: int) -> float | None:
    """Mean accuracy over the last ``tail`` versions (``None``: fewer)."""
    if tail < 1 or len(curve) < tail:
        return None
    return statistics.fmean(curve[-tail:])


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The cells a previous (possibly stopped) run finished."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def other_split(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str | None:
    """Why a rerun cannot add to, or report, ``rows`` at ``--alpha``: the output
    they were reported in says another label split (before ``--alpha``
    existed, the Dirichlet 0.5 of :data:`FASHION_MNIST`); ``None`` if none."""
    if not rows:
        return None
    try:
        settings = json.loads(Path(args.output).read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    theirs = settings.get("alpha", FASHION_MNIST["dirichlet-alpha"])
    if theirs == args.alpha:
        return None
    return (
        f"{args.output} reports cells split by Dirichlet({theirs}), not "
        f"--alpha {args.alpha}: give another --output"
    )


def reductions(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """What this run cut, against the published one-seed run (20 versions,
    12,000 training examples, all eight defences), and what it then took."""
    minutes = sum(r.get("wall_seconds", 0.0) for r in rows) / 60
    return (
        "sized for <= 60 min of wall time on a shared 2-core machine "
        f"(its cells took {minutes:.0f} min): "
        f"{args.versions} versions (published one-seed run: 20), "
        f"{args.train_subset} training examples (12,000), defences "
        f"{', '.join(args.defences)} (8 before), seeds {args.seeds}"
    )


def report(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    plan: list[tuple[int, str, str]],
) -> dict[str, Any]:
    """Write the JSON and the heat maps for ``rows``; return the summary."""
    summary = summarize(rows)
    done = {(r["seed"], r["attack"], r["defence"]) for r in rows}
    summary["missing_cells"] = [
        {"seed": s, "attack": a, "defence": d}
        for s, a, d in plan
        if (s, a, d) not in done
    ]
    write_results(
        Path(args.output),
        "robustness",
        args,
        headline=(
            "pov worst-case accuracy drop (points)",
            summary.get("pov_worst_case_drop_points"),
        ),
        reduced=reductions(args, rows),
        load_average=os.getloadavg(),
        rows=rows,
        summary=summary,
    )
    plot(rows, str(args.output).replace(".json", ".png"))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--train-subset", type=int, default=8000)
    parser.add_argument(
        "--alpha",
        type=float,
        default=float(FASHION_MNIST["dirichlet-alpha"]),
        help="Dirichlet concentration of the label split (large: near IID)",
    )
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
    parser.add_argument(
        "--max-norm-ratio",
        type=float,
        default=None,
        help="norm bound of the PoV rule: a candidate's norm at most this many "
        "times the request's median norm (default: none)",
    )
    parser.add_argument(
        "--trust-weighting",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="weigh approved updates by the committee's signed cosines and clip "
        "them to the median norm (pov.trust, after FLTrust)",
    )
    parser.add_argument(
        "--example-weighting",
        default=APP_WEIGHTING,
        help="the PoV defence's claim policy (default: the app's, "
        f"{APP_WEIGHTING!r}); Flower's strategies weight by the claim as they do",
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
    parser.add_argument(
        "--tail",
        type=int,
        default=5,
        help="versions whose mean accuracy is reported beside the final one",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument(
        "--defences", nargs="+", default=["pov", "fedavg"], choices=DEFENCES
    )
    parser.add_argument("--output", default=str(RESULTS / "robustness.json"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the JSON and heat maps from the rows file, "
        "listing the cells it lacks",
    )
    parser.add_argument(
        "--rows",
        default=None,
        help="finished cells, one JSON a line (default: the output's .rows.jsonl); "
        "a rerun skips them",
    )
    args = parser.parse_args()
    require_fashion_mnist()
    FLOWER_LOGGER.setLevel(logging.ERROR)
    rows_path = Path(args.rows or str(args.output).replace(".json", ".rows.jsonl"))
    args.rows = str(rows_path)

    if args.alpha <= 0:
        parser.error(f"--alpha is a Dirichlet concentration > 0, not {args.alpha}")
    rows = load_rows(rows_path)
    problem = other_split(args, rows)
    if problem is not None:
        parser.error(problem)
    done = {(r["seed"], r["defence"], r["attack"]) for r in rows}
    # Defence by defence (the first, PoV, on every seed before any baseline), each
    # attack on every seed before the next, in the order --attacks gives: a
    # stopped run has whole attacks. Every cell keeps one run id (the colluders'
    # pool is per run) across resumes.
    plan = [
        (seed, attack, defence)
        for defence in args.defences
        for attack in ["none", *(a for a in args.attacks if a != "none")]
        for seed in args.seeds
    ]
    for seed, attack, defence in plan:
        if args.report_only or (seed, defence, attack) in done:
            continue
        run_id = 1 + ATTACKS.index(attack) + 100 * DEFENCES.index(defence)
        row = run_one(defence, attack, args, seed, run_id + 10_000 * seed)
        rows.append(row)
        with rows_path.open("a") as out:
            out.write(json.dumps(row) + "\n")
        report(rows, args, plan)
    summary = report(rows, args, plan)
    for key, value in summary.items():
        print(f"{key}: {value}")
    if summary.get("pov_worst_case_drop_points") is not None:
        print(
            f"pov worst-case accuracy drop: {summary['pov_worst_case_drop_points']:.2f}"
        )


if __name__ == "__main__":
    main()

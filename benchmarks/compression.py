"""DGC compression: bytes, accuracy and time, on the Fashion-MNIST CNN.

Setting: the flchain_cnn app on Fashion-MNIST (Debian's dataset-fashion-mnist;
the first ``--train-subset`` training and ``--test-subset`` test images), the
1.63M-parameter CNN, ``--nodes`` nodes split by Dirichlet(0.5), FedBuff with
K = half the nodes, the same number of global versions for every setting, on the
virtual-clock grid with bandwidth-limited devices (1 Mbit/s up, 10 Mbit/s down).

- Sweep: density 100 % (dense, no mod), 10 %, 1 %, 0.3 %, 0.1 %: top-k with
  residual accumulation (no momentum correction, no warm-up), values sent as
  float16 (their rounding error stays in the residual), the top entries taken
  over all large tensors together (``selection="global"``).
- Ablation at the best density (within 1 point of dense; if none is, the
  compressed density that lost the least): plain top-k, + residual (the sweep's run),
  + momentum correction (m = 0.9 with dampening, the mod's unit-gain form),
  + momentum factor masking, + warm-up (DGC's 25 % -> 0.4 % over a node's first
  4 rounds); and, beside the chain, residual + warm-up without momentum, and
  residual with DGC's per-tensor selection instead of the global one.

Accuracy is the test accuracy averaged over the last ``--average-last`` global
versions (default 5), the same for every setting: a single version's accuracy
moves by several points from one version to the next in this asynchronous,
non-IID setting, more than the 1-point margin. The last version's accuracy is
reported beside it. Bytes per update are measured from the encoded reply
payloads; the compression ratio is dense float32 (4 bytes x parameters) over
them. Time to target is in simulated seconds. The encode + decode cost is timed
on one node's real update (one local training, also timed) for every density.
``--jobs`` runs settings in parallel processes (each run is independent and
seeded); every finished run is appended to ``compression.runs.jsonl`` and
``--resume`` reuses those run under the same settings. JSON to
benchmarks/results/compression.json, a PNG of accuracy against density beside
it; last line ``compression ratio at <=1pt accuracy loss: <N>x``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any, cast

from _common import (
    APP_DIR,
    FASHION_MNIST,
    RESULTS,
    require_fashion_mnist,
    write_results,
)
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import FLOWER_LOGGER

from flchain_flwr.sim import (
    VirtualGrid,
    app_run_config,
    examples_work,
    simulate,
    uniform,
)
from flchain_flwr.strategies import Claimed, FedBuff, ShuffleAll

# The app's central_evaluator, typed here: the app package ships no py.typed, so
# mypy sees it as Any when it checks this file without the app's sources.
Evaluator = Callable[[int, ArrayRecord], MetricRecord]

DENSITIES = (1.0, 0.1, 0.01, 0.003, 0.001)
SELECTION = "global"
TIME_TARGETS = (0.6, 0.7, 0.75, 0.8)


def dgc_keys(
    density: float,
    *,
    momentum: float = 0.0,
    accumulate: bool = True,
    masking: bool = False,
    warmup: bool = False,
    selection: str = SELECTION,
) -> dict[str, Any]:
    return {
        "dgc-density": density,
        "dgc-momentum": momentum,
        "dgc-accumulate": accumulate,
        "dgc-masking": masking,
        "dgc-warmup": warmup,
        "dgc-value-dtype": "float16",
        "dgc-selection": selection,
    }


def ablation(density: float) -> dict[str, dict[str, Any] | None]:
    """The ablation chain; ``None`` marks the sweep's own run (+ residual)."""
    return {
        "plain top-k": dgc_keys(density, accumulate=False),
        "+ residual": None,
        "+ momentum correction": dgc_keys(density, momentum=0.9),
        "+ masking": dgc_keys(density, momentum=0.9, masking=True),
        "+ warm-up": dgc_keys(density, momentum=0.9, masking=True, warmup=True),
        "residual + warm-up (m=0)": dgc_keys(density, warmup=True),
        "residual, per-tensor selection": dgc_keys(density, selection="tensor"),
    }


def app_config(
    args: argparse.Namespace, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The app's run config for this benchmark, with ``overrides``."""
    return app_run_config(
        APP_DIR,
        {
            **FASHION_MNIST,
            "train-subset": args.train_subset,
            "test-subset": args.test_subset,
            **(overrides or {}),
        },
    )


def run_setting(
    name: str, overrides: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    from flchain_cnn.client_app import app as client_app

    FLOWER_LOGGER.setLevel(logging.WARNING)  # also in --jobs worker processes
    from flchain_cnn.server_app import central_evaluator
    from flchain_cnn.task import new_model

    config = app_config(args, overrides)
    grid = VirtualGrid(
        client_app,
        uniform(args.nodes, uplink_bps=1e6, downlink_bps=1e7),
        run_config=config,
        seed=args.seed,
        work_fn=examples_work(1e-3),
    )
    evaluate: Evaluator = central_evaluator(
        "fashion-mnist", test_subset=args.test_subset
    )
    curve: list[tuple[float, float]] = []

    def evaluate_fn(version: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = evaluate(version, arrays)
        curve.append((grid.clock.now(), float(cast(float, metrics["accuracy"]))))
        return metrics

    model = ArrayRecord(new_model("fashion-mnist", args.seed).state_dict())
    parameters = sum(int(a.numpy().size) for a in model.values())
    started = time.perf_counter()
    run = simulate(
        FedBuff(
            buffer_size=args.nodes // 2,
            seed=args.seed,
            fraction_evaluate=0.0,  # published results: no federated evaluation
            min_evaluate_nodes=1,  # published results' default (unused at fraction 0)
            evaluate_every=1,  # published results' default (unused at fraction 0)
            max_staleness=None,  # published results: no staleness limit
            example_weighting=Claimed(),  # published results: claimed example counts
            scheduling=ShuffleAll(),  # published results: seeded shuffle of free nodes
            state_rule="delta",  # published results' rule (the CNN has no state arrays)
        ),
        grid,
        model,
        num_rounds=args.versions,
        evaluate_fn=evaluate_fn,
    )
    replies = sum(s.replies for s in grid.stats.values())
    bytes_per_update = grid.totals()["bytes_up"] / max(replies, 1)
    row = {
        "setting": name,
        "config": overrides,
        "parameters": parameters,
        "bytes_per_update": bytes_per_update,
        "compression_ratio": 4 * parameters / bytes_per_update,
        "accuracy": sum(acc for _, acc in curve[-args.average_last :])
        / len(curve[-args.average_last :]),
        "final_accuracy": curve[-1][1],
        "curve": curve,
        "simulated_seconds": run.simulated_seconds,
        "wall_seconds": time.perf_counter() - started,
        "rejected": len(run.result.rejected),  # type: ignore[union-attr]
    }
    print(
        f"{name:>24}: {bytes_per_update:>10.0f} B/update, ratio "
        f"{row['compression_ratio']:7.1f}x, acc {row['accuracy']:.4f} "
        f"(last version {row['final_accuracy']:.4f}), "
        f"sim {run.simulated_seconds:.0f}s, wall {row['wall_seconds']:.0f}s",
        flush=True,
    )
    return row


def codec_cost(args: argparse.Namespace, densities: list[float]) -> dict[str, Any]:
    """Encode (the mod) + decode (the server) time against one local training.

    One node's real update: partition 0 trains the initial model once with the
    app's settings (timed), then each density compresses that update and the
    server side decodes it (median of ``repeats`` timings each).
    """
    import numpy as np
    from flchain_cnn.task import load_partition, new_model

    from flchain_flwr.compression import decode, is_sparse
    from flchain_flwr.mods import DGCConfig, DGCState, compress
    from flchain_flwr.training import train

    cfg = app_config(args)
    x, y = load_partition(
        "fashion-mnist",
        0,
        args.nodes,
        float(cfg["dirichlet-alpha"]),
        int(cfg["seed"]),
        train_subset=args.train_subset,
    )
    net = new_model("fashion-mnist", args.seed)
    before = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    started = time.perf_counter()
    train(
        net,
        x,
        y,
        epochs=int(cfg["local-epochs"]),
        lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]),
        seed=int(cfg["seed"]),
    )
    train_s = time.perf_counter() - started
    delta = {k: v.detach().numpy() - before[k] for k, v in net.state_dict().items()}
    rows = []
    repeats = 5
    for density in densities:
        if density >= 1.0:
            continue
        dgc = DGCConfig(density=density, warmup=(), value_dtype="float16")
        encode_s, decode_s = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            compressed, _ = compress(delta, DGCState(), dgc)
            t1 = time.perf_counter()
            for name, array in compressed.arrays.items():
                if is_sparse(array):
                    decode(array, shape=delta[name].shape, dtype=delta[name].dtype)
                else:
                    array.numpy()
            encode_s.append(t1 - t0)
            decode_s.append(time.perf_counter() - t1)
        enc, dec = float(np.median(encode_s)), float(np.median(decode_s))
        rows.append(
            {
                "density": density,
                "encode_ms": 1e3 * enc,
                "decode_ms": 1e3 * dec,
                "fraction_of_training": (enc + dec) / train_s,
            }
        )
    return {"train_examples": len(x), "train_seconds": train_s, "densities": rows}


RUN_SETTINGS = ("nodes", "versions", "train_subset", "test_subset", "seed")
"""The arguments a run's result depends on (a finished run is kept for them)."""


def run_key(name: str, keys: dict[str, Any], args: argparse.Namespace) -> str:
    """What identifies a run: its name, overrides and the settings it ran under."""
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    return json.dumps([name, keys, settings, args.average_last], sort_keys=True)


def run_all(
    settings: list[tuple[str, dict[str, Any]]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Run ``settings`` (name, run-config overrides), ``args.jobs`` at a time.

    Each finished run is appended to ``<out>.runs.jsonl``; with ``--resume`` a run
    already there under the same key is read back instead of run again.
    """
    log = args.out.with_suffix(".runs.jsonl")
    done: dict[str, dict[str, Any]] = {}
    if args.resume and log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            done[entry["key"]] = entry["row"]
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for name, keys in settings:
        key = run_key(name, keys, args)
        if key in done:
            rows[key] = done[key]
        else:
            todo.append((key, name, keys))

    def keep(key: str, row: dict[str, Any]) -> None:
        rows[key] = row
        with log.open("a") as f:
            f.write(json.dumps({"key": key, "row": row}) + "\n")

    if args.jobs <= 1:
        for key, name, keys in todo:
            keep(key, run_setting(name, keys, args))
    elif todo:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_setting, n, k, args): key for key, n, k in todo}
            for future in as_completed(futures):
                keep(futures[future], future.result())
    return [rows[run_key(name, keys, args)] for name, keys in settings]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in curve if acc >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--train-subset", type=int, default=20_000)
    parser.add_argument("--test-subset", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--average-last",
        type=int,
        default=5,
        help="accuracy = mean test accuracy over the last N global versions",
    )
    parser.add_argument(
        "--densities",
        type=float,
        nargs="+",
        default=list(DENSITIES),
        help="densities to sweep; the first must be 1 (dense)",
    )
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument(
        "--jobs", type=int, default=1, help="settings to run in parallel processes"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs already finished under the same settings",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "compression.json")
    args = parser.parse_args()
    require_fashion_mnist()
    if args.nodes < 10:
        parser.error("the benchmark is defined for >= 10 nodes")
    FLOWER_LOGGER.setLevel(logging.WARNING)

    if args.densities[0] != 1.0 or len(args.densities) < 2:
        parser.error("--densities must start with 1 (dense) and name a compressed one")
    sweep = run_all([(f"density {d:g}", dgc_keys(d)) for d in args.densities], args)
    dense = sweep[0]
    within = [r for r in sweep if r["accuracy"] >= dense["accuracy"] - 0.01]
    best = max(within, key=lambda r: r["compression_ratio"])  # dense if none is within
    # The ablation needs a compressed density: the best one within 1 point, else
    # the compressed density that lost the least accuracy.
    studied = best if best is not dense else max(sweep[1:], key=lambda r: r["accuracy"])
    best_density = float(studied["config"]["dgc-density"])
    ablations = []
    if not args.no_ablation:
        chain = ablation(best_density)
        runs = iter(
            run_all(
                [
                    (f"{name} @ {best_density:g}", keys)
                    for name, keys in chain.items()
                    if keys is not None
                ],
                args,
            )
        )
        ablations = [
            {**studied, "setting": f"{name} @ {best_density:g}"}
            if keys is None
            else next(runs)
            for name, keys in chain.items()
        ]

    codec = codec_cost(args, args.densities)
    # Simulated time to fixed accuracy targets under 1 Mbit/s uplinks.
    times = {
        f"{target:.2f}": {
            "dense_s": time_to(dense["curve"], target),
            "compressed_s": time_to(studied["curve"], target),
        }
        for target in TIME_TARGETS
    }
    reached = [
        (t["compressed_s"], t["dense_s"])
        for t in times.values()
        if t["dense_s"] is not None and t["compressed_s"] is not None
    ]
    time_ratio = reached[-1][0] / reached[-1][1] if reached else None
    write_results(
        args.out,
        "compression",
        args,
        headline=(
            "compression ratio at <=1pt accuracy loss",
            best["compression_ratio"],
        ),
        sweep=sweep,
        ablation_density=best_density,
        best={
            "setting": best["setting"],
            "density": float(best["config"]["dgc-density"]),
            "compression_ratio": best["compression_ratio"],
            "accuracy_loss_points": 100 * (dense["accuracy"] - best["accuracy"]),
            "last_version_loss_points": 100
            * (dense["final_accuracy"] - best["final_accuracy"]),
        },
        codec_cost=codec,
        ablation=ablations,
        time_to_target={
            "compressed_setting": studied["setting"],
            "targets": times,
            "time_ratio_at_highest_common_target": time_ratio,
        },
    )

    plot(sweep, ablations, args.out.with_suffix(".png"))
    for target, t in times.items():
        print(
            f"time to {target}: dense {t['dense_s']}, {studied['setting']} "
            f"{t['compressed_s']} (simulated s)"
        )
    print(f"compressed / dense time at the highest common target: {time_ratio}")
    for row in codec["densities"]:
        print(
            f"density {row['density']:g}: encode {row['encode_ms']:.1f} ms + decode "
            f"{row['decode_ms']:.1f} ms = {100 * row['fraction_of_training']:.2f} % "
            f"of one local training ({codec['train_seconds']:.1f} s)"
        )
    print(f"compression ratio at <=1pt accuracy loss: {best['compression_ratio']:.0f}x")


def plot(
    sweep: list[dict[str, Any]], ablations: list[dict[str, Any]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    densities = [float(r["config"]["dgc-density"]) for r in sweep]
    left.plot(densities, [r["accuracy"] for r in sweep], "o-")
    for r, d in zip(sweep, densities, strict=True):
        left.annotate(
            f"{r['compression_ratio']:.0f}x",
            (d, r["accuracy"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    left.axhline(
        sweep[0]["accuracy"] - 0.01,
        color="grey",
        linestyle="--",
        linewidth=0.8,
        label="dense - 1 pt",
    )
    left.set_xscale("log")
    left.set_xlabel("density (fraction of entries sent)")
    left.set_ylabel("test accuracy (mean of the last versions)")
    left.set_title("Fashion-MNIST CNN: accuracy against density")
    left.legend()
    if ablations:
        right.barh(
            [r["setting"] for r in ablations], [r["accuracy"] for r in ablations]
        )
        right.set_xlabel("test accuracy (mean of the last versions)")
        right.set_title("ablation at the best density")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

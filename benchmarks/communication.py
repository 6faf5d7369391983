"""Communication both ways: bytes per version, time to accuracy, accuracy.

Setting: the flchain_cnn app on Fashion-MNIST (the first ``--train-subset``
training and ``--test-subset`` test images), the 1.63M-parameter CNN,
``--nodes`` nodes split by Dirichlet(0.5), FedBuff with K = ``--buffer-size``
and the library's defaults (no federated evaluation), the same number of
global versions for every setting, on the virtual-clock grid with every node on
the same link (``--links``: up/down Mbit/s pairs) and 1 ms of compute per
example. Settings:

- ``dense``: no compression either way;
- ``dgc up``: the DGC mod at its defaults (0.3 %, float16 values, global top-k,
  residual), the full model down;
- ``dgc up + sparse down``: the same, and ``FedBuff(downlink=True)`` with the
  app's ``downlink_mod``: a node is sent the entries that changed since the
  version it holds (their final values, lossless) when that is smaller;
- ``+ <quant>``: the last, with the uploaded values quantised, one setting
  per code in ``--quant`` (int8, int4, sign; the error stays in the residual).
- ``+ <quant> + initial base``: the same, and ``downlink-from-initial``: a
  node's first model is the delta from the run's initial model, which the
  app's ``downlink_mod`` builds itself from the run's seed, instead of the
  full model; one setting per code in ``--from-initial``.

Bytes are FedBuff's own per-version counts of the encoded train messages and
replies (``VersionRecord.bytes_down``/``bytes_up``, Flower's ``count_bytes``),
summed over the run and divided by its versions. Reductions are dense's bytes
over the setting's, per version, on the same seed and link. Accuracy is the
centralised test accuracy averaged over the last ``--average-last`` versions.
Time to target: simulated seconds until that accuracy is first reached.
``total traffic reduction at <=0.5pt loss`` is the largest total (down + up)
reduction among the compressed settings that lose at most 0.5 points against
dense on every seed and link (0 if none does). For the downlink, the result
also reports per distance ``s`` (versions since the node's base) the mean
fraction of the model's entries its delta held (the union of ``s`` versions'
changes), which is what limits the downlink's reduction.

Each run also records per version (``diagnostics``, :mod:`_comms_diag`) the
step's norm, the nodes' DGC residual norms, the updates' staleness, the label
mix of the nodes that made the version and, below 20 % accuracy, which class
the model predicts; ``link_check`` compares a setting's runs on different
links (bytes per reply and message, identical accuracy curves and node order).
``--other-links-settings`` runs the links after the first for some settings
only; ``--resume`` adds runs to the ones already made.

The defaults (5,000 training images, 250 per node; 30 versions; 1,000 test
images; ``--other-links-seeds`` to run the second link on fewer seeds) are
sized for the shared 2-core machine: a run takes 5 to 10 minutes there. The
model is then early in training (about 40-47 % accuracy), where a version's
accuracy moves by points; read the 0.5-point comparison with that in mind.

JSON to benchmarks/results/communication.json, PNG beside it; last line
``total traffic reduction at <=0.5pt loss: <N>x``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, cast

from _common import (
    APP_DIR,
    FASHION_MNIST,
    RESULTS,
    require_fashion_mnist,
    write_results,
)
from _comms_diag import Probe, drops, label_counts, link_check, per_version
from compression import time_to

# This checkout's app (with downlink_mod), not an installed copy of it; at import
# time, so that --jobs worker processes load the same one.
sys.path.insert(0, str(APP_DIR))
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import FLOWER_LOGGER

from flchain_flwr.mods import DGCConfig
from flchain_flwr.sim import (
    VirtualGrid,
    app_run_config,
    examples_work,
    simulate,
    uniform,
)
from flchain_flwr.strategies import AsyncResult, FedBuff

TARGETS = (0.3, 0.35, 0.4)
MAX_LOSS = 0.005


def dgc_keys(value_dtype: str | None = None) -> dict[str, Any]:
    """The app's dgc-* keys for a bare DGCConfig (the library's defaults)."""
    cfg = DGCConfig()
    return {
        "dgc-density": cfg.density,
        "dgc-value-dtype": value_dtype or cfg.value_dtype,
        "dgc-selection": cfg.selection,
        "dgc-warmup": bool(cfg.warmup),
        "dgc-masking": cfg.masking,
        "dgc-accumulate": cfg.accumulate,
        "dgc-momentum": cfg.momentum,
    }


def settings(
    quants: list[str], from_initial: list[str]
) -> list[tuple[str, dict[str, Any], bool]]:
    """(name, run-config overrides, downlink) per setting."""
    initial = {"downlink-from-initial": True}
    return [
        ("dense", {"dgc-density": 1.0}, False),
        ("dgc up", dgc_keys(), False),
        ("dgc up + sparse down", dgc_keys(), True),
        *((f"+ {quant}", dgc_keys(quant), True) for quant in quants),
        *(
            (f"+ {quant} + initial base", {**dgc_keys(quant), **initial}, True)
            for quant in from_initial
        ),
    ]


# pylint: disable=too-many-arguments,too-many-locals
def run_one(
    name: str,
    overrides: dict[str, Any],
    downlink: bool,
    seed: int,
    link: tuple[float, float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from flchain_cnn.client_app import app as client_app

    FLOWER_LOGGER.setLevel(logging.WARNING)
    import torch
    from flchain_cnn.server_app import central_evaluator
    from flchain_cnn.task import load_partition, load_test, new_model

    config = app_run_config(
        APP_DIR,
        {
            **FASHION_MNIST,
            "train-subset": args.train_subset,
            "test-subset": args.test_subset,
            "seed": seed,
            **overrides,
        },
    )
    up, down = link
    grid = VirtualGrid(
        client_app,
        uniform(args.nodes, uplink_bps=up * 1e6, downlink_bps=down * 1e6),
        run_config=config,
        seed=seed,
        work_fn=examples_work(1e-3),
    )
    evaluate = central_evaluator("fashion-mnist", test_subset=args.test_subset)
    curve: list[tuple[float, float]] = []
    x_test, _ = load_test("fashion-mnist", test_subset=args.test_subset)

    def predict(arrays: ArrayRecord) -> Any:
        net = new_model("fashion-mnist", 0)
        net.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            return net(torch.as_tensor(x_test)).argmax(1).numpy()

    probe = Probe(grid, predict)

    def evaluate_fn(version: int, arrays: ArrayRecord) -> MetricRecord:
        metrics: MetricRecord = evaluate(version, arrays)
        accuracy = float(cast(float, metrics["accuracy"]))
        curve.append((grid.clock.now(), accuracy))
        probe.observe(arrays, accuracy)
        if version % 10 == 0:  # progress, for planning a run's budget
            print(
                f"  {name} seed {seed}: version {version}, accuracy {accuracy:.3f}, "
                f"{time.perf_counter() - started:.0f}s wall, "
                f"{time.process_time():.0f}s cpu",
                flush=True,
            )
        return metrics

    model = ArrayRecord(new_model("fashion-mnist", seed).state_dict())
    started = time.perf_counter()
    strategy = FedBuff(
        buffer_size=args.buffer_size,
        seed=seed,
        fraction_evaluate=0.0,
        downlink=downlink,
        downlink_from_initial=bool(overrides.get("downlink-from-initial")),
    )
    run = simulate(
        strategy, grid, model, num_rounds=args.versions, evaluate_fn=evaluate_fn
    )
    result = run.result
    assert isinstance(result, AsyncResult)
    versions = result.versions
    count = max(len(versions), 1)
    messages = sum(v.messages_down for v in versions)
    replies = sum(v.replies_up for v in versions)
    down_bytes = sum(v.bytes_down for v in versions)
    up_bytes = sum(v.bytes_up for v in versions)
    last = curve[-args.average_last :]

    def labels_of(partition: int) -> Any:
        return load_partition(
            "fashion-mnist",
            partition,
            args.nodes,
            float(FASHION_MNIST["dirichlet-alpha"]),
            seed,
            train_subset=args.train_subset,
        )[1]

    counts = label_counts(grid, labels_of, [n for v in versions for n in v.node_ids])
    row: dict[str, Any] = {
        "setting": name,
        "seed": seed,
        "link_mbps": {"up": up, "down": down},
        "config": overrides,
        "downlink": downlink,
        "versions": len(versions),
        "down_bytes_per_version": down_bytes / count,
        "up_bytes_per_version": up_bytes / count,
        "total_bytes_per_version": (down_bytes + up_bytes) / count,
        "down_bytes_per_message": down_bytes / max(messages, 1),
        "up_bytes_per_reply": up_bytes / max(replies, 1),
        "accuracy": sum(a for _, a in last) / len(last),
        "final_accuracy": curve[-1][1],
        "curve": curve,
        "simulated_seconds": run.simulated_seconds,
        "wall_seconds": time.perf_counter() - started,
        "rejected": len(result.rejected),
        "failures": len(result.failures),
        "downlink_by_distance": result.downlink,
        "deltas_sent": sum(d["sent"] for d in result.downlink.values()),
        "rejected_reasons": sorted({r.reason for r in result.rejected}),
        "diagnostics": per_version(result, probe, curve, counts),
    }
    print(
        f"{name:>22} seed {seed} link {up:g}/{down:g}: down "
        f"{row['down_bytes_per_message'] / 1e3:8.1f} kB/msg, up "
        f"{row['up_bytes_per_reply'] / 1e3:7.1f} kB/reply, acc {row['accuracy']:.4f}"
        f", sim {run.simulated_seconds:.0f}s, wall {row['wall_seconds']:.0f}s",
        flush=True,
    )
    return row


def summarise(
    rows: list[dict[str, Any]],
    names: list[str],
    parameters: int,
    targets: list[float],
) -> dict[str, Any]:
    """Per setting: reductions against dense (same seed and link), losses."""
    dense = {
        (r["seed"], r["link_mbps"]["up"]): r for r in rows if r["setting"] == "dense"
    }
    out: dict[str, Any] = {}
    for name in names:
        mine = [  # runs without their dense twin (an interrupted run) are left out
            r
            for r in rows
            if r["setting"] == name and (r["seed"], r["link_mbps"]["up"]) in dense
        ]
        if not mine:
            continue
        pairs = [(r, dense[(r["seed"], r["link_mbps"]["up"])]) for r in mine]
        losses = [100 * (d["accuracy"] - r["accuracy"]) for r, d in pairs]

        def ratio(key: str, pairs: list[Any] = pairs) -> float:
            return float(sum(d[key] for _, d in pairs) / sum(r[key] for r, _ in pairs))

        out[name] = {
            "runs": len(mine),
            "mean_accuracy": sum(r["accuracy"] for r in mine) / len(mine),
            "loss_points": losses,
            "max_loss_points": max(losses),
            "down_reduction": ratio("down_bytes_per_version"),
            "up_reduction": ratio("up_bytes_per_version"),
            "total_reduction": ratio("total_bytes_per_version"),
            "up_ratio_vs_float32": sum(4 * parameters for _ in mine)
            / sum(r["up_bytes_per_reply"] for r in mine),
            "down_kB_per_message": sum(r["down_bytes_per_message"] for r in mine)
            / len(mine)
            / 1e3,
            "up_kB_per_reply": sum(r["up_bytes_per_reply"] for r in mine)
            / len(mine)
            / 1e3,
            **_steady_state(mine, pairs),
            "time_to_target": {f"{t:g}": _times(mine, t) for t in targets},
        }
    return out


def _steady_state(
    mine: list[dict[str, Any]], pairs: list[tuple[dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    """Downlink figures without each node's first model (full, or a delta from
    the initial model at distance 0, the version every node starts on): the
    mean delta a node receives, and the total reduction per update it gives."""
    later = [
        d
        for r in mine
        for s, d in r["downlink_by_distance"].items()
        if int(s) > 0  # keys are text once read back from the runs log
    ]
    sent = sum(d["sent"] for d in later)
    if not sent:
        return {}
    delta_bytes = sum(d["delta_bytes"] for d in later)
    dense = sum(d["down_bytes_per_message"] + d["up_bytes_per_reply"] for _, d in pairs)
    ours = sum(delta_bytes / sent + r["up_bytes_per_reply"] for r, _ in pairs)
    return {
        "down_kB_per_delta": delta_bytes / sent / 1e3,
        "deltas_sent": sent,
        "steady_total_reduction": dense / ours,
    }


def _times(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Simulated seconds to ``target`` per link: mean over the runs that reached
    it, and how many did."""
    out: dict[str, Any] = {}
    for link in sorted({(r["link_mbps"]["up"], r["link_mbps"]["down"]) for r in rows}):
        mine = [
            r for r in rows if (r["link_mbps"]["up"], r["link_mbps"]["down"]) == link
        ]
        times = [t for r in mine if (t := time_to(r["curve"], target)) is not None]
        out[f"{link[0]:g}/{link[1]:g}"] = {
            "mean_s": sum(times) / len(times) if times else None,
            "reached": f"{len(times)}/{len(mine)}",
        }
    return out


def union_density(
    rows: list[dict[str, Any]], parameters: int
) -> dict[str, dict[str, float]]:
    """Per distance s: the mean fraction of the model's entries in a delta."""
    offered: dict[str, list[int]] = {}
    for r in rows:
        for s, stats in (r["downlink_by_distance"] or {}).items():
            acc = offered.setdefault(str(s), [0, 0, 0])
            acc[0] += stats["offered"]
            acc[1] += stats["entries"]
            acc[2] += stats["sent"]
    return {
        s: {
            "deltas_offered": n,
            "mean_fraction_of_entries": entries / n / parameters,
            "sent_as_delta": sent / n,
        }
        for s, (n, entries, sent) in sorted(offered.items(), key=lambda x: int(x[0]))
        if n
    }


RUN_SETTINGS = ("nodes", "buffer_size", "versions", "train_subset", "test_subset")


def run_key(job: tuple[Any, ...], args: argparse.Namespace) -> str:
    """A run's identity: the job and the settings its result depends on."""
    name, keys, downlink, seed, link = job
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}
    return json.dumps(
        [name, keys, downlink, seed, list(link), settings, args.average_last],
        sort_keys=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--buffer-size", type=int, default=5)
    parser.add_argument("--versions", type=int, default=30)
    parser.add_argument("--train-subset", type=int, default=5_000)
    parser.add_argument("--test-subset", type=int, default=1_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--links",
        nargs="+",
        default=["1/10", "5/50"],
        help="up/down Mbit/s per node, e.g. 1/10",
    )
    parser.add_argument(
        "--other-links-seeds",
        type=int,
        default=None,
        help="links after the first run only the first N seeds (compute budget)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only these settings (e.g. dense, to time a length first)",
    )
    parser.add_argument(
        "--other-links-settings",
        nargs="+",
        default=None,
        help="links after the first run only these settings (default: all)",
    )
    parser.add_argument(
        "--quant",
        nargs="+",
        default=["int8", "int4", "sign"],
        choices=["int8", "int4", "sign"],
        help="one '+ <code>' setting per code",
    )
    parser.add_argument(
        "--from-initial",
        nargs="*",
        default=["sign"],
        choices=["int8", "int4", "sign"],
        help="one '+ <code> + initial base' setting per code",
    )
    parser.add_argument("--average-last", type=int, default=5)
    parser.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=list(TARGETS),
        help="accuracies for the time-to-target figures",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs <out>.runs.jsonl holds for the same settings",
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="with --resume: summarise the runs made so far, run nothing",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "communication.json")
    args = parser.parse_args()
    require_fashion_mnist()
    FLOWER_LOGGER.setLevel(logging.WARNING)
    links: list[tuple[float, float]] = []
    for link in args.links:
        up, down = (float(x) for x in link.split("/"))
        links.append((up, down))
    chosen = [
        s
        for s in settings(args.quant, args.from_initial)
        if args.only is None or s[0] in args.only
    ]
    names = [name for name, _, _ in chosen]
    jobs = [  # link by link, so an interrupted run has whole links
        (name, keys, downlink, seed, link)
        for index, link in enumerate(links)
        for seed in (args.seeds if index == 0 else args.seeds[: args.other_links_seeds])
        for name, keys, downlink in chosen
        if index == 0
        or args.other_links_settings is None
        or name in args.other_links_settings
    ]
    log = args.out.with_suffix(".runs.jsonl")
    done: dict[str, dict[str, Any]] = {}
    if args.resume and log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            done[entry["key"]] = entry["row"]
    rows = [done[key] for job in jobs if (key := run_key(job, args)) in done]
    todo = [job for job in jobs if run_key(job, args) not in done and not args.no_run]

    def keep(job: tuple[Any, ...], row: dict[str, Any]) -> None:
        rows.append(row)
        with log.open("a") as f:
            f.write(json.dumps({"key": run_key(job, args), "row": row}) + "\n")

    if args.jobs <= 1:
        for job in todo:
            keep(job, run_one(*job, args))
    elif todo:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_one, *job, args): job for job in todo}
            for future in as_completed(futures):
                keep(futures[future], future.result())
    from flchain_cnn.task import new_model

    parameters = sum(p.numel() for p in new_model("fashion-mnist", 0).parameters())
    summary = summarise(rows, names, parameters, args.targets)
    within = [  # on every seed and link dense ran on, not on fewer
        (s["total_reduction"], name)
        for name, s in summary.items()
        if name != "dense"
        and s["runs"] == summary["dense"]["runs"]
        and s["max_loss_points"] <= 100 * MAX_LOSS
    ]
    best = max(within) if within else (0.0, None)
    write_results(
        args.out,
        "communication",
        args,
        headline=("total traffic reduction at <=0.5pt loss", best[0]),
        parameters=parameters,
        best_setting=best[1],
        summary=summary,
        union_density_by_distance=union_density(rows, parameters),
        link_check=link_check(rows),
        accuracy_drops=drops(rows),
        runs=sorted(
            rows, key=lambda r: (r["setting"], r["seed"], r["link_mbps"]["up"])
        ),
    )
    plot(rows, names, args.out.with_suffix(".png"))
    for name, s in summary.items():
        print(
            f"{name:>22}: down {s['down_kB_per_message']:8.1f} kB/msg "
            f"({s['down_reduction']:.1f}x), up {s['up_kB_per_reply']:7.1f} kB/reply "
            f"({s['up_reduction']:.1f}x), total {s['total_reduction']:.1f}x, "
            f"acc {s['mean_accuracy']:.4f}, max loss {s['max_loss_points']:.2f} pt"
        )
        if "down_kB_per_delta" in s:
            print(
                f"{'':>24}after each node's first model: {s['down_kB_per_delta']:.1f}"
                f" kB per delta, total {s['steady_total_reduction']:.1f}x per update"
            )
        for target, per_link in s["time_to_target"].items():
            print(f"{'':>24}time to {target}: {per_link}")
    for s, d in union_density(rows, parameters).items():
        print(
            f"distance {s}: delta holds {100 * d['mean_fraction_of_entries']:.2f} % "
            f"of the entries ({d['deltas_offered']} offered, "
            f"{100 * d['sent_as_delta']:.0f} % sent as deltas)"
        )
    print(f"total traffic reduction at <=0.5pt loss: {best[0]:.1f}x")


def plot(rows: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = sorted({(r["link_mbps"]["up"], r["link_mbps"]["down"]) for r in rows})
    fig, axes = plt.subplots(
        1, len(links), figsize=(6 * len(links), 4.5), squeeze=False
    )
    for ax, link in zip(axes[0], links, strict=True):
        for name in names:
            mine = [
                r
                for r in rows
                if r["setting"] == name
                and (r["link_mbps"]["up"], r["link_mbps"]["down"]) == link
                and r["seed"] == min(x["seed"] for x in rows)
            ]
            for r in mine:
                ax.plot(
                    [t for t, _ in r["curve"]], [a for _, a in r["curve"]], label=name
                )
        ax.set_xscale("log")
        ax.set_xlabel("simulated seconds")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{link[0]:g} Mbit/s up, {link[1]:g} down (first seed)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
